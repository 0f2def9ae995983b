"""Reading the dead-letter topic and replaying dead letters to the requests topic over Kafka.

The dead-letter topic is read without joining a group (every partition assigned, so no
rebalance wait) up to the high watermark of fetch responses: Tansu answers ``end_offsets()``
wrongly. Progress is committed per reason, see ``deadletters``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiokafka
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from messaging_service.adapters.kafka_admin import topic_partitions
from messaging_service.adapters.kafka_options import kafka_client_options
from messaging_service.adapters.kafka_producer import Published, Publisher
from messaging_service.config import KafkaSettings
from messaging_service.errors import ServiceError, describe_error
from messaging_service.ops.deadletters import (
    BUCKETS,
    Decision,
    ReplayProgress,
    StoredDeadLetter,
    replay_group,
)

_FETCH_WAIT_MS = 200
_RETRY_BACKOFF_S = 0.1


class ReplayError(ServiceError):
    """The dead-letter topic could not be read, or progress could not be committed."""


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    group: str
    reasons: frozenset[str] = frozenset(BUCKETS)
    limit: int | None = None
    dry_run: bool = False


@dataclass(slots=True)
class ReplayReport:
    moved: list[StoredDeadLetter] = field(default_factory=list)
    already_replayed: int = 0
    filtered_out: int = 0


MoveCallback = Callable[[StoredDeadLetter, Published | None], None]


async def read_dead_letters(settings: KafkaSettings) -> list[StoredDeadLetter]:
    """Every dead letter, in offset order per partition (partitions in order)."""
    async with _Reader(settings) as reader:
        for partition in reader.partitions:
            await reader.seek(partition, None)
        found: list[StoredDeadLetter] = []
        while (batch := await reader.next_batch()) is not None:
            found.extend(batch)
    return sorted(found, key=lambda letter: (letter.partition, letter.offset))


async def list_dead_letters(
    settings: KafkaSettings, *, group: str
) -> list[tuple[StoredDeadLetter, bool]]:
    """Every dead letter, with whether a replay with ``group`` already moved it."""
    letters = await read_dead_letters(settings)
    partitions = sorted({letter.partition for letter in letters})
    progress = ReplayProgress(
        buckets=BUCKETS, committed=await _committed(settings, group, partitions)
    )
    return [(letter, progress.replayed(letter)) for letter in letters]


async def replay(
    settings: KafkaSettings, options: ReplayOptions, *, on_move: MoveCallback | None = None
) -> ReplayReport:
    """Re-publish selected dead letters to the requests topic, stripped of dead-letter headers.

    Each move is committed (to its reason's group) once the broker acknowledged the record, so
    an interrupted replay resumes where it stopped and a finished one is not repeated.
    """
    report = ReplayReport()
    async with contextlib.AsyncExitStack() as stack:
        reader = await stack.enter_async_context(_Reader(settings))
        progress = ReplayProgress(
            buckets=options.reasons,
            committed=await _committed(settings, options.group, reader.partitions),
        )
        for partition in reader.partitions:
            await reader.seek(partition, progress.start(partition))
        mover = None
        if not options.dry_run:
            mover = _Mover(
                settings,
                publisher=await stack.enter_async_context(
                    Publisher(settings, client_id=f"{settings.group_id}-dlq-replay")
                ),
                committer=await stack.enter_async_context(
                    _Committer(settings, options.group, reader.partitions)
                ),
            )
        while not _full(report, options.limit) and (batch := await reader.next_batch()):
            for letter in batch:
                if _full(report, options.limit):
                    break
                decision = progress.decide(letter)
                if decision is Decision.FILTERED_OUT:
                    report.filtered_out += 1
                elif decision is Decision.ALREADY_REPLAYED:
                    report.already_replayed += 1
                else:
                    published = None if mover is None else await mover.move(letter, progress)
                    report.moved.append(letter)
                    if on_move is not None:
                        on_move(letter, published)
        if mover is not None:
            await mover.finish(progress)
    return report


def _full(report: ReplayReport, limit: int | None) -> bool:
    return limit is not None and len(report.moved) >= limit


async def _committed(
    settings: KafkaSettings, group: str, partitions: Iterable[int]
) -> dict[str, dict[int, int | None]]:
    """Each reason's committed offsets on the dead-letter topic (None: never committed)."""
    # Partitions are named: Tansu drops the connection on an OffsetFetch for "all of them".
    tps = [aiokafka.TopicPartition(settings.dlq_topic, p) for p in partitions]
    admin = AIOKafkaAdminClient(**kafka_client_options(settings))
    try:
        async with asyncio.timeout(settings.request_timeout_ms / 1000):
            await admin.start()
            committed: dict[str, dict[int, int | None]] = {}
            for bucket in BUCKETS:
                answer = await _group_offsets(admin, replay_group(group, bucket), tps)
                committed[bucket] = {
                    tp.partition: (meta.offset if meta.offset >= 0 else None)
                    for tp, meta in answer.items()
                }
    except (KafkaError, TimeoutError) as exc:
        raise ReplayError(
            f"cannot read the replay progress of {group}: {describe_error(exc)}"
        ) from exc
    finally:
        await admin.close()
    return committed


async def _group_offsets(
    admin: AIOKafkaAdminClient, group: str, tps: list[aiokafka.TopicPartition]
) -> dict[aiokafka.TopicPartition, Any]:
    """The group's committed offsets, asked again while the answer is a retriable error.

    A new Apache Kafka answers "coordinator not available" until its offsets topic exists;
    the caller's timeout bounds the retries.
    """
    while True:
        try:
            answer: dict[aiokafka.TopicPartition, Any] = await admin.list_consumer_group_offsets(
                group, partitions=tps
            )
            return answer
        except KafkaError as exc:
            if not exc.retriable:
                raise
        await asyncio.sleep(_RETRY_BACKOFF_S)


async def _partitions(settings: KafkaSettings) -> list[int]:
    """The dead-letter topic's partitions, asked of the cluster; ReplayError if it is missing.

    Not read from the reader's metadata: Apache Kafka tells a client only about the topics it
    names, and a consumer that subscribed to nothing names none. Every topic is listed, as
    naming an unknown one would make Tansu create it.
    """
    admin = AIOKafkaAdminClient(**kafka_client_options(settings))
    try:
        await admin.start()
        partitions = await topic_partitions(admin, settings.dlq_topic)
    finally:
        await admin.close()
    if partitions is None:
        raise ReplayError(
            f"the dead-letter topic {settings.dlq_topic!r} does not exist "
            "(or a partition has no leader)"
        )
    return partitions


class _Reader:
    """Reads every partition of the dead-letter topic up to the high watermark."""

    def __init__(self, settings: KafkaSettings) -> None:
        self._settings = settings
        self._topic = settings.dlq_topic
        self._timeout = settings.request_timeout_ms / 1000
        self._consumer = AIOKafkaConsumer(
            **kafka_client_options(settings),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        self.partitions: list[int] = []

    async def __aenter__(self) -> _Reader:
        try:
            async with asyncio.timeout(self._timeout):
                await self._consumer.start()
                self.partitions = await _partitions(self._settings)
        except (KafkaError, TimeoutError) as exc:
            await self._consumer.stop()
            raise ReplayError(f"cannot read {self._topic}: {describe_error(exc)}") from exc
        except BaseException:
            await self._consumer.stop()
            raise
        self._consumer.assign([self._tp(p) for p in self.partitions])
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._consumer.stop()

    async def seek(self, partition: int, offset: int | None) -> None:
        """Read ``partition`` from ``offset`` (None: from the beginning)."""
        tp = self._tp(partition)
        if offset is not None:
            self._consumer.seek(tp, offset)
            return
        try:
            async with asyncio.timeout(self._timeout):
                await self._consumer.seek_to_beginning(tp)
        except (KafkaError, TimeoutError) as exc:
            raise ReplayError(f"cannot read {self._topic}: {describe_error(exc)}") from exc

    async def next_batch(self) -> list[StoredDeadLetter] | None:
        """The next records in offset order per partition; None once all are read.

        Raises ReplayError when no record and no end arrive for the request timeout.
        """
        try:
            async with asyncio.timeout(self._timeout):
                while not await self._caught_up():
                    batches = await self._consumer.getmany(timeout_ms=_FETCH_WAIT_MS)
                    records = [_letter(m) for tp in sorted(batches) for m in batches[tp]]
                    if records:
                        return records
        except TimeoutError:
            raise ReplayError(f"no answer from {self._topic} within {self._timeout:g} s") from None
        except KafkaError as exc:
            raise ReplayError(f"cannot read {self._topic}: {describe_error(exc)}") from exc
        return None

    async def _caught_up(self) -> bool:
        for partition in self.partitions:
            tp = self._tp(partition)
            highwater = self._consumer.highwater(tp)  # from fetch responses
            if highwater is None or await self._consumer.position(tp) < highwater:
                return False
        return True

    def _tp(self, partition: int) -> aiokafka.TopicPartition:
        return aiokafka.TopicPartition(self._topic, partition)


class _Mover:
    """Re-publishes one dead letter, then commits that its reason's replay got past it."""

    def __init__(
        self, settings: KafkaSettings, *, publisher: Publisher, committer: _Committer
    ) -> None:
        self._topic = settings.topic
        self._publisher = publisher
        self._committer = committer

    async def move(self, letter: StoredDeadLetter, progress: ReplayProgress) -> Published:
        published = await self._publisher.publish(
            self._topic, letter.value, key=letter.key, headers=letter.original_headers
        )
        bucket, partition, offset = progress.moved(letter)
        await self._committer.commit(bucket, {partition: offset})
        return published

    async def finish(self, progress: ReplayProgress) -> None:
        for bucket, offsets in progress.final_commits().items():
            await self._committer.commit(bucket, offsets)


class _Committer:
    """Commits replay progress, one consumer per reason's group (assigned, paused, never
    joining the group: aiokafka commits for an assignment, Kafka accepts it from a non-member).
    """

    def __init__(self, settings: KafkaSettings, group: str, partitions: list[int]) -> None:
        self._settings = settings
        self._group = group
        self._tps = [aiokafka.TopicPartition(settings.dlq_topic, p) for p in partitions]
        self._timeout = settings.request_timeout_ms / 1000
        self._consumers: dict[str, AIOKafkaConsumer] = {}

    async def __aenter__(self) -> _Committer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        consumers, self._consumers = self._consumers, {}
        for consumer in consumers.values():
            await consumer.stop()

    async def commit(self, bucket: str, offsets: dict[int, int]) -> None:
        payload = {tp: offsets[tp.partition] for tp in self._tps if tp.partition in offsets}
        try:
            async with asyncio.timeout(self._timeout):
                consumer = await self._consumer(bucket)
                await consumer.commit(payload)
        except (KafkaError, TimeoutError) as exc:
            raise ReplayError(
                f"cannot commit the progress of {replay_group(self._group, bucket)}: "
                f"{describe_error(exc)}"
            ) from exc

    async def _consumer(self, bucket: str) -> AIOKafkaConsumer:
        consumer = self._consumers.get(bucket)
        if consumer is None:
            consumer = AIOKafkaConsumer(
                **kafka_client_options(self._settings),
                group_id=replay_group(self._group, bucket),
                enable_auto_commit=False,
            )
            self._consumers[bucket] = consumer  # stopped on exit, even if start fails
            await consumer.start()
            consumer.assign(self._tps)
            consumer.pause(*self._tps)  # it only commits; the reader fetches
        return consumer


def _letter(message: Any) -> StoredDeadLetter:
    return StoredDeadLetter(
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value,
        headers=tuple(message.headers or ()),
    )
