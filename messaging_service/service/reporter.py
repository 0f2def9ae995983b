"""Publishing outcome events for the handler: final ones with backoff, deferred ones once.

A final event (sent, failed, duplicate, suppressed) is part of the request's outcome: until
the broker acknowledged it the request is not finished, exactly like a dead letter, and the
caller retries with backoff while /readyz reports the events topic unwritable. A deferred
event only says a retry is scheduled: it is tried once and the retry goes ahead regardless.
"""

from __future__ import annotations

import structlog

from messaging_service.core.events import EventSink, OutcomeEvent
from messaging_service.core.retry import Backoff
from messaging_service.errors import EventsUnavailableError
from messaging_service.service.health import Health
from messaging_service.telemetry.metrics import Metrics

log = structlog.get_logger(__name__)


class EventReporter:
    def __init__(
        self,
        sink: EventSink,
        *,
        metrics: Metrics,
        health: Health,
        backoff: Backoff | None = None,
    ) -> None:
        self._sink = sink
        self._metrics = metrics
        self._health = health
        self._backoff = backoff or Backoff()

    async def final(self, event: OutcomeEvent, *, failures: int) -> float | None:
        """Publish a final event: None once acknowledged, else the seconds to wait first.

        ``failures`` counts this event's earlier failed publishes.
        """
        try:
            await self._sink.publish(event)
        except EventsUnavailableError as exc:
            self._failed(event, exc)
            delay = self._backoff.delay(failures + 1)
            log.error(
                "event_publish_failed",
                event_type=event.type.value,
                failures=failures + 1,
                retry_in=delay,
                error=str(exc),
            )
            return delay
        self._published(event)
        return None

    async def deferred(self, event: OutcomeEvent) -> None:
        """Publish a deferred event once; a failure is logged and counted, never raised."""
        try:
            await self._sink.publish(event)
        except EventsUnavailableError as exc:
            self._failed(event, exc)
            log.error("event_publish_failed", event_type=event.type.value, error=str(exc))
            return
        self._published(event)

    def _published(self, event: OutcomeEvent) -> None:
        self._health.events_sink_ok = True
        self._metrics.events_published.labels(event.type.value).inc()
        log.debug("event_published", event_type=event.type.value, event_id=event.event_id)

    def _failed(self, event: OutcomeEvent, exc: EventsUnavailableError) -> None:
        self._health.events_sink_ok = False
        self._metrics.event_publish_failures.inc()
