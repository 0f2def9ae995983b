"""Results as a markdown table, a PNG chart and JSON; the doc's marked sections are replaced."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .runner import Point, Target
from .tools import REPO

CHART_NAME = "benchmark-throughput.png"
JSON_NAME = "benchmark-results.json"
DOC_NAME = "benchmarks.md"


@dataclass(frozen=True, slots=True)
class Machine:
    """Where and when a run happened: the numbers mean little without it."""

    date: str
    commit: str
    cores: int
    cpu: str
    python: str
    load_before: str
    load_after: str = ""

    @staticmethod
    def current() -> Machine:
        return Machine(
            date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            commit=_commit(),
            cores=os.cpu_count() or 0,
            cpu=_cpu_model(),
            python=platform.python_version(),
            load_before=_load(),
        )

    def finished(self) -> Machine:
        return dataclasses.replace(self, load_after=_load())

    def line(self) -> str:
        load = f"load average {self.load_before}"
        if self.load_after:
            load += f" before, {self.load_after} after"
        return (
            f"{self.date}, commit `{self.commit}`, {self.cores} cores ({self.cpu}), "
            f"Python {self.python}, {load}"
        )


def _commit() -> str:
    def git(*args: str) -> str:
        result = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=False
        )
        return result.stdout.strip() if result.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "messaging_service")
    return commit + ("+changes" if dirty else "")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


# --- markdown -------------------------------------------------------------------------------


def _find(points: Sequence[Point], program: str, target: str, workers: int) -> Point | None:
    for point in points:
        if (point.program, point.target, point.workers, point.series) == (
            program,
            target,
            workers,
            "sweep",
        ):
            return point
    return None


def _pair(points: Sequence[Point], workers: int) -> tuple[Point | None, Point | None]:
    """The transient-failure pair at ``workers``: (failure-free, failing)."""
    pair = [p for p in points if p.series == "failures" and p.workers == workers]
    free = next((p for p in pair if not p.fail_share), None)
    failing = next((p for p in pair if p.fail_share), None)
    return free, failing


_MISSING = "-"


def _num(value: float | None, digits: int = 0) -> str:
    return _MISSING if value is None else f"{value:,.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    return _MISSING if a is None or not b else f"{a / b:.2f}x"


def _rate(point: Point | None) -> float | None:
    return None if point is None else point.throughput


def _cpu(point: Point | None) -> float | None:
    return None if point is None else point.cpu_ms_per_email


def _rss(point: Point | None) -> float | None:
    return None if point is None else point.peak_rss_mb


def _latency(point: Point | None) -> str:
    if point is None or point.p50_ms is None or point.p99_ms is None:
        return _MISSING
    return f"{point.p50_ms:,.0f} / {point.p99_ms:,.0f}"


def results_markdown(
    machine: Machine, points: Sequence[Point], *, latency: Target, mode: str, details: str
) -> str:
    lines = [
        f"Measured {machine.line()}. Mode: {mode}. {details}",
        "",
    ]
    sweep = sorted({p.workers for p in points if p.target == "latency" and p.series == "sweep"})
    if sweep:
        spread = f" ± {latency.jitter:.0%} (uniform)" if latency.jitter else ""
        lines += [
            f"**Latency-bound relay** (the bench's delay sink answers each message after "
            f"{latency.delay * 1000:g} ms{spread}; ideal = workers / delay):",
            "",
            "| workers | ideal/s | service/s | of ideal | plain loop/s | service ÷ plain "
            "| service CPU ms/email | plain CPU ms/email | latency p50 / p99 ms "
            "| service peak RSS MB |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for workers in sweep:
            svc = _find(points, "service", "latency", workers)
            plain = _find(points, "plain", "latency", workers)
            ideal = latency.ideal(workers)
            share = f"{svc.throughput / ideal:.0%}" if svc and ideal else _MISSING
            label = f"{workers} (sequential)" if workers == 1 else str(workers)
            lines.append(
                f"| {label} | {_num(ideal)} | {_num(_rate(svc))} | {share} "
                f"| {_num(_rate(plain))} | {_ratio(_rate(svc), _rate(plain))} "
                f"| {_num(_cpu(svc), 2)} | {_num(_cpu(plain), 2)} "
                f"| {_latency(svc)} | {_num(_rss(svc))} |"
            )
        lines.append("")
    zero = sorted({p.workers for p in points if p.target == "zero"})
    if zero:
        lines += [
            "**Zero-latency relay** (Postfix's smtp-sink; the sender is the bottleneck):",
            "",
            "| workers | service/s | plain loop/s | service ÷ plain | service CPU ms/email "
            "| plain CPU ms/email | plain ÷ service CPU | latency p50 / p99 ms "
            "| peak RSS MB service / plain |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for workers in zero:
            svc = _find(points, "service", "zero", workers)
            plain = _find(points, "plain", "zero", workers)
            lines.append(
                f"| {workers} | {_num(_rate(svc))} | {_num(_rate(plain))} "
                f"| {_ratio(_rate(svc), _rate(plain))} "
                f"| {_num(_cpu(svc), 2)} | {_num(_cpu(plain), 2)} "
                f"| {_ratio(_cpu(plain), _cpu(svc))} "
                f"| {_latency(svc)} | {_num(_rss(svc))} / {_num(_rss(plain))} |"
            )
        lines.append("")
    lines += _cpu_breakdown(points)
    lines += _failures(points, latency)
    problems = [
        f"- {p.program}, {p.target}, {p.workers} workers: {problem}"
        for p in points
        for problem in p.problems
    ]
    if problems:
        lines += ["**Problems seen during the run:**", "", *problems, ""]
    return "\n".join(lines).rstrip() + "\n"


def _failures(points: Sequence[Point], latency: Target) -> list[str]:
    counts = sorted({p.workers for p in points if p.series == "failures"})
    if not counts:
        return []
    share = max(p.fail_share for p in points)
    lines = [
        f"**Transient failures** (the same {latency.delay * 1000:g} ms relay refuses "
        f"{share:.0%} of messages once with `451`; the service retries them after its first "
        "delay, 1 s, without holding a worker; each pair ran back to back):",
        "",
        "| workers | failure-free/s | failing once/s | failing ÷ failure-free | retries "
        "| CPU ms/email free / failing | latency p50 / p99 ms, failure-free "
        "| latency p50 / p99 ms, failing |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for workers in counts:
        free, failing = _pair(points, workers)
        lines.append(
            f"| {workers} | {_num(_rate(free))} | {_num(_rate(failing))} "
            f"| {_percent(_rate(failing), _rate(free))} "
            f"| {_num(None if failing is None else failing.retries)} "
            f"| {_num(_cpu(free), 2)} / {_num(_cpu(failing), 2)} "
            f"| {_latency(free)} | {_latency(failing)} |"
        )
    return [*lines, ""]


def _percent(a: float | None, b: float | None) -> str:
    return _MISSING if a is None or not b else f"{a / b:.0%}"


def _cpu_breakdown(points: Sequence[Point]) -> list[str]:
    rows = [p for p in points if p.program == "service" and p.target == "zero"]
    if not rows:
        return []
    lines = [
        "Where the CPU goes per email in the zero-latency runs (ms; the machine has "
        f"{os.cpu_count()} cores; the service is one single-threaded process, so "
        "1000 ÷ its CPU ms is its ceiling in emails/s):",
        "",
        "| workers | service | broker (Tansu) | smtp-sink | service ceiling/s |",
        "|---:|---:|---:|---:|---:|",
    ]
    for point in rows:
        ceiling = 1000 / point.cpu_ms_per_email if point.cpu_ms_per_email else None
        lines.append(
            f"| {point.workers} | {point.cpu_ms_per_email:.2f} "
            f"| {_num(point.broker_cpu_ms_per_email, 2)} "
            f"| {point.sink_cpu_ms_per_email:.2f} | {_num(ceiling)} |"
        )
    return [*lines, ""]


# --- files ----------------------------------------------------------------------------------


def replace_section(doc: Path, section: str, body: str, *, title: str = "Benchmarks") -> None:
    """Put ``body`` between ``<!-- bench:SECTION:begin -->`` and its end marker in ``doc``.

    A missing doc is created; missing markers are appended at its end.
    """
    begin, end = f"<!-- bench:{section}:begin -->", f"<!-- bench:{section}:end -->"
    text = doc.read_text(encoding="utf-8") if doc.exists() else f"# {title}\n"
    if begin not in text or end not in text:
        text = text.rstrip("\n") + f"\n\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(f"{head}{begin}\n{body.rstrip()}\n{end}{tail}", encoding="utf-8")


def write_json(path: Path, machine: Machine, points: Sequence[Point], **extra: Any) -> None:
    data = {
        "machine": dataclasses.asdict(machine),
        "points": [dataclasses.asdict(p) for p in points],
        **extra,
    }
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def chart(path: Path, machine: Machine, points: Sequence[Point], *, latency: Target) -> None:
    """Throughput against workers: service and plain loop, the ideal line, the CPU ceilings."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 5.6), dpi=100)
    points = [p for p in points if p.series == "sweep"]
    sweep = sorted({p.workers for p in points if p.target == "latency"})
    if sweep:
        axes.plot(
            sweep,
            [latency.ideal(w) or 0 for w in sweep],
            linestyle="--",
            color="grey",
            label=f"ideal: workers / {latency.delay * 1000:g} ms",
        )
    styles = {"service": ("tab:blue", "o", "service"), "plain": ("tab:orange", "s", "plain loop")}
    for program, (colour, marker, name) in styles.items():
        series = sorted(
            (p.workers, p.throughput)
            for p in points
            if p.program == program and p.target == "latency"
        )
        if series:
            xs, ys = zip(*series, strict=True)
            axes.plot(xs, ys, marker=marker, color=colour, label=f"{name}, latency-bound relay")
        best = max(
            (p.throughput for p in points if p.program == program and p.target == "zero"),
            default=None,
        )
        if best:
            axes.axhline(
                best, linestyle=":", color=colour, label=f"{name}, zero-latency relay (best)"
            )
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("workers (service) / connections (plain loop)")
    axes.set_ylabel("emails per second")
    ticks = sorted({p.workers for p in points})
    axes.set_xticks(ticks, [str(t) for t in ticks])
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="upper left", fontsize="small")
    axes.set_title(
        f"messaging-service throughput — commit {machine.commit}, {machine.cores} cores",
        fontsize="medium",
    )
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
