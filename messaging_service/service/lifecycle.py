"""One request's life from admission to its final outcome, owned by one object.

A ``Request`` moves through explicit stages::

    ADMITTED ──prepare──> PREPARED ──worker──> SENDING ──> FINISHED  (sent, dead-lettered,
        │                   ^   ^                │  │  ^               duplicate, suppressed)
        └──────worker───────┼───┼────────────────┘  │  └──ack── ACKING (final event queued)
                            │   │                   ├──> WAITING_RETRY ──timer──> PREPARED
                            │   └───circuit closes──┴──> PARKED        (also from ACKING)
    any stage but FINISHED ──partition revoked or reset──> RELEASED (the new owner reads it)

Only ``Request._to`` changes a stage, and it keeps the partition's bookkeeping in step: a
request waiting for a timer or for the relay is ``parked`` there (it holds no worker, and
neither a revocation nor the watchdog waits for it), and a finished one is ``finish``ed, which
is what lets the commit point pass it.

``Lifecycle.run`` is the one place that enforces the delivery invariant: whatever any
component raises, an admitted request either reaches a final outcome or stays pending and is
tried again with backoff. It never ends a request silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
from collections.abc import Awaitable, Callable

import structlog

from messaging_service.core.lanes import Lane
from messaging_service.core.lifetime import ClosedOnExit
from messaging_service.core.offsets import PartitionOffsets
from messaging_service.core.retry import Backoff
from messaging_service.core.values import InboundRecord, Outcome
from messaging_service.core.watchdog import Watchdog
from messaging_service.service.delivery import Acking, Delivery, Finished, Parked, RetryIn, Step
from messaging_service.service.handler import RequestHandler
from messaging_service.service.pool import CURRENT_WORKER, Job, JobStatus, PoolClosedError
from messaging_service.service.relay import Relay
from messaging_service.service.scheduler import DelayQueue, SchedulerClosedError
from messaging_service.telemetry import logcontext
from messaging_service.telemetry.metrics import Metrics

log = structlog.get_logger(__name__)


class Stage(enum.Enum):
    ADMITTED = "admitted"
    """Tracked and waiting for a worker; not rendered yet."""
    PREPARED = "prepared"
    """Rendered (or refused, to be dead-lettered) and waiting for a worker."""
    SENDING = "sending"
    """A worker runs its next step: a send, a retry or a dead-letter publish."""
    WAITING_RETRY = "waiting_retry"
    """Holds no worker; a timer hands it back (a retry, or a dead letter or event to publish)."""
    PARKED = "parked"
    """The relay is down; it is handed back when the circuit closes. No attempt spent."""
    ACKING = "acking"
    """Its final event is queued; the broker's acknowledgement finishes it. Holds no worker."""
    FINISHED = "finished"
    """Its outcome is final (its dead letter and final event acknowledged); committable."""
    RELEASED = "released"
    """Its partition was revoked or reset: whoever owns it now reads the record again."""


_NEXT: dict[Stage, frozenset[Stage]] = {
    Stage.ADMITTED: frozenset({Stage.PREPARED, Stage.SENDING, Stage.RELEASED}),
    Stage.PREPARED: frozenset({Stage.SENDING, Stage.RELEASED}),
    Stage.SENDING: frozenset(
        {Stage.WAITING_RETRY, Stage.PARKED, Stage.ACKING, Stage.FINISHED, Stage.RELEASED}
    ),
    Stage.ACKING: frozenset({Stage.WAITING_RETRY, Stage.FINISHED, Stage.RELEASED}),
    Stage.WAITING_RETRY: frozenset({Stage.PREPARED, Stage.RELEASED}),
    Stage.PARKED: frozenset({Stage.PREPARED, Stage.RELEASED}),
    Stage.FINISHED: frozenset(),
    Stage.RELEASED: frozenset(),
}
_HELD = frozenset({Stage.WAITING_RETRY, Stage.PARKED})
"""Stages that wait for a timer or the relay, not for a worker."""


class TransitionError(RuntimeError):
    """A request was moved to a stage it cannot reach from where it is (a bug)."""


class Request:
    """One admitted record: its stage, its delivery state, and its partition's generation.

    Callable, so the worker pool and the delay queue can run it as a job.
    """

    __slots__ = ("_lifecycle", "_stage", "delivery", "partition")

    def __init__(
        self,
        record: InboundRecord,
        partition: PartitionOffsets,
        lifecycle: Lifecycle,
        lane: Lane = Lane.NORMAL,
    ) -> None:
        self.delivery = Delivery(record, lane=lane)
        self.partition = partition
        self._lifecycle = lifecycle
        self._stage = Stage.ADMITTED

    def __repr__(self) -> str:
        record = self.delivery.record
        return f"Request({record.topic}-{record.partition}@{record.offset}, {self._stage.value})"

    @property
    def stage(self) -> Stage:
        return self._stage

    @property
    def record(self) -> InboundRecord:
        return self.delivery.record

    @property
    def lane(self) -> Lane:
        return self.delivery.lane

    async def __call__(self) -> JobStatus:
        return await self._lifecycle.run(self)

    def to(self, stage: Stage) -> None:
        """Move to ``stage``, keeping the partition's bookkeeping in step."""
        current = self._stage
        if stage not in _NEXT[current]:
            raise TransitionError(f"{self!r} cannot go from {current.value} to {stage.value}")
        if current in _HELD and not self.partition.revoked:
            self.partition.unpark()
        self._stage = stage
        if self.partition.revoked:
            return  # a revoked generation's counts no longer matter to anyone
        if stage in _HELD:
            self.partition.park()
        elif stage is Stage.FINISHED:
            self.partition.finish(self.record.offset)


class Lifecycle(ClosedOnExit):
    """Runs requests' steps and applies what each step decided; the one owner of transitions.

    Owns the delay queue that holds requests waiting for their retry.
    """

    def __init__(
        self,
        *,
        handler: RequestHandler,
        submit: Callable[[Job, Lane], Awaitable[None]],
        relay: Relay,
        metrics: Metrics,
        watchdog: Watchdog,
        backoff: Backoff | None = None,
        log_lanes: bool = False,
    ) -> None:
        """``submit`` queues a job in a lane; ``log_lanes`` binds each request's lane to its logs
        (on with a priority lane; without one, every request is normal and logs stay as they were).
        """
        self._handler = handler
        self._submit = submit
        self._relay = relay
        self._metrics = metrics
        self._watchdog = watchdog
        self._backoff = backoff or Backoff(initial=1.0, ceiling=60.0)
        self._delays = DelayQueue(self.hand_back, on_error=self.handoff_failed)
        self._listeners: list[Callable[[], None]] = []
        self._lane_fields: dict[Lane, dict[str, str]] = {
            lane: {"lane": lane.value} if log_lanes else {} for lane in Lane
        }
        # Retries the delay queue refused to take (a bug in it): tried again on a timer.
        self._fallback: set[asyncio.TimerHandle] = set()
        relay.on_release(self._hand_back_later)

    async def __aenter__(self) -> Lifecycle:
        await self._delays.__aenter__()
        return self

    async def close(self) -> None:
        """Stop handing retries back; what waits stays pending and is redelivered. Idempotent."""
        for handle in self._fallback:
            handle.cancel()
        self._fallback.clear()
        await self._delays.close()

    @property
    def retry_waiting(self) -> int:
        """Requests waiting for their retry's timer."""
        return len(self._delays)

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` whenever a request starts a step or finishes."""
        self._listeners.append(listener)

    def _on_progress(self) -> None:
        for listener in self._listeners:
            listener()

    def admit(
        self, record: InboundRecord, partition: PartitionOffsets, lane: Lane = Lane.NORMAL
    ) -> Request:
        """A request for a record its partition has just tracked."""
        return Request(record, partition, self, lane)

    def prepare(self, request: Request) -> None:
        """Render while the request waits in the queue, so a free worker only has to send.

        A bug here leaves it ADMITTED: its worker's step prepares it again and reports it.
        """
        with contextlib.suppress(Exception):
            self._handler.prepare(request.delivery)
            request.to(Stage.PREPARED)

    async def hand_back(self, job: Job) -> None:
        """The delay queue's submit: a retry is due, so the request waits for a worker again.

        It goes back to its own lane: a priority request's retry stays ahead of normal ones.
        """
        await self._submit(job, job.lane if isinstance(job, Request) else Lane.NORMAL)
        # No await since the job was queued, so no worker has started it yet.
        if isinstance(job, Request) and job.stage in _HELD:
            job.to(Stage.PREPARED)
            self._on_progress()  # the stall clock starts now if nothing else was waiting

    def handoff_failed(self, error: BaseException, job: Job) -> None:
        """The delay queue could not hand ``job`` on: keep it pending and try again later."""
        if isinstance(error, PoolClosedError):
            # Shutting down: it stays pending and uncommitted, so Kafka redelivers it.
            log.info("retry_not_handed_on_shutting_down")
            return
        self._metrics.unexpected_errors.inc()
        failures = 1
        if isinstance(job, Request):
            job.delivery.unexpected_failures += 1
            failures = job.delivery.unexpected_failures
        delay = self._backoff.delay(failures)
        log.error("retry_handoff_failed", exc_info=error, retry_in=delay)
        self._schedule(delay, job)

    async def run(self, request: Request) -> JobStatus:
        """A worker runs the request's next step and applies its result; never raises."""
        self._on_progress()
        if request.partition.revoked:
            # The partition has a new owner, which reads this record again from the last
            # commit: sending it here too would only add a duplicate.
            request.to(Stage.RELEASED)
            return JobStatus.OK
        request.to(Stage.SENDING)
        with logcontext.bound(**self._log_fields(request)):
            step = await self._step(request)
            self._apply(request, step)
        outcome = (
            step.outcome
            if isinstance(step, Finished)
            else request.delivery.outcome
            if isinstance(step, Acking)
            else None
        )
        if outcome is Outcome.DEAD_LETTERED:
            return JobStatus.FAILED
        return JobStatus.OK

    def _log_fields(self, request: Request) -> dict[str, object]:
        record = request.record
        return {
            "email_id": request.delivery.email_id,
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "worker": CURRENT_WORKER.get(None),
            **self._lane_fields[request.delivery.lane],
        }

    def _acked(self, request: Request, ack: asyncio.Future[None]) -> None:
        """An ACKING request's final event settled (a callback of the loop, not a worker)."""
        with logcontext.bound(**self._log_fields(request)):
            try:
                step = self._handler.acked(request.delivery, ack)
            except Exception as exc:  # noqa: BLE001 - the invariant: it stays pending, tried again
                step = self._recovery_failed(request.delivery, exc)
            if isinstance(step, Acking):  # acked() never answers that; a bug if it did
                step = self._recovery_failed(request.delivery, TransitionError("acked twice"))
            self._apply(request, step)

    async def _step(self, request: Request) -> Step:
        delivery = request.delivery
        try:
            return await self._handler.process(delivery)
        except Exception as exc:  # noqa: BLE001 - the task boundary: every request reaches an outcome
            try:
                return await self._handler.recover(delivery, exc)
            except Exception as again:  # noqa: BLE001 - recovering failed too: keep it pending, try later
                return self._recovery_failed(delivery, again)

    def _recovery_failed(self, delivery: Delivery, error: Exception) -> RetryIn:
        delivery.unexpected_failures += 1
        delay = self._backoff.delay(delivery.unexpected_failures)
        self._metrics.unexpected_errors.inc()
        log.error(
            "request_recovery_failed",
            exc_info=error,
            failures=delivery.unexpected_failures,
            retry_in=delay,
        )
        return RetryIn(delay)

    def _apply(self, request: Request, step: Step) -> None:
        if isinstance(step, RetryIn):
            request.to(Stage.WAITING_RETRY)
            self._schedule(step.seconds, request)
        elif isinstance(step, Parked):
            request.to(Stage.PARKED)
            self._relay.park(request)
        elif isinstance(step, Acking):
            request.to(Stage.ACKING)
            step.ack.add_done_callback(functools.partial(self._acked, request))
        else:
            request.to(Stage.FINISHED)
            self._watchdog.progress()
            self._on_progress()

    def _hand_back_later(self, job: Job) -> None:
        """The relay released a parked request: it waits for a worker again."""
        self._schedule(0, job)

    def _schedule(self, seconds: float, job: Job) -> None:
        try:
            self._delays.schedule(seconds, job)
        except SchedulerClosedError:
            # Shutting down: it stays pending and uncommitted, so Kafka redelivers it.
            log.info("retry_not_scheduled_shutting_down", retry_in=seconds)
        except Exception as exc:  # a bug in the queue must not lose the request
            self._metrics.unexpected_errors.inc()
            delay = self._backoff.delay(1) if seconds <= 0 else seconds
            log.error("retry_schedule_failed", exc_info=exc, retry_in=delay)

            def again() -> None:
                self._fallback.discard(timer)
                self._schedule(seconds, job)

            timer = asyncio.get_running_loop().call_later(delay, again)
            self._fallback.add(timer)
