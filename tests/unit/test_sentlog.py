"""The in-memory record of sent ids: what it remembers, for how long, and its bound."""

from __future__ import annotations

import pytest

from messaging_service.adapters.sentlog import MemorySentLog
from messaging_service.core.values import Claim


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
    with pytest.raises(ValueError, match="positive"):
        MemorySentLog(ttl=1, max_entries=1, claim_ttl=0)


async def test_the_first_claim_wins_and_its_holder_may_claim_again() -> None:
    log = MemorySentLog(ttl=60, max_entries=10)
    assert await log.claim("a", "t1") is Claim.CLAIMED
    assert await log.claim("a", "t2") is Claim.HELD
    assert await log.claim("a", "t1") is Claim.CLAIMED
    assert await log.claim("b", "t2") is Claim.CLAIMED
    assert not await log.seen("a"), "a claim is not a sent id"


async def test_a_recorded_id_answers_sent_to_every_claim() -> None:
    log = MemorySentLog(ttl=60, max_entries=10)
    assert await log.claim("a", "t1") is Claim.CLAIMED
    await log.record("a")
    assert await log.claim("a", "t1") is Claim.SENT
    assert await log.claim("a", "t2") is Claim.SENT
    assert await log.claim("unclaimed-but-sent", "t3") is Claim.CLAIMED
    await log.record("unclaimed-but-sent")
    assert await log.claim("unclaimed-but-sent", "t3") is Claim.SENT


async def test_only_the_holders_token_releases_a_claim() -> None:
    log = MemorySentLog(ttl=60, max_entries=10)
    assert await log.claim("a", "t1") is Claim.CLAIMED
    await log.release("a", "t2")
    assert await log.claim("a", "t2") is Claim.HELD
    await log.release("a", "t1")
    assert await log.claim("a", "t2") is Claim.CLAIMED
    await log.release("never-claimed", "t1")  # harmless


async def test_a_claim_expires_after_its_ttl_and_is_not_renewed_by_its_holder() -> None:
    clock = Clock()
    log = MemorySentLog(ttl=60, max_entries=10, claim_ttl=30, clock=clock)
    assert await log.claim("a", "crashed") is Claim.CLAIMED
    clock.now += 29.9
    assert await log.claim("a", "crashed") is Claim.CLAIMED
    assert await log.claim("a", "other") is Claim.HELD
    clock.now += 0.1
    assert await log.claim("a", "other") is Claim.CLAIMED
    assert await log.claim("a", "crashed") is Claim.HELD
    await log.release("a", "crashed")
    assert await log.claim("a", "crashed") is Claim.HELD, "an expired holder releases nothing"


async def test_expired_claims_are_dropped_once_max_entries_are_claimed() -> None:
    clock = Clock()
    log = MemorySentLog(ttl=60, max_entries=3, claim_ttl=30, clock=clock)
    for email_id in ("a", "b", "c"):
        await log.claim(email_id, "cancelled")
    clock.now += 30
    assert await log.claim("d", "t") is Claim.CLAIMED
    assert log.claims_held() == 1
