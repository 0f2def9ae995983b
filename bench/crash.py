"""Duplicates after ``kill -9``, with and without offset maps, on a real Apache Kafka.

One run: a backlog of requests, the 50 ms delay sink refusing every tenth request once (so it
waits for its retry and holds its partition's commit point back), the service with the
in-memory sent-id record; ``kill -9`` once about ``kill_after`` emails were accepted; a second
service sends the rest. Duplicates are acceptances beyond one per request, as a share of the
emails accepted before the kill. Runs with the map (``KAFKA_OFFSET_MAP_MAX_BYTES`` at its
default) and without (``0``) alternate, so both see the same machine.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from aiokafka import TopicPartition

from messaging_service.adapters.kafka_admin import admin_client
from messaging_service.core.offsetmap import OffsetMap, decode

from .service import metric
from .sinks import DelaySink
from .stage import Stage
from .workload import produce_backlog

MAP_DEFAULT = "3072"


@dataclass(frozen=True, slots=True)
class CrashPlan:
    requests: int = 2000
    workers: int = 10
    kill_after: int = 1000
    delay: float = 0.05
    fail_every: int = 10
    retry_delay: float = 3.0
    partitions: int = 4


@dataclass(frozen=True, slots=True)
class CrashResult:
    offset_map: bool
    sent_before: int
    committed_before: int
    mapped_before: int
    """Offsets the committed maps listed as finished at the kill."""
    duplicates: int
    skipped: int
    """email_skipped_finished_total of the restarted service."""
    seconds: float

    @property
    def share(self) -> float:
        return self.duplicates / self.sent_before if self.sent_before else 0.0


async def _committed(bootstrap: str, group: str, topic: str, partitions: int) -> tuple[int, int]:
    """The sum of committed offsets and how many offsets their maps list as finished."""
    async with admin_client(bootstrap) as admin:
        answer = await admin.list_consumer_group_offsets(
            group, partitions=[TopicPartition(topic, p) for p in range(partitions)]
        )
    total = mapped = 0
    for meta in answer.values():
        if meta.offset < 0:
            continue
        total += meta.offset
        found = decode(meta.metadata or "", committed=meta.offset)
        if isinstance(found, OffsetMap):
            mapped += found.count
    return total, mapped


async def measure_crash(
    bootstrap: str,
    work_dir: Path,
    plan: CrashPlan,
    *,
    offset_map: bool,
    run_id: str,
    env: Mapping[str, str] | None = None,
) -> CrashResult:
    stage = Stage(
        bootstrap,
        work_dir,
        run_id,
        sink=DelaySink(work_dir, delay=plan.delay, fail_every=plan.fail_every),
        workers=plan.workers,
        env={
            "EMAIL_RETRY_DELAYS": str(plan.retry_delay),
            "KAFKA_OFFSET_MAP_MAX_BYTES": MAP_DEFAULT if offset_map else "0",
            **(env or {}),
        },
        label="crash run",
    )
    sink, topic, group = stage.sink, stage.topic, stage.config.group
    try:
        await stage.create_topics(plan.partitions)
        await produce_backlog(
            bootstrap, topic, run_id=run_id, count=plan.requests, partitions=plan.partitions
        )
        began = time.monotonic()
        first = stage.start()
        await stage.until(
            f"{plan.kill_after} accepted",
            lambda: sink.accepted() >= plan.kill_after,
            limit=120,
            alive=first,
        )
        first.kill()
        await asyncio.sleep(0.5)  # the sink writes its log every 0.1 s
        sent_before = sink.accepted()
        committed_before, mapped_before = await _committed(bootstrap, group, topic, plan.partitions)
        second = stage.start()

        def all_sent() -> bool:
            sink.accepted()
            ids = {a.email_id for a in sink.acceptances()}
            return len(ids) >= plan.requests

        await stage.until("every request accepted", all_sent, limit=300, alive=second)
        while (await _committed(bootstrap, group, topic, plan.partitions))[0] < plan.requests:
            second.check_alive()
            await asyncio.sleep(0.2)
        skipped = int(
            metric(await asyncio.to_thread(second.metrics), "email_skipped_finished_total")
        )
        second.stop()
    finally:
        stage.close()
    counts = collections.Counter(a.email_id for a in sink.acceptances())
    return CrashResult(
        offset_map=offset_map,
        sent_before=sent_before,
        committed_before=committed_before,
        mapped_before=mapped_before,
        duplicates=sum(counts.values()) - len(counts),
        skipped=skipped,
        seconds=time.monotonic() - began,
    )


def crash_markdown(plan: CrashPlan, results: list[CrashResult], *, machine_line: str) -> str:
    lines = [
        f"Measured {machine_line}.",
        "",
        f"Apache Kafka 3.6.2 (`../shared/kafka`), {plan.partitions} partitions, "
        f"{plan.requests:,} requests, {plan.workers} workers, in-memory sent-id record, "
        f"the delay sink answering after {plan.delay * 1000:g} ms and refusing every "
        f"{plan.fail_every}th request once with `451`, retried after {plan.retry_delay:g} s; "
        f"`kill -9` once {plan.kill_after:,} emails were accepted, then a second service sends "
        "the rest. Duplicates are acceptances beyond one per request; their share is of the "
        "emails accepted before the kill.",
        "",
        "| run | offset map | sent before the kill | committed at the kill | in the maps at the "
        "kill | skipped after the restart | duplicates | share of sent before |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for index, result in enumerate(results, 1):
        lines.append(
            f"| {index} | {'on (3,072)' if result.offset_map else 'off (0)'} | "
            f"{result.sent_before:,} | {result.committed_before:,} | {result.mapped_before:,} | "
            f"{result.skipped:,} | {result.duplicates:,} | {result.share:.0%} |"
        )
    lines.append("")
    for flag, label in ((True, "with the map"), (False, "without it")):
        shares = [r.share for r in results if r.offset_map is flag]
        if shares:
            lines.append(
                f"- {label}: {min(shares):.0%} to {max(shares):.0%} "
                f"(mean {sum(shares) / len(shares):.0%}) over {len(shares)} runs"
            )
    return "\n".join(lines) + "\n"
