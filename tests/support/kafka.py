"""A Kafka-protocol broker for integration tests (Tansu, Apache Kafka or external) and helpers.

    with EmbeddedBroker() as broker:                 # Tansu on a free 127.0.0.1 port
        await create_topic(broker.bootstrap, "requests", partitions=3)
        await produce(broker.bootstrap, "requests", [b"a", b"b"], partition=0)
        records = await read_all(broker.bootstrap, "requests", expected=2)
        offsets = await committed_offsets(broker.bootstrap, "group", "requests")
        consumer = AIOKafkaConsumer(..., **group_timeouts(broker))
        broker.restart()                              # same port, but EVERYTHING is gone

Which broker a session uses (``select_broker``): ``KAFKA_BOOTSTRAP_SERVERS`` names an external
Apache Kafka; otherwise ``TEST_BROKER`` picks ``tansu`` (the default: the embedded broker of
``messaging_service.embedded``) or ``kafka`` (the shared Apache Kafka, started by the tests:
``support.apache_kafka``).

The helpers work on both kinds. Tansu's quirks (listed in ``messaging_service.embedded``):
``read_all`` stops at the high watermark of fetch responses (never ``end_offsets()``), topics
are looked up by listing all of them, ``committed_offsets`` always names the partitions, and
consumers need lowered group timeouts. Apache Kafka's: it refuses a session timeout below 6 s,
a client only learns the partitions of the topics it asks about (so partitions are asked of the
cluster, never read from a consumer's metadata), and the first group request of a new cluster
waits for the offsets topic (``committed_offsets`` retries that). ``group_timeouts(broker)``
gives the group timeouts each kind accepts.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import inspect
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol, TypeAlias, TypeVar, overload

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

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
from support.apache_kafka import ApacheKafkaBroker

__all__ = [
    "BOOTSTRAP_ENV",
    "BROKER_ENV",
    "HOST",
    "ApacheKafkaBroker",
    "Broker",
    "BrokerKind",
    "BrokerStartError",
    "EmbeddedBroker",
    "ExternalBroker",
    "Record",
    "RestartableBroker",
    "Topics",
    "broker_kind",
    "committed_offsets",
    "create_topic",
    "external_broker",
    "free_port",
    "group_timeouts",
    "partitions_of",
    "produce",
    "read_all",
    "select_broker",
    "tansu_binary",
    "unique",
    "wait_for",
]

BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP_SERVERS"
BROKER_ENV = "TEST_BROKER"


class BrokerKind(enum.Enum):
    TANSU = "tansu"
    KAFKA = "kafka"


# Group timeouts for consumers in tests (pass them through KafkaSettings, never as production
# defaults). Tansu waits out timers instead of acting on a member leaving, so they are lowered
# for it (see messaging_service.embedded for the measurements). Apache Kafka refuses sessions
# below group.min.session.timeout.ms (6 s by default) and rebalances at once when a member
# leaves, so only a killed member costs the session timeout; a 1 s heartbeat lets members
# notice a rebalance within a second.
GROUP_TIMEOUTS: Mapping[BrokerKind, Mapping[str, int]] = MappingProxyType(
    {
        BrokerKind.TANSU: TANSU_GROUP_TIMEOUTS,
        BrokerKind.KAFKA: MappingProxyType(
            {
                "session_timeout_ms": 6000,
                "heartbeat_interval_ms": 1000,
                "rebalance_timeout_ms": 6000,
            }
        ),
    }
)

T = TypeVar("T")
Record: TypeAlias = "ConsumerRecord[bytes, bytes]"


@dataclass(frozen=True, slots=True)
class Topics:
    """Names owned by one test: a 3-partition request topic, a dead-letter topic, a group id."""

    requests: str
    dlq: str
    group: str


class Broker(Protocol):
    """What the integration tests need from a broker: Tansu, Apache Kafka or external."""

    @property
    def bootstrap(self) -> str: ...

    def restart(self) -> None: ...


class RestartableBroker(Broker, Protocol):
    """A broker the tests started, so they can stop it and start it again."""

    def stop(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ExternalBroker:
    """An Apache Kafka someone else runs (``KAFKA_BOOTSTRAP_SERVERS``); tests cannot restart it."""

    bootstrap: str

    def restart(self) -> None:
        raise NotImplementedError(f"cannot restart the external broker at {self.bootstrap}")


def broker_kind(broker: Broker) -> BrokerKind:
    """Tansu for the embedded broker; Apache Kafka for the one the tests start and external ones."""
    return BrokerKind.TANSU if isinstance(broker, EmbeddedBroker) else BrokerKind.KAFKA


def group_timeouts(broker: Broker) -> dict[str, int]:
    """Session/heartbeat/rebalance timeouts (``*_ms`` keywords) that ``broker`` accepts."""
    return dict(GROUP_TIMEOUTS[broker_kind(broker)])


def external_broker(environ: Mapping[str, str] | None = None) -> ExternalBroker | None:
    """The broker named by ``KAFKA_BOOTSTRAP_SERVERS``, or None when it is unset or blank."""
    value = (os.environ if environ is None else environ).get(BOOTSTRAP_ENV, "")
    servers = [part.strip() for part in value.split(",") if part.strip()]
    return ExternalBroker(",".join(servers)) if servers else None


def select_broker(
    environ: Mapping[str, str] | None = None,
    *,
    log_dir: Path | None = None,
    kafka_state_dir: Path | None = None,
) -> ExternalBroker | EmbeddedBroker | ApacheKafkaBroker:
    """The broker the environment asks for, not started.

    ``KAFKA_BOOTSTRAP_SERVERS`` names an external broker; otherwise ``TEST_BROKER`` is
    ``tansu`` (or unset: the embedded broker, logging to ``log_dir``) or ``kafka`` (the shared
    Apache Kafka, its state in ``kafka_state_dir``). Raises ValueError for another name.
    """
    env = os.environ if environ is None else environ
    external = external_broker(env)
    if external is not None:
        return external
    name = env.get(BROKER_ENV, "").strip().lower() or BrokerKind.TANSU.value
    try:
        kind = BrokerKind(name)
    except ValueError:
        choices = ", ".join(kind.value for kind in BrokerKind)
        raise ValueError(f"{BROKER_ENV}={name!r}: expected one of {choices}") from None
    if kind is BrokerKind.KAFKA:
        return ApacheKafkaBroker(kafka_state_dir)
    return EmbeddedBroker(log_dir=log_dir)


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
    tps = [TopicPartition(topic, p) for p in await partitions_of(bootstrap, topic, timeout=timeout)]
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


async def partitions_of(
    bootstrap: str,
    topic: str,
    *,
    timeout: float = 10.0,  # noqa: ASYNC109
) -> list[int]:
    """The partitions of ``topic``, once each has a leader; AssertionError if it never shows.

    Asked of the cluster by listing every topic, because a consumer's own metadata cannot be
    trusted for this: Apache Kafka tells a client only about the topics it asked for, so
    ``partitions_for_topic()`` stays None on a consumer that was never told about the topic.
    """

    async def found() -> list[int] | None:
        async with admin_client(bootstrap) as admin:
            return await topic_partitions(admin, topic)

    try:
        partitions: list[int] | None = await wait_for(found, timeout, interval=0.1)
    except AssertionError:
        partitions = None
    if not partitions:
        raise AssertionError(f"topic {topic!r} does not exist (within {timeout}s)")
    return partitions


async def committed_offsets(
    bootstrap: str,
    group: str,
    topic: str,
    *,
    timeout: float = 10.0,  # noqa: ASYNC109
) -> dict[int, int | None]:
    """The group's committed offset for each partition of ``topic`` (None: never committed).

    Retries the broker's retriable answers: on a new Apache Kafka the first group request
    creates the offsets topic and is answered "coordinator not available" meanwhile.
    """
    what = f"committed offsets of {group!r} on {topic!r}"
    partitions = await partitions_of(bootstrap, topic, timeout=timeout)
    # The partitions must be named: Tansu drops the connection on an OffsetFetch for "all".
    tps = [TopicPartition(topic, p) for p in partitions]
    async with _within(timeout, what), admin_client(bootstrap) as admin:
        while True:
            try:
                answer = await admin.list_consumer_group_offsets(group, partitions=tps)
                break
            except KafkaError as exc:
                if not exc.retriable:
                    raise
            await asyncio.sleep(0.1)
    result: dict[int, int | None] = dict.fromkeys(partitions)
    for tp, meta in answer.items():
        if tp.topic == topic and meta.offset >= 0:
            result[tp.partition] = meta.offset
    return result


async def committed_total(broker: Broker, topics: Topics) -> int:
    """The sum of the group's committed offsets over every partition of the requests topic."""
    offsets = await committed_offsets(broker.bootstrap, topics.group, topics.requests)
    return sum(offset or 0 for offset in offsets.values())
