"""Publishing outcome events for the handler: final ones with backoff, deferred ones once.

A final event (sent, failed, duplicate, suppressed) is part of the request's outcome: until
the broker acknowledged it the request is not finished, exactly like a dead letter, and the
caller retries with backoff while /readyz reports the events topic unwritable. A deferred
event only says a retry is scheduled: it is tried once and the retry goes ahead regardless.

Events are queued, not awaited one by one: ``submit_final`` returns the acknowledgement's
future, which the caller hands to ``final_acked`` once it settled.
"""

from __future__ import annotations

import asyncio

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

    async def submit_final(
        self, event: OutcomeEvent, *, failures: int
    ) -> asyncio.Future[None] | float:
        """Queue a final event: its acknowledgement's future, or the seconds to wait first
        when it could not be queued. ``failures`` counts this event's earlier failed publishes.
        """
        try:
            return await self._sink.submit(event)
        except EventsUnavailableError as exc:
            return self._final_failed(event, exc, failures)

    def final_acked(
        self, event: OutcomeEvent, ack: asyncio.Future[None], *, failures: int
    ) -> float | None:
        """After ``ack`` settled: None when the broker acknowledged the event, else the seconds
        to wait before publishing it again.
        """
        error = _error(ack)
        if error is None:
            self._published(event)
            return None
        if isinstance(error, EventsUnavailableError):
            return self._final_failed(event, error, failures)
        raise error  # not a failure the sink reports: a bug, recovered as one

    async def deferred(self, event: OutcomeEvent) -> None:
        """Queue a deferred event once; a failure is logged and counted, never raised."""
        try:
            ack = await self._sink.submit(event)
        except EventsUnavailableError as exc:
            self._deferred_failed(event, exc)
            return
        if ack.done():
            self._deferred_acked(event, ack)
        else:
            ack.add_done_callback(lambda settled: self._deferred_acked(event, settled))

    def _deferred_acked(self, event: OutcomeEvent, ack: asyncio.Future[None]) -> None:
        error = _error(ack)
        if error is None:
            self._published(event)
        elif isinstance(error, EventsUnavailableError):
            self._deferred_failed(event, error)
        else:
            self._metrics.unexpected_errors.inc()
            log.error(
                "event_publish_crashed",
                event_type=event.type.value,
                email_id=event.facts.request_id,
                exc_info=error,
            )

    def _final_failed(
        self, event: OutcomeEvent, exc: EventsUnavailableError, failures: int
    ) -> float:
        self._failed(exc)
        delay = self._backoff.delay(failures + 1)
        log.error(
            "event_publish_failed",
            event_type=event.type.value,
            failures=failures + 1,
            retry_in=delay,
            error=str(exc),
        )
        return delay

    def _deferred_failed(self, event: OutcomeEvent, exc: EventsUnavailableError) -> None:
        self._failed(exc)
        # Also from the acknowledgement's callback, outside the request's log context.
        log.error(
            "event_publish_failed",
            event_type=event.type.value,
            error=str(exc),
            email_id=event.facts.request_id,
        )

    def _published(self, event: OutcomeEvent) -> None:
        self._health.events_sink_ok = True
        self._metrics.events_published.labels(event.type.value).inc()
        log.debug("event_published", event_type=event.type.value, event_id=event.event_id)

    def _failed(self, exc: EventsUnavailableError) -> None:
        self._health.events_sink_ok = False
        self._metrics.event_publish_failures.inc()


def _error(ack: asyncio.Future[None]) -> BaseException | None:
    if ack.cancelled():
        return EventsUnavailableError("the event's publish was cancelled")
    return ack.exception()
