"""Builds the service from settings and owns every lifetime: the one place that wires."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import structlog
from prometheus_client import CollectorRegistry

from messaging_service.adapters.attachment_fetch import HttpsAttachmentFetcher
from messaging_service.adapters.dead_letters import KafkaDeadLetterSink
from messaging_service.adapters.event_sink import KafkaEventSink
from messaging_service.adapters.kafka_consumer import KafkaRequestConsumer
from messaging_service.adapters.redis_sentlog import RedisSentLog
from messaging_service.adapters.redis_suppression import RedisSuppressionStore
from messaging_service.adapters.sentlog import MemorySentLog
from messaging_service.adapters.smtp import SmtpSender
from messaging_service.config import DedupSettings, DkimSettings, Settings
from messaging_service.core.addresses import parse_address
from messaging_service.core.circuit import CircuitBreaker
from messaging_service.core.contract import RequestLimits
from messaging_service.core.dkim import DEFAULT_HEADERS, DkimSigner, load_private_key
from messaging_service.core.mime import MessageBuilder
from messaging_service.core.offsets import OffsetTracker
from messaging_service.core.ports import SentLog
from messaging_service.core.retry import RetryPolicy
from messaging_service.core.suppression import MemorySuppressionStore, SuppressionStore
from messaging_service.core.templates import TemplateRenderer
from messaging_service.core.throttle import AdaptiveRate
from messaging_service.core.watchdog import Watchdog
from messaging_service.service.handler import Ports, RequestHandler
from messaging_service.service.health import Health
from messaging_service.service.lifecycle import Lifecycle
from messaging_service.service.outcomes import Outcomes
from messaging_service.service.pipeline import Pipeline, PipelineSettings
from messaging_service.service.pool import WorkerPool
from messaging_service.service.preparer import Preparer
from messaging_service.service.ratelimit import SendRateLimiter
from messaging_service.service.relay import Relay
from messaging_service.service.reporter import EventReporter
from messaging_service.service.suppressor import Suppressor
from messaging_service.telemetry.http import HttpServer, build_app
from messaging_service.telemetry.metrics import LiveState, Metrics
from messaging_service.telemetry.shared_metrics import LiveMirror
from messaging_service.telemetry.tracing import NO_TRACING, Tracing

log = structlog.get_logger(__name__)

_MIRROR_INTERVAL = 0.5  # seconds between copies of the live gauges for the supervisor


@dataclass(frozen=True, slots=True)
class Running:
    """What a started service tells its caller (tests and the CLI)."""

    http_port: int
    health: Health
    registry: CollectorRegistry


async def run_service(
    settings: Settings,
    stop: asyncio.Event,
    *,
    registry: CollectorRegistry | None = None,
    on_started: Callable[[Running], None] | None = None,
    shared_metrics: bool = False,
    tracing: Tracing = NO_TRACING,
) -> bool:
    """Run until ``stop`` is set; then drain, commit and close everything in reverse order.

    Returns False when the final commit failed (the CLI then exits non-zero); what it held is
    delivered again from the last commit that landed. With ``shared_metrics`` (a child of
    ``run --processes``) the live gauges are also copied for the supervisor's sum. Pure parts
    come first: a broken template or sender fails the start, before any connection.
    """
    registry = registry if registry is not None else CollectorRegistry()
    email = settings.email
    preparer = _preparer(settings)
    relay = _relay(settings)
    health = Health(relay=relay)
    metrics = Metrics(registry)
    tracker = OffsetTracker(map_max_bytes=settings.kafka.offset_map_max_bytes)
    limiter = SendRateLimiter(AdaptiveRate(email.rate_limit or None))
    watchdog = Watchdog(settings.runtime.watchdog_timeout)

    def alive() -> bool:
        return watchdog.alive(waiting=tracker.waiting > 0, excused=relay.circuit_open)

    async with AsyncExitStack() as stack:
        http = await stack.enter_async_context(
            HttpServer(
                build_app(registry, health, live=alive),
                host=settings.http.host,
                port=settings.http.port,
            )
        )
        sender = await stack.enter_async_context(
            SmtpSender(settings.smtp, max_connections=email.worker_count)
        )
        handler = await _handler(
            stack, settings, preparer, sender, metrics, health, limiter, tracing
        )
        pool = await stack.enter_async_context(_pool(settings))
        lifecycle = await stack.enter_async_context(
            Lifecycle(
                handler=handler,
                submit=pool.submit,
                relay=relay,
                metrics=metrics,
                watchdog=watchdog,
                log_lanes=settings.kafka.priority_topic is not None,
            )
        )
        pipeline = Pipeline(
            lifecycle=lifecycle,
            pool=pool,
            tracker=tracker,
            metrics=metrics,
            health=health,
            relay=relay,
            settings=_pipeline_settings(settings),
            watchdog=watchdog,
        )
        live = _live_state(pool, lifecycle, tracker, health, relay, limiter, watchdog)
        await _watch(stack, metrics, live, shared=shared_metrics)
        await stack.enter_async_context(
            _background(lambda: relay.watch(sender.probe, settings.smtp.probe_interval))
        )
        consumer = await stack.enter_async_context(_consumer(settings, pipeline, tracker))
        _log_started(settings, http.port)
        if on_started is not None:
            on_started(Running(http_port=http.port, health=health, registry=registry))
        committed = await pipeline.run(consumer, stop)
    log.info("service_stopped", final_commit="ok" if committed else "failed")
    return committed


def _consumer(
    settings: Settings, pipeline: Pipeline, tracker: OffsetTracker
) -> KafkaRequestConsumer:
    """The group member whose rebalances drive the pipeline and restore the offset maps."""
    return KafkaRequestConsumer(
        settings.kafka,
        on_assigned=pipeline.on_assigned,
        on_revoked=pipeline.on_revoked,
        on_restored=tracker.restore,
    )


def _relay(settings: Settings) -> Relay:
    # Never more failures than a request has attempts: an outage must open the circuit
    # before any request could run out of retries because of it.
    threshold = min(settings.smtp.circuit_threshold, settings.email.max_retries + 1)
    return Relay(CircuitBreaker(threshold=threshold))


async def _handler(
    stack: AsyncExitStack,
    settings: Settings,
    preparer: Preparer,
    sender: SmtpSender,
    metrics: Metrics,
    health: Health,
    limiter: SendRateLimiter,
    tracing: Tracing,
) -> RequestHandler:
    """The handler with its adapters (each closed by ``stack``) and outcome reporting."""
    email = settings.email
    return RequestHandler(
        preparer=preparer,
        ports=await _ports(stack, settings, sender, metrics),
        outcomes=Outcomes(
            metrics=metrics,
            events=await _events(stack, settings, metrics, health),
            sender_domain=parse_address(email.sender, allow_special_use=True).domain,
        ),
        policy=RetryPolicy(max_retries=email.max_retries, delays=email.retry_delays),
        metrics=metrics,
        health=health,
        relay=health.relay,
        limiter=limiter,
        tracing=tracing,
    )


def _preparer(settings: Settings) -> Preparer:
    """Templates, the message builder (with its DKIM key) and the request limits."""
    email = settings.email
    return Preparer(
        renderer=TemplateRenderer(email.templates_dir, render_timeout=email.render_timeout),
        builder=MessageBuilder(email.sender, signer=dkim_signer(settings.dkim)),
        limits=_limits(settings),
        allowed_domains=email.allowed_domains,
    )


async def _ports(
    stack: AsyncExitStack, settings: Settings, sender: SmtpSender, metrics: Metrics
) -> Ports:
    """The handler's adapters, each closed by ``stack``."""
    email = settings.email
    return Ports(
        sender=sender,
        dead_letters=await stack.enter_async_context(KafkaDeadLetterSink(settings.kafka)),
        sent_log=await stack.enter_async_context(_sent_log(settings.dedup)),
        suppressor=await _suppressor(stack, settings, metrics),
        fetcher=await stack.enter_async_context(
            HttpsAttachmentFetcher(
                hosts=email.attachment_url_hosts,
                ca_file=email.attachment_ca_file,
                timeout=email.attachment_fetch_timeout,
            )
        ),
    )


def dkim_signer(settings: DkimSettings) -> DkimSigner | None:
    """The signer DKIM_* asks for, or None when signing is off (the key was checked at load)."""
    if settings.private_key_file is None:
        return None
    assert settings.domain is not None
    assert settings.selector is not None
    return DkimSigner(
        domain=settings.domain,
        selector=settings.selector,
        key=load_private_key(settings.private_key_file),
        headers=settings.headers or DEFAULT_HEADERS,
    )


def _pool(settings: Settings) -> WorkerPool:
    email = settings.email
    lanes = settings.kafka.priority_topic is not None
    return WorkerPool(
        size=email.worker_count,
        capacity=email.worker_buffer,
        on_panic=_log_panic,
        # A lane of its own for the priority topic; none at all without one.
        priority_share=email.priority_share if lanes else None,
    )


def _pipeline_settings(settings: Settings) -> PipelineSettings:
    return PipelineSettings(
        max_in_flight=settings.email.max_in_flight,
        commit_interval=settings.kafka.commit_interval_ms / 1000,
        shutdown_timeout=settings.runtime.shutdown_timeout,
        refill=max(1, settings.email.worker_buffer // 2),
        revocation_timeout=settings.kafka.revocation_timeout,
        topic=settings.kafka.topic,
        priority_topic=settings.kafka.priority_topic,
    )


def _limits(settings: Settings) -> RequestLimits:
    email = settings.email
    return RequestLimits(
        max_record_bytes=email.max_record_bytes,
        max_recipients=email.max_recipients,
        max_data_depth=email.max_data_depth,
        max_data_bytes=email.max_data_bytes,
        max_attachment_bytes=email.max_attachment_bytes,
        attachment_url_hosts=email.attachment_url_hosts,
    )


def _live_state(
    pool: WorkerPool,
    lifecycle: Lifecycle,
    tracker: OffsetTracker,
    health: Health,
    relay: Relay,
    limiter: SendRateLimiter,
    watchdog: Watchdog,
) -> LiveState:
    return LiveState(
        pool=lambda: dataclasses.asdict(pool.stats()),
        retry_waiting=lambda: lifecycle.retry_waiting,
        in_flight=lambda: tracker.pending,
        uncommitted_finished=lambda: tracker.finished_uncommitted,
        assigned_partitions=lambda: len(tracker.partitions()),
        health=health.readiness,
        circuit_open=lambda: relay.circuit_open,
        circuit_opened=lambda: relay.circuit_opened,
        parked=lambda: relay.parked,
        rate_limit=limiter.allowed,
        stalled_seconds=lambda: watchdog.stalled(
            waiting=tracker.waiting > 0, excused=relay.circuit_open
        ),
        oldest_unfinished=lambda: {
            (state.tp.topic, state.tp.partition): state.oldest_unfinished_age()
            for state in tracker.states()
        },
        offset_map_left_out=lambda: tracker.map_left_out,
    )


def _log_started(settings: Settings, http_port: int) -> None:
    log.info(
        "service_started",
        topic=settings.kafka.topic,
        priority_topic=settings.kafka.priority_topic,
        group=settings.kafka.group_id,
        group_instance_id=settings.kafka.group_instance_id,
        workers=settings.email.worker_count,
        dedup="memory" if settings.dedup.redis_url is None else "redis",
        dkim=None
        if settings.dkim.domain is None
        else f"{settings.dkim.selector}._domainkey.{settings.dkim.domain}",
        events=settings.kafka.events_topic or "off",
        suppression=_suppression_store_name(settings),
        http_port=http_port,
        event_loop=type(asyncio.get_running_loop()).__module__.split(".")[0],
    )


def _suppression_store_name(settings: Settings) -> str:
    if not settings.email.suppression:
        return "off"
    return "memory" if settings.dedup.redis_url is None else "redis"


@contextlib.asynccontextmanager
async def _sent_log(settings: DedupSettings) -> AsyncIterator[SentLog]:
    """The record of sent ids: Redis when DEDUP_REDIS_URL is set (closed on exit), else memory."""
    if settings.redis_url is None:
        yield MemorySentLog(
            ttl=settings.ttl, max_entries=settings.max_entries, claim_ttl=settings.claim_ttl
        )
        return
    async with RedisSentLog(settings) as store:
        yield store


async def _events(
    stack: AsyncExitStack, settings: Settings, metrics: Metrics, health: Health
) -> EventReporter | None:
    """Outcome events to KAFKA_EVENTS_TOPIC, or None when it is empty (events off)."""
    if not settings.kafka.events_enabled:
        return None
    sink = await stack.enter_async_context(KafkaEventSink(settings.kafka))
    return EventReporter(sink, metrics=metrics, health=health)


async def _suppressor(
    stack: AsyncExitStack, settings: Settings, metrics: Metrics
) -> Suppressor | None:
    """The suppression list (None with EMAIL_SUPPRESSION=off): Redis if configured, else memory."""
    email = settings.email
    if not email.suppression:
        return None
    store: SuppressionStore
    if settings.dedup.redis_url is None:
        store = MemorySuppressionStore(max_entries=email.suppression_max_entries)
    else:
        store = await stack.enter_async_context(
            RedisSuppressionStore(settings.dedup, key_prefix=email.suppression_key_prefix)
        )
    return Suppressor(store, ttl=email.suppression_ttl, metrics=metrics)


async def _watch(stack: AsyncExitStack, metrics: Metrics, live: LiveState, *, shared: bool) -> None:
    """Export the live gauges; a child of ``run --processes`` also copies them for the sum."""
    metrics.watch(live)
    if shared:
        mirror = LiveMirror(live)
        await stack.enter_async_context(_background(lambda: mirror.run(_MIRROR_INTERVAL)))


def _log_panic(error: BaseException) -> None:
    log.error("worker_job_crashed", exc_info=error)


@contextlib.asynccontextmanager
async def _background(work: Callable[[], Coroutine[Any, Any, None]]) -> AsyncIterator[None]:
    """Run ``work`` as a task owned by the enclosing block: cancelled and awaited on exit."""
    task = asyncio.create_task(work())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
