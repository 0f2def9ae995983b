"""The record of sent request ids: the bounded in-memory default (``ports.SentLog``).

A request id is an idempotency key: once the relay accepted an email for an id, a redelivery
of that id within the TTL is finished without sending. The memory log only covers this
process's lifetime; a shared store (Redis, ``redis_sentlog``) also covers crashes and the
other replicas.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class MemorySentLog:
    """At most ``max_entries`` ids, each forgotten ``ttl`` seconds after it was recorded."""

    def __init__(
        self,
        *,
        ttl: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl <= 0 or max_entries <= 0:
            raise ValueError("ttl and max_entries must be positive")
        self._ttl = ttl
        self._max_entries = max_entries
        self._clock = clock
        # id -> expiry; insertion order is expiry order because the TTL is the same for all.
        self._expiries: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        self._expire(self._clock())
        return len(self._expiries)

    async def seen(self, email_id: str) -> bool:
        now = self._clock()
        self._expire(now)
        return email_id in self._expiries

    async def record(self, email_id: str) -> None:
        now = self._clock()
        self._expire(now)
        self._expiries[email_id] = now + self._ttl
        self._expiries.move_to_end(email_id)
        while len(self._expiries) > self._max_entries:
            self._expiries.popitem(last=False)  # the oldest: the next to expire anyway

    def _expire(self, now: float) -> None:
        while self._expiries:
            email_id, expiry = next(iter(self._expiries.items()))
            if expiry > now:
                return
            del self._expiries[email_id]
