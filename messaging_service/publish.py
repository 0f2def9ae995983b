"""Publishing email requests: build one from parts, encode it, and write it to Kafka."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from .config import KafkaSettings, kafka_client_options
from .errors import ServiceError, describe_error
from .lifetime import ClosedOnExit

Headers = Sequence[tuple[str, bytes]]


class PublishError(ServiceError):
    """Kafka could not be reached or did not acknowledge a record in time."""


@dataclass(frozen=True, slots=True)
class Published:
    """Where an acknowledged record went."""

    topic: str
    partition: int
    offset: int


def new_request_id(prefix: str = "cli") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def build_request(
    *,
    id_: str,
    to: Sequence[str],
    template: str | None = None,
    cc: Sequence[str] = (),
    bcc: Sequence[str] = (),
    reply_to: str | None = None,
    subject: str | None = None,
    text: str | None = None,
    html: str | None = None,
    data: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A request document with only the fields that were given (the contract's defaults hold)."""
    optional: dict[str, Any] = {
        "template": template,
        "cc": list(cc) or None,
        "bcc": list(bcc) or None,
        "reply_to": reply_to,
        "subject": subject,
        "text": text,
        "html": html,
        "data": dict(data) if data else None,
    }
    request: dict[str, Any] = {"id": id_, "to": list(to)}
    request.update({key: value for key, value in optional.items() if value is not None})
    return request


def encode_request(request: Mapping[str, Any]) -> bytes:
    """The record value: UTF-8 JSON, as the service expects."""
    return json.dumps(request, ensure_ascii=False).encode()


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


async def publish_one(
    settings: KafkaSettings, value: bytes, *, key: bytes | None = None
) -> Published:
    """Publish one request to the requests topic (``messaging-service send``)."""
    async with Publisher(settings, client_id=f"{settings.group_id}-send") as publisher:
        return await publisher.publish(settings.topic, value, key=key)
