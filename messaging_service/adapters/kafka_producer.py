"""A Kafka producer that waits for the broker's acknowledgement of every record."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from messaging_service.adapters.kafka_options import kafka_client_options
from messaging_service.config import KafkaSettings
from messaging_service.core.lifetime import ClosedOnExit
from messaging_service.errors import ServiceError, describe_error

Headers = Sequence[tuple[str, bytes]]


class PublishError(ServiceError):
    """Kafka could not be reached or did not acknowledge a record in time."""


@dataclass(frozen=True, slots=True)
class Published:
    """Where an acknowledged record went."""

    topic: str
    partition: int
    offset: int


class Publisher(ClosedOnExit):
    """A producer that waits for the broker's acknowledgement (acks=all) of each record."""

    def __init__(self, settings: KafkaSettings, *, client_id: str) -> None:
        self._settings = settings
        self._timeout = settings.request_timeout_ms / 1000
        self._producer = AIOKafkaProducer(
            **kafka_client_options(settings), acks="all", client_id=client_id
        )
        self._started = False

    async def __aenter__(self) -> Publisher:
        await self.start()
        return self

    async def start(self) -> None:
        """Connect to the cluster; PublishError if it cannot be reached in time."""
        try:
            async with asyncio.timeout(self._timeout):
                await self._producer.start()
        except (KafkaError, TimeoutError) as exc:
            await self._producer.stop()
            raise PublishError(
                f"cannot connect to Kafka at {self._settings.bootstrap_servers}: "
                f"{describe_error(exc)}"
            ) from exc
        self._started = True

    async def close(self) -> None:
        """Flush and disconnect, within the call timeout (the broker may be gone)."""
        if self._started:
            self._started = False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.call_timeout_ms / 1000):
                    await self._producer.stop()

    async def publish(
        self, topic: str, value: bytes | None, *, key: bytes | None = None, headers: Headers = ()
    ) -> Published:
        """Write one record and return once the broker acknowledged it."""
        try:
            async with asyncio.timeout(self._timeout):
                meta = await self._producer.send_and_wait(
                    topic, value=value, key=key, headers=list(headers) or None
                )
        except (KafkaError, TimeoutError) as exc:
            raise PublishError(f"cannot write to {topic}: {describe_error(exc)}") from exc
        return Published(topic=meta.topic, partition=meta.partition, offset=meta.offset)
