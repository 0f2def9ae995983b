"""Adapter over AIOKafkaConsumer: group membership, fetch, pause/resume and manual commits."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import aiokafka
import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.errors import KafkaError, OffsetMetadataTooLargeError
from aiokafka.structs import OffsetAndMetadata

from messaging_service.adapters.kafka_options import kafka_client_options
from messaging_service.config import KafkaSettings
from messaging_service.core.lifetime import ClosedOnExit
from messaging_service.core.offsetmap import OffsetMap, Unreadable, decode
from messaging_service.core.offsets import Commit, TopicPartition
from messaging_service.core.values import InboundRecord
from messaging_service.errors import RetriableError

log = structlog.get_logger(__name__)

PartitionsCallback = Callable[[list[TopicPartition]], Awaitable[None]]
# Hands the offset maps read on assignment to the offset tracker; returns the offsets taken.
RestoreCallback = Callable[[Mapping[TopicPartition, OffsetMap]], Mapping[TopicPartition, int]]


class ConsumerError(RetriableError):
    """Fetching or committing failed; the loop backs off and tries again."""


class KafkaRequestConsumer(ClosedOnExit):
    """Subscribes to the requests topic with auto-commit off; commits only what it is told."""

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        on_assigned: PartitionsCallback,
        on_revoked: PartitionsCallback,
        on_restored: RestoreCallback | None = None,
        client: AIOKafkaConsumer | None = None,
    ) -> None:
        """``client`` replaces the AIOKafkaConsumer built from ``settings`` (unit tests)."""
        self._settings = settings
        self._on_restored = on_restored if settings.offset_map_max_bytes else None
        self._listener = _Listener(on_assigned=on_assigned, on_revoked=on_revoked, owner=self)
        self._consumer = (
            client if client is not None else AIOKafkaConsumer(**self._options(settings))
        )
        self._started = False
        self._call_timeout = settings.call_timeout_ms / 1000
        # Clear while a new assignment's offset maps are being read: fetches wait for them,
        # so a record the map lists is not handed out (and sent again) before the map is known.
        self._restored = asyncio.Event()
        self._restored.set()

    @staticmethod
    def _options(settings: KafkaSettings) -> dict[str, Any]:
        options: dict[str, Any] = {
            **kafka_client_options(settings),
            "group_id": settings.group_id,
            "client_id": settings.group_id,
            "enable_auto_commit": False,
            "auto_offset_reset": settings.auto_offset_reset.value,
            "fetch_max_bytes": settings.fetch_max_bytes,
            "max_partition_fetch_bytes": settings.max_partition_fetch_bytes,
            "fetch_max_wait_ms": settings.fetch_max_wait_ms,
        }
        optional = {
            "session_timeout_ms": settings.session_timeout_ms,
            "heartbeat_interval_ms": settings.heartbeat_interval_ms,
            "max_poll_interval_ms": settings.max_poll_interval_ms,
            "rebalance_timeout_ms": settings.rebalance_timeout_ms,
        }
        options.update({key: value for key, value in optional.items() if value is not None})
        return options

    async def __aenter__(self) -> KafkaRequestConsumer:
        self._consumer.subscribe([self._settings.topic], listener=self._listener)
        try:
            await self._consumer.start()
        except KafkaError as exc:
            await self._consumer.stop()
            raise ConsumerError(
                f"cannot connect to Kafka at {self._settings.bootstrap_servers}: {exc}"
            ) from exc
        self._started = True
        return self

    async def close(self) -> None:
        """Leave the group, within the call timeout. Commits happen before this, never here."""
        if self._started:
            self._started = False
            try:
                async with asyncio.timeout(self._call_timeout):
                    await self._consumer.stop()
            except TimeoutError:
                # The broker is gone: the group notices at the session timeout instead.
                log.warning("consumer_close_timed_out", timeout=self._call_timeout)

    async def fetch(self, *, max_records: int, timeout_ms: int) -> list[InboundRecord]:
        """Records from unpaused partitions, in offset order per partition."""
        if not self._restored.is_set():
            # Bounded: the reading side sets it when done, whatever happens, within its timeout.
            await self._restored.wait()
        try:
            async with asyncio.timeout(timeout_ms / 1000 + self._call_timeout):
                batches = await self._consumer.getmany(
                    timeout_ms=timeout_ms, max_records=max_records
                )
        except (KafkaError, TimeoutError) as exc:
            raise ConsumerError(f"fetch failed: {_describe(exc)}") from exc
        return [_record(message) for messages in batches.values() for message in messages]

    def pause_all(self) -> None:
        assigned = self._consumer.assignment()
        if assigned - self._consumer.paused():
            self._consumer.pause(*assigned)

    def resume_all(self) -> None:
        paused = self._consumer.paused()
        if paused:
            self._consumer.resume(*paused)

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    async def commit(self, commits: Mapping[TopicPartition, Commit]) -> None:
        """Commit each partition's offset (the next one to read) with its offset map."""
        if not commits:
            return
        for tp, commit in commits.items():
            if commit.left_out:
                log.info(
                    "offset_map_truncated",
                    partition=f"{tp.topic}-{tp.partition}",
                    offset=commit.offset,
                    left_out=commit.left_out,
                    max_bytes=self._settings.offset_map_max_bytes,
                )
        payload = {
            aiokafka.TopicPartition(tp.topic, tp.partition): OffsetAndMetadata(
                commit.offset, commit.metadata
            )
            for tp, commit in commits.items()
        }
        try:
            async with asyncio.timeout(self._call_timeout):
                try:
                    await self._consumer.commit(payload)
                except OffsetMetadataTooLargeError:
                    # The broker's offset.metadata.max.bytes is below KAFKA_OFFSET_MAP_MAX_BYTES:
                    # commit the offsets without maps rather than not at all.
                    log.warning(
                        "offset_map_refused_by_broker",
                        max_bytes=self._settings.offset_map_max_bytes,
                        hint="lower KAFKA_OFFSET_MAP_MAX_BYTES to the broker's limit",
                    )
                    plain = {tp: OffsetAndMetadata(m.offset, "") for tp, m in payload.items()}
                    await self._consumer.commit(plain)
        except (KafkaError, TimeoutError) as exc:
            raise ConsumerError(f"commit failed: {_describe(exc)}") from exc

    async def restore_offset_maps(self, partitions: list[TopicPartition]) -> None:
        """Read the committed offset maps of newly assigned partitions and hand them over.

        Bounded by KAFKA_CALL_TIMEOUT_MS. A map that cannot be read, or no answer, means those
        partitions go on without one: their finished offsets are simply processed again.
        """
        restore = self._on_restored
        if restore is None or not partitions:
            return
        self._restored.clear()
        try:
            committed = await self._fetch_committed(partitions)
            maps: dict[TopicPartition, OffsetMap] = {}
            for tp, meta in committed.items():
                name = f"{tp.topic}-{tp.partition}"
                found = decode(meta.metadata or "", committed=meta.offset)
                if isinstance(found, Unreadable):
                    event = "offset_map_absent" if found.reason == "empty" else "offset_map_ignored"
                    log.info(event, partition=name, offset=meta.offset, reason=found.reason)
                    continue
                maps[tp] = found
            for tp, taken in restore(maps).items():
                log.info(
                    "offset_map_restored",
                    partition=f"{tp.topic}-{tp.partition}",
                    offset=maps[tp].base,
                    finished=taken,
                )
        finally:
            self._restored.set()

    async def _fetch_committed(self, partitions: list[TopicPartition]) -> dict[TopicPartition, Any]:
        timeout = self._call_timeout
        tps = [aiokafka.TopicPartition(tp.topic, tp.partition) for tp in partitions]
        try:
            async with asyncio.timeout(timeout):
                # The consumer's own OffsetFetch: committed() returns the offset alone.
                answer = await self._consumer._coordinator.fetch_committed_offsets(tps)
        except (KafkaError, TimeoutError) as exc:
            log.warning("offset_map_fetch_failed", error=_describe(exc), timeout=timeout)
            return {}
        return {TopicPartition(tp.topic, tp.partition): meta for tp, meta in answer.items()}


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(
        self,
        *,
        on_assigned: PartitionsCallback,
        on_revoked: PartitionsCallback,
        owner: KafkaRequestConsumer,
    ) -> None:
        self._on_assigned = on_assigned
        self._on_revoked = on_revoked
        self._owner = owner

    async def on_partitions_revoked(self, revoked: Iterable[Any]) -> None:
        await self._on_revoked([TopicPartition(tp.topic, tp.partition) for tp in revoked])

    async def on_partitions_assigned(self, assigned: Iterable[Any]) -> None:
        partitions = [TopicPartition(tp.topic, tp.partition) for tp in assigned]
        # The tracker's new generations exist before the first await: a record fetched
        # meanwhile is tracked, never dropped. Their maps are read after that.
        await self._on_assigned(partitions)
        await self._owner.restore_offset_maps(partitions)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer from Kafka in time"
    return f"{type(exc).__name__}: {exc}".rstrip(": ")


def _record(message: Any) -> InboundRecord:
    return InboundRecord(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        timestamp_ms=message.timestamp,
        key=message.key,
        value=message.value,
        headers=tuple(message.headers or ()),
    )
