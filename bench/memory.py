"""Memory with a huge backlog: a million requests waiting, 100 workers, peak RSS of the service.

The bounded buffer and in-flight limit should keep the service's memory flat however long the
topic is; this produces the backlog first (seconds, with whole record batches), then lets the
service work through the first part of it against smtp-sink while its RSS is sampled.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field

from support.kafka import create_topic

from .meter import ProcessMeter
from .runner import Context
from .service import ServiceConfig, ServiceProcess, metric
from .sinks import SmtpSink
from .workload import produce_backlog

_SCRAPE_EVERY = 2.0
_REPORT_EVERY = 10.0


@dataclass(slots=True)
class MemoryResult:
    requests: int
    workers: int
    processed: int
    produce_seconds: float
    process_seconds: float
    throughput: float
    peak_rss_mb: float
    rss_mb_at: list[tuple[int, float]] = field(default_factory=list)
    """(emails sent so far, current RSS in MB) at each scrape."""
    exit_code: int | None = None


async def measure_memory(
    ctx: Context, *, requests: int, workers: int, process: int, limit: float
) -> MemoryResult:
    run_id = f"mem{workers}-{uuid.uuid4().hex[:8]}"
    topic, dlq, group = f"{run_id}-requests", f"{run_id}-dlq", f"{run_id}-group"
    await create_topic(ctx.bootstrap, topic, ctx.partitions)
    await create_topic(ctx.bootstrap, dlq, 1)
    ctx.say(f"        producing {requests:,} requests to {topic}")
    produced = await produce_backlog(
        ctx.bootstrap, topic, run_id=run_id, count=requests, partitions=ctx.partitions
    )
    ctx.say(f"        {requests:,} requests waiting ({produced.seconds:.1f} s to produce)")
    sink = SmtpSink(ctx.work_dir, dump=False)
    service = ServiceProcess(
        ServiceConfig(ctx.bootstrap, topic, dlq, group, sink.port, workers, ctx.log_level),
        ctx.work_dir,
    )
    meter = ProcessMeter(service.pid, interval=0.5)
    sampling = asyncio.create_task(meter.run())
    began = time.monotonic()
    result = MemoryResult(
        requests=requests,
        workers=workers,
        processed=0,
        produce_seconds=produced.seconds,
        process_seconds=0.0,
        throughput=0.0,
        peak_rss_mb=0.0,
    )
    try:
        next_report = began + _REPORT_EVERY
        sent = 0.0
        while sent < process:
            service.check_alive()
            if time.monotonic() - began > limit:
                raise TimeoutError(f"{sent:.0f} of {process} emails sent in {limit:.0f} s")
            await asyncio.sleep(_SCRAPE_EVERY)
            try:
                sent = metric(await asyncio.to_thread(service.metrics), "email_sent_total")
            except OSError:
                continue  # not listening yet
            reading = meter.sample()
            if reading is not None:
                result.rss_mb_at.append((int(sent), reading.rss / 2**20))
            if time.monotonic() >= next_report:
                next_report += _REPORT_EVERY
                ctx.say(
                    f"        {sent:,.0f} sent, RSS {meter.samples[-1].rss / 2**20:.0f} MB "
                    f"(peak {meter.peak_rss / 2**20:.0f} MB)"
                )
        meter.sample()
        result.processed = int(sent)
        result.process_seconds = time.monotonic() - began
        result.throughput = sent / result.process_seconds
        result.peak_rss_mb = meter.peak_rss / 2**20
    finally:
        sampling.cancel()
        result.exit_code = service.stop()
        sink.stop()
    return result


def memory_markdown(result: MemoryResult, *, machine_line: str) -> str:
    milestones = _milestones(result)
    lines = [
        f"Measured {machine_line}.",
        "",
        f"{result.requests:,} requests waiting in the topic, {result.workers} workers, "
        f"zero-latency relay (smtp-sink); the service sent the first {result.processed:,} of "
        f"them in {result.process_seconds:.0f} s ({result.throughput:,.0f} emails/s). "
        f"Producing the backlog took {result.produce_seconds:.0f} s.",
        "",
        f"**Peak RSS of the service: {result.peak_rss_mb:.0f} MB** (the kernel's high-water "
        "mark, VmHWM). RSS as the run went on:",
        "",
        "| emails sent | RSS MB |",
        "|---:|---:|",
        *(f"| {sent:,} | {rss:.0f} |" for sent, rss in milestones),
    ]
    return "\n".join(lines) + "\n"


def _milestones(result: MemoryResult, count: int = 8) -> list[tuple[int, float]]:
    readings = result.rss_mb_at
    if len(readings) <= count:
        return readings
    step = (len(readings) - 1) / (count - 1)
    return [readings[round(i * step)] for i in range(count)]
