"""The priority lane under a backlog: latency of priority requests, and what normal keeps.

One point, two runs on fresh topics, the service with a priority topic, 20 workers and the
50 ms delay sink:

- idle: 50 priority requests spread over 5 s reach a service with nothing else to do;
- burst: 20,000 normal requests wait; once the service sends at its steady rate, the same 50
  priority requests arrive spread over 5 s while the backlog drains;
- one lane: the burst again, to a service without ``KAFKA_PRIORITY_TOPIC`` (the requests go to
  the one topic, behind the backlog): what happens today.

Reported: p50/p99 of the priority requests (record timestamp to the sink's acceptance) in
both runs, and the normal lane's rate during the burst beside its rate just before it.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from .service import ServiceProcess
from .sinks import DelaySink
from .stage import Stage
from .workload import produce_backlog, produce_paced


@dataclass(frozen=True, slots=True)
class PriorityPlan:
    normal: int = 20_000
    priority: int = 50
    spread: float = 5.0
    """Seconds over which the priority requests arrive."""
    workers: int = 20
    delay: float = 0.05
    partitions: int = 4
    warm_up: int = 1_000
    """Normal emails accepted before the steady rate is measured."""
    before: float = 5.0
    """Seconds the normal rate is measured just before the burst."""


QUICK_PRIORITY = PriorityPlan(normal=2_000, priority=20, spread=2.0, warm_up=200, before=2.0)


@dataclass(frozen=True, slots=True)
class Latencies:
    p50: float
    p99: float
    worst: float


@dataclass(frozen=True, slots=True)
class PriorityResult:
    idle: Latencies
    burst: Latencies
    normal_before: float
    """Normal emails per second in the seconds before the burst."""
    normal_during: float
    """Normal emails per second from the first priority request to the last one's acceptance."""
    backlog_left: int
    """Normal requests still waiting when the burst began (one lane: all of them ahead)."""
    one_lane: Latencies | None = None
    """The same requests behind the same backlog, sent to a service without the lane."""

    @property
    def ratio(self) -> float:
        return self.burst.p99 / self.idle.p99 if self.idle.p99 else 0.0

    @property
    def normal_share(self) -> float:
        return self.normal_during / self.normal_before if self.normal_before else 0.0


def latencies(seconds: list[float]) -> Latencies:
    ordered = sorted(seconds)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return Latencies(p50=statistics.median(ordered), p99=p99, worst=ordered[-1])


class _Run:
    """A stage whose service has the priority lane on (``lanes``) or not."""

    def __init__(
        self, bootstrap: str, work_dir: Path, plan: PriorityPlan, run_id: str, *, lanes: bool = True
    ) -> None:
        self.bootstrap = bootstrap
        self.plan = plan
        self.run_id = run_id
        self.priority = f"{run_id}-priority"
        self.stage = Stage(
            bootstrap,
            work_dir,
            run_id,
            sink=DelaySink(work_dir, delay=plan.delay),
            workers=plan.workers,
            env={"KAFKA_PRIORITY_TOPIC": self.priority} if lanes else None,
            label="priority run",
        )
        self.sink = self.stage.sink
        self.topic = self.stage.topic
        # Without the lane (today's service), the "priority" requests go to the one topic.
        self.urgent_topic = self.priority if lanes else self.topic

    async def topics(self) -> None:
        await self.stage.create_topics(self.plan.partitions, self.priority)

    def start(self) -> ServiceProcess:
        return self.stage.start()

    def normal_accepted(self) -> int:
        prefix = f"{self.run_id}-n-"
        return sum(1 for a in self.sink.acceptances() if a.email_id.startswith(prefix))

    async def burst(self, service: ServiceProcess) -> dict[str, float]:
        """The priority requests, paced; returns each one's record timestamp by id."""
        plan = self.plan
        return await produce_paced(
            self.bootstrap,
            self.urgent_topic,
            run_id=f"{self.run_id}-p",
            count=plan.priority,
            rate=plan.priority / plan.spread,
            start=0,
        )

    async def wait_accepted(self, stamps: dict[str, float], service: ServiceProcess) -> list[float]:
        ids = set(stamps)

        def done() -> bool:
            self.sink.accepted()
            return ids <= {a.email_id for a in self.sink.acceptances()}

        await self.stage.until("every priority request accepted", done, limit=300, alive=service)
        found = {a.email_id: a.at for a in self.sink.acceptances() if a.email_id in ids}
        return [found[id_] - stamps[id_] for id_ in stamps]

    def stop(self) -> None:
        self.stage.close()  # the backlog is not drained: nothing else is measured here


async def measure_priority(
    bootstrap: str, work_dir: Path, plan: PriorityPlan, *, one_lane: bool = True
) -> PriorityResult:
    stamp = time.strftime("%H%M%S")
    idle = _Run(bootstrap, work_dir, plan, f"prio-idle-{stamp}")
    try:
        await idle.topics()
        service = idle.start()
        await asyncio.sleep(3)  # joined its group: Tansu's lowered timeouts
        await idle.stage.until("ready", lambda: _ready(service), limit=60, alive=service)
        stamps = await idle.burst(service)
        idle_latencies = latencies(await idle.wait_accepted(stamps, service))
    finally:
        idle.stop()

    loaded = _Run(bootstrap, work_dir, plan, f"prio-load-{stamp}")
    before, during, burst_latencies, backlog_left = await _behind_backlog(loaded)
    single = None
    if one_lane:
        alone = _Run(bootstrap, work_dir, plan, f"prio-one-{stamp}", lanes=False)
        single = (await _behind_backlog(alone))[2]
    return PriorityResult(
        idle=idle_latencies,
        burst=burst_latencies,
        normal_before=before,
        normal_during=during,
        backlog_left=backlog_left,
        one_lane=single,
    )


async def _behind_backlog(loaded: _Run) -> tuple[float, float, Latencies, int]:
    """Normal rate before and during the burst, the burst's latencies, the backlog left."""
    plan = loaded.plan
    bootstrap = loaded.bootstrap
    try:
        await loaded.topics()
        await produce_backlog(
            bootstrap,
            loaded.topic,
            run_id=f"{loaded.run_id}-n",
            count=plan.normal,
            partitions=plan.partitions,
        )
        service = loaded.start()
        await loaded.stage.until(
            "the warm-up", lambda: loaded.sink.accepted() >= plan.warm_up, limit=120, alive=service
        )
        first = loaded.normal_accepted()
        began = time.monotonic()
        await asyncio.sleep(plan.before)
        loaded.sink.accepted()
        before_count = loaded.normal_accepted()
        normal_before = (before_count - first) / (time.monotonic() - began)
        burst_began = time.monotonic()
        stamps = await loaded.burst(service)
        burst_latencies = latencies(await loaded.wait_accepted(stamps, service))
        during = loaded.normal_accepted() - before_count
        normal_during = during / (time.monotonic() - burst_began)
        backlog_left = plan.normal - before_count
    finally:
        loaded.stop()
    return normal_before, normal_during, burst_latencies, backlog_left


def _ready(service: ServiceProcess) -> bool:
    try:
        samples = service.metrics()
    except OSError:
        return False
    return any(
        key.startswith("email_assigned_partitions") and value > 0 for key, value in samples.items()
    )


def priority_markdown(plan: PriorityPlan, result: PriorityResult, *, machine_line: str) -> str:
    ms = 1000
    wait = result.backlog_left / result.normal_before if result.normal_before else 0.0
    lines = [
        f"{machine_line}",
        "",
        f"Embedded Tansu broker, {plan.partitions} partitions for `KAFKA_TOPIC` and 1 for "
        f"`KAFKA_PRIORITY_TOPIC`, {plan.workers} workers, `EMAIL_PRIORITY_SHARE` 0.9, the delay "
        f"sink answering after {plan.delay * ms:g} ms. {plan.priority} priority requests arrive "
        f"spread over {plan.spread:g} s, once to an idle service and once while "
        f"{plan.normal:,} normal requests wait (after {plan.warm_up:,} were sent); for "
        "comparison, once more behind the same backlog to a service without the priority lane "
        "(one topic: today's behaviour). Latency: record timestamp to the sink's acceptance; "
        "normal rate: acceptances per second.",
        "",
        "| priority requests | p50 | p99 | worst |",
        "|---|---:|---:|---:|",
        f"| idle service | {result.idle.p50 * ms:.0f} ms | {result.idle.p99 * ms:.0f} ms | "
        f"{result.idle.worst * ms:.0f} ms |",
        f"| behind {plan.normal:,} waiting | {result.burst.p50 * ms:.0f} ms | "
        f"{result.burst.p99 * ms:.0f} ms | {result.burst.worst * ms:.0f} ms |",
        "",
        f"- priority p99 behind the backlog: {result.ratio:.2f} times its idle p99 (target ≤ 2)",
        f"- normal lane: {result.normal_before:.0f} emails/s before the burst, "
        f"{result.normal_during:.0f}/s during it ({result.normal_share:.0%}; target ≥ 10 %)",
    ]
    single = result.one_lane
    if single is None:
        lines.append(
            f"- with one lane, the priority requests would have waited behind the "
            f"{result.backlog_left:,} normal requests left at the burst: about {wait:.0f} s at "
            "that rate (estimated, not measured)"
        )
    else:
        lines[8:8] = [
            f"| one lane (no `KAFKA_PRIORITY_TOPIC`), same backlog | {single.p50 * ms:,.0f} ms | "
            f"{single.p99 * ms:,.0f} ms | {single.worst * ms:,.0f} ms |"
        ]
    return "\n".join(lines)
