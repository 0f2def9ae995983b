"""Integration fixtures: one Kafka-protocol broker per session, fresh topics per test."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from support.broker_restart import tansu_on_s3
from support.kafka import (
    ApacheKafkaBroker,
    Broker,
    EmbeddedBroker,
    RestartableBroker,
    Topics,
    create_topic,
    group_timeouts,
    select_broker,
    unique,
)
from support.redis_server import RedisServer
from support.service import ServiceProcess
from support.smtp_server import SmtpTestServer

# Where the Apache Kafka brokers of a session keep their state (and, beside them, the unpacked
# distribution they share); scripts/test points it into build/tmp to clean up after a crash.
KAFKA_TMP_ENV = "TEST_KAFKA_TMP"


@pytest.fixture(scope="session")
def kafka_state_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The parent of every Apache Kafka state directory of this session."""
    configured = os.environ.get(KAFKA_TMP_ENV, "").strip()
    if not configured:
        return tmp_path_factory.mktemp("kafka")
    root = Path(configured).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory, kafka_state_root: Path) -> Iterator[Broker]:
    """The session's broker: ``KAFKA_BOOTSTRAP_SERVERS`` if set, else by ``TEST_BROKER``.

    ``TEST_BROKER=tansu`` (the default) starts the embedded Tansu, ``TEST_BROKER=kafka`` the
    shared Apache Kafka (``support.apache_kafka``). A sync fixture, so it works with any
    event-loop scope.
    """
    selected = select_broker(
        log_dir=tmp_path_factory.mktemp("tansu"),
        kafka_state_dir=kafka_state_root / unique("session"),
    )
    if not isinstance(selected, (EmbeddedBroker, ApacheKafkaBroker)):
        yield selected
        return
    with selected:
        yield selected


@pytest.fixture
def embedded_broker(broker: Broker) -> EmbeddedBroker:
    """The session's embedded broker, for tests that restart it; skips on an external broker.

    A restart wipes every topic (memory storage); tests that restart it must not share topics
    with others, and must create their own again afterwards.
    """
    if not isinstance(broker, EmbeddedBroker):
        pytest.skip(f"needs the embedded Tansu, whose restart empties it: {broker} is not")
    return broker


@pytest.fixture
def persistent_broker(
    broker: Broker, kafka_state_root: Path, tmp_path: Path
) -> Iterator[RestartableBroker]:
    """A broker of the session's kind, of its own, whose restart keeps topics and offsets.

    Beside Tansu: a Tansu with S3 storage (a moto server). Beside Apache Kafka: another Apache
    Kafka in a state directory of its own. Skips on an external broker, which the tests cannot
    start.
    """
    if isinstance(broker, ApacheKafkaBroker):
        with ApacheKafkaBroker(kafka_state_root / unique("restart")) as kafka:
            yield kafka
    elif isinstance(broker, EmbeddedBroker):
        with tansu_on_s3(tmp_path / "tansu") as tansu:
            yield tansu
    else:
        pytest.skip(f"needs a broker the tests start, to restart it: {broker} is external")


@pytest.fixture
def own_broker(
    broker: Broker, kafka_state_root: Path, tmp_path: Path
) -> Iterator[RestartableBroker]:
    """A fresh broker of its own, which the test may stop for good.

    An Apache Kafka beside the Apache Kafka the tests started, else an embedded Tansu (memory
    storage), also beside an external broker.
    """
    if isinstance(broker, ApacheKafkaBroker):
        with ApacheKafkaBroker(kafka_state_root / unique("own")) as kafka:
            yield kafka
    else:
        with EmbeddedBroker(log_dir=tmp_path / "tansu") as tansu:
            yield tansu


@pytest.fixture
def kafka_timeouts(broker: Broker) -> dict[str, int]:
    """Group timeouts for KafkaSettings/AIOKafkaConsumer that the session's broker accepts."""
    return group_timeouts(broker)


@pytest.fixture
async def topics(broker: Broker) -> Topics:
    names = Topics(requests=unique("requests"), dlq=unique("dlq"), group=unique("group"))
    await create_topic(broker.bootstrap, names.requests, partitions=3)
    await create_topic(broker.bootstrap, names.dlq, partitions=1)
    return names


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server on a free port in the test's tmp dir, stopped afterwards."""
    with RedisServer(tmp_path / "redis") as server:
        yield server


@pytest.fixture
async def relay() -> AsyncIterator[SmtpTestServer]:
    """A plain aiosmtpd relay on a free port; a module may define its own ``relay`` instead."""
    async with SmtpTestServer() as server:
        yield server


@pytest.fixture
def processes() -> Iterator[list[ServiceProcess]]:
    """Every service process a test starts; any still running at the end is killed."""
    started: list[ServiceProcess] = []
    yield started
    for process in started:
        process.kill()
