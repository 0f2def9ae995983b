"""Operator commands on the shared suppression list (``messaging-service suppression``)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from messaging_service.adapters.redis_suppression import RedisSuppressionStore
from messaging_service.config import Settings
from messaging_service.core.addresses import parse_address
from messaging_service.core.events import rfc3339
from messaging_service.core.suppression import Suppression, normalise_address


class MemoryStoreError(Exception):
    """The list is in each service process's memory: a separate command cannot reach it."""


@asynccontextmanager
async def _store(settings: Settings) -> AsyncIterator[RedisSuppressionStore]:
    if settings.dedup.redis_url is None:
        raise MemoryStoreError(
            "the suppression list is kept in each service process's memory (DEDUP_REDIS_URL "
            "is not set), which a separate process cannot see or change; set DEDUP_REDIS_URL "
            "to share it in Redis"
        )
    async with RedisSuppressionStore(
        settings.dedup, key_prefix=settings.email.suppression_key_prefix
    ) as store:
        yield store


async def list_suppressions(settings: Settings) -> list[Suppression]:
    async with _store(settings) as store:
        return await store.entries()


async def add_suppression(settings: Settings, address: str, *, reason: str) -> Suppression:
    """Raises ValueError for an address that is not one."""
    parse_address(address)
    now = time.time()
    ttl = settings.email.suppression_ttl
    entry = Suppression(
        address=normalise_address(address),
        reason=reason,
        created_at=now,
        expires_at=None if ttl == 0 else now + ttl,
    )
    async with _store(settings) as store:
        await store.add(entry)
    return entry


async def remove_suppression(settings: Settings, address: str) -> bool:
    async with _store(settings) as store:
        return await store.remove(address)


def describe_suppression(entry: Suppression) -> str:
    parts = [entry.address, f"reason={entry.reason}", f"since={rfc3339(entry.created_at)}"]
    parts.append(
        "expires=never" if entry.expires_at is None else f"expires={rfc3339(entry.expires_at)}"
    )
    if entry.code is not None:
        parts.append(f"smtp={entry.code} {entry.response or ''}".rstrip())
    return "  ".join(parts)
