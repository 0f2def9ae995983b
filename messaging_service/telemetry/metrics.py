"""Prometheus metrics on an injected registry; gauges of live state are read at scrape time."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from messaging_service.core.lanes import Lane

# Relay round trips: sub-millisecond local sinks up to slow, throttled relays.
_SEND_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# Record timestamp to final outcome: includes queueing and retry waits (1 s, 5 s, 10 s).
_E2E_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 900)

_PREFIX = "email_"
_LANE = ("lane",)

_Labels = tuple[str, ...]
_Buckets = tuple[float, ...]


@dataclass(frozen=True, slots=True)
class LiveState:
    """Callables that report current values; evaluated only when Prometheus scrapes."""

    pool: Callable[[], Mapping[str, int]]
    """size, queued, running, completed, failed, panicked"""
    retry_waiting: Callable[[], int]
    in_flight: Callable[[], int]
    uncommitted_finished: Callable[[], int]
    assigned_partitions: Callable[[], int]
    health: Callable[[], Mapping[str, bool]]
    circuit_open: Callable[[], bool] = lambda: False
    circuit_opened: Callable[[], int] = lambda: 0
    parked: Callable[[], int] = lambda: 0
    rate_limit: Callable[[], float | None] = lambda: None
    stalled_seconds: Callable[[], float] = lambda: 0.0
    """seconds requests have waited with none finishing (the liveness watchdog's measure)"""
    oldest_unfinished: Callable[[], Mapping[tuple[str, int], float]] = dict
    """per (topic, partition): seconds since its oldest unfinished request was admitted"""
    offset_map_left_out: Callable[[], int] = lambda: 0
    """finished offsets above the commit point that the last commit's offset map left out"""


@dataclass(frozen=True, slots=True)
class _Declare:
    """Makes the service's metrics on one registry: a name without the prefix, help, labels."""

    registry: CollectorRegistry

    def counter(self, name: str, documentation: str, *, labels: _Labels = ()) -> Counter:
        return Counter(_PREFIX + name, documentation, labels, registry=self.registry)

    def histogram(
        self, name: str, documentation: str, *, labels: _Labels = (), buckets: _Buckets
    ) -> Histogram:
        return Histogram(
            _PREFIX + name, documentation, labels, buckets=buckets, registry=self.registry
        )


class Metrics:
    """Every metric the service exports. Construct once per registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        new = _Declare(registry)
        self._outcomes(new)
        self._stores(new)
        self._kafka(new)
        self._timings(new)
        # By lane: priority (KAFKA_PRIORITY_TOPIC) or normal (KAFKA_TOPIC; every request when
        # there is no priority lane). The children are bound once: no label look-up per email.
        self.consumed_by_lane = {lane: self.consumed.labels(lane.value) for lane in Lane}
        self.sent_by_lane = {lane: self.sent.labels(lane.value) for lane in Lane}
        self.retries_by_lane = {lane: self.retries.labels(lane.value) for lane in Lane}

    def _outcomes(self, new: _Declare) -> None:
        """What happened to requests and attempts."""
        self.consumed = new.counter(
            "requests_consumed", "Requests read from the topics, by lane.", labels=_LANE
        )
        self.sent = new.counter("sent", "Emails accepted by the relay, by lane.", labels=_LANE)
        self.dead_letters = new.counter(
            "dead_letters",
            "Requests published to the dead-letter topic, by reason and lane.",
            labels=("reason", "lane"),
        )
        self.retries = new.counter(
            "retries",
            "Transient SMTP failures that were scheduled for another attempt, by lane.",
            labels=_LANE,
        )
        self.recipients_refused = new.counter(
            "recipients_refused",
            "Recipients the relay refused while accepting the message for others.",
        )
        self.send_errors = new.counter(
            "send_errors",
            "Failed SMTP attempts, by kind (transient, unavailable or rejected).",
            labels=("kind",),
        )
        self.dead_letter_publish_failures = new.counter(
            "dead_letter_publish_failures",
            "Attempts to write the dead-letter topic that failed (they are retried).",
        )
        self.throttled = new.counter(
            "throttled",
            "Throttling replies from the relay (421, 450, 451, 452, 454); each may cut the rate.",
        )
        self.duplicates_skipped = new.counter(
            "duplicates_skipped",
            "Redelivered requests whose id was already sent; finished without sending.",
        )
        self.skipped_finished = new.counter(
            "skipped_finished",
            "Redelivered records the last commit's offset map lists as finished; finished at "
            "once without processing.",
        )
        self.unexpected_errors = new.counter(
            "unexpected_errors",
            "Exceptions no adapter translated (bugs); the request is retried, then dead-lettered.",
        )

    def _stores(self, new: _Declare) -> None:
        """The sent-id record, outcome events and the suppression list."""
        self.dedup_unavailable = new.counter(
            "dedup_unavailable",
            "Sent-id store operations that failed (seen, claim, release or record); sending went "
            "on regardless.",
            labels=("operation",),
        )
        self.claim_waits = new.counter(
            "claim_waits",
            "Attempts put off because another sender held the claim on the request's id.",
        )
        self.events_published = new.counter(
            "events_published",
            "Outcome events the broker acknowledged on KAFKA_EVENTS_TOPIC, by type.",
            labels=("type",),
        )
        self.event_publish_failures = new.counter(
            "event_publish_failures",
            "Attempts to write the events topic that failed (final events are retried).",
        )
        self.suppressed = new.counter(
            "suppressed",
            "Requests finished without an SMTP attempt: every recipient was suppressed.",
        )
        self.recipients_suppressed = new.counter(
            "recipients_suppressed",
            "Recipients dropped before sending because they are on the suppression list.",
        )
        self.suppressions_added = new.counter(
            "suppressions_added",
            "Addresses put on the suppression list after a hard bounce at RCPT.",
        )
        self.suppression_unavailable = new.counter(
            "suppression_unavailable",
            "Suppression-list operations that failed (check or add); sending went on regardless.",
            labels=("operation",),
        )

    def _kafka(self, new: _Declare) -> None:
        """Offsets, commits, revocations and partition resets."""
        self.commits = new.counter("offset_commits", "Successful offset commits.")
        self.commit_failures = new.counter("offset_commit_failures", "Offset commits that failed.")
        self.revocations = new.counter(
            "partition_revocations",
            "Revocations of partitions, by whether their queued and running requests finished "
            "within KAFKA_REVOCATION_TIMEOUT_MS (complete) or not (timed_out).",
            labels=("result",),
        )
        self.revoked_released = new.counter(
            "revoked_requests_released",
            "Unfinished requests of revoked partitions left to the new owner, by state "
            "(retry_waiting, or unfinished when the revocation timed out).",
            labels=("state",),
        )
        self.partition_resets = new.counter(
            "partition_resets",
            "Partitions whose bookkeeping was started again, by reason: offset_rewound (Kafka "
            "delivered an offset at or below one already tracked) or not_assigned (the consumer "
            "no longer owns it).",
            labels=("reason",),
        )

    def _timings(self, new: _Declare) -> None:
        """Durations: one SMTP attempt, and record to outcome."""
        self.send_duration = new.histogram(
            "send_duration_seconds", "Duration of one SMTP attempt.", buckets=_SEND_BUCKETS
        )
        self.end_to_end = new.histogram(
            "end_to_end_duration_seconds",
            "From the Kafka record's timestamp to the request's final outcome, by lane.",
            labels=("outcome", "lane"),
            buckets=_E2E_BUCKETS,
        )

    def watch(self, state: LiveState) -> None:
        """Export live gauges (pool, queue, offsets, health) read at scrape time."""
        self.registry.register(_LiveCollector(state))


class _LiveCollector(Collector):
    def __init__(self, state: LiveState) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        yield from self._pool()
        yield from self._offsets()
        yield from self._relay()
        yield from self._health()

    def _pool(self) -> Iterator[Metric]:
        pool = self._state.pool()
        for field in ("completed", "failed", "panicked"):
            yield _counter(f"pool_jobs_{field}", f"Worker pool jobs {field}.", pool[field])
        yield _gauge("worker_pool_size", "Workers in the pool.", pool["size"])
        yield _gauge("workers_busy", "Workers running a request now.", pool["running"])
        queue = GaugeMetricFamily(
            _PREFIX + "queue_depth",
            "Requests queued in front of the workers, by lane.",
            labels=["lane"],
        )
        queue.add_metric([Lane.NORMAL.value], pool["queued"] - pool.get("queued_priority", 0))
        queue.add_metric([Lane.PRIORITY.value], pool.get("queued_priority", 0))
        yield queue
        yield _gauge(
            "retry_waiting", "Requests waiting for their next retry.", self._state.retry_waiting()
        )

    def _offsets(self) -> Iterator[Metric]:
        yield _gauge(
            "in_flight_requests",
            "Requests consumed and not yet finished (queued, running or waiting).",
            self._state.in_flight(),
        )
        yield _gauge(
            "uncommitted_finished_offsets",
            "Finished requests whose offsets are not committed yet.",
            self._state.uncommitted_finished(),
        )
        yield _gauge(
            "offset_map_left_out",
            "Finished offsets above the commit point that did not fit in the last commit's "
            "offset map (KAFKA_OFFSET_MAP_MAX_BYTES): sent again after a crash.",
            self._state.offset_map_left_out(),
        )
        yield _gauge(
            "assigned_partitions",
            "Partitions of the requests topic assigned to this process.",
            self._state.assigned_partitions(),
        )
        oldest = GaugeMetricFamily(
            _PREFIX + "oldest_unfinished_seconds",
            "Seconds since the oldest unfinished request of each assigned partition was "
            "admitted (0 when none is unfinished); its offset holds the partition's commits.",
            labels=["topic", "partition"],
        )
        for (topic, partition), seconds in sorted(self._state.oldest_unfinished().items()):
            oldest.add_metric([topic, str(partition)], seconds)
        yield oldest

    def _relay(self) -> Iterator[Metric]:
        yield _gauge(
            "smtp_circuit_open",
            "1 while the relay circuit is open: sends stopped, consumption paused, probing.",
            1.0 if self._state.circuit_open() else 0.0,
        )
        yield _counter(
            "smtp_circuit_opened", "Times the relay circuit opened.", self._state.circuit_opened()
        )
        yield _gauge(
            "parked_requests",
            "Requests held while the relay circuit is open (no attempt spent).",
            self._state.parked(),
        )
        rate = self._state.rate_limit()
        yield _gauge(
            "send_rate_limit",
            "Emails per second the service allows itself now (+Inf: no limit); cut on throttling.",
            math.inf if rate is None else rate,
        )

    def _health(self) -> Iterator[Metric]:
        yield _gauge(
            "seconds_since_progress",
            "Seconds requests have waited for a worker with none finishing (0 when none waits "
            "or the circuit is open); /healthz fails past WATCHDOG_TIMEOUT.",
            self._state.stalled_seconds(),
        )
        ready = GaugeMetricFamily(
            _PREFIX + "readiness_check", "1 when the readiness check passes.", labels=["check"]
        )
        for check, ok in self._state.health().items():
            ready.add_metric([check], 1.0 if ok else 0.0)
        yield ready


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(_PREFIX + name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(_PREFIX + name, documentation, value=value)
