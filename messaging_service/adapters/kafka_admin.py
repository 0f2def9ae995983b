"""Creating and inspecting topics with the Kafka admin client (dev mode, dlq commands, tests)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import for_code


@contextlib.asynccontextmanager
async def admin_client(bootstrap: str) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        await admin.start()
        yield admin
    finally:
        await admin.close()


async def topic_partitions(admin: AIOKafkaAdminClient, topic: str) -> list[int] | None:
    """The partitions of ``topic`` once each has a leader; None if it does not exist (yet)."""
    # Listing every topic: Tansu creates a topic that a Metadata request names.
    for entry in await admin.describe_topics():
        if entry["topic"] == topic and entry["error_code"] == 0:
            parts = entry["partitions"]
            if all(p["error_code"] == 0 and p["leader"] >= 0 for p in parts):
                return sorted(p["partition"] for p in parts)
    return None


async def create_topic(
    bootstrap: str,
    name: str,
    partitions: int = 1,
    *,
    timeout: float = 15.0,  # noqa: ASYNC109 - one bound for the request and the wait
) -> None:
    """Create a topic and wait until metadata shows all its partitions with a leader.

    Raises the broker's error (TopicAlreadyExistsError, ...) or TimeoutError.
    """
    async with asyncio.timeout(timeout), admin_client(bootstrap) as admin:
        response = await admin.create_topics([NewTopic(name, partitions, 1)])
        for entry in response.topic_errors:
            if entry[1] != 0:
                error = for_code(entry[1])
                raise error(f"creating topic {name!r}: {entry[2] if len(entry) > 2 else ''}")
        # Polled: creation is acknowledged before every partition has a leader.
        while True:
            if await topic_partitions(admin, name) == list(range(partitions)):
                return
            await asyncio.sleep(0.1)
