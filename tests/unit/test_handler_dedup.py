"""The handler with a sent-id record: redeliveries skipped, and a store outage fails open."""

from __future__ import annotations

import json

import structlog

from messaging_service.core.values import Outcome
from messaging_service.errors import SmtpRejectedError, SmtpTransientError
from messaging_service.service.delivery import Delivery, Finished, RetryIn
from support.fakes import FakeSender, FakeSentLog, record, unavailable
from support.handler import HandlerHarness


def welcome() -> bytes:
    payload = {"id": "w-1", "template": "welcome", "to": "bob@example.com", "data": {"name": "Bob"}}
    return json.dumps(payload).encode()


class Harness(HandlerHarness):
    def __init__(self, sender: FakeSender, sent_log: FakeSentLog) -> None:
        super().__init__(sender, sent_log=sent_log)
        self.sent_log: FakeSentLog = sent_log  # the fake's own view: the ids it recorded

    async def finish(self, delivery: Delivery) -> Finished:
        step, _ = await self.run_to_end(delivery)
        return step


async def test_a_sent_id_is_recorded_after_the_relay_accepted_it() -> None:
    harness = Harness(FakeSender(), FakeSentLog())
    assert await harness.finish(Delivery(record(welcome()))) == Finished(Outcome.SENT)
    assert harness.sent_log.ids == {"w-1"}
    assert harness.metric("email_duplicates_skipped_total") == 0


async def test_a_redelivered_id_finishes_as_duplicate_without_sending() -> None:
    harness = Harness(FakeSender(), FakeSentLog("w-1"))
    with structlog.testing.capture_logs() as logs:
        step = await harness.finish(Delivery(record(welcome())))
    assert step == Finished(Outcome.DUPLICATE)
    assert harness.sender.attempts == 0
    assert harness.metric("email_duplicates_skipped_total") == 1
    assert harness.metric("email_sent_total") == 0
    assert harness.metric("email_end_to_end_duration_seconds_count", outcome="duplicate") == 1
    assert [entry["event"] for entry in logs] == ["email_duplicate_skipped"]


async def test_the_same_request_twice_is_sent_once() -> None:
    harness = Harness(FakeSender(), FakeSentLog())
    first = await harness.finish(Delivery(record(welcome(), offset=1)))
    second = await harness.finish(Delivery(record(welcome(), offset=2)))
    assert (first.outcome, second.outcome) == (Outcome.SENT, Outcome.DUPLICATE)
    assert len(harness.sender.sent) == 1


async def test_the_record_is_checked_before_every_attempt() -> None:
    """Another replica may have sent it while this one waited for a retry."""
    harness = Harness(FakeSender(SmtpTransientError("451", code=451)), FakeSentLog())
    delivery = Delivery(record(welcome()))
    assert isinstance(await harness.handler.process(delivery), RetryIn)
    harness.sent_log.ids.add("w-1")
    assert await harness.handler.process(delivery) == Finished(Outcome.DUPLICATE)
    assert harness.sender.attempts == 1
    assert harness.sent_log.lookups == ["w-1", "w-1"]


async def test_failed_sends_and_dead_letters_are_not_recorded() -> None:
    harness = Harness(FakeSender(SmtpRejectedError("550", code=550)), FakeSentLog())
    assert await harness.finish(Delivery(record(welcome()))) == Finished(Outcome.DEAD_LETTERED)
    assert harness.sent_log.ids == set()


async def test_an_unreadable_store_fails_open_sends_and_counts() -> None:
    harness = Harness(FakeSender(), FakeSentLog(seen_error=unavailable()))
    with structlog.testing.capture_logs() as logs:
        step = await harness.finish(Delivery(record(welcome())))
    assert step == Finished(Outcome.SENT)
    assert len(harness.sender.sent) == 1
    # The look-up before a send is the claim now.
    assert harness.metric("email_dedup_unavailable_total", operation="claim") == 1
    [warning] = [entry for entry in logs if entry["event"] == "dedup_unavailable"]
    assert warning["operation"] == "claim"
    assert "connection refused" in warning["error"]


async def test_a_record_failure_after_250_never_turns_into_a_retry() -> None:
    harness = Harness(FakeSender(), FakeSentLog(record_error=unavailable()))
    step = await harness.handler.process(Delivery(record(welcome())))
    assert step == Finished(Outcome.SENT)
    assert harness.metric("email_sent_total") == 1
    assert harness.metric("email_dedup_unavailable_total", operation="record") == 1


async def test_even_an_untranslated_record_error_keeps_the_email_sent() -> None:
    harness = Harness(FakeSender(), FakeSentLog(record_error=RuntimeError("bug in a store")))
    step = await harness.handler.process(Delivery(record(welcome())))
    assert step == Finished(Outcome.SENT)
    assert harness.sender.attempts == 1
    assert harness.metric("email_dedup_unavailable_total", operation="record") == 1
