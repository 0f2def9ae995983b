"""The consumer loop: admit records under backpressure, run them on the pool, commit safely.

Every record is tracked before it is handed to a worker and finished only when its outcome is
final, so the committed offset of a partition never passes a request that is still pending —
whether it is queued, being sent, waiting for a retry, or waiting for the dead-letter topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import structlog

from .circuit import CircuitBreaker, CircuitState
from .errors import RetriableError
from .handler import Delivery, Parked, RequestHandler, RetryIn, Step
from .health import Health
from .metrics import Metrics
from .models import InboundRecord, Outcome
from .offsets import Commit, OffsetTracker, PartitionOffsets, TopicPartition, Tracked
from .pool import CURRENT_WORKER, Job, JobStatus, WorkerPool
from .retry import Backoff
from .scheduler import DelayQueue
from .watchdog import Watchdog

log = structlog.get_logger(__name__)

# How long one fetch may wait for records; bounds how quickly the loop notices a stop.
_FETCH_WAIT_MS = 100
_IDLE_WAIT = 1.0


class RequestSource(Protocol):
    """What the loop needs from the Kafka consumer adapter."""

    async def fetch(self, *, max_records: int, timeout_ms: int) -> list[InboundRecord]: ...
    def pause_all(self) -> None: ...
    def resume_all(self) -> None: ...
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
    """Owns the admission loop, offset bookkeeping and commits for one consumer."""

    def __init__(
        self,
        *,
        handler: RequestHandler,
        pool: WorkerPool,
        delays: DelayQueue,
        tracker: OffsetTracker,
        metrics: Metrics,
        health: Health,
        settings: PipelineSettings,
        circuit: CircuitBreaker | None = None,
        watchdog: Watchdog | None = None,
    ) -> None:
        self._handler = handler
        self._pool = pool
        self._delays = delays
        self._tracker = tracker
        self._metrics = metrics
        self._health = health
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
        # Jobs held while the relay circuit is open; handed back to the pool when it closes.
        self._circuit = circuit
        self._parked: list[Job] = []
        if circuit is not None:
            circuit.subscribe(self._on_circuit)
        self._watchdog = watchdog if watchdog is not None else Watchdog(0)
        # Generations being revoked: their new records are not admitted while they finish.
        self._revoking: set[PartitionOffsets] = set()

    @property
    def parked(self) -> int:
        """Requests held because the relay circuit is open."""
        return len(self._parked)

    async def run(self, source: RequestSource, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then drain within the shutdown timeout and commit."""
        self._source = source
        next_commit = time.monotonic() + self._settings.commit_interval
        failures = 0
        while not stop.is_set():
            self._watch()
            try:
                await self._admit(source)
                failures = 0
            except RetriableError as exc:
                failures += 1
                delay = self._fetch_backoff.delay(failures)
                log.warning("fetch_failed", error=str(exc), retry_in=delay)
                await _wait(stop, delay)
            if time.monotonic() >= next_commit:
                await self.commit()
                next_commit = time.monotonic() + self._settings.commit_interval
        await self._drain(source)

    async def on_assigned(self, partitions: list[TopicPartition]) -> None:
        self._tracker.assign(partitions)
        self._health.joined_group = True
        log.info("partitions_assigned", partitions=_names(partitions))

    async def on_revoked(self, partitions: list[TopicPartition]) -> None:
        """Finish the queued and running work of the partitions we lose, commit, let go.

        The wait is bounded by the revocation timeout; requests waiting for a retry, and any
        still unfinished when the bound passes, are left to the new owner (it reads them again
        from the commit point). Their jobs then find their generation revoked and stop.
        """
        if not partitions:
            return  # aiokafka reports an empty revocation before the first assignment
        lost_tps = set(partitions)
        states = [state for state in self._tracker.states() if state.tp in lost_tps]
        timed_out = await self._finish_revoked(states)
        await self.commit()
        lost = self._tracker.revoke(partitions)
        retry_waiting = sum(state.parked for state in lost.values())
        unfinished = sum(state.waiting for state in lost.values())
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
        self._revoking.update(states)
        log.info("revocation_finishing", waiting=waiting(), timeout=timeout)
        deadline = time.monotonic() + timeout
        try:
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
        finally:
            self._revoking.difference_update(states)
        if left:
            log.warning("revocation_timed_out", unfinished=left, timeout=timeout)
        return left > 0

    async def commit(self) -> None:
        """Commit every partition whose safe point moved; failures are retried next time."""
        source = self._source
        offsets = self._tracker.to_commit()
        if source is None or not offsets:
            return
        try:
            await source.commit(offsets)
        except RetriableError as exc:
            self._metrics.commit_failures.inc()
            log.warning("commit_failed", error=str(exc))
            return
        self._tracker.mark_committed(offsets)
        self._metrics.commits.inc()
        log.debug(
            "offsets_committed",
            offsets={f"{tp.topic}-{tp.partition}": c.offset for tp, c in offsets.items()},
        )

    def _on_circuit(self, state: CircuitState) -> None:
        if state is CircuitState.CLOSED:
            parked, self._parked = self._parked, []
            for job in parked:
                self._delays.schedule(0, job)
        # Wake the admission loop (resume) or a drain (parked work can finish now).
        self._progress.set()

    async def _admit(self, source: RequestSource) -> None:
        room = min(self._pool.free_slots, self._settings.max_in_flight - self._tracker.pending)
        if self._circuit is not None and self._circuit.is_open:
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
        admitted: list[tuple[Delivery, PartitionOffsets]] = []
        for record in records:
            try:
                state = self._tracker.get(TopicPartition(record.topic, record.partition))
            except KeyError:
                continue  # revoked while the batch was in flight; the new owner reads it
            if state in self._revoking:
                continue  # being revoked: finish what we hold, the new owner reads the rest
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
            admitted.append((Delivery(record), state))
        self._metrics.consumed.inc(len(admitted))
        for delivery, state in admitted:
            if state.revoked:
                continue
            self._prepare(delivery)
            await self._pool.submit(self._job(delivery, state))
            # Let workers whose relay just answered send first: preparing ahead pays only if
            # it fills the relay's think time rather than delaying the next send.
            await asyncio.sleep(0)

    def _prepare(self, delivery: Delivery) -> None:
        """Render while the request waits in the queue, so a free worker only has to send."""
        # A bug here leaves it unprepared: the worker's step tries again and reports it.
        with contextlib.suppress(Exception):
            self._handler.prepare(delivery)

    def _job(self, delivery: Delivery, state: PartitionOffsets) -> Job:
        record = delivery.record
        parked = False

        async def job() -> JobStatus:
            nonlocal parked
            self._progress.set()
            if parked:
                # Its retry is due: it waits for a worker again (the stall clock starts now
                # if nothing else was waiting).
                self._watch()
                state.unpark()
                parked = False
            if state.revoked:
                # The partition has a new owner, which reads this record again from the last
                # commit: sending it here too would only add a duplicate.
                return JobStatus.OK
            with structlog.contextvars.bound_contextvars(
                email_id=delivery.email_id,
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                worker=CURRENT_WORKER.get(None),
            ):
                step = await self._step(delivery)
            if isinstance(step, RetryIn):
                self._delays.schedule(step.seconds, job)
                state.park()
                parked = True
                return JobStatus.OK
            if isinstance(step, Parked):
                # It waits for the circuit to close, not for a worker: a revocation does not
                # wait for it, and the watchdog does not count it.
                self._park(job)
                state.park()
                parked = True
                return JobStatus.OK
            state.finish(record.offset)
            self._watchdog.progress()
            self._progress.set()
            return JobStatus.FAILED if step.outcome is Outcome.DEAD_LETTERED else JobStatus.OK

        return job

    def _park(self, job: Job) -> None:
        if self._circuit is None or self._circuit.is_open:
            self._parked.append(job)
        else:  # it closed while this job was on its way here
            self._delays.schedule(0, job)

    async def _step(self, delivery: Delivery) -> Step:
        try:
            return await self._handler.process(delivery)
        except Exception as exc:  # the task boundary: every request must reach an outcome
            return await self._handler.recover(delivery, exc)

    def _watch(self) -> float:
        """Show the watchdog what waits now; returns the seconds stalled."""
        return self._watchdog.stalled(
            waiting=self._tracker.waiting > 0, excused=self._health.circuit_open
        )

    async def _drain(self, source: RequestSource) -> None:
        self._health.draining = True
        source.pause_all()
        pending = self._tracker.pending
        log.info("draining", pending=pending, timeout=self._settings.shutdown_timeout)
        now = time.monotonic()
        deadline = now + self._settings.shutdown_timeout
        next_commit = now + self._settings.commit_interval
        while self._tracker.pending > 0 and (now := time.monotonic()) < deadline:
            if self._circuit is not None and self._circuit.is_open and self._tracker.waiting == 0:
                # Only work held for a relay that is down: waiting cannot finish it, and
                # uncommitted, it is redelivered to whoever consumes these partitions next.
                log.warning("drain_stopped_relay_down", parked=len(self._parked))
                break
            if now >= next_commit:
                await self.commit()
                next_commit = now + self._settings.commit_interval
            self._progress.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(deadline, next_commit) - now):
                    await self._progress.wait()
        await self.commit()
        left = self._tracker.pending
        if left:
            log.warning("drain_timed_out", unfinished=left)
        else:
            log.info("drained")


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def _names(partitions: list[TopicPartition]) -> list[str]:
    return sorted(f"{tp.topic}-{tp.partition}" for tp in partitions)
