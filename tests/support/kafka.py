"""A Kafka-protocol broker for integration tests (embedded Tansu or external) and async helpers.

    with EmbeddedBroker() as broker:                 # Tansu on a free 127.0.0.1 port
        await create_topic(broker.bootstrap, "requests", partitions=3)
        await produce(broker.bootstrap, "requests", [b"a", b"b"], partition=0)
        records = await read_all(broker.bootstrap, "requests", expected=2)
        offsets = await committed_offsets(broker.bootstrap, "group", "requests")
        broker.restart()                              # same port, but EVERYTHING is gone

The embedded broker itself lives in the package (``messaging_service.embedded``, also used by
``messaging-service dev``); its docstring lists the Tansu quirks these helpers work around:
``read_all`` stops at the high watermark of fetch responses (never ``end_offsets()``), topics
are looked up by listing all of them, ``committed_offsets`` always names the partitions, and
consumers in tests need the lowered group timeouts of ``KAFKA_TIMEOUTS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeAlias, TypeVar, overload

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from messaging_service.adapters import kafka_admin
from messaging_service.adapters.kafka_admin import admin_client, topic_partitions
from messaging_service.dev.embedded import (
    HOST,
    TANSU_GROUP_TIMEOUTS,
    BrokerStartError,
    EmbeddedBroker,
    free_port,
    tansu_binary,
)

__all__ = [
    "BOOTSTRAP_ENV",
    "HOST",
    "KAFKA_TIMEOUTS",
    "Broker",
    "BrokerStartError",
    "EmbeddedBroker",
    "ExternalBroker",
    "Record",
    "Topics",
    "committed_offsets",
    "create_topic",
    "external_broker",
    "free_port",
    "produce",
    "read_all",
    "select_broker",
    "tansu_binary",
    "unique",
    "wait_for",
]

BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP_SERVERS"

# Lowered group timeouts for consumers in tests (pass them through KafkaSettings, never as
# production defaults); see messaging_service.embedded for the measurements behind them.
KAFKA_TIMEOUTS: Mapping[str, int] = TANSU_GROUP_TIMEOUTS

T = TypeVar("T")
Record: TypeAlias = "ConsumerRecord[bytes, bytes]"


@dataclass(frozen=True, slots=True)
class Topics:
    """Names owned by one test: a 3-partition request topic, a dead-letter topic, a group id."""

    requests: str
    dlq: str
    group: str


class Broker(Protocol):
    """What the integration tests need from a broker, embedded or external."""

    @property
    def bootstrap(self) -> str: ...

    def restart(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ExternalBroker:
    """A broker someone else runs (``KAFKA_BOOTSTRAP_SERVERS``); the tests cannot restart it."""

    bootstrap: str

    def restart(self) -> None:
        raise NotImplementedError(f"cannot restart the external broker at {self.bootstrap}")


def external_broker(environ: Mapping[str, str] | None = None) -> ExternalBroker | None:
    """The broker named by ``KAFKA_BOOTSTRAP_SERVERS``, or None when it is unset or blank."""
    value = (os.environ if environ is None else environ).get(BOOTSTRAP_ENV, "")
    servers = [part.strip() for part in value.split(",") if part.strip()]
    return ExternalBroker(",".join(servers)) if servers else None


def select_broker(
    environ: Mapping[str, str] | None = None, *, log_dir: Path | None = None
) -> ExternalBroker | EmbeddedBroker:
    """The external broker if the environment names one, else an embedded one (not started)."""
    return external_broker(environ) or EmbeddedBroker(log_dir=log_dir)


# --- async helpers --------------------------------------------------------------------------


def unique(prefix: str) -> str:
    """A topic or group name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@overload
async def wait_for(
    predicate: Callable[[], Awaitable[T]],
    timeout: float,  # noqa: ASYNC109
    interval: float = ...,
    *,
    message: str | None = ...,
) -> T: ...


@overload
async def wait_for(
    predicate: Callable[[], T],
    timeout: float,  # noqa: ASYNC109
    interval: float = ...,
    *,
    message: str | None = ...,
) -> T: ...


async def wait_for(
    predicate: Callable[[], Any],
    timeout: float,  # noqa: ASYNC109 - a bound of its own is the point of these helpers
    interval: float = 0.05,
    *,
    message: str | None = None,
) -> Any:
    """Poll ``predicate`` (sync or async) until it returns something truthy, and return that."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if asyncio.get_running_loop().time() >= deadline:
            what = message or getattr(predicate, "__name__", repr(predicate))
            raise AssertionError(f"not true within {timeout}s: {what} (last value {result!r})")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def _within(seconds: float, what: str) -> AsyncIterator[None]:
    """A deadline that fails the test with a readable message instead of a bare TimeoutError."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        raise AssertionError(f"{what}: not done within {seconds}s") from None


async def create_topic(
    bootstrap: str,
    name: str,
    partitions: int = 1,
    *,
    timeout: float = 15.0,  # noqa: ASYNC109
) -> None:
    """Create a topic and wait until metadata shows all its partitions with a leader."""
    async with _within(timeout, f"creating topic {name!r}"):
        await kafka_admin.create_topic(bootstrap, name, partitions, timeout=timeout + 1)


async def produce(
    bootstrap: str,
    topic: str,
    values: Sequence[bytes],
    *,
    keys: Sequence[bytes | None] | None = None,
    headers: Sequence[tuple[str, bytes]] | None = None,
    partition: int | None = None,
    timeout: float = 15.0,  # noqa: ASYNC109
) -> list[tuple[int, int]]:
    """Send ``values`` in order (acks=all) and return each record's (partition, offset).

    ``keys`` pairs up with ``values``; ``headers`` go on every record.
    """
    if keys is not None and len(keys) != len(values):
        raise ValueError(f"{len(keys)} keys for {len(values)} values")
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", request_timeout_ms=10_000)
    async with _within(timeout, f"producing {len(values)} records to {topic!r}"):
        await producer.start()
        try:
            deliveries = [
                await producer.send(
                    topic,
                    value,
                    key=None if keys is None else keys[index],
                    headers=list(headers) if headers else None,
                    partition=partition,
                )
                for index, value in enumerate(values)
            ]
            sent = await asyncio.gather(*deliveries)
        finally:
            await producer.stop()
    return [(meta.partition, meta.offset) for meta in sent]


async def read_all(
    bootstrap: str,
    topic: str,
    *,
    expected: int | None = None,
    timeout: float = 15.0,  # noqa: ASYNC109
    idle: float = 1.0,
) -> list[Record]:
    """Every record of ``topic`` from the beginning, sorted by (partition, offset); no group.

    With ``expected``, stop as soon as that many records arrived (more may be returned if they
    came in the same fetch). Without it, stop once every partition's position has reached the
    high watermark of the latest fetch and nothing new arrived for ``idle`` seconds. Raises
    AssertionError on timeout.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        request_timeout_ms=10_000,
    )
    records: list[Record] = []
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            await consumer.start()
            if topic not in await consumer.topics():
                raise AssertionError(f"topic {topic!r} does not exist")
            tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            last_arrival = loop.time()
            while True:
                batch = await consumer.getmany(*tps, timeout_ms=100)
                for part in batch.values():
                    records.extend(part)
                    last_arrival = loop.time()
                if expected is not None:
                    if len(records) >= expected:
                        break
                elif loop.time() - last_arrival >= idle and await _caught_up(consumer, tps):
                    break
    except TimeoutError:
        wanted = "the end" if expected is None else f"{expected} records"
        raise AssertionError(
            f"read {len(records)} records from {topic!r} within {timeout}s, wanted {wanted}"
        ) from None
    finally:
        await consumer.stop()
    return sorted(records, key=lambda record: (record.partition, record.offset))


async def _caught_up(consumer: AIOKafkaConsumer, tps: Sequence[TopicPartition]) -> bool:
    for tp in tps:
        highwater = consumer.highwater(tp)  # from fetch responses, unlike end_offsets()
        if highwater is None or await consumer.position(tp) < highwater:
            return False
    return True


async def committed_offsets(
    bootstrap: str,
    group: str,
    topic: str,
    *,
    timeout: float = 10.0,  # noqa: ASYNC109
) -> dict[int, int | None]:
    """The group's committed offset for each partition of ``topic`` (None: never committed)."""
    what = f"committed offsets of {group!r} on {topic!r}"
    async with _within(timeout, what), admin_client(bootstrap) as admin:
        partitions = await topic_partitions(admin, topic)
        if partitions is None:
            raise AssertionError(f"topic {topic!r} does not exist")
        # The partitions must be named: Tansu drops the connection on an OffsetFetch for "all".
        answer = await admin.list_consumer_group_offsets(
            group, partitions=[TopicPartition(topic, p) for p in partitions]
        )
    result: dict[int, int | None] = dict.fromkeys(partitions)
    for tp, meta in answer.items():
        if tp.topic == topic and meta.offset >= 0:
            result[tp.partition] = meta.offset
    return result


async def committed_total(broker: Broker, topics: Topics) -> int:
    """The sum of the group's committed offsets over every partition of the requests topic."""
    offsets = await committed_offsets(broker.bootstrap, topics.group, topics.requests)
    return sum(offset or 0 for offset in offsets.values())
