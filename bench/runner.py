"""Measuring one point: the service (or the plain loop) against one sink, start to finish."""

from __future__ import annotations

import asyncio
import contextlib
import math
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from support.kafka import create_topic

from .meter import ProcessMeter
from .service import ServiceConfig, ServiceProcess, metric
from .sinks import HOST, Acceptance, DelaySink, Sink, SmtpSink
from .tools import REPO
from .workload import produce_backlog, produce_paced

Program = Literal["service", "plain"]
TargetKind = Literal["latency", "zero"]

# The throughput window: the first and the last 10 % of a backlog's emails are left out, so
# start-up (connections, first fetches) and the tail (workers running dry) do not count.
WARMUP_SHARE = 0.1
TAIL_SHARE = 0.1


@dataclass(frozen=True, slots=True)
class Target:
    kind: TargetKind
    delay: float = 0.0
    jitter: float = 0.0
    """Latency-bound only: each delay is drawn from delay * (1 ± jitter); the mean stays."""
    fail_share: float = 0.0
    """Latency-bound only: this share of messages is refused once with a 451."""

    @property
    def label(self) -> str:
        if self.kind == "zero":
            return "zero-latency (smtp-sink)"
        spread = f" ± {self.jitter:.0%}" if self.jitter else ""
        failing = f", {self.fail_share:.0%} fail once" if self.fail_share else ""
        return f"latency-bound ({self.delay * 1000:g} ms{spread}{failing})"

    def ideal(self, workers: int) -> float | None:
        """Emails/s with no cost but the relay's delay: workers / delay."""
        return workers / self.delay if self.kind == "latency" else None

    def start(self, work_dir: Path) -> Sink:
        if self.kind == "zero":
            return SmtpSink(work_dir)
        return DelaySink(work_dir, delay=self.delay, jitter=self.jitter, fail_share=self.fail_share)


@dataclass(frozen=True, slots=True)
class Variant:
    """What the emails of a content point carry, and the service settings they need."""

    name: str = ""
    attachment_bytes: int = 0
    env: tuple[tuple[str, str], ...] = ()


PLAIN_CONTENT = Variant()


@dataclass(slots=True)
class Point:
    """What one program achieved against one target at one concurrency."""

    program: Program
    target: TargetKind
    workers: int
    emails: int
    throughput: float
    """Emails/s accepted by the sink inside the window."""
    cpu_ms_per_email: float
    """The program's user + system CPU inside the window, per email accepted in it."""
    peak_rss_mb: float
    window_emails: int
    window_seconds: float
    wall_seconds: float
    ideal: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    latency_samples: int = 0
    latency_rate: float = 0.0
    sink_cpu_ms_per_email: float = 0.0
    broker_cpu_ms_per_email: float | None = None
    series: str = "sweep"
    """"sweep" (the tables and chart), or "failures" (the side-by-side transient-failure pair)."""
    fail_share: float = 0.0
    retries: int = 0
    """Retries the service scheduled (``email_retries_total``), backlog and paced phase."""
    variant: str = ""
    """The content variant ("content" series): attachment, DKIM; empty for the sweep."""
    problems: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Context:
    """What every point of one run shares."""

    bootstrap: str
    broker_pid: int | None
    work_dir: Path
    partitions: int
    log_level: str
    latency_seconds: float
    latency_min: int
    say: Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Window:
    emails: int
    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @property
    def rate(self) -> float:
        return self.emails / self.seconds if self.seconds > 0 else 0.0


def window(times: list[float]) -> Window:
    """The steady part of a sorted list of acceptance times (see WARMUP_SHARE, TAIL_SHARE)."""
    count = len(times)
    if count < 2:
        raise ValueError(f"{count} acceptances are too few to measure a rate")
    first = int(count * WARMUP_SHARE)
    last = max(first + 1, math.ceil(count * (1 - TAIL_SHARE)) - 1)
    return Window(emails=last - first, start=times[first], end=times[last])


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    rank = max(0, math.ceil(share * len(ordered)) - 1)
    return ordered[rank]


@contextlib.asynccontextmanager
async def metered(*pids: int | None) -> AsyncIterator[list[ProcessMeter | None]]:
    """Sample each process (None: skip) every 0.1 s while the block runs."""
    meters = [ProcessMeter(pid) if pid is not None else None for pid in pids]
    tasks = [asyncio.create_task(m.run()) for m in meters if m is not None]
    try:
        yield meters
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def wait_for_count(
    sink: Sink,
    count: int,
    *,
    limit: float,
    alive: Callable[[], None],
    interval: float = 0.25,
) -> None:
    """Until the sink accepted ``count`` emails; ``alive`` raises if the sender died."""
    deadline = time.monotonic() + limit
    while True:
        accepted = sink.accepted()
        if accepted >= count:
            return
        alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"the sink accepted {accepted} of {count} emails in {limit:.0f} s")
        await asyncio.sleep(interval)


def _run_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _cpu_per_email(meter: ProcessMeter | None, win: Window) -> float:
    if meter is None or not meter.samples:
        return 0.0
    return meter.cpu_between(win.start, win.end) * 1000 / win.emails


def _point(
    program: Program,
    target: Target,
    *,
    workers: int,
    emails: int,
    win: Window,
    own: ProcessMeter,
    sink_meter: ProcessMeter | None,
    wall: float,
    **extra: Any,
) -> Point:
    """What every point measures the same way, whichever program sent the emails."""
    return Point(
        program=program,
        target=target.kind,
        workers=workers,
        emails=emails,
        throughput=win.rate,
        cpu_ms_per_email=_cpu_per_email(own, win),
        peak_rss_mb=own.peak_rss / 2**20,
        window_emails=win.emails,
        window_seconds=win.seconds,
        wall_seconds=wall,
        ideal=target.ideal(workers),
        sink_cpu_ms_per_email=_cpu_per_email(sink_meter, win),
        **extra,
    )


async def measure_service(
    ctx: Context,
    target: Target,
    *,
    workers: int,
    count: int,
    limit: float,
    series: str = "sweep",
    variant: Variant = PLAIN_CONTENT,
) -> Point:
    """Backlog first, then the service: throughput and CPU; then a paced phase for latency."""
    run_id = _run_id(f"svc{workers}")
    topic, dlq, group = f"{run_id}-requests", f"{run_id}-dlq", f"{run_id}-group"
    await create_topic(ctx.bootstrap, topic, ctx.partitions)
    await create_topic(ctx.bootstrap, dlq, 1)
    produced = await produce_backlog(
        ctx.bootstrap,
        topic,
        run_id=run_id,
        count=count,
        partitions=ctx.partitions,
        attachment_bytes=variant.attachment_bytes,
    )
    ctx.say(f"        {count:,} requests waiting in {topic} ({produced.seconds:.1f} s to produce)")
    began = time.monotonic()
    sink = target.start(ctx.work_dir)
    service: ServiceProcess | None = None
    try:
        config = ServiceConfig(
            bootstrap=ctx.bootstrap,
            topic=topic,
            dlq_topic=dlq,
            group=group,
            smtp_port=sink.port,
            workers=workers,
            log_level=ctx.log_level,
            extra_env=variant.env,
        )
        service = ServiceProcess(config, ctx.work_dir)
        async with metered(service.pid, sink.pid, ctx.broker_pid) as meters:
            own, sink_meter, broker_meter = meters
            await wait_for_count(sink, count, limit=limit, alive=service.check_alive)
            backlog = sink.acceptances()
            win = window([a.at for a in backlog])
            rate = max(win.rate * 0.5, 1.0)
            extra = max(ctx.latency_min, int(rate * ctx.latency_seconds))
            paced_from = time.time()
            stamps = await produce_paced(
                ctx.bootstrap,
                topic,
                run_id=run_id,
                count=extra,
                rate=rate,
                start=count,
                attachment_bytes=variant.attachment_bytes,
            )
            await wait_for_count(sink, count + extra, limit=limit, alive=service.check_alive)
            assert own is not None
            own.sample()
            samples = await asyncio.to_thread(service.metrics)
            paced = sink.acceptances(ids_since=paced_from - 1)
        wall = time.monotonic() - began
        code = service.stop()
    finally:
        if service is not None:
            service.kill()
        sink.stop()
    latencies = _latencies(paced, stamps)
    point = _point(
        "service",
        target,
        workers=workers,
        emails=count,
        win=win,
        own=own,
        sink_meter=sink_meter,
        wall=wall,
        latency_samples=len(latencies),
        latency_rate=rate,
        broker_cpu_ms_per_email=_cpu_per_email(broker_meter, win) if broker_meter else None,
        series=series,
        fail_share=target.fail_share,
        retries=int(metric(samples, "email_retries_total")),
        variant=variant.name,
    )
    if latencies:
        point.p50_ms = percentile(latencies, 0.50) * 1000
        point.p99_ms = percentile(latencies, 0.99) * 1000
    if len(latencies) < extra:
        point.problems.append(f"latency: {len(latencies)} of {extra} paced emails matched")
    sent = metric(samples, "email_sent_total")
    if sent != count + extra:
        point.problems.append(f"email_sent_total is {sent:.0f}, expected {count + extra}")
    dead = sum(v for k, v in samples.items() if k.startswith("email_dead_letters_total"))
    if dead:
        point.problems.append(f"{dead:.0f} dead letters")
    if code != 0:
        point.problems.append(f"the service exited with {code}")
    return point


def _latencies(accepted: list[Acceptance], stamps: dict[str, float]) -> list[float]:
    return [a.at - stamps[a.email_id] for a in accepted if a.email_id in stamps]


async def measure_plain(
    ctx: Context, target: Target, *, concurrency: int, count: int, limit: float
) -> Point:
    """The hand-written loop (``bench.plain``) in its own process, against a fresh sink."""
    run_id = _run_id(f"plain{concurrency}")
    began = time.monotonic()
    sink = target.start(ctx.work_dir)
    log_path = ctx.work_dir / f"plain-{concurrency}-{run_id}.log"
    try:
        with log_path.open("ab") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.plain",
                *("--host", HOST, "--port", str(sink.port)),
                *("--concurrency", str(concurrency), "--count", str(count)),
                *("--run-id", run_id),
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

        def alive() -> None:
            if process.returncode not in (None, 0):
                tail = log_path.read_text(errors="replace").splitlines()[-10:]
                raise RuntimeError(f"the plain loop exited with {process.returncode}: {tail}")

        try:
            async with metered(process.pid, sink.pid) as meters:
                own, sink_meter = meters
                await wait_for_count(sink, count, limit=limit, alive=alive)
                accepted = sink.acceptances()
                async with asyncio.timeout(30):
                    code = await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    finally:
        sink.stop()
    wall = time.monotonic() - began
    win = window([a.at for a in accepted])
    assert own is not None
    point = _point(
        "plain",
        target,
        workers=concurrency,
        emails=count,
        win=win,
        own=own,
        sink_meter=sink_meter,
        wall=wall,
    )
    if code != 0:
        point.problems.append(f"the plain loop exited with {code}")
    return point


def describe(point: Point) -> str:
    """One progress line for a finished point."""
    parts = [
        f"{point.throughput:,.0f} emails/s",
        f"{point.cpu_ms_per_email:.2f} ms CPU/email",
        f"peak RSS {point.peak_rss_mb:.0f} MB",
    ]
    if point.ideal:
        parts.insert(1, f"{point.throughput / point.ideal:.0%} of ideal {point.ideal:,.0f}")
    if point.p50_ms is not None and point.p99_ms is not None:
        parts.append(f"latency p50 {point.p50_ms:.0f} ms p99 {point.p99_ms:.0f} ms")
    parts.append(f"{point.wall_seconds:.0f} s")
    text = ", ".join(parts)
    if point.problems:
        text += " — " + "; ".join(point.problems)
    return text


def steps(total: int) -> Iterator[str]:
    """``[ 1/12]``, ``[ 2/12]``, ... for progress lines."""
    width = len(str(total))
    for number in range(1, total + 1):
        yield f"[{number:>{width}}/{total}]"


Measure = Callable[[], Awaitable[Point]]
