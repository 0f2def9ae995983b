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
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from messaging_service.config import DedupSettings
from messaging_service.core.lifetime import ClosedOnExit
from messaging_service.core.values import Claim
from messaging_service.errors import SentLogUnavailableError

log = structlog.get_logger(__name__)

# After a failure, answer "unavailable" at once for this long instead of paying the timeout on
# every send while the store is down (one probe per interval finds it back).
_HOLD_OFF = 1.0

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
        if settings.redis_url is None:
            raise ValueError("DEDUP_REDIS_URL is not set")
        self._prefix = settings.key_prefix
        self._ttl = settings.ttl
        self._claim_ttl_ms = settings.claim_ttl * 1000
        self._clock = clock
        self._down_until = 0.0
        self._client: Redis | None = Redis.from_url(
            settings.redis_url.get_secret_value(),
            socket_timeout=settings.redis_timeout,
            socket_connect_timeout=settings.redis_timeout,
            retry=Retry(NoBackoff(), 0),
        )

    async def __aenter__(self) -> RedisSentLog:
        # Not reachable at start is not fatal: sending goes on without the record (fail open).
        try:
            await self._redis().ping()
        except (RedisError, OSError) as exc:
            log.warning("dedup_unavailable", operation="ping", error=_describe(exc))
        else:
            log.info("dedup_store_ready", store="redis")
        return self

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def seen(self, email_id: str) -> bool:
        client = self._available()
        try:
            # The key may hold a claim's token instead: being sent is not sent.
            return await client.get(self._prefix + email_id) == _SENT
        except (RedisError, OSError) as exc:
            raise self._failed(exc) from exc

    async def claim(self, email_id: str, token: str) -> Claim:
        client = self._available()
        try:
            held = await client.set(
                self._prefix + email_id, token, nx=True, px=self._claim_ttl_ms, get=True
            )
        except (RedisError, OSError) as exc:
            raise self._failed(exc) from exc
        if held is None or held == token.encode():
            return Claim.CLAIMED
        return Claim.SENT if held == _SENT else Claim.HELD

    async def release(self, email_id: str, token: str) -> None:
        client = self._available()
        try:
            await client.eval(_RELEASE, 1, self._prefix + email_id, token)
        except (RedisError, OSError) as exc:
            raise self._failed(exc) from exc

    async def record(self, email_id: str) -> None:
        client = self._available()
        try:
            await client.set(self._prefix + email_id, 1, ex=self._ttl)
        except (RedisError, OSError) as exc:
            raise self._failed(exc) from exc

    def _redis(self) -> Redis:
        if self._client is None:
            raise SentLogUnavailableError("sent-id store is closed")
        return self._client

    def _available(self) -> Redis:
        client = self._redis()
        if self._clock() < self._down_until:
            raise SentLogUnavailableError("sent-id store failed less than a second ago")
        return client

    def _failed(self, exc: BaseException) -> SentLogUnavailableError:
        self._down_until = self._clock() + _HOLD_OFF
        return SentLogUnavailableError(f"sent-id store: {_describe(exc)}")


def _describe(exc: BaseException) -> str:
    # The class and redis-py's message (host and port at most); never the URL, which may
    # carry a password.
    return f"{type(exc).__name__}: {exc}"
