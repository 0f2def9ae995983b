"""The handler with in-memory fakes: every row of the outcome table, step by step."""

from __future__ import annotations

import json
from typing import Any

import pytest

from messaging_service.core.retry import Backoff
from messaging_service.core.values import FailureReason, Outcome, RecipientRefusal, SendReport
from messaging_service.errors import SmtpRejectedError, SmtpTransientError
from messaging_service.service.delivery import Delivery, Finished, RetryIn
from messaging_service.telemetry import logcontext
from support.fakes import FakeDeadLetters, FakeSender, record
from support.handler import HandlerHarness


class Harness(HandlerHarness):
    def __init__(self, sender: FakeSender, dead_letters: FakeDeadLetters | None = None) -> None:
        backoff = Backoff(initial=0.5, ceiling=4)
        super().__init__(sender, dead_letters=dead_letters, dead_letter_backoff=backoff)


def welcome(**overrides: Any) -> bytes:
    payload = {"id": "w-1", "template": "welcome", "to": "bob@example.com", "data": {"name": "Bob"}}
    payload.update(overrides)
    return json.dumps(payload).encode()


async def test_sent_on_first_attempt() -> None:
    harness = Harness(FakeSender())
    step, waits = await harness.run_to_end(Delivery(record(welcome())))
    assert step == Finished(Outcome.SENT)
    assert waits == []
    [email] = harness.sender.sent
    assert email.recipients == ["bob@example.com"]
    assert email.sender == "shop@example.com"
    assert b"X-Email-Id: w-1" in email.message
    assert harness.metric("email_sent_total") == 1
    assert harness.metric("email_end_to_end_duration_seconds_count", outcome="sent") == 1
    assert harness.health.relay.reachable


async def test_transient_failure_then_success_waits_one_second() -> None:
    harness = Harness(FakeSender(SmtpTransientError("451 later", code=451)))
    delivery = Delivery(record(welcome()))
    step, waits = await harness.run_to_end(delivery)
    assert step == Finished(Outcome.SENT)
    assert waits == [1]
    assert delivery.attempts == 2
    assert harness.metric("email_retries_total") == 1


async def test_retries_exhausted_after_one_five_ten_seconds() -> None:
    failures = [SmtpTransientError("connection refused") for _ in range(4)]
    harness = Harness(FakeSender(*failures))
    step, waits = await harness.run_to_end(Delivery(record(welcome())))
    assert step == Finished(Outcome.DEAD_LETTERED)
    assert waits == [1, 5, 10]
    [letter] = harness.dead_letters.published
    assert letter.reason is FailureReason.RETRIES_EXHAUSTED
    assert letter.attempts == 4
    assert letter.smtp_code is None
    assert letter.email_id == "w-1"
    assert not harness.health.relay.reachable
    assert harness.metric("email_dead_letters_total", reason="retries_exhausted") == 1


async def test_exhausted_4xx_keeps_the_last_smtp_code() -> None:
    harness = Harness(FakeSender(*[SmtpTransientError("452", code=452) for _ in range(4)]))
    _, _ = await harness.run_to_end(Delivery(record(welcome())))
    assert harness.dead_letters.published[0].smtp_code == 452


async def test_rejection_is_dead_lettered_at_once() -> None:
    harness = Harness(FakeSender(SmtpRejectedError("550 no such user", code=550)))
    step, waits = await harness.run_to_end(Delivery(record(welcome())))
    assert (step, waits) == (Finished(Outcome.DEAD_LETTERED), [])
    [letter] = harness.dead_letters.published
    assert (letter.reason, letter.attempts, letter.smtp_code) == (
        FailureReason.SMTP_REJECTED,
        1,
        550,
    )


async def test_partial_refusal_counts_as_sent_and_counts_each_refusal() -> None:
    refused = (
        RecipientRefusal("x@example.com", 550, "no such user"),
        RecipientRefusal("y@example.com", 553, "bad mailbox"),
    )
    harness = Harness(FakeSender(SendReport(refused=refused)))
    step, _ = await harness.run_to_end(
        Delivery(record(welcome(to=["bob@example.com", "x@example.com", "y@example.com"])))
    )
    assert step == Finished(Outcome.SENT)
    assert harness.metric("email_recipients_refused_total") == 2
    assert harness.sender.attempts == 1


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{not json", FailureReason.INVALID_PAYLOAD),
        (None, FailureReason.INVALID_PAYLOAD),
        (welcome(to="not-an-address"), FailureReason.INVALID_PAYLOAD),
        (welcome(template="no_such_template"), FailureReason.TEMPLATE_ERROR),
        (welcome(data={}), FailureReason.TEMPLATE_ERROR),
    ],
)
async def test_bad_requests_are_dead_lettered_without_sending(
    value: bytes | None, reason: FailureReason
) -> None:
    harness = Harness(FakeSender())
    step, waits = await harness.run_to_end(Delivery(record(value)))
    assert (step, waits) == (Finished(Outcome.DEAD_LETTERED), [])
    [letter] = harness.dead_letters.published
    assert letter.reason is reason
    assert letter.attempts == 0
    assert harness.sender.attempts == 0
    assert str(letter.error)


async def test_invalid_payload_keeps_a_readable_id_for_the_logs() -> None:
    harness = Harness(FakeSender())
    delivery = Delivery(record(welcome(to=42)))
    with logcontext.bound(email_id=None):
        await harness.run_to_end(delivery)
        assert logcontext.current()["email_id"] == "w-1"
    assert harness.dead_letters.published[0].email_id == "w-1"


async def test_unavailable_dead_letter_topic_is_retried_with_backoff_until_written() -> None:
    harness = Harness(FakeSender(), FakeDeadLetters(failures=3))
    step, waits = await harness.run_to_end(Delivery(record(b"oops")))
    assert step == Finished(Outcome.DEAD_LETTERED)
    assert waits == [0.5, 1, 2]
    assert len(harness.dead_letters.published) == 1
    assert harness.metric("email_dead_letter_publish_failures_total") == 3
    assert harness.health.dead_letter_sink_ok


async def test_unavailable_dead_letter_topic_marks_health() -> None:
    harness = Harness(FakeSender(), FakeDeadLetters(failures=1))
    step = await harness.handler.process(Delivery(record(b"oops")))
    assert isinstance(step, RetryIn)
    assert not harness.health.dead_letter_sink_ok


async def test_dead_letter_publish_retry_does_not_resend_the_email() -> None:
    harness = Harness(FakeSender(SmtpRejectedError("554", code=554)), FakeDeadLetters(failures=2))
    step, _ = await harness.run_to_end(Delivery(record(welcome())))
    assert step == Finished(Outcome.DEAD_LETTERED)
    assert harness.sender.attempts == 1


async def test_unexpected_error_is_retried_then_dead_lettered() -> None:
    harness = Harness(FakeSender(*[RuntimeError("bug") for _ in range(4)]))
    delivery = Delivery(record(welcome()))
    waits: list[float] = []
    while True:
        try:
            step = await harness.handler.process(delivery)
        except RuntimeError as exc:
            step = await harness.handler.recover(delivery, exc)
        if isinstance(step, Finished):
            break
        assert isinstance(step, RetryIn), step
        waits.append(step.seconds)
    assert waits == [1, 5, 10]
    [letter] = harness.dead_letters.published
    assert letter.reason is FailureReason.RETRIES_EXHAUSTED
    assert "RuntimeError" in type(letter.error).__name__
    assert harness.metric("email_unexpected_errors_total") == 4
