"""The Kafka test support itself: embedded broker lifecycle, topics, produce/read, offsets."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import TopicAlreadyExistsError

from support.apache_kafka import KAFKA_HOME_ENV, kafka_home
from support.kafka import (
    BOOTSTRAP_ENV,
    BROKER_ENV,
    GROUP_TIMEOUTS,
    ApacheKafkaBroker,
    Broker,
    BrokerKind,
    BrokerStartError,
    EmbeddedBroker,
    ExternalBroker,
    Record,
    RestartableBroker,
    Topics,
    broker_kind,
    committed_offsets,
    create_topic,
    group_timeouts,
    partitions_of,
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
    """Right after it returns, a client asking for the topic sees each partition's leader.

    Asked with a producer: a consumer's metadata lists only the topics it was told about
    (on Apache Kafka none at all, so ``partitions_for_topic()`` would say None).
    """
    name = unique("created")

    await create_topic(broker.bootstrap, name, partitions=3)

    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    await consumer.start()
    await producer.start()
    try:
        assert name in await consumer.topics()
        assert await producer.partitions_for(name) == {0, 1, 2}
        assert producer.client.cluster.available_partitions_for_topic(name) == {0, 1, 2}
    finally:
        await producer.stop()
        await consumer.stop()
    assert await partitions_of(broker.bootstrap, name) == [0, 1, 2]


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
        **group_timeouts(broker),
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


@pytest.mark.parametrize("test_broker", [None, "tansu", "kafka"])
def test_bootstrap_servers_env_selects_an_external_broker(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, test_broker: str | None
) -> None:
    monkeypatch.setenv(BOOTSTRAP_ENV, " kafka-1:9092, kafka-2:9092 ")
    if test_broker is None:
        monkeypatch.delenv(BROKER_ENV, raising=False)
    else:
        monkeypatch.setenv(BROKER_ENV, test_broker)

    selected = select_broker(log_dir=tmp_path)

    assert selected == ExternalBroker("kafka-1:9092,kafka-2:9092")
    assert broker_kind(selected) is BrokerKind.KAFKA
    with pytest.raises(NotImplementedError):
        selected.restart()


@pytest.mark.parametrize("value", [None, "", " , "])
@pytest.mark.parametrize("test_broker", [None, "", "tansu", " Tansu "])
def test_without_bootstrap_servers_an_embedded_broker_is_chosen_but_not_started(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: str | None, test_broker: str | None
) -> None:
    for name, setting in ((BOOTSTRAP_ENV, value), (BROKER_ENV, test_broker)):
        if setting is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, setting)

    selected = select_broker(log_dir=tmp_path)

    assert isinstance(selected, EmbeddedBroker)
    assert not selected.running
    assert broker_kind(selected) is BrokerKind.TANSU


def test_test_broker_kafka_chooses_the_shared_apache_kafka_but_does_not_start_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(BOOTSTRAP_ENV, raising=False)
    monkeypatch.setenv(BROKER_ENV, "kafka")

    selected = select_broker(log_dir=tmp_path / "tansu", kafka_state_dir=tmp_path / "kafka")

    assert isinstance(selected, ApacheKafkaBroker)
    assert not selected.running
    assert selected.state_dir == tmp_path / "kafka"
    assert not (tmp_path / "kafka").exists()
    assert broker_kind(selected) is BrokerKind.KAFKA


def test_an_unknown_test_broker_is_refused_with_the_choices(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(BOOTSTRAP_ENV, raising=False)
    monkeypatch.setenv(BROKER_ENV, "redpanda")

    with pytest.raises(ValueError, match="TEST_BROKER='redpanda': expected one of tansu, kafka"):
        select_broker(log_dir=tmp_path)


def test_group_timeouts_are_lowered_for_tansu_and_accepted_by_apache_kafka() -> None:
    tansu = GROUP_TIMEOUTS[BrokerKind.TANSU]
    kafka = GROUP_TIMEOUTS[BrokerKind.KAFKA]
    assert tansu == {
        "session_timeout_ms": 2000,
        "heartbeat_interval_ms": 500,
        "rebalance_timeout_ms": 2000,
    }
    # Apache Kafka's default group.min.session.timeout.ms, which these tests never lower.
    assert kafka["session_timeout_ms"] >= 6000
    for timeouts in (tansu, kafka):
        assert timeouts["heartbeat_interval_ms"] * 3 <= timeouts["session_timeout_ms"]
    assert group_timeouts(ExternalBroker("kafka-1:9092")) == dict(kafka)


def test_kafka_home_is_beside_the_repository_unless_the_environment_says(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    assert kafka_home({}) == repo.parent / "shared" / "kafka"
    assert kafka_home({KAFKA_HOME_ENV: str(tmp_path)}) == tmp_path


def test_apache_kafka_without_its_distribution_fails_to_start_saying_where_it_looked(
    tmp_path: Path,
) -> None:
    broker = ApacheKafkaBroker(tmp_path / "state", home=tmp_path / "nowhere")

    with pytest.raises(BrokerStartError, match=f"no Apache Kafka at {tmp_path / 'nowhere'}"):
        broker.start()
    assert not broker.running


async def test_a_persistent_broker_restarts_on_its_address_with_topics_records_and_offsets(
    persistent_broker: RestartableBroker,
) -> None:
    """The restart-on-same-storage broker keeps what a restart of the service relies on."""
    broker = persistent_broker
    bootstrap = broker.bootstrap
    topics = Topics(requests=unique("kept"), dlq=unique("kept-dlq"), group=unique("kept-group"))
    await create_topic(bootstrap, topics.requests, partitions=3)
    await produce(bootstrap, topics.requests, [b"a", b"b", b"c"], partition=2)
    committer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=topics.group, enable_auto_commit=False
    )
    await committer.start()
    try:
        # Committed by a consumer that never joins the group, as the replay command does.
        committer.assign([TopicPartition(topics.requests, 2)])
        await committer.commit({TopicPartition(topics.requests, 2): 2})
    finally:
        await committer.stop()

    broker.restart()

    assert broker.bootstrap == bootstrap
    records = await read_all(bootstrap, topics.requests, expected=3, timeout=60)
    assert [(r.partition, r.offset, r.value) for r in records] == [
        (2, 0, b"a"),
        (2, 1, b"b"),
        (2, 2, b"c"),
    ]
    offsets = await committed_offsets(bootstrap, topics.group, topics.requests, timeout=60)
    assert offsets == {0: None, 1: None, 2: 2}


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
