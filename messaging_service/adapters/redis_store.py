"""What the Redis-backed stores (sent ids, suppression list) share: the client and its hold-off.

Every command waits at most DEDUP_REDIS_TIMEOUT and is never retried by redis-py: the callers
decide what a failure means. After a failure the store answers "unavailable" at once for a
second instead of paying the timeout on every call while Redis is down (one call per second
finds it back). Errors name the exception class and redis-py's message (host and port at
most), never the URL, which may carry a password.
"""

from __future__ import annotations

from collections.abc import Callable

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from messaging_service.config import DedupSettings
from messaging_service.errors import ServiceError

HOLD_OFF = 1.0


class GuardedRedis:
    """One Redis client for a store called ``what``, failing with ``error`` while it is down."""

    def __init__(
        self,
        settings: DedupSettings,
        *,
        what: str,
        error: Callable[[str], ServiceError],
        clock: Callable[[], float],
    ) -> None:
        if settings.redis_url is None:
            raise ValueError("DEDUP_REDIS_URL is not set")
        self._what = what
        self._error = error
        self._clock = clock
        self._down_until = 0.0
        self._client: Redis | None = Redis.from_url(
            settings.redis_url.get_secret_value(),
            socket_timeout=settings.redis_timeout,
            socket_connect_timeout=settings.redis_timeout,
            retry=Retry(NoBackoff(), 0),
        )

    def client(self) -> Redis:
        """The client, hold-off or not; the store's error once closed."""
        if self._client is None:
            raise self._error(f"{self._what} is closed")
        return self._client

    def available(self) -> Redis:
        """The client, unless it is closed or failed less than ``HOLD_OFF`` seconds ago."""
        client = self.client()
        if self._clock() < self._down_until:
            raise self._error(f"{self._what} failed less than a second ago")
        return client

    def failed(self, exc: BaseException) -> ServiceError:
        """Start the hold-off; the store's error for ``exc``, to raise from it."""
        self._down_until = self._clock() + HOLD_OFF
        return self._error(f"{self._what}: {describe(exc)}")

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
