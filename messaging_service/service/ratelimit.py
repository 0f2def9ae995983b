"""Adapter: make callers wait for the rate ``AdaptiveRate`` allows, on aiolimiter's leaky bucket.

One bucket is shared by every worker. Its capacity is fixed and the rate changes by changing
what each email costs: at ``r`` emails/s an email costs ``_CAPACITY / r`` units of a bucket
that drains ``_CAPACITY`` units a second. So a cut takes effect at once, from the next
``acquire()`` on (callers already waiting pay the cost they asked for), with aiolimiter's public
API only. Bursts are bounded to one second's worth.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from aiolimiter import AsyncLimiter

from messaging_service.core.throttle import AdaptiveRate, PushBack

_CAPACITY = 1_000_000.0


class SendRateLimiter:
    """``await acquire()`` before each send; ``throttled()`` when the relay pushes back."""

    def __init__(
        self,
        rate: AdaptiveRate,
        *,
        push_back: PushBack | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate = rate
        self._push_back = push_back or PushBack(clock=clock)
        self._bucket = AsyncLimiter(_CAPACITY, time_period=1.0)

    def allowed(self) -> float | None:
        """Emails per second allowed now; None when there is no limit."""
        return self._rate.allowed()

    async def acquire(self) -> None:
        allowed = self._rate.allowed()
        if allowed is not None:
            await self._bucket.acquire(min(_CAPACITY / allowed, _CAPACITY))
        self._push_back.attempt()

    def throttled(self) -> float | None:
        """Report a throttling reply; returns the new allowed rate if this one cut it.

        Only push-back cuts (see ``PushBack``): a few deferred messages among many do not,
        nor a few among the first handful of attempts (after a relay outage, say). Without a
        ceiling, recovery climbs back to the busiest recent second, not to the rate of now.
        """
        if not self._push_back.throttled():
            return None
        attempts = self._push_back.attempts
        if self._rate.on_throttle(attempts.rate(), peak=attempts.peak()):
            return self._rate.allowed()
        return None
