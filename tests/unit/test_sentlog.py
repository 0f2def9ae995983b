"""The in-memory record of sent ids: what it remembers, for how long, and its bound."""

from __future__ import annotations

import pytest

from messaging_service.adapters.sentlog import MemorySentLog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_recorded_id_is_seen_and_others_are_not() -> None:
    log = MemorySentLog(ttl=60, max_entries=10)
    await log.record("a")
    assert await log.seen("a")
    assert not await log.seen("b")


async def test_an_id_is_forgotten_once_its_ttl_passed() -> None:
    clock = Clock()
    log = MemorySentLog(ttl=60, max_entries=10, clock=clock)
    await log.record("a")
    clock.now += 30
    await log.record("b")
    clock.now += 29.9
    assert await log.seen("a")
    clock.now += 0.1
    assert not await log.seen("a")
    assert await log.seen("b")
    assert len(log) == 1


async def test_recording_again_restarts_the_ttl() -> None:
    clock = Clock()
    log = MemorySentLog(ttl=60, max_entries=10, clock=clock)
    await log.record("a")
    await log.record("b")
    clock.now += 50
    await log.record("a")
    clock.now += 20
    assert await log.seen("a")
    assert not await log.seen("b")


async def test_beyond_max_entries_the_oldest_ids_are_dropped() -> None:
    log = MemorySentLog(ttl=60, max_entries=3)
    for email_id in ("a", "b", "c", "d", "e"):
        await log.record(email_id)
    assert len(log) == 3
    assert [await log.seen(i) for i in ("a", "b", "c", "d", "e")] == [
        False,
        False,
        True,
        True,
        True,
    ]


def test_ttl_and_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        MemorySentLog(ttl=0, max_entries=1)
    with pytest.raises(ValueError, match="positive"):
        MemorySentLog(ttl=1, max_entries=0)
