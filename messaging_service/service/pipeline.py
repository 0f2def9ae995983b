"""The consumer loop: admit records under backpressure, hand them to workers, commit safely.

Every record is tracked before it is handed to a worker and finished only when its outcome is
final (``lifecycle.py`` owns that part), so the committed offset of a partition never passes a
request that is still pending, whether it is queued, being sent, waiting for a retry, parked
for the relay, or waiting for the dead-letter topic.

No call to Kafka can hold the loop: periodic commits run beside admission, one at a time, and
the adapter bounds every call; the drain ends at the shutdown timeout and reports what its final
commit could not write.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import structlog

from messaging_service.core.offsets import (
    Commit,
    OffsetTracker,
    PartitionOffsets,
    TopicPartition,
    Tracked,
)
from messaging_service.core.retry import Backoff
from messaging_service.core.values import InboundRecord
from messaging_service.core.watchdog import Watchdog
from messaging_service.errors import RetriableError
from messaging_service.service.health import Health
from messaging_service.service.lifecycle import Lifecycle, Request
from messaging_service.service.pool import WorkerPool
from messaging_service.service.relay import Relay
from messaging_service.telemetry.metrics import Metrics

log = structlog.get_logger(__name__)

# How long one fetch may wait for records; bounds how quickly the loop notices a stop.
_FETCH_WAIT_MS = 100
_IDLE_WAIT = 1.0


class RequestSource(Protocol):
    """What the loop needs from the Kafka consumer adapter; every call is bounded there."""

    async def fetch(self, *, max_records: int, timeout_ms: int) -> list[InboundRecord]: ...
    def pause_all(self) -> None: ...
    def resume_all(self) -> None: ...
    def assignment(self) -> set[TopicPartition]: ...
    async def commit(self, commits: Mapping[TopicPartition, Commit]) -> None: ...


@dataclass(frozen=True, slots=True)
class PipelineSettings:
    max_in_flight: int
    commit_interval: float
    shutdown_timeout: float
    refill: int = 1
    """Once paused for lack of room, how much room must free up before fetching again."""
    revocation_timeout: float = 0.0
    """How long a revocation waits for queued and running requests of the revoked partitions."""


class Pipeline:
    """Owns the admission loop, the offset tracker's generations and commits for one consumer."""

    def __init__(
        self,
        *,
        lifecycle: Lifecycle,
        pool: WorkerPool,
        tracker: OffsetTracker,
        metrics: Metrics,
        health: Health,
        relay: Relay,
        settings: PipelineSettings,
        watchdog: Watchdog | None = None,
    ) -> None:
        self._lifecycle = lifecycle
        self._pool = pool
        self._tracker = tracker
        self._metrics = metrics
        self._health = health
        self._relay = relay
        self._settings = settings
        self._source: RequestSource | None = None
        self._paused = False
        # Set whenever a job starts or finishes: room may have appeared, or a drain may be done.
        # Several coroutines wait on it and clear it (the loop, a revocation, a drain), so each
        # waits with ``asyncio.timeout`` around ``wait()``: the waiter is registered at once, and
        # a set() is never lost to another coroutine's clear() (``wait_for`` would start the
        # wait one loop iteration later).
        self._progress = asyncio.Event()
        self._fetch_backoff = Backoff(initial=0.2, ceiling=5.0)
        self._watchdog = watchdog if watchdog is not None else Watchdog(0)
        # Generations being revoked: their new records are not admitted while they finish.
        self._revoking: set[PartitionOffsets] = set()
        # One commit at a time (periodic, revocation, final), and the periodic one in flight.
        self._commit_lock = asyncio.Lock()
        self._committing: asyncio.Task[bool] | None = None
        # A request started or finished, or the circuit changed: room may have appeared.
        lifecycle.subscribe(self._progress.set)
        relay.subscribe(lambda _state: self._progress.set())

    async def run(self, source: RequestSource, stop: asyncio.Event) -> bool:
        """Consume until ``stop`` is set, then drain within the shutdown timeout and commit.

        Returns False when the final commit failed (what it held is redelivered).
        """
        self._source = source
        next_commit = time.monotonic() + self._settings.commit_interval
        failures = 0
        try:
            while not stop.is_set():
                self._watch()
                try:
                    await self._admit(source)
                    failures = 0
                except Exception as exc:  # the loop must outlive any failure: it owns commits
                    failures += 1
                    delay = self._fetch_backoff.delay(failures)
                    if isinstance(exc, RetriableError):
                        log.warning("fetch_failed", error=str(exc), retry_in=delay)
                    else:
                        self._metrics.unexpected_errors.inc()
                        log.error("admission_failed", exc_info=exc, retry_in=delay)
                    await _wait(stop, delay)
                if time.monotonic() >= next_commit:
                    self._commit_in_background()
                    next_commit = time.monotonic() + self._settings.commit_interval
            return await self._drain(source)
        finally:
            await self._settle_commit()

    async def on_assigned(self, partitions: list[TopicPartition]) -> None:
        self._tracker.assign(partitions)
        self._health.joined_group = True
        log.info("partitions_assigned", partitions=_names(partitions))

    async def on_revoked(self, partitions: list[TopicPartition]) -> None:
        """Finish the queued and running work of the partitions we lose, commit, let go.

        The wait is bounded by the revocation timeout; requests waiting for a retry, and any
        still unfinished when the bound passes, are left to the new owner (it reads them again
        from the commit point). Their jobs then find their generation revoked and stop.
        Whatever fails here, the partitions are let go: a tracker holding a partition the
        consumer no longer owns would make every later commit fail.
        """
        if not partitions:
            return  # aiokafka reports an empty revocation before the first assignment
        lost_tps = set(partitions)
        states = [state for state in self._tracker.states() if state.tp in lost_tps]
        # From here on, records fetched for these partitions join no generation.
        self._revoking.update(states)
        timed_out = False
        try:
            timed_out = await self._finish_revoked(states)
            offsets = {state.tp: o for state in states if (o := state.to_commit()) is not None}
            # Let go before the commit's await, so nothing fetched meanwhile joins them.
            self._tracker.revoke(partitions)
            if offsets:
                await self._commit_offsets(offsets)
        except Exception as exc:  # a rebalance callback must not fail: aiokafka would stall
            self._metrics.unexpected_errors.inc()
            log.error("revocation_failed", exc_info=exc, partitions=_names(partitions))
        finally:
            self._tracker.revoke(partitions)
            self._revoking.difference_update(states)
        retry_waiting = sum(state.parked for state in states)
        unfinished = sum(state.waiting for state in states)
        self._metrics.revocations.labels("timed_out" if timed_out else "complete").inc()
        self._metrics.revoked_released.labels("retry_waiting").inc(retry_waiting)
        self._metrics.revoked_released.labels("unfinished").inc(unfinished)
        log.info(
            "partitions_revoked",
            partitions=_names(partitions),
            released_retry_waiting=retry_waiting,
            released_unfinished=unfinished,
        )

    async def _finish_revoked(self, states: list[PartitionOffsets]) -> bool:
        """Wait until no request of ``states`` is queued or running; True if the bound passed."""
        timeout = self._settings.revocation_timeout

        def waiting() -> int:
            return sum(state.waiting for state in states)

        if timeout <= 0 or waiting() == 0:
            return waiting() > 0
        log.info("revocation_finishing", waiting=waiting(), timeout=timeout)
        deadline = time.monotonic() + timeout
        while True:
            # Cleared before looking, with no await in between: a finish is never missed.
            self._progress.clear()
            left = waiting()
            now = time.monotonic()
            if left == 0 or now >= deadline:
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(deadline - now):
                    await self._progress.wait()
        if left:
            log.warning("revocation_timed_out", unfinished=left, timeout=timeout)
        return left > 0

    async def commit(self) -> bool:
        """Commit every partition whose safe point moved; False if that failed (retried later)."""
        offsets = self._tracker.to_commit()
        if self._source is None or not offsets:
            return True
        return await self._commit_offsets(offsets)

    async def _commit_offsets(self, offsets: Mapping[TopicPartition, Commit]) -> bool:
        source = self._source
        if source is None:
            return False
        async with self._commit_lock:
            offsets = self._owned(source, offsets)
            if not offsets:
                return True
            try:
                await source.commit(offsets)
            except RetriableError as exc:
                self._metrics.commit_failures.inc()
                log.warning("commit_failed", error=str(exc), offsets=_offsets(offsets))
                return False
        self._tracker.mark_committed(offsets)
        self._metrics.commits.inc()
        log.debug("offsets_committed", offsets=_offsets(offsets))
        return True

    def _owned(
        self, source: RequestSource, offsets: Mapping[TopicPartition, Commit]
    ) -> dict[TopicPartition, Commit]:
        """The offsets of partitions the consumer still owns; lets go of any others."""
        assigned = source.assignment()
        stray = [tp for tp in offsets if tp not in assigned]
        if stray:
            # Only after a failed revocation or a lost group membership: keeping them would make
            # every commit fail. Their unfinished requests belong to the new owner.
            self._tracker.revoke(stray)
            self._metrics.partition_resets.labels("not_assigned").inc(len(stray))
            log.warning("partitions_dropped_not_assigned", partitions=_names(stray))
        return {tp: offset for tp, offset in offsets.items() if tp in assigned}

    def _commit_in_background(self) -> None:
        """Start a periodic commit unless one is still in flight; admission does not wait."""
        task = self._committing
        if task is not None:
            if not task.done():
                return
            self._reap(task)
        self._committing = asyncio.create_task(self.commit(), name="offset-commit")

    def _reap(self, task: asyncio.Task[bool]) -> None:
        """Report how a finished periodic commit ended, if it crashed (a bug)."""
        error = None if task.cancelled() else task.exception()
        if error is not None:
            self._metrics.commit_failures.inc()
            log.error("commit_crashed", exc_info=error)

    async def _settle_commit(self) -> None:
        """Await the periodic commit in flight (bounded by the adapter), whatever it returns."""
        task, self._committing = self._committing, None
        if task is None:
            return
        await asyncio.wait([task])
        self._reap(task)

    async def _admit(self, source: RequestSource) -> None:
        room = min(self._pool.free_slots, self._settings.max_in_flight - self._tracker.pending)
        if self._relay.circuit_open:
            room = 0  # the relay is down: take no new work, keep polling to stay in the group
        # Hysteresis: once full, wait until a real batch fits before fetching again, rather
        # than pausing and resuming every partition for each request a worker picks up.
        threshold = 1 if not self._paused else self._settings.refill
        if room >= threshold:
            if self._paused:
                source.resume_all()
                self._paused = False
            records = await source.fetch(max_records=room, timeout_ms=_FETCH_WAIT_MS)
        else:
            # Full: pause every partition and wait for workers to make progress, then poll
            # anyway. A poll of paused partitions returns nothing, but without polls aiokafka
            # would leave the group once max_poll_interval_ms passed.
            source.pause_all()
            self._paused = True
            self._progress.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_IDLE_WAIT):
                    await self._progress.wait()
            records = await source.fetch(max_records=1, timeout_ms=0)
        if records:
            await self._submit(records)

    async def _submit(self, records: list[InboundRecord]) -> None:
        # Track the whole batch before any await: a rebalance during a submit below then
        # finds these offsets in the generation they were fetched in.
        admitted: list[Request] = []
        lifecycle = self._lifecycle
        for record in records:
            state = self._generation(record)
            if state is None:
                continue
            if not admitted:
                self._watch()  # the stall clock starts now if nothing was waiting before
            if state.track(record.offset) is Tracked.FINISHED_BEFORE:
                # The last commit's offset map lists it as finished: finished at once, unsent.
                self._metrics.skipped_finished.inc()
                log.debug(
                    "email_skipped_finished",
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                )
                continue
            admitted.append(lifecycle.admit(record, state))
        self._metrics.consumed.inc(len(admitted))
        for request in admitted:
            if request.partition.revoked:
                continue
            lifecycle.prepare(request)
            await self._pool.submit(request)
            # Let workers whose relay just answered send first: preparing ahead pays only if
            # it fills the relay's think time rather than delaying the next send.
            await asyncio.sleep(0)

    def _generation(self, record: InboundRecord) -> PartitionOffsets | None:
        """The generation ``record`` joins, or None when it is not ours to admit."""
        tp = TopicPartition(record.topic, record.partition)
        try:
            state = self._tracker.get(tp)
        except KeyError:
            return None  # revoked while the batch was in flight; the new owner reads it
        if state in self._revoking:
            return None  # being revoked: finish what we hold, the new owner reads the rest
        last = state.last_tracked
        if last is not None and record.offset <= last:
            # The partition went back (an offset reset, a truncated log, a seek): what we
            # track no longer matches what Kafka delivers. Start again from here; requests
            # of the old generation stop at their next step.
            self._metrics.partition_resets.labels("offset_rewound").inc()
            log.warning(
                "partition_offset_rewound",
                partition=f"{tp.topic}-{tp.partition}",
                offset=record.offset,
                last_tracked=last,
                abandoned=state.pending,
            )
            self._tracker.assign([tp])
            state = self._tracker.get(tp)
        return state

    def _watch(self) -> float:
        """Show the watchdog what waits now; returns the seconds stalled."""
        return self._watchdog.stalled(
            waiting=self._tracker.waiting > 0, excused=self._relay.circuit_open
        )

    async def _drain(self, source: RequestSource) -> bool:
        self._health.draining = True
        source.pause_all()
        pending = self._tracker.pending
        log.info("draining", pending=pending, timeout=self._settings.shutdown_timeout)
        now = time.monotonic()
        deadline = now + self._settings.shutdown_timeout
        next_commit = now + self._settings.commit_interval
        while self._tracker.pending > 0 and (now := time.monotonic()) < deadline:
            if self._relay.circuit_open and self._tracker.waiting == 0:
                # Only work held for a relay that is down: waiting cannot finish it, and
                # uncommitted, it is redelivered to whoever consumes these partitions next.
                log.warning("drain_stopped_relay_down", parked=self._relay.parked)
                break
            if now >= next_commit:
                self._commit_in_background()
                next_commit = now + self._settings.commit_interval
            self._progress.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(deadline, next_commit) - now):
                    await self._progress.wait()
        await self._settle_commit()
        offsets = self._tracker.to_commit()
        committed = await self.commit()
        if not committed:
            # Nothing is lost: Kafka delivers these again from the last commit that landed.
            log.error("final_commit_failed", uncommitted=_offsets(offsets))
        left = self._tracker.pending
        if left:
            log.warning("drain_timed_out", unfinished=left)
        else:
            log.info("drained")
        return committed


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def _names(partitions: list[TopicPartition]) -> list[str]:
    return sorted(f"{tp.topic}-{tp.partition}" for tp in partitions)


def _offsets(offsets: Mapping[TopicPartition, Commit]) -> dict[str, int]:
    return {f"{tp.topic}-{tp.partition}": commit.offset for tp, commit in offsets.items()}
