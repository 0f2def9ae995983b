"""The Kafka test support itself: embedded broker lifecycle, topics, produce/read, offsets."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import TopicAlreadyExistsError

from support.kafka import (
    BOOTSTRAP_ENV,
    KAFKA_TIMEOUTS,
    Broker,
    BrokerStartError,
    EmbeddedBroker,
    ExternalBroker,
    Record,
    Topics,
    committed_offsets,
    create_topic,
    produce,
    read_all,
    select_broker,
    unique,
    wait_for,
)

pytestmark = pytest.mark.integration


async def test_read_all_returns_what_was_produced_in_order_per_partition(
    broker: Broker, topics: Topics
) -> None:
    first = [f"p0-{i}".encode() for i in range(5)]
    second = [f"p2-{i}".encode() for i in range(7)]
    sent_first = await produce(
        broker.bootstrap,
        topics.requests,
        first,
        keys=[b"k"] * 5,
        headers=[("kind", b"test")],
        partition=0,
    )
    sent_second = await produce(broker.bootstrap, topics.requests, second, partition=2)

    records = await read_all(broker.bootstrap, topics.requests, expected=12)

    assert sent_first == [(0, offset) for offset in range(5)]
    assert sent_second == [(2, offset) for offset in range(7)]
    assert [(r.partition, r.offset, r.value) for r in records] == [
        *((0, i, value) for i, value in enumerate(first)),
        *((2, i, value) for i, value in enumerate(second)),
    ]
    assert {r.key for r in records if r.partition == 0} == {b"k"}
    assert {tuple(r.headers) for r in records if r.partition == 0} == {(("kind", b"test"),)}


async def test_read_all_without_expected_reads_to_the_high_watermark(
    broker: Broker, topics: Topics
) -> None:
    """Many records go out in few batches, where Tansu's end_offsets() answer is wrong."""
    values = [str(i).encode() for i in range(200)]
    await produce(broker.bootstrap, topics.requests, values, partition=1)

    records = await read_all(broker.bootstrap, topics.requests)

    assert [r.value for r in records] == values
    assert await read_all(broker.bootstrap, topics.dlq) == []


async def test_read_all_fails_when_fewer_records_than_expected_arrive(
    broker: Broker, topics: Topics
) -> None:
    await produce(broker.bootstrap, topics.dlq, [b"only one"])

    with pytest.raises(AssertionError, match=r"read 1 records .* wanted 2 records"):
        await read_all(broker.bootstrap, topics.dlq, expected=2, timeout=1.5)


async def test_create_topic_makes_every_partition_visible(broker: Broker) -> None:
    name = unique("created")

    await create_topic(broker.bootstrap, name, partitions=3)

    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap)
    await consumer.start()
    try:
        assert name in await consumer.topics()
        assert consumer.partitions_for_topic(name) == {0, 1, 2}
    finally:
        await consumer.stop()


async def test_create_topic_refuses_an_existing_name(broker: Broker, topics: Topics) -> None:
    with pytest.raises(TopicAlreadyExistsError, match=topics.requests):
        await create_topic(broker.bootstrap, topics.requests, partitions=3)


async def test_committed_offsets_are_none_until_a_group_member_commits(
    broker: Broker, topics: Topics
) -> None:
    await produce(broker.bootstrap, topics.requests, [b"a", b"b", b"c"], partition=1)
    assert await committed_offsets(broker.bootstrap, topics.group, topics.requests) == {
        0: None,
        1: None,
        2: None,
    }

    member = AIOKafkaConsumer(
        topics.requests,
        bootstrap_servers=broker.bootstrap,
        group_id=topics.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **KAFKA_TIMEOUTS,
    )
    await member.start()
    try:
        received: list[Record] = []

        async def three_received() -> bool:
            batch = await member.getmany(timeout_ms=200)
            received.extend(record for part in batch.values() for record in part)
            return len(received) >= 3

        await wait_for(three_received, timeout=20, message="group member got 3 records")
        await member.commit({TopicPartition(topics.requests, 1): 2})
    finally:
        await member.stop()

    offsets = await committed_offsets(broker.bootstrap, topics.group, topics.requests)
    assert offsets == {0: None, 1: 2, 2: None}

    # A fresh consumer in the group, which never joins it, agrees: offsets outlive members.
    observer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=topics.group)
    await observer.start()
    try:
        assert await observer.committed(TopicPartition(topics.requests, 1)) == 2
        assert await observer.committed(TopicPartition(topics.requests, 0)) is None
    finally:
        await observer.stop()


async def test_wait_for_returns_the_truthy_value_and_fails_with_the_message() -> None:
    answers = iter([None, 0, "ready"])
    assert await wait_for(lambda: next(answers), timeout=5, interval=0) == "ready"

    async def never() -> bool:
        return False

    with pytest.raises(AssertionError, match="the moon turned blue"):
        await wait_for(never, timeout=0.1, message="the moon turned blue")


def test_bootstrap_servers_env_selects_an_external_broker(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(BOOTSTRAP_ENV, " kafka-1:9092, kafka-2:9092 ")

    selected = select_broker(log_dir=tmp_path)

    assert selected == ExternalBroker("kafka-1:9092,kafka-2:9092")
    with pytest.raises(NotImplementedError):
        selected.restart()


@pytest.mark.parametrize("value", [None, "", " , "])
def test_without_bootstrap_servers_an_embedded_broker_is_chosen_but_not_started(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv(BOOTSTRAP_ENV, raising=False)
    else:
        monkeypatch.setenv(BOOTSTRAP_ENV, value)

    selected = select_broker(log_dir=tmp_path)

    assert isinstance(selected, EmbeddedBroker)
    assert not selected.running


async def test_embedded_broker_restarts_on_its_port_with_empty_storage(tmp_path: Path) -> None:
    with EmbeddedBroker(log_dir=tmp_path) as embedded:
        bootstrap = embedded.bootstrap
        topic = unique("before-restart")
        await create_topic(bootstrap, topic)
        await produce(bootstrap, topic, [b"lost"])

        embedded.restart()

        assert embedded.bootstrap == bootstrap
        name = unique("after-restart")
        await create_topic(bootstrap, name)
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
        await consumer.start()
        try:
            topics = await consumer.topics()
        finally:
            await consumer.stop()
        assert name in topics
        assert topic not in topics
    assert not embedded.running
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", int(bootstrap.rsplit(":", 1)[1])), timeout=1)


def test_embedded_broker_reports_a_taken_port_with_its_log(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]

        broker = EmbeddedBroker(log_dir=tmp_path, port=port)
        with pytest.raises(BrokerStartError, match=f"port {port} is in use") as failure:
            broker.start()

    assert "tansu" in str(failure.value)
    assert not broker.running
