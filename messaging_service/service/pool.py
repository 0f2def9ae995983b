"""A bounded asyncio worker pool: a fixed set of worker tasks running jobs from a bounded queue."""

from __future__ import annotations

import asyncio
import contextvars
import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeAlias

import structlog

from messaging_service.core.lanes import Lane
from messaging_service.core.lifetime import ClosedOnExit
from messaging_service.service.lane_queue import LaneQueue

log = structlog.get_logger(__name__)


class JobStatus(enum.Enum):
    """How a job ended when it did not raise; a job returning ``None`` counts as ``OK``."""

    OK = "ok"
    FAILED = "failed"


Job: TypeAlias = Callable[[], Awaitable["JobStatus | None"]]

# Jobs run in their worker's context, so a job can read which worker runs it (for its logs).
# Unset outside a worker: read it with ``CURRENT_WORKER.get(None)`` where that can happen.
CURRENT_WORKER: contextvars.ContextVar[str] = contextvars.ContextVar("current_worker")


class PoolClosedError(RuntimeError):
    """The pool takes no jobs: it is not started yet, draining or closed."""


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A snapshot of the pool; the last three are counters since the pool was made."""

    size: int
    queued: int
    running: int
    completed: int
    failed: int
    panicked: int
    queued_priority: int = 0


class _State(enum.Enum):
    NEW = "not started"
    RUNNING = "running"
    DRAINING = "draining"
    CLOSED = "closed"


class WorkerPool(ClosedOnExit):
    """``size`` workers take jobs from a queue of at most ``capacity`` jobs waiting.

    At most ``capacity + size`` jobs are in the pool at once: ``capacity`` queued and one
    running per worker. A job that raises is counted as panicked and reported to
    ``on_panic`` (or logged when there is none); its worker carries on.

    With ``priority_share`` set, the queue has two lanes of ``capacity`` each (``LaneQueue``):
    workers take priority jobs first, at most that share of them while normal jobs wait.

    Jobs share their worker's ``contextvars`` context (a task per job would cost too much), so
    a job that binds context variables must reset them before it returns, for example with
    ``telemetry.logcontext.bound``.
    """

    def __init__(
        self,
        *,
        size: int,
        capacity: int,
        on_panic: Callable[[BaseException], None] | None = None,
        name: str = "worker",
        priority_share: float | None = None,
    ) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._size = size
        self._capacity = capacity
        self._on_panic = on_panic
        self._name = name
        self._lanes = (
            None if priority_share is None else LaneQueue(capacity=capacity, share=priority_share)
        )
        self._fifo: asyncio.Queue[Job] = asyncio.Queue(maxsize=capacity)
        self._queue: asyncio.Queue[Job] | LaneQueue = (
            self._fifo if self._lanes is None else self._lanes
        )
        # Set while the queue has room (or the pool stopped accepting, to wake submitters).
        # With lanes, each lane has its own and this one stays set.
        self._room = asyncio.Event()
        self._room.set()
        self._state = _State.NEW
        self._workers: list[asyncio.Task[None]] = []
        self._drain_waiters: list[asyncio.Future[bool]] = []
        self._running = 0
        self._completed = 0
        self._failed = 0
        self._panicked = 0

    async def __aenter__(self) -> WorkerPool:
        if self._state is not _State.NEW:
            raise RuntimeError(f"a worker pool starts only once (this one is {self._state.value})")
        self._state = _State.RUNNING
        self._workers = [
            asyncio.create_task(self._work(f"{self._name}-{n}"), name=f"{self._name}-{n}")
            for n in range(self._size)
        ]
        return self

    @property
    def free_slots(self) -> int:
        """How many more jobs the queue (with lanes: the normal lane) takes now."""
        return self.free(Lane.NORMAL)

    def free(self, lane: Lane) -> int:
        """How many more jobs ``lane`` takes now (without lanes, every lane is the one queue)."""
        lanes = self._lanes
        if lanes is None:
            return self._capacity - self._queue.qsize()
        return self._capacity - lanes.qsize(lane)

    def try_submit(self, job: Job, lane: Lane = Lane.NORMAL) -> bool:
        """Queue ``job`` if there is room; False when the queue is full or the pool not running."""
        if self._state is not _State.RUNNING:
            return False
        lanes = self._lanes
        if lanes is not None:
            if lanes.full(lane):
                return False
            lanes.put_nowait(job, lane)
            return True
        queue = self._fifo
        if queue.qsize() >= self._capacity:
            return False
        queue.put_nowait(job)
        if queue.qsize() >= self._capacity:
            self._room.clear()
        return True

    async def submit(self, job: Job, lane: Lane = Lane.NORMAL) -> None:
        """Queue ``job``, waiting for room; raises PoolClosedError when the pool is not running."""
        while not self.try_submit(job, lane):
            await self.wait_for_room(lane)

    async def wait_for_room(self, lane: Lane = Lane.NORMAL) -> None:
        """Return once the queue has room; raises PoolClosedError when the pool is not running."""
        room = self._room if self._lanes is None else self._lanes.room(lane)
        while True:
            if self._state is not _State.RUNNING:
                raise PoolClosedError(f"worker pool is {self._state.value}")
            if self.free(lane) > 0:
                return
            await room.wait()

    # A timeout parameter rather than asyncio.timeout(): a timed-out drain is an answer (False),
    # not an error, and the jobs keep running.
    async def drain(self, timeout: float) -> bool:  # noqa: ASYNC109
        """Stop taking jobs and wait until none is queued or running.

        Returns True when the pool is idle within ``timeout`` seconds, False on timeout or
        when close() abandons the work first. Jobs keep running after a timeout.
        """
        if self._state in (_State.NEW, _State.RUNNING):
            self._state = _State.DRAINING
            self._wake_submitters()
        if self.is_idle():
            return True
        if self._state is _State.CLOSED:
            return False
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._drain_waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                return await waiter
        except TimeoutError:
            return False
        finally:
            self._drain_waiters.remove(waiter)

    async def close(self) -> None:
        """Cancel the workers (and so the jobs they run), wait for them, drop queued jobs.

        Idempotent; safe before the pool was started.
        """
        self._state = _State.CLOSED
        self._wake_submitters()
        self._wake_drainers(self.is_idle())
        for worker in self._workers:
            worker.cancel()
        if self._workers:
            await asyncio.wait(self._workers)
        while not self._queue.empty():
            self._queue.get_nowait()

    def stats(self) -> PoolStats:
        return PoolStats(
            size=self._size,
            queued=self._queue.qsize(),
            running=self._running,
            completed=self._completed,
            failed=self._failed,
            panicked=self._panicked,
            queued_priority=0 if self._lanes is None else self._lanes.qsize(Lane.PRIORITY),
        )

    def _wake_submitters(self) -> None:
        """Wake submitters waiting for room, so they see the pool stopped and raise."""
        self._room.set()
        if self._lanes is not None:
            self._lanes.wake_all()

    def is_idle(self) -> bool:
        """True when no job is queued or running."""
        return self._running == 0 and self._queue.empty()

    async def _work(self, name: str) -> None:
        CURRENT_WORKER.set(name)
        me = asyncio.current_task()
        assert me is not None
        queue = self._queue
        room = self._room
        while True:
            job = await queue.get()
            if not room.is_set():
                room.set()
            self._running += 1
            try:
                status = await job()
            except asyncio.CancelledError as exc:
                if me.cancelling():
                    raise
                # Not our cancellation: the job awaited something someone else cancelled.
                self._panic(exc)
            except Exception as exc:  # noqa: BLE001 - a job's bug must not end its worker
                self._panic(exc)
            else:
                if status is JobStatus.FAILED:
                    self._failed += 1
                else:
                    self._completed += 1
            finally:
                self._running -= 1
            if me.cancelling():
                # The job swallowed our cancellation; the worker still has to stop.
                raise asyncio.CancelledError
            if self._drain_waiters and self._running == 0 and queue.empty():
                self._wake_drainers(True)

    def _panic(self, exc: BaseException) -> None:
        self._panicked += 1
        if self._on_panic is None:
            log.error("worker_job_crashed", exc_info=exc)
            return
        try:
            self._on_panic(exc)
        except Exception:
            # A broken reporter must not take a worker down with it.
            log.exception("worker_panic_handler_failed")

    def _wake_drainers(self, drained: bool) -> None:
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(drained)
