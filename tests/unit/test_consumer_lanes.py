"""The consumer adapter with a priority topic: both topics, per-topic pause, named fetches."""

from __future__ import annotations

from typing import Any, cast

import aiokafka
from aiokafka import AIOKafkaConsumer

from messaging_service.adapters.kafka_consumer import KafkaRequestConsumer
from messaging_service.config import KafkaSettings
from messaging_service.core.offsets import TopicPartition

NORMAL = [aiokafka.TopicPartition("email.requests", p) for p in (0, 1)]
PRIORITY = aiokafka.TopicPartition("email.requests.priority", 0)


class FakeKafkaConsumer:
    """The AIOKafkaConsumer members the adapter's fetch, pause and resume use."""

    def __init__(self) -> None:
        self.assigned = {*NORMAL, PRIORITY}
        self.paused_tps: set[aiokafka.TopicPartition] = set()
        self.asked: list[tuple[aiokafka.TopicPartition, ...]] = []

    def assignment(self) -> set[aiokafka.TopicPartition]:
        return set(self.assigned)

    def paused(self) -> set[aiokafka.TopicPartition]:
        return set(self.paused_tps)

    def pause(self, *tps: aiokafka.TopicPartition) -> None:
        self.paused_tps.update(tps)

    def resume(self, *tps: aiokafka.TopicPartition) -> None:
        self.paused_tps.difference_update(tps)

    async def getmany(
        self, *partitions: aiokafka.TopicPartition, timeout_ms: int, max_records: int
    ) -> dict[Any, list[Any]]:
        self.asked.append(partitions)
        return {}


async def _nothing(partitions: list[TopicPartition]) -> None:
    return None


def adapter(fake: FakeKafkaConsumer, **settings: Any) -> KafkaRequestConsumer:
    return KafkaRequestConsumer(
        KafkaSettings(**settings),
        on_assigned=_nothing,
        on_revoked=_nothing,
        client=cast(AIOKafkaConsumer, fake),
    )


def test_it_subscribes_to_the_priority_topic_too_only_when_there_is_one() -> None:
    fake = FakeKafkaConsumer()
    assert adapter(fake).topics == ["email.requests"]
    lanes = adapter(fake, priority_topic="email.requests.priority")
    assert lanes.topics == ["email.requests", "email.requests.priority"]


async def test_a_fetch_for_some_topics_names_their_unpaused_partitions() -> None:
    fake = FakeKafkaConsumer()
    consumer = adapter(fake, priority_topic="email.requests.priority")
    consumer.pause("email.requests")
    assert fake.paused_tps == set(NORMAL)
    consumer.pause("email.requests")  # idempotent
    await consumer.fetch(max_records=5, timeout_ms=0, topics=("email.requests.priority",))
    await consumer.fetch(
        max_records=5, timeout_ms=0, topics=("email.requests", "email.requests.priority")
    )
    # Paused partitions are never named: aiokafka keeps what it fetched for them.
    assert fake.asked == [(PRIORITY,), (PRIORITY,)]
    consumer.resume("email.requests")
    assert fake.paused_tps == set()
    consumer.resume("email.requests")  # idempotent


async def test_a_fetch_with_nothing_to_name_polls_without_touching_any_buffer() -> None:
    fake = FakeKafkaConsumer()
    consumer = adapter(fake, priority_topic="email.requests.priority")
    consumer.pause("email.requests")
    consumer.pause("email.requests.priority")
    assert await consumer.fetch(max_records=1, timeout_ms=0, topics=()) == []
    [(only,)] = fake.asked
    assert only not in fake.assigned  # a partition no consumer is ever assigned


async def test_without_topics_the_fetch_asks_for_every_partition_as_before() -> None:
    fake = FakeKafkaConsumer()
    await adapter(fake).fetch(max_records=5, timeout_ms=0)
    assert fake.asked == [()]
