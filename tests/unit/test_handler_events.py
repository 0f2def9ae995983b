"""The handler's outcome events and suppression list, with in-memory fakes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry

from messaging_service.core.events import EventType, RecipientStatus
from messaging_service.core.mime import MessageBuilder, message_id
from messaging_service.core.retry import Backoff, RetryPolicy
from messaging_service.core.suppression import (
    MemorySuppressionStore,
    Suppression,
    SuppressionStore,
    hard_bounce,
)
from messaging_service.core.templates import TemplateRenderer
from messaging_service.core.values import Outcome, RecipientRefusal, SendReport
from messaging_service.errors import (
    SmtpRejectedError,
    SmtpTransientError,
    SuppressionUnavailableError,
)
from messaging_service.service.delivery import Delivery, Finished, RetryIn
from messaging_service.service.health import Health
from messaging_service.service.reporter import EventReporter
from messaging_service.service.suppressor import Suppressor
from messaging_service.telemetry.metrics import Metrics
from support.fakes import FakeDeadLetters, FakeEvents, FakeSender, FakeSentLog, record
from support.handler import make_handler

RENDERER = TemplateRenderer()
NOW = 1_700_000_001.0
GONE = RecipientRefusal("gone@example.com", 550, "5.1.1 no such user")


class Harness:
    def __init__(
        self,
        sender: FakeSender,
        *,
        events: FakeEvents | None = None,
        sent_log: FakeSentLog | None = None,
        store: SuppressionStore | None = None,
        events_on: bool = True,
    ) -> None:
        self.sender = sender
        self.events = events or FakeEvents()
        self.dead_letters = FakeDeadLetters()
        self.store = store or MemorySuppressionStore(max_entries=100, clock=lambda: NOW)
        self.registry = CollectorRegistry()
        self.health = Health()
        metrics = Metrics(self.registry)
        self.handler = make_handler(
            renderer=RENDERER,
            builder=MessageBuilder("Shop <shop@example.com>"),
            sender=sender,
            dead_letters=self.dead_letters,
            policy=RetryPolicy(max_retries=2, delays=(1, 5)),
            metrics=metrics,
            health=self.health,
            sent_log=sent_log,
            clock=lambda: NOW,
            events=EventReporter(
                self.events, metrics=metrics, health=self.health, backoff=Backoff(initial=0.5)
            )
            if events_on
            else None,
            suppressor=Suppressor(self.store, ttl=3600, metrics=metrics, clock=lambda: NOW),
            sender_domain="example.com",
        )

    def metric(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, labels or None)
        return 0.0 if value is None else value

    async def run_to_end(self, delivery: Delivery) -> tuple[Finished, list[float]]:
        waits: list[float] = []
        while True:
            step = await self.handler.process(delivery)
            if isinstance(step, Finished):
                return step, waits
            assert isinstance(step, RetryIn), step
            waits.append(step.seconds)

    def types(self) -> list[str]:
        return [event.type.value for event in self.events.published]


def welcome(**overrides: Any) -> bytes:
    payload = {"id": "w-1", "template": "welcome", "to": "bob@example.com", "data": {"name": "Bob"}}
    payload.update(overrides)
    return json.dumps(payload).encode()


async def test_a_sent_request_publishes_one_sent_event_with_the_request_facts() -> None:
    harness = Harness(FakeSender())
    step, _ = await harness.run_to_end(Delivery(record(welcome())))
    assert step == Finished(Outcome.SENT)
    [event] = harness.events.published
    assert event.type is EventType.SENT
    assert event.attempt == 1
    assert event.facts.request_id == "w-1"
    assert event.facts.template == "welcome"
    assert event.facts.message_id == message_id("w-1", "example.com")
    assert [(r.address, r.status) for r in event.recipients] == [
        ("bob@example.com", RecipientStatus.ACCEPTED)
    ]
    assert harness.metric("email_events_published_total", type="email.sent") == 1


async def test_the_request_is_not_finished_until_its_final_event_is_acknowledged() -> None:
    harness = Harness(FakeSender(), events=FakeEvents(failures=2))
    delivery = Delivery(record(welcome()))
    first = await harness.handler.process(delivery)
    assert first == RetryIn(0.5)
    assert not harness.health.ready
    assert harness.health.readiness()["events_topic_writable"] is False
    assert harness.metric("email_end_to_end_duration_seconds_count", outcome="sent") == 0
    step, waits = await harness.run_to_end(delivery)
    assert step == Finished(Outcome.SENT)
    assert waits == [1.0]
    assert len(harness.sender.sent) == 1  # the email is not sent again while the event waits
    assert harness.types() == ["email.sent"]
    assert harness.health.events_sink_ok
    assert harness.metric("email_event_publish_failures_total") == 2
    assert harness.metric("email_end_to_end_duration_seconds_count", outcome="sent") == 1


async def test_a_retry_publishes_a_deferred_event_then_the_final_one() -> None:
    harness = Harness(FakeSender(SmtpTransientError("451 later", code=451, reply="4.3.0 later")))
    step, _ = await harness.run_to_end(Delivery(record(welcome())))
    assert step == Finished(Outcome.SENT)
    deferred, sent = harness.events.published
    assert deferred.type is EventType.DEFERRED
    assert deferred.attempt == 1
    assert deferred.permanent is False
    assert deferred.retry_in == 1
    assert deferred.smtp is not None
    assert (deferred.smtp.code, deferred.smtp.enhanced_status) == (451, "4.3.0")
    assert sent.type is EventType.SENT
    assert sent.attempt == 2
    assert deferred.event_id != sent.event_id


async def test_a_failed_deferred_event_does_not_hold_the_retry_back() -> None:
    harness = Harness(
        FakeSender(SmtpTransientError("451 later", code=451)), events=FakeEvents(failures=1)
    )
    step, waits = await harness.run_to_end(Delivery(record(welcome())))
    assert step == Finished(Outcome.SENT)
    assert waits == [1]
    assert harness.types() == ["email.sent"]


async def test_a_dead_letter_is_followed_by_a_failed_event_with_its_reason() -> None:
    harness = Harness(FakeSender(SmtpRejectedError("550 policy", code=550, reply="5.7.1 no")))
    step, _ = await harness.run_to_end(Delivery(record(welcome())))
    assert step == Finished(Outcome.DEAD_LETTERED)
    assert len(harness.dead_letters.published) == 1
    [event] = harness.events.published
    assert event.type is EventType.FAILED
    assert event.permanent is True
    assert event.reason == "smtp_rejected"
    assert event.smtp is not None
    assert event.smtp.enhanced_status == "5.7.1"
    assert await harness.store.entries() == []  # a policy refusal suppresses nobody


async def test_an_invalid_payload_fails_with_an_event_named_by_its_record() -> None:
    harness = Harness(FakeSender())
    step, _ = await harness.run_to_end(Delivery(record(b"{not json", offset=3)))
    assert step == Finished(Outcome.DEAD_LETTERED)
    [event] = harness.events.published
    assert event.reason == "invalid_payload"
    assert event.facts.request_id is None
    assert event.recipients == []


async def test_a_duplicate_publishes_a_duplicate_event() -> None:
    harness = Harness(FakeSender(), sent_log=FakeSentLog("w-1"))
    step, _ = await harness.run_to_end(Delivery(record(welcome())))
    assert step == Finished(Outcome.DUPLICATE)
    assert harness.types() == ["email.duplicate"]
    assert harness.sender.attempts == 0


async def test_a_hard_bounce_suppresses_the_address_and_the_next_request_is_not_sent() -> None:
    harness = Harness(FakeSender(SendReport(refused=(GONE,))))
    first = Delivery(record(welcome(to=["bob@example.com", "gone@example.com"])))
    step, _ = await harness.run_to_end(first)
    assert step == Finished(Outcome.SENT)
    [sent] = harness.events.published
    assert [(r.address, r.status) for r in sent.recipients] == [
        ("bob@example.com", RecipientStatus.ACCEPTED),
        ("gone@example.com", RecipientStatus.REFUSED),
    ]
    [entry] = await harness.store.entries()
    assert (entry.address, entry.code, entry.expires_at) == ("gone@example.com", 550, NOW + 3600)
    assert harness.metric("email_suppressions_added_total") == 1

    second = Delivery(record(welcome(id="w-2", to="Gone@Example.com"), offset=1))
    step, _ = await harness.run_to_end(second)
    assert step == Finished(Outcome.SUPPRESSED)
    assert harness.sender.attempts == 1  # no SMTP attempt for the suppressed request
    assert harness.dead_letters.published == []
    suppressed = harness.events.published[-1]
    assert suppressed.type is EventType.SUPPRESSED
    assert [r.status for r in suppressed.recipients] == [RecipientStatus.SUPPRESSED]
    assert harness.metric("email_suppressed_total") == 1
    assert harness.metric("email_recipients_suppressed_total") == 1
    assert harness.metric("email_end_to_end_duration_seconds_count", outcome="suppressed") == 1


async def test_suppressed_recipients_are_dropped_and_the_others_are_sent() -> None:
    harness = Harness(FakeSender())
    await harness.store.add(
        hard_bounce("gone@example.com", code=550, response="5.1.1", now=NOW, ttl=0)
    )
    delivery = Delivery(record(welcome(to=["bob@example.com"], cc=["gone@example.com"])))
    step, _ = await harness.run_to_end(delivery)
    assert step == Finished(Outcome.SENT)
    [email] = harness.sender.sent
    assert list(email.recipients) == ["bob@example.com"]
    [event] = harness.events.published
    assert [(r.address, r.status) for r in event.recipients] == [
        ("bob@example.com", RecipientStatus.ACCEPTED),
        ("gone@example.com", RecipientStatus.SUPPRESSED),
    ]


async def test_every_recipient_refused_as_unknown_is_dead_lettered_and_suppressed() -> None:
    refused = SmtpRejectedError("refused every recipient", code=550, refusals=(GONE,))
    harness = Harness(FakeSender(refused))
    step, _ = await harness.run_to_end(Delivery(record(welcome(to="gone@example.com"))))
    assert step == Finished(Outcome.DEAD_LETTERED)
    [event] = harness.events.published
    assert [r.status for r in event.recipients] == [RecipientStatus.REFUSED]
    assert [e.address for e in await harness.store.entries()] == ["gone@example.com"]


class UnavailableStore:
    """A suppression store that cannot answer, as Redis when it is down."""

    async def suppressed(self, addresses: Sequence[str]) -> frozenset[str]:
        raise SuppressionUnavailableError("suppression store: ConnectionError: refused")

    async def add(self, entry: Suppression) -> None:
        raise SuppressionUnavailableError("suppression store: ConnectionError: refused")

    async def remove(self, address: str) -> bool:
        raise SuppressionUnavailableError("suppression store: ConnectionError: refused")

    async def entries(self) -> list[Suppression]:
        raise SuppressionUnavailableError("suppression store: ConnectionError: refused")


async def test_a_suppression_store_that_cannot_answer_costs_the_list_never_delivery() -> None:
    harness = Harness(FakeSender(SendReport(refused=(GONE,))), store=UnavailableStore())
    step, _ = await harness.run_to_end(
        Delivery(record(welcome(to=["bob@example.com", "gone@example.com"])))
    )
    assert step == Finished(Outcome.SENT)
    assert harness.metric("email_suppression_unavailable_total", operation="check") == 1
    assert harness.metric("email_suppression_unavailable_total", operation="add") == 1
    assert harness.metric("email_suppressions_added_total") == 0


async def test_a_bug_while_the_final_event_waits_retries_only_the_event() -> None:
    harness = Harness(FakeSender(), events=FakeEvents(failures=1))
    delivery = Delivery(record(welcome()))
    assert isinstance(await harness.handler.process(delivery), RetryIn)
    step = await harness.handler.recover(delivery, RuntimeError("a bug"))
    assert step == Finished(Outcome.SENT)
    assert len(harness.sender.sent) == 1
    assert harness.types() == ["email.sent"]


async def test_without_events_the_outcome_is_final_at_once() -> None:
    harness = Harness(FakeSender(), events_on=False)
    step = await harness.handler.process(Delivery(record(welcome())))
    assert step == Finished(Outcome.SENT)
    assert harness.events.published == []
