"""A RequestHandler assembled from its parts the way app.py does, for handler-level tests."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from messaging_service.core.contract import RequestLimits
from messaging_service.core.mime import MessageBuilder
from messaging_service.core.ports import AttachmentFetcher, DeadLetterSink, Sender, SentLog
from messaging_service.core.retry import Backoff, RetryPolicy
from messaging_service.core.templates import TemplateRenderer
from messaging_service.service.delivery import Delivery, Finished, RetryIn
from messaging_service.service.handler import Ports, RequestHandler
from messaging_service.service.health import Health
from messaging_service.service.outcomes import Outcomes
from messaging_service.service.preparer import Preparer
from messaging_service.service.ratelimit import SendRateLimiter
from messaging_service.service.relay import Relay
from messaging_service.service.reporter import EventReporter
from messaging_service.service.suppressor import Suppressor
from messaging_service.telemetry.metrics import Metrics
from messaging_service.telemetry.tracing import NO_TRACING, Tracing
from support.fakes import FakeDeadLetters, FakeSender
from support.samples import sample_sum


def make_handler(
    *,
    renderer: TemplateRenderer,
    builder: MessageBuilder,
    sender: Sender,
    dead_letters: DeadLetterSink,
    policy: RetryPolicy,
    metrics: Metrics,
    health: Health,
    relay: Relay | None = None,
    limiter: SendRateLimiter | None = None,
    sent_log: SentLog | None = None,
    dead_letter_backoff: Backoff | None = None,
    clock: Callable[[], float] = time.time,
    limits: RequestLimits | None = None,
    allowed_domains: tuple[str, ...] = (),
    fetcher: AttachmentFetcher | None = None,
    events: EventReporter | None = None,
    suppressor: Suppressor | None = None,
    sender_domain: str = "localhost",
    tracing: Tracing = NO_TRACING,
) -> RequestHandler:
    return RequestHandler(
        preparer=Preparer(
            renderer=renderer, builder=builder, limits=limits, allowed_domains=allowed_domains
        ),
        ports=Ports(
            sender=sender,
            dead_letters=dead_letters,
            sent_log=sent_log,
            suppressor=suppressor,
            fetcher=fetcher,
        ),
        outcomes=Outcomes(metrics=metrics, events=events, sender_domain=sender_domain, clock=clock),
        policy=policy,
        metrics=metrics,
        health=health,
        relay=relay,
        limiter=limiter,
        dead_letter_backoff=dead_letter_backoff,
        tracing=tracing,
    )


@functools.cache
def builtin_renderer() -> TemplateRenderer:
    """The built-in templates, compiled once for every handler test."""
    return TemplateRenderer()


class HandlerHarness:
    """A handler over fakes, with its metrics registry, driven the way the pipeline drives it.

    Retries wait 1, 5 and 10 s; the clock stands still at 1,700,000,001.
    """

    def __init__(
        self,
        sender: FakeSender,
        *,
        dead_letters: FakeDeadLetters | None = None,
        sent_log: SentLog | None = None,
        relay: Relay | None = None,
        dead_letter_backoff: Backoff | None = None,
    ) -> None:
        self.sender = sender
        self.sent_log = sent_log
        self.dead_letters = dead_letters or FakeDeadLetters()
        self.registry = CollectorRegistry()
        self.health = Health()
        self.handler = make_handler(
            renderer=builtin_renderer(),
            builder=MessageBuilder("Shop <shop@example.com>"),
            sender=sender,
            dead_letters=self.dead_letters,
            policy=RetryPolicy(max_retries=3, delays=(1, 5, 10)),
            metrics=Metrics(self.registry),
            health=self.health,
            relay=relay,
            sent_log=sent_log,
            dead_letter_backoff=dead_letter_backoff,
            clock=lambda: 1_700_000_001.0,
        )

    def metric(self, name: str, **labels: str) -> float:
        return sample_sum(self.registry, name, **labels)

    async def run_to_end(self, delivery: Delivery) -> tuple[Finished, list[float]]:
        """Drive a delivery to its outcome, collecting the waits it asked for."""
        waits: list[float] = []
        while True:
            step = await self.handler.process(delivery)
            if isinstance(step, Finished):
                return step, waits
            assert isinstance(step, RetryIn), step
            waits.append(step.seconds)
