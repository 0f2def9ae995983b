"""A running Pipeline over in-memory fakes, for the unit tests of the loop (never integration)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from messaging_service.circuit import CircuitBreaker
from messaging_service.handler import RequestHandler
from messaging_service.health import Health
from messaging_service.metrics import Metrics
from messaging_service.mime import MessageBuilder
from messaging_service.models import InboundRecord, Sender
from messaging_service.offsetmap import OffsetMap
from messaging_service.offsets import OffsetTracker, TopicPartition
from messaging_service.pipeline import Pipeline, PipelineSettings
from messaging_service.pool import WorkerPool
from messaging_service.retry import RetryPolicy
from messaging_service.scheduler import DelayQueue
from messaging_service.templates import TemplateRenderer
from messaging_service.watchdog import Watchdog
from support.fakes import FakeDeadLetters, FakeSource

TP = TopicPartition("email.requests", 0)


@dataclass
class Running:
    pipeline: Pipeline
    pool: WorkerPool
    tracker: OffsetTracker
    metrics: Metrics
    source: FakeSource
    dead_letters: FakeDeadLetters
    stop: asyncio.Event
    task: asyncio.Task[None]


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
    offset_map: OffsetMap | None = None,
    map_max_bytes: int = 0,
) -> AsyncIterator[Running]:
    """The pipeline consuming ``records`` from partition ``TP``; stopped and awaited on exit.

    ``offset_map`` is handed to the tracker as if read from the last commit on assignment.
    """
    source = FakeSource(records)
    tracker = OffsetTracker(map_max_bytes=map_max_bytes or (4096 if offset_map else 0))
    health = Health()
    metrics = Metrics(CollectorRegistry())
    dead_letters = FakeDeadLetters()
    async with (
        WorkerPool(size=workers, capacity=buffer) as pool,
        DelayQueue(pool.submit) as delays,
    ):
        handler = RequestHandler(
            renderer=renderer or TemplateRenderer(),
            builder=MessageBuilder("shop@example.com"),
            sender=sender,
            dead_letters=dead_letters,
            policy=RetryPolicy(max_retries=3, delays=(retry_delay,)),
            metrics=metrics,
            health=health,
            circuit=circuit,
        )
        pipeline = Pipeline(
            handler=handler,
            pool=pool,
            delays=delays,
            tracker=tracker,
            metrics=metrics,
            health=health,
            settings=PipelineSettings(
                max_in_flight=max_in_flight,
                commit_interval=0.01,
                shutdown_timeout=shutdown_timeout,
                refill=refill,
                revocation_timeout=revocation_timeout,
            ),
            circuit=circuit,
            watchdog=watchdog,
        )
        await pipeline.on_assigned([TP])
        if offset_map is not None:
            tracker.restore({TP: offset_map})
        stop = asyncio.Event()
        task = asyncio.create_task(pipeline.run(source, stop))
        try:
            yield Running(pipeline, pool, tracker, metrics, source, dead_letters, stop, task)
        finally:
            stop.set()
            await task
