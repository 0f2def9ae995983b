"""Adapter over redis-py: the suppression list in the same Redis as the sent ids.

Each entry is a key ``<prefix><address>`` holding the entry as JSON, set with ``EX`` when it
expires (Redis expires it) and without when it is kept until removed. Errors are translated
once, here, into SuppressionUnavailableError; a command waits at most the configured timeout.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from redis.exceptions import RedisError

from messaging_service.adapters.redis_store import GuardedRedis
from messaging_service.config import DedupSettings
from messaging_service.core.lifetime import ClosedOnExit
from messaging_service.core.suppression import Suppression, normalise_address
from messaging_service.errors import SuppressionUnavailableError

_SCAN_BATCH = 500


class RedisSuppressionStore(ClosedOnExit):
    """A SuppressionStore in Redis; shared by every replica and the operator commands."""

    def __init__(
        self,
        settings: DedupSettings,
        *,
        key_prefix: str,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._prefix = key_prefix
        self._clock = clock
        self._redis = GuardedRedis(
            settings, what="suppression store", error=SuppressionUnavailableError, clock=monotonic
        )

    async def __aenter__(self) -> RedisSuppressionStore:
        return self

    async def close(self) -> None:
        await self._redis.close()

    async def suppressed(self, addresses: Sequence[str]) -> frozenset[str]:
        if not addresses:
            return frozenset()
        client = self._redis.available()
        keys = [self._key(address) for address in addresses]
        try:
            values = await client.mget(keys)
        except (RedisError, OSError) as exc:
            raise self._redis.failed(exc) from exc
        return frozenset(
            address for address, value in zip(addresses, values, strict=True) if value is not None
        )

    async def add(self, entry: Suppression) -> None:
        client = self._redis.available()
        ttl = None
        if entry.expires_at is not None:
            ttl = max(1, round(entry.expires_at - self._clock()))
        try:
            await client.set(self._key(entry.address), _encode(entry), ex=ttl)
        except (RedisError, OSError) as exc:
            raise self._redis.failed(exc) from exc

    async def remove(self, address: str) -> bool:
        client = self._redis.available()
        try:
            return bool(await client.delete(self._key(address)))
        except (RedisError, OSError) as exc:
            raise self._redis.failed(exc) from exc

    async def entries(self) -> list[Suppression]:
        client = self._redis.available()
        found: list[Suppression] = []
        try:
            async for key in client.scan_iter(
                match=_glob_escape(self._prefix) + "*", count=_SCAN_BATCH
            ):
                value = await client.get(key)
                if value is not None:
                    found.append(_decode(value))
        except (RedisError, OSError) as exc:
            raise self._redis.failed(exc) from exc
        return sorted(found, key=lambda entry: entry.address)

    def _key(self, address: str) -> str:
        return self._prefix + normalise_address(address)


def _encode(entry: Suppression) -> str:
    return json.dumps(
        {
            "address": entry.address,
            "reason": entry.reason,
            "created_at": entry.created_at,
            "expires_at": entry.expires_at,
            "code": entry.code,
            "response": entry.response,
        }
    )


def _decode(value: bytes | str) -> Suppression:
    document: dict[str, Any] = json.loads(value)
    return Suppression(
        address=str(document["address"]),
        reason=str(document["reason"]),
        created_at=float(document["created_at"]),
        expires_at=None if document.get("expires_at") is None else float(document["expires_at"]),
        code=document.get("code"),
        response=document.get("response"),
    )


def _glob_escape(text: str) -> str:
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)
