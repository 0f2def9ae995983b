"""The Redis record of sent ids against a real redis-server: keys, TTL, claims, outages, secrets."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import structlog
from redis.asyncio import Redis

from messaging_service.adapters.redis_sentlog import RedisSentLog
from messaging_service.config import DedupSettings
from messaging_service.core.values import Claim
from messaging_service.errors import SentLogUnavailableError
from support.kafka import wait_for
from support.redis_server import RedisServer

pytestmark = pytest.mark.integration


def dedup_settings(url: str, **fields: object) -> DedupSettings:
    return DedupSettings(_env_file=None, redis_url=url, **fields)  # type: ignore[arg-type]


async def test_a_recorded_id_is_seen_under_its_prefixed_key_with_a_ttl(
    redis: RedisServer,
) -> None:
    async with RedisSentLog(dedup_settings(redis.url, key_prefix="t1:", ttl=600)) as log:
        assert not await log.seen("order-1")
        await log.record("order-1")
        assert await log.seen("order-1")
        assert not await log.seen("order-2")
    client = Redis.from_url(redis.url)
    try:
        assert await client.get("t1:order-1") == b"1"
        assert 0 < await client.ttl("t1:order-1") <= 600
    finally:
        await client.aclose()


async def test_an_id_is_forgotten_when_redis_expires_it(redis: RedisServer) -> None:
    async with RedisSentLog(dedup_settings(redis.url, ttl=1)) as log:
        await log.record("short-lived")
        assert await log.seen("short-lived")

        async def forgotten() -> bool:
            return not await log.seen("short-lived")

        await wait_for(forgotten, 30, interval=0.2, message="the key expired")


async def test_a_stopped_server_is_unavailable_and_found_again_after_its_restart(
    redis: RedisServer,
) -> None:
    async with RedisSentLog(dedup_settings(redis.url, redis_timeout=2)) as log:
        await log.record("before")
        redis.stop()
        with pytest.raises(SentLogUnavailableError, match="sent-id store"):
            await log.seen("before")
        with pytest.raises(SentLogUnavailableError):
            await log.record("during")
        redis.start()  # memory only: what it had is gone, as after a Redis failover

        async def answers() -> bool:
            try:
                await log.record("after")
            except SentLogUnavailableError:
                return False
            return True

        await wait_for(answers, 30, interval=0.2, message="the store answers again")
        assert await log.seen("after")


async def test_an_unreachable_server_at_start_does_not_fail_the_start(tmp_path: Path) -> None:
    down = RedisServer(tmp_path / "never-started")
    with structlog.testing.capture_logs() as logs:
        async with RedisSentLog(dedup_settings(down.url, redis_timeout=2)) as log:
            with pytest.raises(SentLogUnavailableError):
                await log.seen("x")
    assert [entry["operation"] for entry in logs if entry["event"] == "dedup_unavailable"] == [
        "ping"
    ]


async def test_the_password_in_the_url_is_used_and_never_logged(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "auth", password="s3cret-pw") as server:
        async with RedisSentLog(dedup_settings(server.url)) as log:
            await log.record("a")
            assert await log.seen("a")
        wrong = server.url.replace("s3cret-pw", "wr0ng-pw")
        with structlog.testing.capture_logs() as logs:
            async with RedisSentLog(dedup_settings(wrong)) as log:
                with pytest.raises(SentLogUnavailableError) as raised:
                    await log.seen("a")
    assert "wr0ng-pw" not in str(raised.value)
    assert "wr0ng-pw" not in repr(logs)
    assert logs, "the failed ping at start is logged"


async def test_close_is_idempotent(redis: RedisServer) -> None:
    log = RedisSentLog(dedup_settings(redis.url))
    async with log:
        await log.record("a")
    await log.close()
    with pytest.raises(SentLogUnavailableError, match="closed"):
        await log.seen("a")


async def test_racing_claimers_on_separate_connections_one_wins(redis: RedisServer) -> None:
    """Two replicas claim the same id at once, many times over: exactly one claim wins."""
    settings = dedup_settings(redis.url, key_prefix="race:")
    async with RedisSentLog(settings) as first, RedisSentLog(settings) as second:
        for round_ in range(20):
            email_id = f"order-{round_}"
            answers = await asyncio.gather(
                *(
                    log.claim(email_id, f"{name}-{n}")
                    for n in range(4)
                    for name, log in (("a", first), ("b", second))
                )
            )
            assert (
                sorted(answers, key=lambda claim: claim.value) == [Claim.CLAIMED] + [Claim.HELD] * 7
            )


async def test_a_claim_is_the_key_with_its_token_and_the_claim_ttl(redis: RedisServer) -> None:
    async with RedisSentLog(dedup_settings(redis.url, key_prefix="c:", claim_ttl=120)) as log:
        assert await log.claim("order-1", "token-a") is Claim.CLAIMED
        assert await log.claim("order-1", "token-a") is Claim.CLAIMED, "its holder again"
        assert await log.claim("order-1", "token-b") is Claim.HELD
        assert not await log.seen("order-1"), "a claim is not a sent id"
        client = Redis.from_url(redis.url)
        try:
            assert await client.get("c:order-1") == b"token-a"
            assert 0 < await client.pttl("c:order-1") <= 120_000
            await log.record("order-1")
            assert await client.get("c:order-1") == b"1"
        finally:
            await client.aclose()
        assert await log.claim("order-1", "token-a") is Claim.SENT
        assert await log.claim("order-1", "token-b") is Claim.SENT


async def test_a_release_only_deletes_the_callers_own_claim(redis: RedisServer) -> None:
    async with RedisSentLog(dedup_settings(redis.url, key_prefix="r:")) as log:
        assert await log.claim("order-1", "token-a") is Claim.CLAIMED
        await log.release("order-1", "token-b")
        assert await log.claim("order-1", "token-b") is Claim.HELD, "not B's to release"
        await log.release("order-1", "token-a")
        assert await log.claim("order-1", "token-b") is Claim.CLAIMED
        await log.record("order-1")
        await log.release("order-1", "token-b")
        assert await log.claim("order-1", "token-c") is Claim.SENT, "a sent id is never released"
        await log.release("never-claimed", "token-a")


async def test_a_claim_whose_holder_crashed_expires(redis: RedisServer) -> None:
    async with RedisSentLog(dedup_settings(redis.url, claim_ttl=1)) as log:
        assert await log.claim("order-1", "crashed") is Claim.CLAIMED

        async def free() -> bool:
            return await log.claim("order-1", "next") is Claim.CLAIMED

        await wait_for(free, 30, interval=0.2, message="the claim expired")


async def test_claims_and_releases_on_a_stopped_server_are_unavailable(
    redis: RedisServer,
) -> None:
    async with RedisSentLog(dedup_settings(redis.url, redis_timeout=2)) as log:
        assert await log.claim("order-1", "token-a") is Claim.CLAIMED
        redis.stop()
        with pytest.raises(SentLogUnavailableError, match="sent-id store"):
            await log.release("order-1", "token-a")
        with pytest.raises(SentLogUnavailableError):
            await log.claim("order-1", "token-a")
        redis.start()
