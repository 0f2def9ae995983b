"""A RequestHandler assembled from its parts the way app.py does, for handler-level tests."""

from __future__ import annotations

import time
from collections.abc import Callable

from messaging_service.core.contract import RequestLimits
from messaging_service.core.mime import MessageBuilder
from messaging_service.core.ports import AttachmentFetcher, DeadLetterSink, Sender, SentLog
from messaging_service.core.retry import Backoff, RetryPolicy
from messaging_service.core.templates import TemplateRenderer
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
