"""Holds delayed jobs until they are due, then hands each on to a submit coroutine."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import time
from collections.abc import Awaitable, Callable

import structlog

from messaging_service.core.lifetime import ClosedOnExit
from messaging_service.service.pool import Job

log = structlog.get_logger(__name__)


class SchedulerClosedError(RuntimeError):
    """The delay queue is closed and takes no more jobs."""


class DelayQueue(ClosedOnExit):
    """Hands each scheduled job to ``submit`` once its delay has passed.

    Jobs leave in order of due time, first scheduled first among equal due times. One
    background task does the handing on, one job at a time: when ``submit`` waits (a full
    pool), later jobs wait behind it, but ``schedule()`` never does.

    When ``submit`` raises an Exception, the job is dropped, ``on_error(exc, job)`` is called
    (or the error logged when there is none) and the queue carries on with the next job: a
    failed hand-off must not stop every later retry. The caller still owns the dropped job's
    unfinished work (for example its uncommitted offset).

    ``clock`` decides when a job is due and must tick in seconds like ``time.monotonic``;
    the waiting itself uses the event loop's timers.
    """

    def __init__(
        self,
        submit: Callable[[Job], Awaitable[None]],
        *,
        clock: Callable[[], float] = time.monotonic,
        on_error: Callable[[BaseException, Job], None] | None = None,
    ) -> None:
        self._submit = submit
        self._clock = clock
        self._on_error = on_error
        # (due, sequence, job): the sequence keeps FIFO order among equal due times and means
        # jobs themselves are never compared.
        self._heap: list[tuple[float, int, Job]] = []
        self._sequence = itertools.count()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._handing_on = 0

    async def __aenter__(self) -> DelayQueue:
        if self._task is not None or self._closed:
            raise RuntimeError("a delay queue starts only once")
        self._task = asyncio.create_task(self._run(), name="delay-queue")
        return self

    def __len__(self) -> int:
        """Jobs not handed on yet, including one whose submit is still waiting."""
        return len(self._heap) + self._handing_on

    def schedule(self, delay: float, job: Job) -> None:
        """Hand ``job`` on after ``delay`` seconds; never blocks.

        Jobs scheduled before the queue is started wait for it. Raises SchedulerClosedError
        after close() and ValueError for a negative or non-finite delay.
        """
        if self._closed:
            raise SchedulerClosedError("delay queue is closed")
        if not (math.isfinite(delay) and delay >= 0):
            raise ValueError(f"delay must be a finite number of seconds >= 0, not {delay!r}")
        entry = (self._clock() + delay, next(self._sequence), job)
        heapq.heappush(self._heap, entry)
        if self._heap[0] is entry:
            # The task may be sleeping until a later due time.
            self._wakeup.set()

    async def close(self) -> None:
        """Stop the task and drop the jobs still waiting. Idempotent."""
        self._closed = True
        task = self._task
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
            if not task.cancelled() and (error := task.exception()) is not None:
                raise error
        self._heap.clear()

    async def _run(self) -> None:
        heap = self._heap
        while True:
            # Cleared before looking at the heap: a schedule() from here on sets it again.
            self._wakeup.clear()
            if not heap:
                await self._wakeup.wait()
                continue
            wait = heap[0][0] - self._clock()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wakeup.wait()
                continue
            _, _, job = heapq.heappop(heap)
            await self._hand_on(job)

    async def _hand_on(self, job: Job) -> None:
        self._handing_on = 1
        try:
            await self._submit(job)
        except asyncio.CancelledError as exc:
            me = asyncio.current_task()
            if me is None or me.cancelling():
                raise
            # Not our cancellation: submit awaited something someone else cancelled.
            self._report(exc, job)
        except Exception as exc:  # noqa: BLE001 - one failed hand-off must not stop later retries
            self._report(exc, job)
        finally:
            self._handing_on = 0

    def _report(self, exc: BaseException, job: Job) -> None:
        if self._on_error is None:
            log.error("delayed_job_dropped", exc_info=exc)
            return
        try:
            self._on_error(exc, job)
        except Exception:
            # A broken reporter must not stop every later job.
            log.exception("delayed_job_error_handler_failed")
