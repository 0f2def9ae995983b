"""A decided outcome made final: its event published (when events are on), then counted."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Sequence

from messaging_service.core.events import (
    EventType,
    OutcomeEvent,
    RecipientResult,
    RecipientStatus,
    outcome_event,
    recipient_results,
    request_facts,
)
from messaging_service.core.values import Outcome, RecipientRefusal
from messaging_service.service.delivery import Acking, Delivery, Finished, RetryIn, Step
from messaging_service.service.reporter import EventReporter
from messaging_service.telemetry.metrics import Metrics
from messaging_service.telemetry.tracing import Publish


class Outcomes:
    """Ends a delivery: the final event first (acknowledged, or retried with backoff)."""

    def __init__(
        self,
        *,
        metrics: Metrics,
        events: EventReporter | None = None,
        sender_domain: str = "localhost",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._metrics = metrics
        self.events = events
        self._sender_domain = sender_domain
        self._clock = clock

    async def conclude(
        self, delivery: Delivery, outcome: Outcome, recipients: list[RecipientResult]
    ) -> Step:
        """The outcome is decided: publish its final event (if events are on), then finish."""
        if self.events is None:
            return self._finished(delivery, outcome)
        delivery.outcome = outcome
        delivery.final_event = self.event(delivery, _EVENT_TYPES[outcome], recipients)
        return await self.report(delivery)

    async def report(self, delivery: Delivery) -> Step:
        """Queue the final event: Acking until the broker acknowledges it (or at once when
        the sink already answered), RetryIn when it could not be queued.
        """
        event = delivery.final_event
        assert event is not None
        assert self.events is not None
        with delivery.trace.publish(Publish.EVENT) as headers:
            if headers:
                event = dataclasses.replace(event, trace_headers=tuple(headers))
            queued = await self.events.submit_final(event, failures=delivery.event_failures)
        if not isinstance(queued, asyncio.Future):
            delivery.event_failures += 1
            return RetryIn(queued)
        if queued.done():
            return self.acked(delivery, queued)
        return Acking(queued)

    def acked(self, delivery: Delivery, ack: asyncio.Future[None]) -> Step:
        """The final event's acknowledgement settled: finished, or RetryIn to publish again."""
        event, outcome = delivery.final_event, delivery.outcome
        assert event is not None
        assert outcome is not None
        assert self.events is not None
        delay = self.events.final_acked(event, ack, failures=delivery.event_failures)
        if delay is not None:
            delivery.event_failures += 1
            return RetryIn(delay)
        return self._finished(delivery, outcome)

    def _finished(self, delivery: Delivery, outcome: Outcome) -> Step:
        self._finish(delivery, outcome)
        return Finished(outcome)

    def event(
        self,
        delivery: Delivery,
        type_: EventType,
        recipients: list[RecipientResult],
        *,
        error: Exception | None = None,
    ) -> OutcomeEvent:
        letter = delivery.dead_letter
        return outcome_event(
            type_,
            record=delivery.record,
            facts=request_facts(
                delivery.request,
                delivery.labels,
                request_id=delivery.email_id,
                domain=self._sender_domain,
            ),
            time=self._clock(),
            attempt=delivery.attempts,
            recipients=recipients,
            error=error if error is not None or letter is None else letter.error,
            failure=None if letter is None else letter.reason.value,
            lane=delivery.lane,
        )

    def recipients(
        self,
        delivery: Delivery,
        status: RecipientStatus,
        refusals: Sequence[RecipientRefusal] = (),
    ) -> list[RecipientResult]:
        request = delivery.request
        return recipient_results(
            () if request is None else request.envelope_recipients,
            status=status,
            suppressed=delivery.suppressed,
            refusals=refusals,
        )

    def _finish(self, delivery: Delivery, outcome: Outcome) -> None:
        delivery.trace.end(outcome)
        timestamp_ms = delivery.record.timestamp_ms
        if timestamp_ms is not None and timestamp_ms > 0:
            elapsed = max(self._clock() - timestamp_ms / 1000, 0.0)
            self._metrics.end_to_end.labels(outcome.value, delivery.lane.value).observe(elapsed)


_EVENT_TYPES = {
    Outcome.SENT: EventType.SENT,
    Outcome.DEAD_LETTERED: EventType.FAILED,
    Outcome.DUPLICATE: EventType.DUPLICATE,
    Outcome.SUPPRESSED: EventType.SUPPRESSED,
}
