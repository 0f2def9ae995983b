"""Where the service's CPU goes per email: py-spy on the service, zero-latency relay.

The service runs a backlog against smtp-sink; once warm, py-spy samples it for a fixed time
(pausing it for each sample, so stacks are never torn; idle threads are left out). The report
ranks functions by own time and by package, and converts shares into microseconds per email
with the CPU time measured over the same window.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from support.kafka import create_topic

from .meter import cpu_seconds
from .runner import Context
from .service import ServiceConfig, ServiceProcess, metric
from .sinks import SmtpSink
from .tools import REPO
from .workload import produce_backlog

_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
_STDLIB = Path(sysconfig.get_paths()["stdlib"]).resolve()
# An executor thread waiting for work (the service resolves its hostname in one, once): py-spy
# counts that lock wait as active, so it would show up as a few percent of "own" time.
_IDLE_EXECUTOR = "_worker (concurrent/futures/thread.py)"
# Phases of one email, recognised by a function (name prefix) or a package on the stack; the
# first match wins. The names follow the service's code as it is: when it changes, update them
# (what matches nothing counts as the event loop and the rest).
_PHASES: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("validate the request (pydantic, email_validator)", ("parse_request (",), ()),
    ("render the templates (jinja2)", ("TemplateRenderer.render (",), ()),
    ("build the MIME bytes", ("MessageBuilder.build (",), ()),
    ("SMTP exchange (smtp_wire over aiosmtplib's connection)", ("SmtpSender.send (",), ()),
    ("logging (structlog)", (), ("structlog",)),
    ("metrics (prometheus_client)", (), ("prometheus_client",)),
    ("Kafka: fetch, admission, commits", ("Pipeline._admit (", "Pipeline.commit ("), ("aiokafka",)),
    ("worker pool and job bookkeeping", ("WorkerPool._work (",), ()),
)
_OTHER_PHASE = "event loop and the rest"


@dataclass(frozen=True, slots=True)
class Profile:
    workers: int
    samples: int
    rate: int
    seconds: float
    emails: int
    throughput: float
    cpu_ms_per_email: float
    own: list[tuple[str, int]]
    total: dict[str, int]
    packages: list[tuple[str, int]]
    packages_total: dict[str, int]
    phases: list[tuple[str, int]]


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).is_file():
        raise RuntimeError("py-spy is not installed: pip install -e '.[bench]'")
    return found


async def profile_service(
    ctx: Context, *, workers: int, count: int, seconds: float, rate: int = 200
) -> Profile:
    run_id = f"prof{workers}-{uuid.uuid4().hex[:8]}"
    topic, dlq, group = f"{run_id}-requests", f"{run_id}-dlq", f"{run_id}-group"
    await create_topic(ctx.bootstrap, topic, ctx.partitions)
    await create_topic(ctx.bootstrap, dlq, 1)
    await produce_backlog(
        ctx.bootstrap, topic, run_id=run_id, count=count, partitions=ctx.partitions
    )
    sink = SmtpSink(ctx.work_dir, dump=False)
    raw = ctx.work_dir / f"py-spy-{run_id}.txt"
    service = ServiceProcess(
        ServiceConfig(ctx.bootstrap, topic, dlq, group, sink.port, workers, ctx.log_level),
        ctx.work_dir,
    )
    try:
        # Warm up: connections open, templates used, the backlog flowing.
        while await _sent(service, starting=True) < count * 0.1:
            service.check_alive()
            await asyncio.sleep(0.5)
        sent_before, cpu_before = await _sent(service), cpu_seconds(service.pid) or 0.0
        began = time.monotonic()
        command = [
            py_spy(),
            *("record", "--pid", str(service.pid), "--rate", str(rate)),
            *("--duration", str(int(seconds)), "--format", "raw"),
            *("--output", str(raw)),
        ]
        spy = await asyncio.to_thread(
            subprocess.run, command, capture_output=True, text=True, check=False
        )
        elapsed = time.monotonic() - began
        sent_after, cpu_after = await _sent(service), cpu_seconds(service.pid) or 0.0
        if spy.returncode != 0 or not raw.exists():
            raise RuntimeError(f"py-spy failed ({spy.returncode}): {spy.stderr.strip()[-800:]}")
        if sent_after >= count:
            ctx.say("        warning: the backlog ran out during profiling; raise --profile-count")
    finally:
        service.stop()
        sink.stop()
    emails = int(sent_after - sent_before)
    summary = summarise(raw.read_text(encoding="utf-8", errors="replace"))
    return Profile(
        workers=workers,
        samples=sum(count for _, count in summary.own),
        rate=rate,
        seconds=elapsed,
        emails=emails,
        throughput=emails / elapsed,
        cpu_ms_per_email=(cpu_after - cpu_before) * 1000 / max(emails, 1),
        own=summary.own,
        total=summary.total,
        packages=summary.packages,
        packages_total=summary.packages_total,
        phases=summary.phases,
    )


async def _sent(service: ServiceProcess, *, starting: bool = False) -> float:
    try:
        return metric(await asyncio.to_thread(service.metrics), "email_sent_total")
    except OSError:
        if starting:
            return 0.0  # not listening yet
        raise


@dataclass(frozen=True, slots=True)
class Summary:
    own: list[tuple[str, int]]
    """Samples whose innermost frame is this function, most first."""
    total: dict[str, int]
    """Samples with this function anywhere on the stack."""
    packages: list[tuple[str, int]]
    """Own samples by package (or by module, for the service's own code), most first."""
    packages_total: dict[str, int]
    """Samples with this package anywhere on the stack."""
    phases: list[tuple[str, int]]
    """Samples by phase of an email (see _PHASES), most first."""


def summarise(collapsed: str) -> Summary:
    """Own and inclusive samples by function and by package, from py-spy's raw output."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    packages_total: Counter[str] = Counter()
    phases: Counter[str] = Counter()
    for line in collapsed.splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack or not number.isdigit():
            continue
        count = int(number)
        frames = [_frame(frame) for frame in stack.split(";") if frame]
        if not frames or frames[-1][0] == _IDLE_EXECUTOR:
            continue
        name, package = frames[-1]
        own[name] += count
        packages[package] += count
        for seen in {name for name, _ in frames}:
            total[seen] += count
        for seen in {package for _, package in frames}:
            packages_total[seen] += count
        phases[_phase(frames)] += count
    return Summary(
        own.most_common(),
        dict(total),
        packages.most_common(),
        dict(packages_total),
        phases.most_common(),
    )


def _phase(frames: list[tuple[str, str]]) -> str:
    for label, functions, packages in _PHASES:
        for name, package in frames:
            if name.startswith(functions) or package in packages:
                return label
    return _OTHER_PHASE


def _frame(text: str) -> tuple[str, str]:
    """(``function (short/path.py)``, package) of one py-spy frame."""
    match = _FRAME.match(text.strip())
    if match is None:
        return text.strip(), "?"
    path = _short_path(match["file"])
    return f"{match['function']} ({path})", _package(path)


def _short_path(file: str) -> str:
    path = Path(file)
    parts = path.parts
    if "site-packages" in parts:  # first: the repo's .venv is inside the repo
        return "/".join(parts[parts.index("site-packages") + 1 :])
    for root in (REPO, _STDLIB):
        try:
            return str(path.resolve().relative_to(root))
        except ValueError:
            continue
    return file


def _package(short: str) -> str:
    parts = short.split("/")
    if parts[0] == "messaging_service":
        return short  # the service's own modules, one by one
    if len(parts) == 1:
        return f"stdlib: {parts[0]}" if short.endswith(".py") else short
    top = parts[0]
    stdlib = (_STDLIB / top).exists()
    return f"stdlib: {top}" if stdlib else top


def profile_markdown(profile: Profile, *, top: int = 25) -> str:
    """Two tables: functions by own time, and packages by own time, with µs per email."""
    total_samples = max(profile.samples, 1)

    def per_email(samples: int) -> float:
        return samples / total_samples * profile.cpu_ms_per_email * 1000

    lines = [
        f"py-spy, {profile.samples:,} on-CPU samples at {profile.rate} Hz over "
        f"{profile.seconds:.0f} s while the service ({profile.workers} workers, zero-latency "
        f"relay) sent {profile.emails:,} emails: {profile.throughput:,.0f} emails/s, "
        f"{profile.cpu_ms_per_email:.2f} ms CPU per email (py-spy attached). "
        "µs/email = share of samples times CPU per email.",
        "",
        "By phase of an email (a sample counts for the first phase found on its stack):",
        "",
        "| share | µs/email | phase |",
        "|---:|---:|---|",
        *(
            f"| {samples / total_samples:.1%} | {per_email(samples):.0f} | {label} |"
            for label, samples in profile.phases
        ),
        "",
        "Top functions by own time (the innermost frame of a sample):",
        "",
        "| own % | own µs/email | total % | function (file) |",
        "|---:|---:|---:|---|",
    ]
    for name, samples in profile.own[:top]:
        lines.append(
            f"| {samples / total_samples:.1%} | {per_email(samples):.0f} "
            f"| {profile.total.get(name, 0) / total_samples:.1%} | `{name}` |"
        )
    lines += [
        "",
        "By package (stdlib modules by their top-level name); total = the package is anywhere "
        "on the stack, so it includes what it calls:",
        "",
        "| own % | own µs/email | total % | total µs/email | package or module |",
        "|---:|---:|---:|---:|---|",
    ]
    for package, samples in profile.packages[:top]:
        inclusive = profile.packages_total.get(package, 0)
        lines.append(
            f"| {samples / total_samples:.1%} | {per_email(samples):.0f} "
            f"| {inclusive / total_samples:.1%} | {per_email(inclusive):.0f} | {package} |"
        )
    ranked = sorted(profile.total.items(), key=lambda item: item[1], reverse=True)
    service = [(n, s) for n, s in ranked if "(messaging_service/" in n][:15]
    if service:
        lines += ["", "The service's own functions by total (inclusive) time:", ""]
        lines += ["| total % | total µs/email | function (file) |", "|---:|---:|---|"]
        for name, samples in service:
            lines.append(f"| {samples / total_samples:.1%} | {per_email(samples):.0f} | `{name}` |")
    return "\n".join(lines) + "\n"
