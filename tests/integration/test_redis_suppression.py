"""The suppression list in a real Redis: expiry by TTL, kept until removed with 0, listing."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from messaging_service.adapters.redis_suppression import RedisSuppressionStore
from messaging_service.config import DedupSettings
from messaging_service.core.suppression import Suppression, hard_bounce
from messaging_service.errors import SuppressionUnavailableError
from support.redis_server import RedisServer

pytestmark = pytest.mark.integration

PREFIX = "test:suppressed:"


def settings(url: str) -> DedupSettings:
    return DedupSettings(redis_url=url, redis_timeout=0.5)


async def test_entries_expire_with_their_ttl_and_zero_keeps_them(redis: RedisServer) -> None:
    now = 1_000_000.0
    async with RedisSuppressionStore(
        settings(redis.url), key_prefix=PREFIX, clock=lambda: now
    ) as store:
        await store.add(
            hard_bounce("Gone@Example.com", code=550, response="5.1.1 x", now=now, ttl=60)
        )
        await store.add(hard_bounce("kept@example.com", code=551, response="", now=now, ttl=0))
        found = await store.suppressed(["GONE@example.com", "kept@example.com", "no@example.com"])
        assert found == frozenset({"GONE@example.com", "kept@example.com"})
        entries = await store.entries()
        assert [e.address for e in entries] == ["gone@example.com", "kept@example.com"]
        assert entries[0] == Suppression(
            address="gone@example.com",
            reason="hard_bounce",
            created_at=now,
            expires_at=now + 60,
            code=550,
            response="5.1.1 x",
        )
    client = Redis.from_url(redis.url)
    try:
        assert 0 < await client.ttl(PREFIX + "gone@example.com") <= 60
        assert await client.ttl(PREFIX + "kept@example.com") == -1  # no expiry
    finally:
        await client.aclose()


async def test_remove_takes_the_address_off_the_list(redis: RedisServer) -> None:
    async with RedisSuppressionStore(settings(redis.url), key_prefix=PREFIX) as store:
        await store.add(hard_bounce("a@example.com", code=550, response="", now=0, ttl=0))
        assert await store.remove("A@example.com") is True
        assert await store.remove("a@example.com") is False
        assert await store.suppressed(["a@example.com"]) == frozenset()


async def test_a_store_that_cannot_answer_raises_the_services_error(redis: RedisServer) -> None:
    redis.stop()
    async with RedisSuppressionStore(settings(redis.url), key_prefix=PREFIX) as store:
        with pytest.raises(SuppressionUnavailableError, match="suppression store"):
            await store.suppressed(["a@example.com"])
