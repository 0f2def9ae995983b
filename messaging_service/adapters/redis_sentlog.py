"""Adapter over redis-py's asyncio client: the record of sent ids shared by every replica.

Each sent id is a key ``<prefix><id>`` set with ``SET key 1 EX ttl``; Redis expires it. A claim
on an id being sent is the same key holding the claimer's token instead of ``1``, taken with
``SET key token NX PX claim_ttl GET`` (Redis 7 or later) and released by a script that deletes
it only while it holds that token: each one round trip, atomic in Redis. Errors
are translated once, here, into SentLogUnavailableError, and a command never waits longer than
the configured timeout and is never retried: the caller fails open, so a slow store must not
slow sending down more than that.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog
from redis.exceptions import RedisError

from messaging_service.adapters.redis_store import GuardedRedis, describe
from messaging_service.config import DedupSettings
from messaging_service.core.lifetime import ClosedOnExit
from messaging_service.core.values import Claim
from messaging_service.errors import SentLogUnavailableError

log = structlog.get_logger(__name__)

# The value of a sent id's key; a claim's token is never this.
_SENT = b"1"

# Deletes the claim only while it is still the caller's: a claim that expired and was taken
# by another sender, or turned into "sent", stays.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisSentLog(ClosedOnExit):
    """A SentLog in Redis. Use as an async context manager; closing twice is harmless."""

    def __init__(
        self, settings: DedupSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._prefix = settings.key_prefix
        self._ttl = settings.ttl
        self._claim_ttl_ms = settings.claim_ttl * 1000
        self._redis = GuardedRedis(
            settings, what="sent-id store", error=SentLogUnavailableError, clock=clock
        )

    async def __aenter__(self) -> RedisSentLog:
        # Not reachable at start is not fatal: sending goes on without the record (fail open).
        try:
            await self._redis.client().ping()
        except (RedisError, OSError) as exc:
            log.warning("dedup_unavailable", operation="ping", error=describe(exc))
        else:
            log.info("dedup_store_ready", store="redis")
        return self

    async def close(self) -> None:
        await self._redis.close()

    async def seen(self, email_id: str) -> bool:
        client = self._redis.available()
        try:
            # The key may hold a claim's token instead: being sent is not sent.
            return await client.get(self._prefix + email_id) == _SENT
        except (RedisError, OSError) as exc:
            raise self._redis.failed(exc) from exc

    async def claim(self, email_id: str, token: str) -> Claim:
        client = self._redis.available()
        try:
            held = await client.set(
                self._prefix + email_id, token, nx=True, px=self._claim_ttl_ms, get=True
            )
        except (RedisError, OSError) as exc:
            raise self._redis.failed(exc) from exc
        if held is None or held == token.encode():
            return Claim.CLAIMED
        return Claim.SENT if held == _SENT else Claim.HELD

    async def release(self, email_id: str, token: str) -> None:
        client = self._redis.available()
        try:
            await client.eval(_RELEASE, 1, self._prefix + email_id, token)
        except (RedisError, OSError) as exc:
            raise self._redis.failed(exc) from exc

    async def record(self, email_id: str) -> None:
        client = self._redis.available()
        try:
            await client.set(self._prefix + email_id, 1, ex=self._ttl)
        except (RedisError, OSError) as exc:
            raise self._redis.failed(exc) from exc
