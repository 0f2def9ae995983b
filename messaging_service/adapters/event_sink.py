"""Adapter over the Kafka producer: outcome events to KAFKA_EVENTS_TOPIC, acknowledged."""

from __future__ import annotations

from messaging_service.adapters.kafka_producer import Publisher, PublishError
from messaging_service.config import KafkaSettings
from messaging_service.core.events import OutcomeEvent, event_record, event_source
from messaging_service.core.lifetime import ClosedOnExit
from messaging_service.errors import EventsUnavailableError


class KafkaEventSink(ClosedOnExit):
    """Publishes events and waits for the broker's acknowledgement (acks=all)."""

    def __init__(self, settings: KafkaSettings) -> None:
        if not settings.events_enabled:
            raise ValueError("KAFKA_EVENTS_TOPIC is empty: events are off")
        self._topic = settings.events_topic
        self._source = event_source(settings.group_id)
        self._publisher = Publisher(settings, client_id=f"{settings.group_id}-events")

    async def __aenter__(self) -> KafkaEventSink:
        try:
            await self._publisher.start()
        except PublishError as exc:
            raise EventsUnavailableError(str(exc)) from exc
        return self

    async def close(self) -> None:
        await self._publisher.close()

    async def publish(self, event: OutcomeEvent) -> None:
        record = event_record(event, source=self._source)
        try:
            await self._publisher.publish(
                self._topic, record.value, key=record.key, headers=record.headers
            )
        except PublishError as exc:
            raise EventsUnavailableError(str(exc)) from exc
