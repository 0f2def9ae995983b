"""The consumer adapter's side of offset maps: commit metadata, reading maps on assignment."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, cast

import aiokafka
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaConnectionError, OffsetMetadataTooLargeError
from aiokafka.structs import OffsetAndMetadata

from messaging_service.adapters.kafka_consumer import KafkaRequestConsumer
from messaging_service.config import KafkaSettings
from messaging_service.core.offsetmap import OffsetMap, encode
from messaging_service.core.offsets import Commit, TopicPartition

TP = TopicPartition("emails", 0)
OTHER = TopicPartition("emails", 1)
THIRD = TopicPartition("emails", 2)
KTP = aiokafka.TopicPartition("emails", 0)


class FakeCoordinator:
    def __init__(
        self, answer: dict[Any, OffsetAndMetadata] | Exception, *, answers: bool = True
    ) -> None:
        self.answer = answer
        self.gate = asyncio.Event()  # the answer comes once it is set
        if answers:
            self.gate.set()

    async def fetch_committed_offsets(self, partitions: list[Any]) -> dict[Any, OffsetAndMetadata]:
        await self.gate.wait()
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


class FakeKafkaConsumer:
    """The few AIOKafkaConsumer members the adapter's map handling uses."""

    def __init__(self, coordinator: FakeCoordinator | None = None) -> None:
        self.commits: list[dict[Any, OffsetAndMetadata]] = []
        self.refuse_metadata = False
        self._coordinator = coordinator or FakeCoordinator({})
        self.fetched = 0

    async def commit(self, offsets: dict[Any, OffsetAndMetadata]) -> None:
        if self.refuse_metadata and any(meta.metadata for meta in offsets.values()):
            raise OffsetMetadataTooLargeError()
        self.commits.append(dict(offsets))

    async def getmany(self, *, timeout_ms: int, max_records: int) -> dict[Any, list[Any]]:
        self.fetched += 1
        return {}


class Restores:
    def __init__(self) -> None:
        self.maps: list[Mapping[TopicPartition, OffsetMap]] = []

    def __call__(self, maps: Mapping[TopicPartition, OffsetMap]) -> dict[TopicPartition, int]:
        self.maps.append(maps)
        return {tp: offset_map.count for tp, offset_map in maps.items()}


async def _nothing(partitions: list[TopicPartition]) -> None:
    return None


def adapter(
    fake: FakeKafkaConsumer, *, restores: Restores | None = None, **settings: Any
) -> KafkaRequestConsumer:
    return KafkaRequestConsumer(
        KafkaSettings(**settings),
        on_assigned=_nothing,
        on_revoked=_nothing,
        on_restored=restores,
        client=cast(AIOKafkaConsumer, fake),
    )


async def test_commits_carry_the_offset_map_as_metadata() -> None:
    fake = FakeKafkaConsumer()
    await adapter(fake).commit({TP: Commit(5, "om1r:xyz")})
    assert fake.commits == [{KTP: OffsetAndMetadata(5, "om1r:xyz")}]


async def test_a_map_the_broker_refuses_as_too_large_is_dropped_not_the_commit() -> None:
    fake = FakeKafkaConsumer()
    fake.refuse_metadata = True
    await adapter(fake).commit({TP: Commit(5, "om1r:xyz")})
    assert fake.commits == [{KTP: OffsetAndMetadata(5, "")}]


async def test_assignment_hands_readable_maps_over_and_ignores_the_rest() -> None:
    good = encode(10, [(11, 15)], max_bytes=3072).text
    coordinator = FakeCoordinator(
        {
            KTP: OffsetAndMetadata(10, good),
            aiokafka.TopicPartition("emails", 1): OffsetAndMetadata(7, "not a map"),
            aiokafka.TopicPartition("emails", 2): OffsetAndMetadata(3, ""),  # Tansu
        }
    )
    restores = Restores()
    consumer = adapter(FakeKafkaConsumer(coordinator), restores=restores)
    await consumer.restore_offset_maps([TP, OTHER, THIRD])
    assert restores.maps == [{TP: OffsetMap(10, ((11, 15),))}]


@pytest.mark.parametrize("failure", ["broker error", "no answer within the timeout"])
async def test_assignment_goes_on_without_maps_when_they_cannot_be_read(failure: str) -> None:
    coordinator = (
        FakeCoordinator(KafkaConnectionError())
        if failure == "broker error"
        else FakeCoordinator({}, answers=False)
    )
    restores = Restores()
    fake = FakeKafkaConsumer(coordinator)
    consumer = adapter(fake, restores=restores, call_timeout_ms=50)
    await consumer.restore_offset_maps([TP])
    assert restores.maps == [{}]
    await consumer.fetch(max_records=1, timeout_ms=0)  # fetches are not held back afterwards
    assert fake.fetched == 1


async def test_fetches_wait_until_the_maps_of_a_new_assignment_are_read() -> None:
    restores = Restores()
    coordinator = FakeCoordinator({}, answers=False)
    fake = FakeKafkaConsumer(coordinator)
    consumer = adapter(fake, restores=restores)
    reading = asyncio.create_task(consumer.restore_offset_maps([TP]))
    await asyncio.sleep(0)
    fetching = asyncio.create_task(consumer.fetch(max_records=1, timeout_ms=0))
    for _ in range(5):
        await asyncio.sleep(0)
    assert fake.fetched == 0
    coordinator.gate.set()
    await reading
    await fetching
    assert fake.fetched == 1


async def test_with_maps_off_nothing_is_read_on_assignment() -> None:
    restores = Restores()
    coordinator = FakeCoordinator(KafkaConnectionError())
    consumer = adapter(FakeKafkaConsumer(coordinator), restores=restores, offset_map_max_bytes=0)
    await consumer.restore_offset_maps([TP])
    assert restores.maps == []
