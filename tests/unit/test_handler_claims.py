"""The handler claims a request's id before an attempt: two copies in flight are sent once."""

from __future__ import annotations

import asyncio
import json

import pytest
import structlog

from messaging_service.adapters.sentlog import MemorySentLog
from messaging_service.core.circuit import CircuitBreaker
from messaging_service.core.ports import SentLog
from messaging_service.core.values import Claim, Outcome, OutgoingEmail, SendReport
from messaging_service.errors import SmtpRejectedError, SmtpTransientError
from messaging_service.service.delivery import Delivery, Finished, Parked, RetryIn
from messaging_service.service.relay import Relay
from support.fakes import FakeSender, FakeSentLog, record, unavailable
from support.handler import HandlerHarness


def welcome(offset: int = 0) -> Delivery:
    payload = {"id": "w-1", "template": "welcome", "to": "bob@example.com", "data": {"name": "Bob"}}
    return Delivery(record(json.dumps(payload).encode(), offset=offset))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class GatedSender(FakeSender):
    """Holds every send until ``gate`` is set; ``entered`` is set once a send started."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    async def send(self, email: OutgoingEmail) -> SendReport:
        self.entered.set()
        await self.gate.wait()
        return await super().send(email)


class Harness(HandlerHarness):
    def __init__(
        self, sender: FakeSender, sent_log: SentLog, *, relay: Relay | None = None
    ) -> None:
        super().__init__(sender, sent_log=sent_log, relay=relay)


async def test_two_copies_in_flight_at_once_are_sent_once() -> None:
    """The second copy waits while the first holds the claim, then ends as a duplicate."""
    sender = GatedSender()
    harness = Harness(sender, MemorySentLog(ttl=600, max_entries=10))
    first, second = welcome(offset=1), welcome(offset=2)
    sending = asyncio.create_task(harness.handler.process(first))
    await sender.entered.wait()
    with structlog.testing.capture_logs() as logs:
        async with asyncio.timeout(10):  # a guard: without the claim it would send, and block
            waited = await harness.handler.process(second)
    assert waited == RetryIn(1.0)
    assert second.attempts == 0, "waiting for a claim spends no attempt"
    assert harness.metric("email_claim_waits_total") == 1
    [held] = [entry for entry in logs if entry["event"] == "email_claim_held"]
    assert (held["waits"], held["retry_in"]) == (1, 1.0)
    sender.gate.set()
    assert await sending == Finished(Outcome.SENT)
    assert await harness.handler.process(second) == Finished(Outcome.DUPLICATE)
    assert sender.attempts == 1
    assert harness.metric("email_sent_total") == 1
    assert harness.metric("email_duplicates_skipped_total") == 1


async def test_the_wait_for_a_held_claim_grows_and_never_spends_attempts() -> None:
    sent_log = MemorySentLog(ttl=600, max_entries=10)
    assert await sent_log.claim("w-1", "another-replica") is Claim.CLAIMED
    harness = Harness(FakeSender(), sent_log)
    delivery = welcome()
    steps = [await harness.handler.process(delivery) for _ in range(7)]
    assert steps == [RetryIn(s) for s in (1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0)]
    assert (delivery.attempts, harness.sender.attempts) == (0, 0)
    assert harness.dead_letters.published == []


async def test_a_claim_left_by_a_crashed_sender_expires_and_the_id_is_sent() -> None:
    clock = Clock()
    sent_log = MemorySentLog(ttl=600, max_entries=10, claim_ttl=300, clock=clock)
    assert await sent_log.claim("w-1", "crashed-replica") is Claim.CLAIMED
    harness = Harness(FakeSender(), sent_log)
    delivery = welcome()
    assert isinstance(await harness.handler.process(delivery), RetryIn)
    clock.now += 300
    assert await harness.handler.process(delivery) == Finished(Outcome.SENT)
    assert harness.sender.attempts == 1
    assert await sent_log.claim("w-1", "anyone") is Claim.SENT


async def test_a_failed_attempt_releases_the_claim_so_another_copy_sends_it() -> None:
    sender = FakeSender(SmtpTransientError("451 later", code=451))
    sent_log = FakeSentLog()
    harness = Harness(sender, sent_log)
    first, second = welcome(offset=1), welcome(offset=2)
    assert await harness.handler.process(first) == RetryIn(1)
    assert sent_log.claims == {}, "released after the 451"
    assert await harness.handler.process(second) == Finished(Outcome.SENT)
    assert await harness.handler.process(first) == Finished(Outcome.DUPLICATE)
    assert (sender.attempts, len(sender.sent)) == (2, 1)


async def test_the_retry_of_a_failed_attempt_claims_again_and_sends() -> None:
    sender = FakeSender(SmtpTransientError("451 later", code=451))
    harness = Harness(sender, MemorySentLog(ttl=600, max_entries=10))
    delivery = welcome()
    assert await harness.handler.process(delivery) == RetryIn(1)
    assert await harness.handler.process(delivery) == Finished(Outcome.SENT)
    assert delivery.attempts == 2


async def test_a_rejected_email_releases_its_claim_and_is_not_recorded() -> None:
    sent_log = FakeSentLog()
    harness = Harness(FakeSender(SmtpRejectedError("550 no", code=550)), sent_log)
    assert await harness.handler.process(welcome()) == Finished(Outcome.DEAD_LETTERED)
    assert (sent_log.claims, sent_log.ids, sent_log.releases) == ({}, set(), ["w-1"])


async def test_a_sent_email_turns_its_claim_into_sent_without_a_release() -> None:
    sent_log = FakeSentLog()
    harness = Harness(FakeSender(), sent_log)
    assert await harness.handler.process(welcome()) == Finished(Outcome.SENT)
    assert (sent_log.claims, sent_log.ids, sent_log.releases) == ({}, {"w-1"}, [])


async def test_a_claim_the_store_could_not_release_is_still_this_deliverys_own() -> None:
    """The release failed: the claim stays until it expires, but its holder's retry sends."""
    sender = FakeSender(SmtpTransientError("451 later", code=451))
    sent_log = FakeSentLog(release_error=unavailable())
    harness = Harness(sender, sent_log)
    delivery, other = welcome(offset=1), welcome(offset=2)
    assert await harness.handler.process(delivery) == RetryIn(1)
    assert harness.metric("email_dedup_unavailable_total", operation="release") == 1
    assert isinstance(await harness.handler.process(other), RetryIn), "still held"
    assert await harness.handler.process(delivery) == Finished(Outcome.SENT)
    assert await harness.handler.process(other) == Finished(Outcome.DUPLICATE)
    assert len(sender.sent) == 1


async def test_a_store_that_cannot_answer_a_claim_fails_open_for_every_copy() -> None:
    """Holding mail while the store is down would dead-letter it all: both copies are sent."""
    sender = FakeSender()
    harness = Harness(sender, FakeSentLog(seen_error=unavailable()))
    with structlog.testing.capture_logs() as logs:
        first = await harness.handler.process(welcome(offset=1))
        second = await harness.handler.process(welcome(offset=2))
    assert (first, second) == (Finished(Outcome.SENT), Finished(Outcome.SENT))
    assert len(sender.sent) == 2
    assert harness.metric("email_dedup_unavailable_total", operation="claim") == 2
    assert harness.metric("email_dedup_unavailable_total", operation="release") == 0
    assert [e["operation"] for e in logs if e["event"] == "dedup_unavailable"] == [
        "claim",
        "claim",
    ]


async def test_an_untranslated_send_error_releases_the_claim_before_the_retry() -> None:
    sender = FakeSender(RuntimeError("a bug in the sender"))
    sent_log = FakeSentLog()
    harness = Harness(sender, sent_log)
    delivery = welcome()
    with pytest.raises(RuntimeError) as raised:
        await harness.handler.process(delivery)
    assert await harness.handler.recover(delivery, raised.value) == RetryIn(1)
    assert sent_log.claims == {}
    assert await harness.handler.process(delivery) == Finished(Outcome.SENT)


async def test_a_request_parked_for_an_open_circuit_releases_its_claim() -> None:
    circuit = CircuitBreaker(threshold=1)
    circuit.record_failure()
    sent_log = FakeSentLog()
    harness = Harness(FakeSender(), sent_log, relay=Relay(circuit))
    delivery = welcome()
    assert await harness.handler.process(delivery) == Parked()
    assert (sent_log.claims, sent_log.releases) == ({}, ["w-1"])
    circuit.close()
    assert await harness.handler.process(delivery) == Finished(Outcome.SENT)
