"""The delay queue: hands jobs on once due, in due order, without ever blocking schedule()."""

from __future__ import annotations

import asyncio
import math

import pytest
import structlog
import structlog.testing

from messaging_service.service.pool import Job
from messaging_service.service.scheduler import DelayQueue, SchedulerClosedError

# A generous guard so a broken queue fails the test instead of hanging it; never a measurement.
GUARD = 10.0
# Long enough that it can never come due while a test runs.
NEVER = 3600.0


async def settle(rounds: int = 20) -> None:
    """Let every task that can run do so; counts loop turns, not time."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Recorder:
    """A submit that records the labels of the jobs handed to it."""

    def __init__(self) -> None:
        self.labels: list[str] = []
        self._labels_of: dict[Job, str] = {}
        self._wanted = 0
        self._enough = asyncio.Event()

    def job(self, label: str) -> Job:
        async def job() -> None:
            return None

        self._labels_of[job] = label
        return job

    async def submit(self, job: Job) -> None:
        self.labels.append(self._labels_of[job])
        if len(self.labels) >= self._wanted:
            self._enough.set()

    async def wait_for(self, count: int) -> list[str]:
        self._wanted = count
        if len(self.labels) < count:
            self._enough.clear()
            async with asyncio.timeout(GUARD):
                await self._enough.wait()
        return self.labels


async def test_a_job_with_no_delay_is_handed_on() -> None:
    recorder = Recorder()
    async with DelayQueue(recorder.submit) as queue:
        queue.schedule(0, recorder.job("now"))
        assert await recorder.wait_for(1) == ["now"]
        assert len(queue) == 0


async def test_due_jobs_leave_in_due_order_and_fifo_among_equals() -> None:
    clock = FakeClock(100.0)
    recorder = Recorder()
    queue = DelayQueue(recorder.submit, clock=clock)
    for delay, label in [(3, "c"), (1, "a1"), (2, "b"), (1, "a2"), (0, "now"), (1, "a3")]:
        queue.schedule(delay, recorder.job(label))
    assert len(queue) == 6
    clock.now = 200.0  # everything is due by the time the task starts
    async with queue:
        assert await recorder.wait_for(6) == ["now", "a1", "a2", "a3", "b", "c"]


async def test_jobs_not_due_by_the_clock_wait() -> None:
    clock = FakeClock(0.0)
    recorder = Recorder()
    async with DelayQueue(recorder.submit, clock=clock) as queue:
        queue.schedule(5, recorder.job("later"))
        queue.schedule(0, recorder.job("now"))
        assert await recorder.wait_for(1) == ["now"]
        await settle()
        assert recorder.labels == ["now"]
        assert len(queue) == 1


async def test_tiny_real_delays_are_handed_on_in_due_order() -> None:
    recorder = Recorder()
    async with DelayQueue(recorder.submit) as queue:
        for delay, label in [(0.03, "third"), (0.01, "first"), (0.02, "second")]:
            queue.schedule(delay, recorder.job(label))
        assert await recorder.wait_for(3) == ["first", "second", "third"]


async def test_an_earlier_job_scheduled_after_a_later_one_wakes_the_task() -> None:
    recorder = Recorder()
    async with DelayQueue(recorder.submit) as queue:
        queue.schedule(NEVER, recorder.job("later"))
        await settle()  # the task is now asleep until the far due time
        queue.schedule(0, recorder.job("early"))
        assert await recorder.wait_for(1) == ["early"]
        assert len(queue) == 1


async def test_a_job_scheduled_into_an_empty_running_queue_wakes_the_task() -> None:
    recorder = Recorder()
    async with DelayQueue(recorder.submit) as queue:
        await settle()  # the task is now waiting for any job
        queue.schedule(0, recorder.job("first"))
        assert await recorder.wait_for(1) == ["first"]
        await settle()
        queue.schedule(0, recorder.job("second"))
        assert await recorder.wait_for(2) == ["first", "second"]


async def test_a_blocking_submit_does_not_block_schedule() -> None:
    gate = asyncio.Event()
    handed: list[Job] = []
    first_in, all_in = asyncio.Event(), asyncio.Event()

    async def slow_submit(job: Job) -> None:
        handed.append(job)
        first_in.set()
        if len(handed) == 4:
            all_in.set()
        await gate.wait()

    jobs = [_job() for _ in range(4)]
    async with DelayQueue(slow_submit) as queue:
        queue.schedule(0, jobs[0])
        async with asyncio.timeout(GUARD):
            await first_in.wait()
        # schedule() is synchronous: these return while the submit above is stuck.
        for job in jobs[1:]:
            queue.schedule(0, job)
        assert len(queue) == 4  # three waiting plus the one being handed on
        assert handed == jobs[:1]
        gate.set()
        async with asyncio.timeout(GUARD):
            await all_in.wait()
        assert handed == jobs
        await settle()
        assert len(queue) == 0


async def test_close_drops_waiting_jobs_and_is_idempotent() -> None:
    recorder = Recorder()
    queue = DelayQueue(recorder.submit)
    async with queue:
        queue.schedule(NEVER, recorder.job("a"))
        queue.schedule(NEVER, recorder.job("b"))
        assert len(queue) == 2
        await asyncio.gather(queue.close(), queue.close())
        assert len(queue) == 0
        await queue.close()
    assert recorder.labels == []
    with pytest.raises(SchedulerClosedError):
        queue.schedule(0, recorder.job("late"))


async def test_close_cancels_a_submit_that_is_waiting() -> None:
    entered = asyncio.Event()
    outcome: list[str] = []

    async def stuck_submit(job: Job) -> None:
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise

    queue = DelayQueue(stuck_submit)
    async with asyncio.timeout(GUARD), queue:
        queue.schedule(0, _job())
        await entered.wait()
    assert outcome == ["cancelled"]
    assert len(queue) == 0


async def test_close_before_start_is_fine() -> None:
    queue = DelayQueue(Recorder().submit)
    queue.schedule(1, _job())
    await queue.close()
    await queue.close()
    assert len(queue) == 0


async def test_a_failing_submit_is_reported_and_later_jobs_still_go() -> None:
    errors: list[tuple[BaseException, Job]] = []
    handed: list[Job] = []
    bad, good = _job(), _job()
    good_in = asyncio.Event()
    boom = RuntimeError("pool closed")

    async def submit(job: Job) -> None:
        if job is bad:
            raise boom
        handed.append(job)
        good_in.set()

    def on_error(exc: BaseException, job: Job) -> None:
        errors.append((exc, job))

    async with DelayQueue(submit, on_error=on_error) as queue:
        queue.schedule(0, bad)
        queue.schedule(0, good)
        async with asyncio.timeout(GUARD):
            await good_in.wait()
    assert errors == [(boom, bad)]
    assert handed == [good]


async def test_a_failing_submit_is_logged_without_on_error() -> None:
    handed: list[Job] = []
    bad, good = _job(), _job()
    good_in = asyncio.Event()

    async def submit(job: Job) -> None:
        if job is bad:
            raise ValueError("nope")
        handed.append(job)
        good_in.set()

    with structlog.testing.capture_logs() as logs:
        async with DelayQueue(submit) as queue:
            queue.schedule(0, bad)
            queue.schedule(0, good)
            async with asyncio.timeout(GUARD):
                await good_in.wait()
    errors = [entry for entry in logs if entry["log_level"] == "error"]
    assert len(errors) == 1
    assert errors[0]["event"] == "delayed_job_dropped"
    assert isinstance(errors[0]["exc_info"], ValueError)


async def test_a_broken_on_error_does_not_stop_the_queue() -> None:
    handed: list[Job] = []
    bad, good = _job(), _job()
    good_in = asyncio.Event()

    async def submit(job: Job) -> None:
        if job is bad:
            raise ValueError("nope")
        handed.append(job)
        good_in.set()

    def on_error(exc: BaseException, job: Job) -> None:
        raise KeyError("reporter bug")

    async with DelayQueue(submit, on_error=on_error) as queue:
        queue.schedule(0, bad)
        queue.schedule(0, good)
        async with asyncio.timeout(GUARD):
            await good_in.wait()
    assert handed == [good]


@pytest.mark.parametrize("delay", [-1.0, math.nan, math.inf])
def test_nonsense_delays_are_rejected(delay: float) -> None:
    queue = DelayQueue(Recorder().submit)
    with pytest.raises(ValueError, match="delay"):
        queue.schedule(delay, _job())
    assert len(queue) == 0


async def test_a_queue_starts_only_once() -> None:
    queue = DelayQueue(Recorder().submit)
    async with queue:
        with pytest.raises(RuntimeError, match="only once"):
            await queue.__aenter__()
    with pytest.raises(RuntimeError, match="only once"):
        await queue.__aenter__()


def _job() -> Job:
    async def job() -> None:
        return None

    return job
