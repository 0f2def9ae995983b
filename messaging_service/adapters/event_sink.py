"""Adapter over the Kafka producer: outcome events to KAFKA_EVENTS_TOPIC, acknowledged.

Events are queued and batched (KAFKA_EVENTS_LINGER_MS): the caller holds a future for the
acknowledgement, not a worker, so one produce request carries the events of many requests.
"""

from __future__ import annotations

import asyncio

from messaging_service.adapters.kafka_producer import Publisher, PublishError
from messaging_service.config import KafkaSettings
from messaging_service.core.events import OutcomeEvent, event_record, event_source
from messaging_service.core.lifetime import ClosedOnExit
from messaging_service.errors import EventsUnavailableError


class KafkaEventSink(ClosedOnExit):
    """Queues events; each future settles with the broker's acknowledgement (acks=all)."""

    def __init__(self, settings: KafkaSettings) -> None:
        if not settings.events_enabled:
            raise ValueError("KAFKA_EVENTS_TOPIC is empty: events are off")
        self._topic = settings.events_topic
        self._source = event_source(settings.group_id)
        self._publisher = Publisher(
            settings,
            client_id=f"{settings.group_id}-events",
            linger_ms=settings.events_linger_ms,
        )

    async def __aenter__(self) -> KafkaEventSink:
        try:
            await self._publisher.start()
        except PublishError as exc:
            raise EventsUnavailableError(str(exc)) from exc
        return self

    async def close(self) -> None:
        await self._publisher.close()

    async def submit(self, event: OutcomeEvent) -> asyncio.Future[None]:
        record = event_record(event, source=self._source)
        return await self._publisher.submit(
            self._topic,
            record.value,
            key=record.key,
            headers=record.headers,
            error=EventsUnavailableError,
        )
