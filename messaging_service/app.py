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

from .circuit import CircuitBreaker, CircuitState
from .config import DedupSettings, Settings
from .consumer import KafkaRequestConsumer
from .dlq import KafkaDeadLetterSink
from .errors import SmtpTransientError
from .handler import RequestHandler
from .health import Health
from .http import HttpServer, build_app
from .metrics import LiveState, Metrics
from .mime import MessageBuilder
from .models import RequestLimits
from .offsets import OffsetTracker
from .pipeline import Pipeline, PipelineSettings
from .pool import WorkerPool
from .ratelimit import SendRateLimiter
from .redis_sentlog import RedisSentLog
from .retry import RetryPolicy
from .scheduler import DelayQueue
from .sentlog import MemorySentLog, SentLog
from .smtp import SmtpSender
from .templates import TemplateRenderer
from .throttle import AdaptiveRate
from .watchdog import Watchdog

log = structlog.get_logger(__name__)


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
    renderer = TemplateRenderer(
        settings.email.templates_dir, render_timeout=settings.email.render_timeout
    )
    builder = MessageBuilder(settings.email.sender)
    tracker = OffsetTracker(map_max_bytes=settings.kafka.offset_map_max_bytes)
    email = settings.email
    # Never more failures than a request has attempts: an outage must open the circuit
    # before any request could run out of retries because of it.
    circuit = CircuitBreaker(threshold=min(settings.smtp.circuit_threshold, email.max_retries + 1))
    circuit.subscribe(lambda state: _circuit_changed(state, health, settings.smtp.probe_interval))
    limiter = SendRateLimiter(AdaptiveRate(email.rate_limit or None))
    watchdog = Watchdog(settings.runtime.watchdog_timeout)

    def stalled() -> float:
        return watchdog.stalled(waiting=tracker.waiting > 0, excused=health.circuit_open)

    def live() -> bool:
        return watchdog.alive(waiting=tracker.waiting > 0, excused=health.circuit_open)

    async with AsyncExitStack() as stack:
        http = await stack.enter_async_context(
            HttpServer(
                build_app(registry, health, live=live),
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
            circuit=circuit,
            limiter=limiter,
            limits=RequestLimits(
                max_record_bytes=email.max_record_bytes,
                max_recipients=email.max_recipients,
                max_data_depth=email.max_data_depth,
                max_data_bytes=email.max_data_bytes,
            ),
            allowed_domains=email.allowed_domains,
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
                revocation_timeout=settings.kafka.revocation_timeout,
            ),
            circuit=circuit,
            watchdog=watchdog,
        )
        metrics.watch(
            LiveState(
                pool=lambda: dataclasses.asdict(pool.stats()),
                retry_waiting=lambda: len(delays),
                in_flight=lambda: tracker.pending,
                uncommitted_finished=lambda: tracker.finished_uncommitted,
                assigned_partitions=lambda: len(tracker.partitions()),
                health=health.readiness,
                circuit_open=lambda: circuit.is_open,
                circuit_opened=lambda: circuit.opened_count,
                parked=lambda: pipeline.parked,
                rate_limit=limiter.allowed,
                stalled_seconds=stalled,
                offset_map_left_out=lambda: tracker.map_left_out,
            )
        )
        await stack.enter_async_context(
            _background(lambda: _watch_relay(sender, circuit, health, settings.smtp.probe_interval))
        )
        consumer = await stack.enter_async_context(
            KafkaRequestConsumer(
                settings.kafka,
                on_assigned=pipeline.on_assigned,
                on_revoked=pipeline.on_revoked,
                on_restored=tracker.restore,
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


def _circuit_changed(state: CircuitState, health: Health, probe_interval: float) -> None:
    health.circuit_open = state is CircuitState.OPEN
    if state is CircuitState.OPEN:
        health.smtp_reachable = False
        log.error("smtp_circuit_opened", probe_interval=probe_interval)
    else:
        log.info("smtp_circuit_closed")


async def _watch_relay(
    sender: SmtpSender, circuit: CircuitBreaker, health: Health, interval: float
) -> None:
    """Probe the relay whenever it is not known good; a probe that answers closes the circuit.

    Also keeps /readyz honest while no email flows (at start, or after a failed send).
    """
    while True:
        if circuit.is_open or not health.smtp_reachable:
            try:
                await sender.probe()
            except SmtpTransientError as exc:
                log.warning("smtp_unreachable", error=str(exc), circuit=circuit.state.value)
            except Exception as exc:  # the task boundary: only this task ever closes the circuit
                log.error("smtp_probe_crashed", exc_info=exc, circuit=circuit.state.value)
            else:
                health.smtp_reachable = True
                log.info("smtp_reachable")
                circuit.close()
        await asyncio.sleep(interval)
