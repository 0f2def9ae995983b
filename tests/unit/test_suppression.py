"""The suppression list's pure parts: which refusals are hard bounces, the memory store."""

from __future__ import annotations

import pytest

from messaging_service.core.suppression import (
    MemorySuppressionStore,
    enhanced_status,
    hard_bounce,
    hard_bounces,
    is_hard_bounce,
)


@pytest.mark.parametrize(
    ("code", "response", "expected"),
    [
        (550, "5.1.1 no such user", True),
        (550, "5.1.10 recipient address rejected: null MX", True),
        (551, "5.1.6 user has moved", True),
        (553, "5.1.3 bad address syntax", True),
        (550, "5.2.1 mailbox disabled", True),
        (550, "no such user here", True),  # no enhanced status: the code decides
        (550, "5.7.1 rejected by policy", False),
        (550, "5.2.2 mailbox full", False),
        (554, "5.1.1 transaction failed", False),
        (552, "5.2.2 over quota", False),
        (450, "4.1.1 try later", False),
        (452, "4.2.2 mailbox full", False),
    ],
)
def test_only_mailbox_refusals_are_hard_bounces(code: int, response: str, expected: bool) -> None:
    assert is_hard_bounce(code, response) is expected


def test_enhanced_status_is_read_from_the_start_of_the_reply() -> None:
    assert enhanced_status("5.1.1 no such user") == "5.1.1"
    assert enhanced_status("  4.2.2 full") == "4.2.2"
    assert enhanced_status("no such user 5.1.1") is None
    assert enhanced_status("5.1.1.2 nonsense") is None


def test_a_hard_bounce_expires_after_the_ttl_or_never_with_zero() -> None:
    entry = hard_bounce("Bob@Example.COM", code=550, response="5.1.1 x", now=100.0, ttl=30)
    assert entry.address == "bob@example.com"
    assert entry.reason == "hard_bounce"
    assert entry.expires_at == 130.0
    assert not entry.expired(129.9)
    assert entry.expired(130.0)
    forever = hard_bounce("bob@example.com", code=550, response="5.1.1 x", now=100.0, ttl=0)
    assert forever.expires_at is None
    assert not forever.expired(1e12)


def test_hard_bounces_keeps_only_the_mailbox_refusals() -> None:
    entries = hard_bounces(
        [("a@example.com", 550, "5.1.1 gone"), ("b@example.com", 550, "5.7.1 policy")],
        now=0.0,
        ttl=10,
    )
    assert [entry.address for entry in entries] == ["a@example.com"]


async def test_memory_store_matches_case_insensitively_and_forgets_expired_entries() -> None:
    now = [1000.0]
    store = MemorySuppressionStore(max_entries=10, clock=lambda: now[0])
    await store.add(hard_bounce("gone@example.com", code=550, response="5.1.1", now=now[0], ttl=60))
    found = await store.suppressed(["GONE@example.com", "here@example.com"])
    assert found == frozenset({"GONE@example.com"})
    now[0] += 60
    assert await store.suppressed(["gone@example.com"]) == frozenset()
    assert await store.entries() == []


async def test_memory_store_is_bounded_and_drops_the_oldest() -> None:
    store = MemorySuppressionStore(max_entries=2, clock=lambda: 0.0)
    for name in ("a", "b", "c"):
        await store.add(hard_bounce(f"{name}@example.com", code=550, response="", now=0, ttl=0))
    assert len(store) == 2
    assert [e.address for e in await store.entries()] == ["b@example.com", "c@example.com"]


async def test_memory_store_remove_says_whether_the_address_was_there() -> None:
    store = MemorySuppressionStore(max_entries=2)
    await store.add(hard_bounce("a@example.com", code=550, response="", now=0, ttl=0))
    assert await store.remove("A@example.com") is True
    assert await store.remove("a@example.com") is False
    assert await store.suppressed(["a@example.com"]) == frozenset()
