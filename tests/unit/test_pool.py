"""The worker pool: bounded, concurrent up to its size, survives failing jobs, drains, closes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import structlog
import structlog.testing

from messaging_service.service.pool import (
    CURRENT_WORKER,
    Job,
    JobStatus,
    PoolClosedError,
    PoolStats,
    WorkerPool,
)

# A generous guard so a broken pool fails the test instead of hanging it; never a measurement.
GUARD = 10.0


async def settle(rounds: int = 20) -> None:
    """Let every task that can run do so; counts loop turns, not time."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def blocked_job(started: asyncio.Event, gate: asyncio.Event) -> Job:
    async def job() -> None:
        started.set()
        await gate.wait()

    return job


def noop_job(ran: list[str], label: str) -> Job:
    async def job() -> None:
        ran.append(label)

    return job


@pytest.fixture
async def pool() -> AsyncIterator[WorkerPool]:
    async with WorkerPool(size=1, capacity=2, name="w") as running:
        yield running


async def test_try_submit_is_refused_when_the_queue_is_full(pool: WorkerPool) -> None:
    started, gate = asyncio.Event(), asyncio.Event()
    assert pool.try_submit(blocked_job(started, gate))
    await started.wait()  # the only worker is busy, so the next jobs stay queued
    ran: list[str] = []
    assert pool.try_submit(noop_job(ran, "a"))
    assert pool.free_slots == 1
    assert pool.try_submit(noop_job(ran, "b"))
    assert pool.free_slots == 0
    assert not pool.try_submit(noop_job(ran, "c"))
    gate.set()
    async with asyncio.timeout(GUARD):
        assert await pool.drain(GUARD)
    assert ran == ["a", "b"]


async def test_submit_waits_until_a_slot_frees(pool: WorkerPool) -> None:
    started, gate = asyncio.Event(), asyncio.Event()
    await pool.submit(blocked_job(started, gate))
    await started.wait()
    ran: list[str] = []
    await pool.submit(noop_job(ran, "a"))
    await pool.submit(noop_job(ran, "b"))
    waiting = asyncio.create_task(pool.submit(noop_job(ran, "c")))
    room = asyncio.create_task(pool.wait_for_room())
    await settle()
    assert not waiting.done()
    assert not room.done()
    gate.set()
    async with asyncio.timeout(GUARD):
        await waiting
        await room
        assert await pool.drain(GUARD)
    assert ran == ["a", "b", "c"]


async def test_concurrency_reaches_size_and_never_exceeds_it() -> None:
    size = 4
    active = 0
    most = 0
    all_busy = asyncio.Event()
    gate = asyncio.Event()

    async def job() -> None:
        nonlocal active, most
        active += 1
        most = max(most, active)
        if active == size:
            all_busy.set()
        await gate.wait()
        await asyncio.sleep(0)
        active -= 1

    async with WorkerPool(size=size, capacity=50) as pool:
        for _ in range(30):
            assert pool.try_submit(job)
        async with asyncio.timeout(GUARD):
            await all_busy.wait()
        await settle()
        assert pool.stats().running == size
        assert pool.stats().queued == 30 - size
        gate.set()
        async with asyncio.timeout(GUARD):
            assert await pool.drain(GUARD)
    assert most == size
    assert pool.stats().completed == 30


async def test_a_raising_job_is_reported_counted_and_the_worker_survives() -> None:
    reported: list[BaseException] = []
    boom = ValueError("boom")
    ran: list[str] = []

    async def bad() -> None:
        raise boom

    async with WorkerPool(size=1, capacity=10, on_panic=reported.append) as pool:
        await pool.submit(bad)
        await pool.submit(bad)
        await pool.submit(noop_job(ran, "after"))
        async with asyncio.timeout(GUARD):
            assert await pool.drain(GUARD)
    assert reported == [boom, boom]
    assert ran == ["after"]
    assert pool.stats().panicked == 2
    assert pool.stats().completed == 1


async def test_a_raising_job_is_logged_when_there_is_no_on_panic() -> None:
    async def bad() -> None:
        raise RuntimeError("kaput")

    with structlog.testing.capture_logs() as logs:
        async with WorkerPool(size=1, capacity=1) as pool:
            await pool.submit(bad)
            async with asyncio.timeout(GUARD):
                assert await pool.drain(GUARD)
    errors = [entry for entry in logs if entry["log_level"] == "error"]
    assert len(errors) == 1
    assert errors[0]["event"] == "worker_job_crashed"
    assert isinstance(errors[0]["exc_info"], RuntimeError)


async def test_a_raising_on_panic_does_not_kill_the_worker() -> None:
    def broken_reporter(exc: BaseException) -> None:
        raise KeyError("reporter bug")

    async def bad() -> None:
        raise ValueError("boom")

    ran: list[str] = []
    async with WorkerPool(size=1, capacity=5, on_panic=broken_reporter) as pool:
        await pool.submit(bad)
        await pool.submit(noop_job(ran, "after"))
        async with asyncio.timeout(GUARD):
            assert await pool.drain(GUARD)
    assert ran == ["after"]
    assert pool.stats().panicked == 1


async def test_a_stray_cancelled_error_from_a_job_is_a_panic_not_a_dead_worker() -> None:
    """A job awaiting something another task cancelled must not stop its worker."""
    reported: list[BaseException] = []
    ran: list[str] = []

    async def awaits_cancelled_future() -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.cancel()
        await future

    async with WorkerPool(size=1, capacity=5, on_panic=reported.append) as pool:
        await pool.submit(awaits_cancelled_future)
        await pool.submit(noop_job(ran, "after"))
        async with asyncio.timeout(GUARD):
            assert await pool.drain(GUARD)
    assert ran == ["after"]
    assert len(reported) == 1
    assert isinstance(reported[0], asyncio.CancelledError)


async def test_failed_and_ok_statuses_are_counted() -> None:
    async def failed() -> JobStatus:
        return JobStatus.FAILED

    async def ok() -> JobStatus:
        return JobStatus.OK

    async def nothing() -> None:
        return None

    async with WorkerPool(size=2, capacity=10) as pool:
        for job in (failed, ok, nothing, failed):
            await pool.submit(job)
        async with asyncio.timeout(GUARD):
            assert await pool.drain(GUARD)
    stats = pool.stats()
    assert (stats.completed, stats.failed, stats.panicked) == (2, 2, 0)


async def test_drain_waits_for_queued_and_running_jobs() -> None:
    started, gate = asyncio.Event(), asyncio.Event()
    ran: list[str] = []
    async with WorkerPool(size=1, capacity=5) as pool:
        await pool.submit(blocked_job(started, gate))
        await pool.submit(noop_job(ran, "queued"))
        await started.wait()
        draining = asyncio.create_task(pool.drain(GUARD))
        await settle()
        assert not draining.done()
        assert not pool.is_idle()
        gate.set()
        async with asyncio.timeout(GUARD):
            assert await draining
        assert ran == ["queued"]
        assert pool.is_idle()
        assert pool.stats().completed == 2


async def test_drain_of_an_idle_pool_is_true_at_once(pool: WorkerPool) -> None:
    assert pool.is_idle()
    assert await pool.drain(0)


async def test_drain_with_a_stuck_job_returns_false_and_the_job_keeps_running() -> None:
    started, gate = asyncio.Event(), asyncio.Event()
    async with WorkerPool(size=1, capacity=1) as pool:
        await pool.submit(blocked_job(started, gate))
        await started.wait()
        assert not await pool.drain(0.01)
        assert pool.stats().running == 1
        gate.set()
        async with asyncio.timeout(GUARD):
            assert await pool.drain(GUARD)


async def test_drain_interrupted_by_close_returns_false() -> None:
    started, gate = asyncio.Event(), asyncio.Event()
    async with WorkerPool(size=1, capacity=1) as pool:
        await pool.submit(blocked_job(started, gate))
        await started.wait()
        draining = asyncio.create_task(pool.drain(GUARD))
        await settle()
        await pool.close()
        async with asyncio.timeout(GUARD):
            assert not await draining


async def test_close_cancels_the_running_job() -> None:
    started = asyncio.Event()
    outcome: list[str] = []

    async def long_job() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise

    pool = WorkerPool(size=1, capacity=1)
    async with pool:
        await pool.submit(long_job)
        await started.wait()
    assert outcome == ["cancelled"]
    stats = pool.stats()
    assert (stats.running, stats.completed, stats.panicked) == (0, 0, 0)


async def test_close_stops_a_worker_whose_job_swallows_the_cancellation() -> None:
    started = asyncio.Event()

    async def stubborn() -> None:
        started.set()
        # A buggy job swallowing its cancellation; the pool must still stop.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()

    pool = WorkerPool(size=1, capacity=1)
    # close() awaits every worker, so it returning at all proves the worker stopped.
    async with asyncio.timeout(GUARD), pool:
        await pool.submit(stubborn)
        await started.wait()
    assert pool.is_idle()


async def test_close_drops_queued_jobs_and_is_idempotent() -> None:
    started, gate = asyncio.Event(), asyncio.Event()
    ran: list[str] = []
    pool = WorkerPool(size=1, capacity=3)
    async with pool:
        await pool.submit(blocked_job(started, gate))
        await pool.submit(noop_job(ran, "never"))
        await started.wait()
        await asyncio.gather(pool.close(), pool.close())
        await pool.close()
    assert ran == []
    assert pool.is_idle()
    assert pool.stats().queued == 0


async def test_close_before_start_is_fine() -> None:
    pool = WorkerPool(size=2, capacity=2)
    await pool.close()
    await pool.close()
    assert not pool.try_submit(noop_job([], "x"))


@pytest.mark.parametrize("stop", ["drain", "close"])
async def test_no_jobs_are_taken_after_drain_or_close(stop: str) -> None:
    ran: list[str] = []
    async with WorkerPool(size=1, capacity=2) as pool:
        if stop == "drain":
            assert await pool.drain(GUARD)
        else:
            await pool.close()
        assert not pool.try_submit(noop_job(ran, "late"))
        with pytest.raises(PoolClosedError):
            await pool.submit(noop_job(ran, "late"))
        with pytest.raises(PoolClosedError):
            await pool.wait_for_room()
    assert ran == []


async def test_submit_before_start_raises() -> None:
    pool = WorkerPool(size=1, capacity=1)
    assert not pool.try_submit(noop_job([], "x"))
    with pytest.raises(PoolClosedError, match="not started"):
        await pool.submit(noop_job([], "x"))


@pytest.mark.parametrize("stop", ["drain", "close"])
async def test_a_submit_waiting_for_room_raises_when_the_pool_stops(stop: str) -> None:
    started, gate = asyncio.Event(), asyncio.Event()
    async with WorkerPool(size=1, capacity=1) as pool:
        await pool.submit(blocked_job(started, gate))
        await started.wait()
        await pool.submit(noop_job([], "queued"))
        waiting = asyncio.create_task(pool.submit(noop_job([], "waits")))
        await settle()
        assert not waiting.done()
        stopping: Awaitable[object] = pool.drain(0) if stop == "drain" else pool.close()
        await stopping
        async with asyncio.timeout(GUARD):
            with pytest.raises(PoolClosedError):
                await waiting


async def test_current_worker_names_the_worker_running_the_job() -> None:
    seen: list[str] = []
    size = 3
    arrived = 0
    all_in = asyncio.Event()

    async def job() -> None:
        nonlocal arrived
        seen.append(CURRENT_WORKER.get())
        arrived += 1
        if arrived == size:
            all_in.set()
        await all_in.wait()  # hold every worker so each runs exactly one job

    async with WorkerPool(size=size, capacity=size, name="mail") as pool:
        for _ in range(size):
            await pool.submit(job)
        async with asyncio.timeout(GUARD):
            assert await pool.drain(GUARD)
    assert sorted(seen) == ["mail-0", "mail-1", "mail-2"]
    assert CURRENT_WORKER.get(None) is None


async def test_stats_report_every_field() -> None:
    started, gate = asyncio.Event(), asyncio.Event()
    finished = 0
    three_finished = asyncio.Event()

    def count() -> None:
        # Called as the job's last step: the worker books its outcome before anything else runs.
        nonlocal finished
        finished += 1
        if finished == 3:
            three_finished.set()

    async def ok() -> None:
        count()

    async def failed() -> JobStatus:
        count()
        return JobStatus.FAILED

    async def bad() -> None:
        count()
        raise ValueError("x")

    async with WorkerPool(size=2, capacity=4, on_panic=lambda exc: None) as pool:
        assert pool.stats() == PoolStats(
            size=2, queued=0, running=0, completed=0, failed=0, panicked=0
        )
        for job in (ok, failed, bad):
            await pool.submit(job)
        async with asyncio.timeout(GUARD):
            await three_finished.wait()
        assert pool.is_idle()
        await pool.submit(blocked_job(started, gate))
        await started.wait()
        second_started = asyncio.Event()
        await pool.submit(blocked_job(second_started, gate))
        await second_started.wait()
        await pool.submit(noop_job([], "queued"))
        assert pool.stats() == PoolStats(
            size=2, queued=1, running=2, completed=1, failed=1, panicked=1
        )
        gate.set()
        async with asyncio.timeout(GUARD):
            assert await pool.drain(GUARD)
        assert pool.stats() == PoolStats(
            size=2, queued=0, running=0, completed=4, failed=1, panicked=1
        )


@pytest.mark.parametrize(
    ("size", "capacity", "message"), [(0, 1, "size"), (1, 0, "capacity"), (-1, 5, "size")]
)
def test_nonsense_sizes_are_rejected(size: int, capacity: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WorkerPool(size=size, capacity=capacity)


async def test_a_pool_starts_only_once() -> None:
    pool = WorkerPool(size=1, capacity=1)
    async with pool:
        with pytest.raises(RuntimeError, match="only once"):
            await pool.__aenter__()
    with pytest.raises(RuntimeError, match="only once"):
        await pool.__aenter__()


async def test_many_jobs_all_complete() -> None:
    """Many more jobs than slots pass through submit's backpressure without loss."""
    done: list[int] = []

    def make(n: int) -> Callable[[], Awaitable[None]]:
        async def job() -> None:
            if n % 7 == 0:
                await asyncio.sleep(0)
            done.append(n)

        return job

    async with WorkerPool(size=4, capacity=8) as pool:
        for n in range(2000):
            await pool.submit(make(n))
        async with asyncio.timeout(GUARD):
            assert await pool.drain(GUARD)
    assert sorted(done) == list(range(2000))
    assert pool.stats().completed == 2000
