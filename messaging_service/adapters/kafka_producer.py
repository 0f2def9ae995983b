"""A Kafka producer that waits for the broker's acknowledgement of every record.

``publish`` waits for it; ``submit`` queues the record and returns a future that settles with
it, so records queued together go out in one batch (``linger_ms``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

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

    def __init__(self, settings: KafkaSettings, *, client_id: str, linger_ms: int = 0) -> None:
        self._settings = settings
        self._timeout = settings.request_timeout_ms / 1000
        self._producer = AIOKafkaProducer(
            **kafka_client_options(settings),
            acks="all",
            client_id=client_id,
            linger_ms=linger_ms,
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

    async def submit(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Headers = (),
        error: Callable[[str], Exception] = PublishError,
    ) -> asyncio.Future[None]:
        """Queue one record; the future settles when the broker acknowledged it.

        Raises ``error`` (PublishError) when the record cannot be queued in time; the future
        fails with it when the broker does not acknowledge the record within the request
        timeout, whatever the producer itself does meanwhile.
        """
        try:
            # Bounded by the producer itself: it waits for the topic's metadata and for room
            # in its buffer at most request_timeout_ms (KafkaTimeoutError, a KafkaError), and
            # an asyncio.timeout here would cost more than the rest of a queued event.
            sent = await self._producer.send(
                topic, value=value, key=key, headers=list(headers) or None
            )
        except KafkaError as exc:
            raise error(f"cannot write to {topic}: {describe_error(exc)}") from exc
        return acknowledgement(sent, topic, self._timeout, error)


def acknowledgement(
    sent: asyncio.Future[Any],
    topic: str,
    timeout: float,
    error: Callable[[str], Exception],
) -> asyncio.Future[None]:
    """A future that settles with ``sent`` (the producer's), or fails after ``timeout``."""
    loop = asyncio.get_running_loop()
    acked: asyncio.Future[None] = loop.create_future()

    def settle(result: asyncio.Future[Any]) -> None:
        timer.cancel()
        if acked.done():
            return
        if result.cancelled():
            acked.set_exception(error(f"cannot write to {topic}: the send was cancelled"))
        elif (exc := result.exception()) is not None:
            acked.set_exception(error(f"cannot write to {topic}: {describe_error(exc)}"))
        else:
            acked.set_result(None)

    def expire() -> None:
        if not acked.done():
            acked.set_exception(
                error(f"cannot write to {topic}: not acknowledged within {timeout:g} s")
            )

    timer = loop.call_later(timeout, expire)
    sent.add_done_callback(settle)
    return acked
