"""Integration fixtures: one Kafka-protocol broker per session, fresh topics per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from support.kafka import (
    KAFKA_TIMEOUTS,
    Broker,
    EmbeddedBroker,
    Topics,
    create_topic,
    select_broker,
    unique,
)
from support.redis_server import RedisServer
from support.service import ServiceProcess
from support.smtp_server import SmtpTestServer


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """``KAFKA_BOOTSTRAP_SERVERS`` if set, else an embedded Tansu shared by the whole session.

    A sync fixture, so it works with any event-loop scope.
    """
    selected = select_broker(log_dir=tmp_path_factory.mktemp("tansu"))
    if not isinstance(selected, EmbeddedBroker):
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
        pytest.skip("needs the embedded broker: an external one cannot be restarted")
    return broker


@pytest.fixture
def kafka_timeouts() -> dict[str, int]:
    """Group timeouts for KafkaSettings/AIOKafkaConsumer that make rebalances take seconds."""
    return dict(KAFKA_TIMEOUTS)


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
