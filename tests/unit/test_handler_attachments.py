"""The handler with attachments: refusals are attachment_error, URL fetches retry, once."""

from __future__ import annotations

import base64
import json
from email import policy
from email.parser import BytesParser
from typing import Any

import structlog
from prometheus_client import CollectorRegistry

from messaging_service.core.contract import RequestLimits
from messaging_service.core.mime import MessageBuilder
from messaging_service.core.retry import RetryPolicy
from messaging_service.core.templates import TemplateRenderer
from messaging_service.core.values import FailureReason, Outcome
from messaging_service.errors import AttachmentError, AttachmentUnavailableError
from messaging_service.service.delivery import Delivery, Finished, RetryIn
from messaging_service.service.handler import RequestHandler
from messaging_service.service.health import Health
from messaging_service.telemetry.metrics import Metrics
from support.fakes import FakeDeadLetters, FakeFetcher, FakeSender, FakeSentLog, record
from support.handler import make_handler

RENDERER = TemplateRenderer()
HOSTS = ("files.example.com",)
TERMS = {"filename": "terms.pdf", "url": "https://files.example.com/terms.pdf"}


def handler(
    sender: FakeSender, dead: FakeDeadLetters, fetcher: FakeFetcher | None = None, **limits: Any
) -> RequestHandler:
    return make_handler(
        renderer=RENDERER,
        builder=MessageBuilder("Shop <shop@example.com>"),
        sender=sender,
        dead_letters=dead,
        policy=RetryPolicy(max_retries=2, delays=(1, 5)),
        metrics=Metrics(CollectorRegistry()),
        health=Health(),
        limits=RequestLimits(attachment_url_hosts=HOSTS, **limits),
        fetcher=fetcher,
    )


def payload(**fields: Any) -> bytes:
    base: dict[str, Any] = {
        "id": "a-1",
        "template": "welcome",
        "to": "bob@example.com",
        "data": {"name": "Bob"},
    }
    base.update(fields)
    return json.dumps(base).encode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def test_content_attachment_is_sent() -> None:
    sender, dead = FakeSender(), FakeDeadLetters()
    value = payload(attachments=[{"filename": "a.pdf", "content": b64(b"%PDF")}])
    step = await handler(sender, dead).process(Delivery(record(value)))
    assert step == Finished(Outcome.SENT)
    message = BytesParser(policy=policy.default).parsebytes(sender.sent[0].message)
    assert [p.get_content() for p in message.iter_attachments()] == [b"%PDF"]


async def test_bad_attachments_are_dead_lettered_attachment_error() -> None:
    cases = [
        [{"filename": "a.pdf", "content": "%%%"}],
        [{"filename": "a.exe", "content": b64(b"MZ")}],
        [{"filename": "a.pdf", "content": b64(b"x" * 100)}],
        [{"filename": "a.pdf", "url": "https://elsewhere.example.com/a.pdf"}],
    ]
    for attachments in cases:
        sender, dead = FakeSender(), FakeDeadLetters()
        step = await handler(sender, dead, max_attachment_bytes=50).process(
            Delivery(record(payload(attachments=attachments)))
        )
        assert step == Finished(Outcome.DEAD_LETTERED)
        assert dead.published[0].reason is FailureReason.ATTACHMENT_ERROR
        assert sender.attempts == 0


async def test_inline_image_without_html_is_an_attachment_error() -> None:
    sender, dead = FakeSender(), FakeDeadLetters()
    value = payload(
        template=None,
        subject="Hi",
        text="hi",
        attachments=[{"filename": "l.png", "content": b64(b"x"), "content_id": "logo"}],
    )
    assert await handler(sender, dead).process(Delivery(record(value))) == Finished(
        Outcome.DEAD_LETTERED
    )
    assert dead.published[0].reason is FailureReason.ATTACHMENT_ERROR


async def test_prepare_does_no_io_and_the_url_is_fetched_by_the_step() -> None:
    sender, dead, fetcher = FakeSender(), FakeDeadLetters(), FakeFetcher(b"%PDF-terms")
    subject = handler(sender, dead, fetcher)
    delivery = Delivery(record(payload(attachments=[TERMS])))
    subject.prepare(delivery)
    assert fetcher.urls == []
    assert delivery.email is None
    assert delivery.unfetched is not None
    assert await subject.process(delivery) == Finished(Outcome.SENT)
    assert fetcher.urls == [TERMS["url"]]
    message = BytesParser(policy=policy.default).parsebytes(sender.sent[0].message)
    assert [p.get_content() for p in message.iter_attachments()] == [b"%PDF-terms"]


async def test_fetch_budget_is_what_content_attachments_left() -> None:
    fetcher = FakeFetcher(b"t")
    value = payload(attachments=[{"filename": "a.pdf", "content": b64(b"x" * 30)}, TERMS])
    await handler(FakeSender(), FakeDeadLetters(), fetcher, max_attachment_bytes=100).process(
        Delivery(record(value))
    )
    assert fetcher.budgets == [70]


async def test_transient_fetch_failure_retries_and_a_send_retry_never_fetches_again() -> None:
    from messaging_service.errors import SmtpTransientError

    fetcher = FakeFetcher(AttachmentUnavailableError("503 from files.example.com"), b"%PDF")
    sender = FakeSender(SmtpTransientError("451 later", code=451))
    subject = handler(sender, FakeDeadLetters(), fetcher)
    delivery = Delivery(record(payload(attachments=[TERMS])))
    assert await subject.process(delivery) == RetryIn(1)
    assert await subject.process(delivery) == RetryIn(5)  # fetched, then the relay said 451
    assert await subject.process(delivery) == Finished(Outcome.SENT)
    assert len(fetcher.urls) == 2
    assert sender.attempts == 2


async def test_fetch_failing_every_time_ends_retries_exhausted() -> None:
    outage = [AttachmentUnavailableError("timeout") for _ in range(3)]
    dead = FakeDeadLetters()
    subject = handler(FakeSender(), dead, FakeFetcher(*outage))
    delivery = Delivery(record(payload(attachments=[TERMS])))
    steps = [await subject.process(delivery) for _ in range(3)]
    assert steps == [RetryIn(1), RetryIn(5), Finished(Outcome.DEAD_LETTERED)]
    assert dead.published[0].reason is FailureReason.RETRIES_EXHAUSTED


async def test_4xx_from_the_url_is_an_attachment_error() -> None:
    dead = FakeDeadLetters()
    fetcher = FakeFetcher(AttachmentError("404 Not Found"))
    step = await handler(FakeSender(), dead, fetcher).process(
        Delivery(record(payload(attachments=[TERMS])))
    )
    assert step == Finished(Outcome.DEAD_LETTERED)
    assert dead.published[0].reason is FailureReason.ATTACHMENT_ERROR
    assert "terms.pdf" in str(dead.published[0].error)


async def test_outcome_logs_name_template_locale_tags_and_metadata() -> None:
    value = payload(locale="de-AT", tags=["order"], metadata={"order_id": "A-1"})
    with structlog.testing.capture_logs() as logs:
        await handler(FakeSender(), FakeDeadLetters()).process(Delivery(record(value)))
    [sent] = [entry for entry in logs if entry["event"] == "email_sent"]
    assert sent["template"] == "welcome"
    assert sent["locale"] == "de"
    assert sent["tags"] == ["order"]
    assert sent["metadata"] == {"order_id": "A-1"}


async def test_a_request_already_sent_is_not_fetched_again() -> None:
    sent_log = FakeSentLog("a-1")
    fetcher = FakeFetcher(b"never")
    subject = make_handler(
        renderer=RENDERER,
        builder=MessageBuilder("Shop <shop@example.com>"),
        sender=FakeSender(),
        dead_letters=FakeDeadLetters(),
        policy=RetryPolicy(max_retries=2, delays=(1, 5)),
        metrics=Metrics(CollectorRegistry()),
        health=Health(),
        limits=RequestLimits(attachment_url_hosts=HOSTS),
        fetcher=fetcher,
        sent_log=sent_log,
    )
    step = await subject.process(Delivery(record(payload(attachments=[TERMS]))))
    assert step == Finished(Outcome.DUPLICATE)
    assert fetcher.urls == []


async def test_an_id_another_sender_holds_is_fetched_and_waits_not_skipped() -> None:
    """Being sent is not sent: the look-up before the download must not end it as duplicate."""
    sent_log = FakeSentLog()
    sent_log.claims["a-1"] = "another-replica"
    fetcher = FakeFetcher(b"%PDF")
    sender = FakeSender()
    subject = make_handler(
        renderer=RENDERER,
        builder=MessageBuilder("Shop <shop@example.com>"),
        sender=sender,
        dead_letters=FakeDeadLetters(),
        policy=RetryPolicy(max_retries=2, delays=(1, 5)),
        metrics=Metrics(CollectorRegistry()),
        health=Health(),
        limits=RequestLimits(attachment_url_hosts=HOSTS),
        fetcher=fetcher,
        sent_log=sent_log,
    )
    delivery = Delivery(record(payload(attachments=[TERMS])))
    assert await subject.process(delivery) == RetryIn(1.0)
    assert (len(fetcher.urls), sender.attempts, delivery.attempts) == (1, 0, 0)
    del sent_log.claims["a-1"]  # the holder's attempt failed and it let go
    assert await subject.process(delivery) == Finished(Outcome.SENT)
    assert len(fetcher.urls) == 1, "fetched once: the bytes are kept across the wait"
