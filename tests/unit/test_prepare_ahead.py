"""Requests are rendered while they wait for a worker, so a freed worker only has to send."""

from __future__ import annotations

import asyncio
import json

from prometheus_client import CollectorRegistry

from messaging_service.core.contract import EmailRequest
from messaging_service.core.mime import MessageBuilder
from messaging_service.core.retry import RetryPolicy
from messaging_service.core.templates import TemplateRenderer
from messaging_service.core.values import (
    FailureReason,
    Outcome,
    OutgoingEmail,
    RenderedEmail,
    SendReport,
)
from messaging_service.service.delivery import Delivery, Finished
from messaging_service.service.handler import RequestHandler
from messaging_service.service.health import Health
from messaging_service.telemetry.metrics import Metrics
from support.fakes import FakeDeadLetters, FakeSender, record
from support.handler import make_handler
from support.pipeline import running


class CountingRenderer(TemplateRenderer):
    def __init__(self) -> None:
        super().__init__()
        self.rendered = 0

    def render(self, request: EmailRequest) -> RenderedEmail:
        self.rendered += 1
        return super().render(request)


class HeldSender:
    """The relay takes its time: nothing is accepted until ``answer`` is set."""

    def __init__(self) -> None:
        self.answer = asyncio.Event()
        self.started = 0

    async def send(self, email: OutgoingEmail) -> SendReport:
        self.started += 1
        await self.answer.wait()
        return SendReport()


def handler_with(sender: HeldSender | FakeSender, renderer: TemplateRenderer) -> RequestHandler:
    return make_handler(
        renderer=renderer,
        builder=MessageBuilder("shop@example.com"),
        sender=sender,
        dead_letters=FakeDeadLetters(),
        policy=RetryPolicy(max_retries=3, delays=(1,)),
        metrics=Metrics(CollectorRegistry()),
        health=Health(),
    )


def welcome(offset: int) -> bytes:
    payload = {"id": f"w-{offset}", "template": "welcome", "to": "a@example.com"}
    return json.dumps({**payload, "data": {"name": "Ann"}}).encode()


async def test_queued_requests_are_rendered_while_the_workers_wait_for_the_relay() -> None:
    sender = HeldSender()
    renderer = CountingRenderer()
    records = [record(welcome(n), offset=n) for n in range(6)]
    async with running(sender, records, workers=2, buffer=10, renderer=renderer) as run:
        async with asyncio.timeout(10):
            while renderer.rendered < 6:  # noqa: ASYNC110 - no event for the renderer's count
                await asyncio.sleep(0.01)
        assert sender.started == 2  # two workers, both waiting for the relay
        sender.answer.set()
        async with asyncio.timeout(10):
            await run.source.exhausted.wait()
    assert renderer.rendered == 6  # once each: the workers did not render again
    assert sender.started == 6


async def test_a_request_that_cannot_be_prepared_is_dead_lettered_by_its_step() -> None:
    handler = handler_with(FakeSender(), TemplateRenderer())
    delivery = Delivery(record(b'{"id": "x-1", "template": "no_such_template", "to": "a@b.com"}'))
    handler.prepare(delivery)
    assert delivery.email is None
    assert delivery.refusal is not None
    assert delivery.refusal[0] is FailureReason.TEMPLATE_ERROR
    assert delivery.email_id == "x-1"
    assert await handler.process(delivery) == Finished(Outcome.DEAD_LETTERED)
