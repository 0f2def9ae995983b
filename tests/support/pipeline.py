"""A running Pipeline over in-memory fakes, for the unit tests of the loop (never integration)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry

from messaging_service.core.circuit import CircuitBreaker
from messaging_service.core.events import EventSink
from messaging_service.core.mime import MessageBuilder
from messaging_service.core.offsetmap import OffsetMap
from messaging_service.core.offsets import OffsetTracker, TopicPartition
from messaging_service.core.ports import DeadLetterSink, Sender, SentLog
from messaging_service.core.retry import Backoff, RetryPolicy
from messaging_service.core.templates import TemplateRenderer
from messaging_service.core.values import InboundRecord
from messaging_service.core.watchdog import Watchdog
from messaging_service.service.health import Health
from messaging_service.service.lifecycle import Lifecycle
from messaging_service.service.pipeline import Pipeline, PipelineSettings
from messaging_service.service.pool import WorkerPool
from messaging_service.service.relay import Relay
from messaging_service.service.reporter import EventReporter
from messaging_service.telemetry.metrics import Metrics
from support.fakes import FakeDeadLetters, FakeSource
from support.handler import make_handler

TP = TopicPartition("email.requests", 0)


@dataclass
class Running:
    pipeline: Pipeline
    lifecycle: Lifecycle
    relay: Relay
    pool: WorkerPool
    tracker: OffsetTracker
    metrics: Metrics
    source: FakeSource
    dead_letters: Any
    stop: asyncio.Event
    task: asyncio.Task[bool]


@asynccontextmanager
async def running(
    sender: Sender,
    records: list[InboundRecord],
    *,
    workers: int = 4,
    buffer: int = 8,
    max_in_flight: int = 100,
    retry_delay: float = 30.0,
    shutdown_timeout: float = 10.0,
    refill: int = 1,
    revocation_timeout: float = 0.0,
    watchdog: Watchdog | None = None,
    circuit: CircuitBreaker | None = None,
    renderer: TemplateRenderer | None = None,
    dead_letters: FakeDeadLetters | DeadLetterSink | None = None,
    sent_log: SentLog | None = None,
    source: FakeSource | None = None,
    offset_map: OffsetMap | None = None,
    map_max_bytes: int = 0,
    priority_topic: str | None = None,
    priority_share: float = 0.9,
    events: EventSink | None = None,
) -> AsyncIterator[Running]:
    """The pipeline consuming ``records`` from partition ``TP``; stopped and awaited on exit.

    ``offset_map`` is handed to the tracker as if read from the last commit on assignment.
    """
    source = source if source is not None else FakeSource(records)
    tracker = OffsetTracker(map_max_bytes=map_max_bytes or (4096 if offset_map else 0))
    relay = Relay(circuit)
    health = Health(relay=relay)
    metrics = Metrics(CollectorRegistry())
    dead_letters = dead_letters if dead_letters is not None else FakeDeadLetters()
    watchdog = watchdog if watchdog is not None else Watchdog(0)
    lanes = priority_topic is not None
    pool_share = priority_share if lanes else None
    async with WorkerPool(size=workers, capacity=buffer, priority_share=pool_share) as pool:
        handler = make_handler(
            renderer=renderer or TemplateRenderer(),
            builder=MessageBuilder("shop@example.com"),
            sender=sender,
            dead_letters=dead_letters,
            policy=RetryPolicy(max_retries=3, delays=(retry_delay,)),
            metrics=metrics,
            health=health,
            relay=relay,
            sent_log=sent_log,
            events=None
            if events is None
            else EventReporter(
                events,
                metrics=metrics,
                health=health,
                backoff=Backoff(initial=0.01, ceiling=0.05),
            ),
        )
        lifecycle = Lifecycle(
            handler=handler,
            submit=pool.submit,
            relay=relay,
            metrics=metrics,
            watchdog=watchdog,
            # Recovering from a bug is retried on this backoff: short, so tests see it.
            backoff=Backoff(initial=0.01, ceiling=0.05),
            log_lanes=lanes,
        )
        pipeline = Pipeline(
            lifecycle=lifecycle,
            pool=pool,
            relay=relay,
            tracker=tracker,
            metrics=metrics,
            health=health,
            settings=PipelineSettings(
                max_in_flight=max_in_flight,
                commit_interval=0.01,
                shutdown_timeout=shutdown_timeout,
                refill=refill,
                revocation_timeout=revocation_timeout,
                priority_topic=priority_topic,
            ),
            watchdog=watchdog,
        )
        async with lifecycle:
            lane_tps = {tp for tp in source.assigned if tp.topic == priority_topic}
            await pipeline.on_assigned(sorted({TP} | lane_tps))
            if offset_map is not None:
                tracker.restore({TP: offset_map})
            stop = asyncio.Event()
            task = asyncio.create_task(pipeline.run(source, stop))
            try:
                yield Running(
                    pipeline,
                    lifecycle,
                    relay,
                    pool,
                    tracker,
                    metrics,
                    source,
                    dead_letters,
                    stop,
                    task,
                )
            finally:
                stop.set()
                await task
