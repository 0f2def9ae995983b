"""Adapter over AIOKafkaConsumer: group membership, fetch, pause/resume and manual commits."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import aiokafka
import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.errors import KafkaError

from .config import KafkaSettings, kafka_client_options
from .errors import RetriableError
from .lifetime import ClosedOnExit
from .models import InboundRecord
from .offsets import TopicPartition

log = structlog.get_logger(__name__)

PartitionsCallback = Callable[[list[TopicPartition]], Awaitable[None]]


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
    ) -> None:
        self._settings = settings
        self._listener = _Listener(on_assigned=on_assigned, on_revoked=on_revoked)
        self._consumer = AIOKafkaConsumer(**self._options(settings))
        self._started = False
        self._call_timeout = settings.call_timeout_ms / 1000

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

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit ``offset`` (the next one to read) for each partition."""
        if not offsets:
            return
        payload = {
            aiokafka.TopicPartition(tp.topic, tp.partition): offset
            for tp, offset in offsets.items()
        }
        try:
            async with asyncio.timeout(self._call_timeout):
                await self._consumer.commit(payload)
        except (KafkaError, TimeoutError) as exc:
            raise ConsumerError(f"commit failed: {_describe(exc)}") from exc


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, *, on_assigned: PartitionsCallback, on_revoked: PartitionsCallback) -> None:
        self._on_assigned = on_assigned
        self._on_revoked = on_revoked

    async def on_partitions_revoked(self, revoked: Iterable[Any]) -> None:
        await self._on_revoked([TopicPartition(tp.topic, tp.partition) for tp in revoked])

    async def on_partitions_assigned(self, assigned: Iterable[Any]) -> None:
        await self._on_assigned([TopicPartition(tp.topic, tp.partition) for tp in assigned])


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
