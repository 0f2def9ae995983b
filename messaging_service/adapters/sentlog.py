"""The record of sent request ids: the bounded in-memory default (``ports.SentLog``).

A request id is an idempotency key: once the relay accepted an email for an id, a redelivery
of that id within the TTL is finished without sending. Before an attempt a sender claims the
id, so two copies of a request in flight at once are not both sent. The memory log only covers
this process's lifetime; a shared store (Redis, ``redis_sentlog``) also covers crashes and the
other replicas.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from messaging_service.core.values import Claim


class MemorySentLog:
    """At most ``max_entries`` ids, each forgotten ``ttl`` seconds after it was recorded.

    A claim lasts ``claim_ttl`` seconds unless it is recorded or released first.
    """

    def __init__(
        self,
        *,
        ttl: float,
        max_entries: int,
        claim_ttl: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl <= 0 or max_entries <= 0 or claim_ttl <= 0:
            raise ValueError("ttl, claim_ttl and max_entries must be positive")
        self._ttl = ttl
        self._max_entries = max_entries
        self._claim_ttl = claim_ttl
        self._clock = clock
        # id -> expiry; insertion order is expiry order because the TTL is the same for all.
        self._expiries: OrderedDict[str, float] = OrderedDict()
        # id -> (token, expiry): the ids being sent now.
        self._claims: dict[str, tuple[str, float]] = {}

    def __len__(self) -> int:
        self._expire(self._clock())
        return len(self._expiries)

    def claims_held(self) -> int:
        """Claims in memory, expired ones not dropped yet included (for tests and debugging)."""
        return len(self._claims)

    async def seen(self, email_id: str) -> bool:
        now = self._clock()
        self._expire(now)
        return email_id in self._expiries

    async def claim(self, email_id: str, token: str) -> Claim:
        now = self._clock()
        self._expire(now)
        if email_id in self._expiries:
            return Claim.SENT
        held = self._claims.get(email_id)
        if held is not None and held[1] > now:
            # Its own live claim is not renewed, as Redis's SET NX does not renew it either.
            return Claim.CLAIMED if held[0] == token else Claim.HELD
        if len(self._claims) >= self._max_entries:
            self._drop_expired_claims(now)
        self._claims[email_id] = (token, now + self._claim_ttl)
        return Claim.CLAIMED

    async def release(self, email_id: str, token: str) -> None:
        held = self._claims.get(email_id)
        if held is not None and held[0] == token:
            del self._claims[email_id]

    async def record(self, email_id: str) -> None:
        now = self._clock()
        self._expire(now)
        self._claims.pop(email_id, None)
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

    def _drop_expired_claims(self, now: float) -> None:
        # Claims are released or recorded; only a send cancelled midway leaves one behind.
        for email_id in [key for key, (_, expiry) in self._claims.items() if expiry <= now]:
            del self._claims[email_id]
