"""Producing requests to Kafka: a backlog in bulk (fast), or paced for the latency phase."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer

from .content import Payloads

_BATCH_BYTES = 1 << 20
_BATCHES_IN_FLIGHT = 64


@dataclass(frozen=True, slots=True)
class Produced:
    count: int
    seconds: float


def _producer(bootstrap: str, *, linger_ms: int) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=linger_ms,
        max_batch_size=_BATCH_BYTES,
        max_request_size=4 * _BATCH_BYTES,
        request_timeout_ms=30_000,
    )


async def produce_backlog(
    bootstrap: str,
    topic: str,
    *,
    run_id: str,
    count: int,
    partitions: int,
    attachment_bytes: int = 0,
) -> Produced:
    """Write ``count`` requests (indexes 0...), an equal run of them to each partition, acked.

    Whole record batches are built and sent directly: a million requests take seconds.
    """
    payloads = Payloads(run_id, attachment_bytes=attachment_bytes)
    began = time.perf_counter()
    producer = _producer(bootstrap, linger_ms=5)
    await producer.start()
    try:
        pending: list[asyncio.Future[Any]] = []
        share = -(-count // partitions)
        for partition in range(partitions):
            index, end = partition * share, min((partition + 1) * share, count)
            while index < end:
                batch = producer.create_batch()
                while index < end and batch.append(
                    key=None, value=payloads.value(index), timestamp=None
                ):
                    index += 1
                batch.close()
                if not batch.record_count():
                    raise ValueError("a request does not fit in an empty record batch")
                pending.append(await producer.send_batch(batch, topic, partition=partition))
                if len(pending) >= _BATCHES_IN_FLIGHT:
                    await asyncio.gather(*pending)
                    pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return Produced(count=count, seconds=time.perf_counter() - began)


async def produce_paced(
    bootstrap: str,
    topic: str,
    *,
    run_id: str,
    count: int,
    rate: float,
    start: int,
    attachment_bytes: int = 0,
) -> dict[str, float]:
    """Send ``count`` requests at ``rate`` per second, each stamped with its send time.

    Returns each request id's record timestamp in seconds (what the latency is measured from).
    """
    payloads = Payloads(run_id, attachment_bytes=attachment_bytes)
    stamps: dict[str, float] = {}
    producer = _producer(bootstrap, linger_ms=0)
    await producer.start()
    try:
        began = time.monotonic()
        pending: list[asyncio.Future[Any]] = []
        for offset in range(count):
            due = began + offset / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            index = start + offset
            now_ms = int(time.time() * 1000)
            stamps[f"{run_id}-{index}"] = now_ms / 1000
            pending.append(await producer.send(topic, payloads.value(index), timestamp_ms=now_ms))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return stamps
