"""Metrics of ``run --processes``: children write them to files, the supervisor sums them.

prometheus-client's multiprocess mode keeps every counter and histogram of every child in
memory-mapped files of one directory (fresh per supervisor start); a dead child's files stay, so
its counts keep adding to the totals. The live gauges a single process computes at scrape time
are copied by each child into multiprocess gauges at a short interval and at exit, each with the
mode that makes the sum right for the whole: ``livesum`` for amounts, ``livemax`` for ages and
``livemin`` for readiness (ready only if every child is); a dead child's gauges are dropped
(``mark_process_dead``).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from messaging_service.core.lanes import Lane
from messaging_service.telemetry.metrics import LiveState

log = structlog.get_logger(__name__)

_PREFIX = "email_"
_SUMS = (
    "worker_pool_size",
    "workers_busy",
    "retry_waiting",
    "in_flight_requests",
    "uncommitted_finished_offsets",
    "offset_map_left_out",
    "assigned_partitions",
    "parked_requests",
    "send_rate_limit",
)


class LiveMirror:
    """A child's live state as multiprocess metrics (registered nowhere: the files are read)."""

    def __init__(self, state: LiveState) -> None:
        self._state = state
        self._gauges = {
            name: Gauge(_PREFIX + name, name, multiprocess_mode="livesum") for name in _SUMS
        }
        self._queue = Gauge(_PREFIX + "queue_depth", "queue", ["lane"], multiprocess_mode="livesum")
        self._circuit_open = Gauge(
            _PREFIX + "smtp_circuit_open", "circuit", multiprocess_mode="livemax"
        )
        self._stalled = Gauge(
            _PREFIX + "seconds_since_progress", "stalled", multiprocess_mode="livemax"
        )
        self._oldest = Gauge(
            _PREFIX + "oldest_unfinished_seconds",
            "oldest",
            ["topic", "partition"],
            multiprocess_mode="livemax",
        )
        self._ready = Gauge(
            _PREFIX + "readiness_check", "ready", ["check"], multiprocess_mode="livemin"
        )
        self._counters = {
            name: Counter(_PREFIX + name, name)
            for name in (
                "smtp_circuit_opened",
                "pool_jobs_completed",
                "pool_jobs_failed",
                "pool_jobs_panicked",
            )
        }
        self._counted = dict.fromkeys(self._counters, 0.0)
        self._partitions: set[tuple[str, str]] = set()

    def update(self) -> None:
        state = self._state
        pool = state.pool()
        rate = state.rate_limit()
        values = {
            "worker_pool_size": pool["size"],
            "workers_busy": pool["running"],
            "retry_waiting": state.retry_waiting(),
            "in_flight_requests": state.in_flight(),
            "uncommitted_finished_offsets": state.uncommitted_finished(),
            "offset_map_left_out": state.offset_map_left_out(),
            "assigned_partitions": state.assigned_partitions(),
            "parked_requests": state.parked(),
            "send_rate_limit": math.inf if rate is None else rate,
        }
        for name, value in values.items():
            self._gauges[name].set(value)
        priority = pool.get("queued_priority", 0)
        self._queue.labels(Lane.NORMAL.value).set(pool["queued"] - priority)
        self._queue.labels(Lane.PRIORITY.value).set(priority)
        self._circuit_open.set(1.0 if state.circuit_open() else 0.0)
        self._stalled.set(state.stalled_seconds())
        for check, ok in state.health().items():
            self._ready.labels(check).set(1.0 if ok else 0.0)
        self._update_oldest(state.oldest_unfinished())
        self._update_counters(
            {
                "smtp_circuit_opened": state.circuit_opened(),
                "pool_jobs_completed": pool["completed"],
                "pool_jobs_failed": pool["failed"],
                "pool_jobs_panicked": pool["panicked"],
            }
        )

    def _update_oldest(self, oldest: Mapping[tuple[str, int], float]) -> None:
        current = {(topic, str(partition)): age for (topic, partition), age in oldest.items()}
        # Multiprocess mode cannot remove a label set: a partition this child no longer owns
        # reads 0 ("none unfinished"), and the owner's age wins the max.
        for gone in self._partitions - current.keys():
            self._oldest.labels(*gone).set(0.0)
        for labels, age in current.items():
            self._oldest.labels(*labels).set(age)
        self._partitions |= current.keys()

    def _update_counters(self, totals: dict[str, int]) -> None:
        for name, total in totals.items():
            delta = total - self._counted[name]
            if delta > 0:
                self._counters[name].inc(delta)
                self._counted[name] = total

    async def run(self, interval: float) -> None:
        """Copy the live state every ``interval`` seconds, and once more when cancelled."""
        try:
            while True:
                self._update_logged()
                await asyncio.sleep(interval)
        finally:
            self._update_logged()

    def _update_logged(self) -> None:
        try:
            self.update()
        except Exception:  # a bug: the copy must go on, the service too
            log.exception("metrics_copy_failed")


def aggregate_registry(metrics_dir: Path, *extra: Collector) -> CollectorRegistry:
    """The supervisor's registry: every child's metrics summed, plus its own collectors."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(metrics_dir))  # type: ignore[no-untyped-call]
    for collector in extra:
        registry.register(collector)
    return registry


def forget_process(metrics_dir: Path, pid: int) -> None:
    """Drop a dead child's live gauges; its counters and histograms keep counting."""
    mark_process_dead(pid, str(metrics_dir))  # type: ignore[no-untyped-call]


class SupervisorCollector(Collector):
    """The supervisor's own metrics: children wanted, running, and restarts per child."""

    def __init__(
        self, *, wanted: int, running: Callable[[], int], restarts: Callable[[], list[int]]
    ) -> None:
        self._wanted = wanted
        self._running = running
        self._restarts = restarts

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            _PREFIX + "service_processes", "Service processes wanted (--processes).", self._wanted
        )
        yield GaugeMetricFamily(
            _PREFIX + "service_processes_running",
            "Service processes running now.",
            self._running(),
        )
        restarts = CounterMetricFamily(
            _PREFIX + "service_process_restarts",
            "Service processes restarted after they exited, by child index.",
            labels=["child"],
        )
        for index, count in enumerate(self._restarts()):
            restarts.add_metric([str(index)], count)
        yield restarts
