"""The priority lane: priority first, capped by its share while normal waits; a lane of its own."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from messaging_service.core.lanes import Lane, LanePicker
from messaging_service.service.lane_queue import LaneQueue
from messaging_service.service.pool import Job, PoolClosedError, WorkerPool


def test_a_lone_priority_request_is_picked_before_waiting_normal_ones() -> None:
    picker = LanePicker(0.9)
    assert picker.pick(priority_waiting=False, normal_waiting=True) is Lane.NORMAL
    assert picker.pick(priority_waiting=True, normal_waiting=True) is Lane.PRIORITY


def test_while_both_wait_the_priority_lane_takes_its_share_and_normal_the_rest() -> None:
    picker = LanePicker(0.9)
    picks = Counter(picker.pick(priority_waiting=True, normal_waiting=True) for _ in range(100))
    assert picks == {Lane.PRIORITY: 90, Lane.NORMAL: 10}


def test_normal_requests_are_spread_through_a_priority_stream_not_bunched_at_the_end() -> None:
    picker = LanePicker(0.75)
    picks = [picker.pick(priority_waiting=True, normal_waiting=True) for _ in range(8)]
    assert picks.count(Lane.NORMAL) == 2
    assert picks[:4].count(Lane.NORMAL) == 1


def test_a_round_starts_again_once_one_lane_is_empty() -> None:
    picker = LanePicker(0.5)
    assert picker.pick(priority_waiting=True, normal_waiting=True) is Lane.PRIORITY
    assert picker.pick(priority_waiting=True, normal_waiting=True) is Lane.NORMAL
    assert picker.pick(priority_waiting=False, normal_waiting=False) is None
    assert picker.pick(priority_waiting=True, normal_waiting=True) is Lane.PRIORITY
    assert picker.share == 0.5


@pytest.mark.parametrize("share", [0.0, 1.0, -0.1, 1.5])
def test_a_share_outside_zero_and_one_is_refused(share: float) -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        LanePicker(share)


def _job(ran: list[str], label: str) -> Job:
    async def job() -> None:
        ran.append(label)

    return job


async def test_a_priority_job_behind_a_full_normal_queue_is_next() -> None:
    """Buffer of 100, 10 workers all busy: the priority job is the 11th to start, not the 111th."""
    ran: list[str] = []
    gate = asyncio.Event()

    async def busy() -> None:
        await gate.wait()

    async with WorkerPool(size=10, capacity=100, priority_share=0.9) as pool:
        for _ in range(10):
            assert pool.try_submit(busy)
        for _ in range(20):
            await asyncio.sleep(0)
        for n in range(100):
            assert pool.try_submit(_job(ran, f"normal-{n}"))
        assert pool.free_slots == 0
        assert not pool.try_submit(_job(ran, "one too many"))
        assert pool.free(Lane.PRIORITY) == 100
        assert pool.try_submit(_job(ran, "priority"), Lane.PRIORITY)
        assert pool.stats().queued_priority == 1
        gate.set()
        assert await pool.drain(10)
    assert ran[0] == "priority"
    assert len(ran) == 101


async def test_each_lane_waits_for_room_of_its_own() -> None:
    gate = asyncio.Event()

    async def busy() -> None:
        await gate.wait()

    async with WorkerPool(size=1, capacity=1, priority_share=0.9) as pool:
        assert pool.try_submit(busy)
        await asyncio.sleep(0)
        assert pool.try_submit(busy, Lane.NORMAL)
        # The normal lane is full; a priority submit does not wait for it.
        async with asyncio.timeout(10):
            await pool.submit(busy, Lane.PRIORITY)
        waiting = asyncio.create_task(pool.submit(busy, Lane.PRIORITY))
        await asyncio.sleep(0)
        assert not waiting.done()
        gate.set()
        async with asyncio.timeout(10):
            await waiting
        assert await pool.drain(10)
    with pytest.raises(PoolClosedError):
        await pool.wait_for_room(Lane.PRIORITY)


async def test_a_submitter_waiting_for_priority_room_is_woken_when_the_pool_closes() -> None:
    gate = asyncio.Event()

    async def busy() -> None:
        await gate.wait()

    pool = WorkerPool(size=1, capacity=1, priority_share=0.5)
    async with pool:
        assert pool.try_submit(busy, Lane.PRIORITY)
        await asyncio.sleep(0)
        assert pool.try_submit(busy, Lane.PRIORITY)
        waiting = asyncio.create_task(pool.submit(busy, Lane.PRIORITY))
        await asyncio.sleep(0)
        await pool.close()
        with pytest.raises(PoolClosedError):
            await waiting
    assert not pool.try_submit(busy, Lane.PRIORITY)


async def test_a_cancelled_getter_passes_its_wake_up_to_another_worker() -> None:
    queue = LaneQueue(capacity=2, share=0.9)
    first = asyncio.create_task(queue.get())
    second = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    ran: list[str] = []
    queue.put_nowait(_job(ran, "a"), Lane.NORMAL)
    first.cancel()  # woken, then cancelled before it ran: the job must not be stranded
    async with asyncio.timeout(10):
        job = await second
    await job()
    assert ran == ["a"]
    assert queue.empty()
    with pytest.raises(asyncio.QueueEmpty):
        queue.get_nowait()
