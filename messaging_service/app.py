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

from .config import DedupSettings, Settings
from .consumer import KafkaRequestConsumer
from .dlq import KafkaDeadLetterSink
from .errors import SmtpTransientError
from .handler import RequestHandler
from .health import Health
from .http import HttpServer, build_app
from .metrics import LiveState, Metrics
from .mime import MessageBuilder
from .offsets import OffsetTracker
from .pipeline import Pipeline, PipelineSettings
from .pool import WorkerPool
from .redis_sentlog import RedisSentLog
from .retry import RetryPolicy
from .scheduler import DelayQueue
from .sentlog import MemorySentLog, SentLog
from .smtp import SmtpSender
from .templates import TemplateRenderer

log = structlog.get_logger(__name__)

_PROBE_INTERVAL = 5.0


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
) -> None:
    """Run until ``stop`` is set; then drain, commit and close everything in reverse order."""
    registry = registry if registry is not None else CollectorRegistry()
    health = Health()
    metrics = Metrics(registry)
    # Pure parts first: a broken template or sender fails the start, before any connection.
    renderer = TemplateRenderer(settings.email.templates_dir)
    builder = MessageBuilder(settings.email.sender)
    tracker = OffsetTracker()
    email = settings.email

    async with AsyncExitStack() as stack:
        http = await stack.enter_async_context(
            HttpServer(
                build_app(registry, health, live=lambda: True),
                host=settings.http.host,
                port=settings.http.port,
            )
        )
        sender = await stack.enter_async_context(
            SmtpSender(settings.smtp, max_connections=email.worker_count)
        )
        dead_letters = await stack.enter_async_context(KafkaDeadLetterSink(settings.kafka))
        sent_log = await stack.enter_async_context(_sent_log(settings.dedup))
        pool = await stack.enter_async_context(
            WorkerPool(size=email.worker_count, capacity=email.worker_buffer, on_panic=_log_panic)
        )
        delays = await stack.enter_async_context(DelayQueue(pool.submit))
        handler = RequestHandler(
            renderer=renderer,
            builder=builder,
            sender=sender,
            dead_letters=dead_letters,
            policy=RetryPolicy(max_retries=email.max_retries, delays=email.retry_delays),
            metrics=metrics,
            health=health,
            sent_log=sent_log,
        )
        pipeline = Pipeline(
            handler=handler,
            pool=pool,
            delays=delays,
            tracker=tracker,
            metrics=metrics,
            health=health,
            settings=PipelineSettings(
                max_in_flight=email.max_in_flight,
                commit_interval=settings.kafka.commit_interval_ms / 1000,
                shutdown_timeout=settings.runtime.shutdown_timeout,
                refill=max(1, email.worker_buffer // 2),
            ),
        )
        metrics.watch(
            LiveState(
                pool=lambda: dataclasses.asdict(pool.stats()),
                retry_waiting=lambda: len(delays),
                in_flight=lambda: tracker.pending,
                uncommitted_finished=lambda: tracker.finished_uncommitted,
                assigned_partitions=lambda: len(tracker.partitions()),
                health=health.readiness,
            )
        )
        await stack.enter_async_context(_background(lambda: _probe_smtp(sender, health)))
        consumer = await stack.enter_async_context(
            KafkaRequestConsumer(
                settings.kafka, on_assigned=pipeline.on_assigned, on_revoked=pipeline.on_revoked
            )
        )
        log.info(
            "service_started",
            topic=settings.kafka.topic,
            group=settings.kafka.group_id,
            workers=email.worker_count,
            dedup="memory" if settings.dedup.redis_url is None else "redis",
            http_port=http.port,
            event_loop=type(asyncio.get_running_loop()).__module__.split(".")[0],
        )
        if on_started is not None:
            on_started(Running(http_port=http.port, health=health, registry=registry))
        await pipeline.run(consumer, stop)
    log.info("service_stopped")


@contextlib.asynccontextmanager
async def _sent_log(settings: DedupSettings) -> AsyncIterator[SentLog]:
    """The record of sent ids: Redis when DEDUP_REDIS_URL is set (closed on exit), else memory."""
    if settings.redis_url is None:
        yield MemorySentLog(ttl=settings.ttl, max_entries=settings.max_entries)
        return
    async with RedisSentLog(settings) as store:
        yield store


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


async def _probe_smtp(sender: SmtpSender, health: Health) -> None:
    """Keep /readyz honest while no email flows: probe the relay whenever it is not known good."""
    while True:
        if not health.smtp_reachable:
            try:
                await sender.probe()
            except SmtpTransientError as exc:
                log.warning("smtp_unreachable", error=str(exc))
            else:
                health.smtp_reachable = True
                log.info("smtp_reachable")
        await asyncio.sleep(_PROBE_INTERVAL)
