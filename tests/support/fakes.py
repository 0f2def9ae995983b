"""In-memory stand-ins for the Protocols, for handler and pipeline tests (never integration)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Collection, Mapping

from messaging_service.core.events import OutcomeEvent
from messaging_service.core.offsets import Commit, TopicPartition
from messaging_service.core.values import (
    Claim,
    DeadLetter,
    InboundRecord,
    OutgoingEmail,
    SendReport,
)
from messaging_service.errors import (
    DeadLetterUnavailableError,
    EventsUnavailableError,
    SentLogUnavailableError,
)

Script = SendReport | Exception


class FakeSender:
    """Answers each send with the next scripted result (default: accepted)."""

    def __init__(self, *script: Script) -> None:
        self.script: deque[Script] = deque(script)
        self.sent: list[OutgoingEmail] = []
        self.attempts = 0

    async def send(self, email: OutgoingEmail) -> SendReport:
        self.attempts += 1
        result = self.script.popleft() if self.script else SendReport()
        if isinstance(result, Exception):
            raise result
        self.sent.append(email)
        return result


class FakeDeadLetters:
    """Records dead letters; fails the first ``failures`` publishes as the broker would."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.published: list[DeadLetter] = []

    async def publish(self, letter: DeadLetter) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise DeadLetterUnavailableError("broker unavailable")
        self.published.append(letter)


class FakeSentLog:
    """A SentLog in a set and a dict of claims; ``seen_error`` (every look-up: ``seen`` and
    ``claim``), ``record_error`` and ``release_error`` make the store fail as Redis would."""

    def __init__(
        self,
        *ids: str,
        seen_error: Exception | None = None,
        record_error: Exception | None = None,
        release_error: Exception | None = None,
    ) -> None:
        self.ids: set[str] = set(ids)
        self.claims: dict[str, str] = {}  # id -> token
        self.seen_error = seen_error
        self.record_error = record_error
        self.release_error = release_error
        self.lookups: list[str] = []
        self.releases: list[str] = []

    async def seen(self, email_id: str) -> bool:
        self.lookups.append(email_id)
        if self.seen_error is not None:
            raise self.seen_error
        return email_id in self.ids

    async def claim(self, email_id: str, token: str) -> Claim:
        self.lookups.append(email_id)
        if self.seen_error is not None:
            raise self.seen_error
        if email_id in self.ids:
            return Claim.SENT
        if self.claims.setdefault(email_id, token) != token:
            return Claim.HELD
        return Claim.CLAIMED

    async def release(self, email_id: str, token: str) -> None:
        self.releases.append(email_id)
        if self.release_error is not None:
            raise self.release_error
        if self.claims.get(email_id) == token:
            del self.claims[email_id]

    async def record(self, email_id: str) -> None:
        if self.record_error is not None:
            raise self.record_error
        self.claims.pop(email_id, None)
        self.ids.add(email_id)


def unavailable() -> SentLogUnavailableError:
    return SentLogUnavailableError("sent-id store: ConnectionError: connection refused")


class FakeSource:
    """A RequestSource over an in-memory list of records on one or more partitions."""

    def __init__(self, records: list[InboundRecord]) -> None:
        self.pending: deque[InboundRecord] = deque(records)
        self.paused = False
        self.pause_calls = 0
        self.was_paused = asyncio.Event()
        self.fetches: list[tuple[bool, int]] = []  # (paused at the time, max_records)
        self.commits: list[dict[TopicPartition, int]] = []
        self.committed: dict[TopicPartition, int] = {}
        self.metadata: dict[TopicPartition, str] = {}  # the last commit's offset map
        self.exhausted = asyncio.Event()
        # What the consumer owns: the records' partitions, unless a test takes some away.
        self.assigned: set[TopicPartition] = {
            TopicPartition(r.topic, r.partition) for r in records
        } | {TopicPartition("email.requests", 0)}
        self.commit_error: Exception | None = None
        self.paused_topics: set[str] = set()
        self.topic_fetches: list[tuple[str, ...]] = []

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    async def fetch(
        self, *, max_records: int, timeout_ms: int, topics: Collection[str] | None = None
    ) -> list[InboundRecord]:
        self.fetches.append((self.paused, max_records))
        if topics is not None:
            return await self._fetch_topics(max_records, topics)
        if self.paused or not self.pending:
            if not self.pending:
                self.exhausted.set()
            await asyncio.sleep(0)
            return []
        count = min(max_records, len(self.pending))
        return [self.pending.popleft() for _ in range(count)]

    async def _fetch_topics(self, max_records: int, topics: Collection[str]) -> list[InboundRecord]:
        """Records of ``topics`` not paused, in order; the others stay where they are."""
        self.topic_fetches.append(tuple(topics))
        wanted = set(topics) - self.paused_topics
        taken: list[InboundRecord] = []
        kept: deque[InboundRecord] = deque()
        for record in self.pending:
            if record.topic in wanted and len(taken) < max_records:
                taken.append(record)
            else:
                kept.append(record)
        self.pending = kept
        if not self.pending:
            self.exhausted.set()
        await asyncio.sleep(0)
        return taken

    def pause(self, topic: str) -> None:
        self.paused_topics.add(topic)

    def resume(self, topic: str) -> None:
        self.paused_topics.discard(topic)

    def pause_all(self) -> None:
        if not self.paused:
            self.pause_calls += 1
            self.was_paused.set()
        self.paused = True

    def resume_all(self) -> None:
        self.paused = False

    async def commit(self, commits: Mapping[TopicPartition, Commit]) -> None:
        if self.commit_error is not None:
            raise self.commit_error
        for tp in commits:
            assert tp in self.assigned, f"commit of {tp}, which the consumer does not own"
        self.commits.append({tp: commit.offset for tp, commit in commits.items()})
        for tp, commit in commits.items():
            offset = commit.offset
            previous = self.committed.get(tp, -1)
            assert offset >= previous, f"commit went backwards on {tp}: {previous} -> {offset}"
            self.committed[tp] = offset
            self.metadata[tp] = commit.metadata


def record(
    value: bytes | None,
    *,
    offset: int = 0,
    partition: int = 0,
    topic: str = "email.requests",
    timestamp_ms: int | None = 1_700_000_000_000,
) -> InboundRecord:
    return InboundRecord(
        topic=topic,
        partition=partition,
        offset=offset,
        timestamp_ms=timestamp_ms,
        key=b"k",
        value=value,
        headers=(("trace", b"abc"),),
    )


class FakeFetcher:
    """Answers each attachment URL with the next scripted bytes or error, recording the URLs."""

    def __init__(self, *script: bytes | Exception) -> None:
        self.script: deque[bytes | Exception] = deque(script)
        self.urls: list[str] = []
        self.budgets: list[int] = []

    async def fetch(self, url: str, *, max_bytes: int) -> bytes:
        self.urls.append(url)
        self.budgets.append(max_bytes)
        result = self.script.popleft()
        if isinstance(result, Exception):
            raise result
        return result


class FakeEvents:
    """Records outcome events; fails the first ``failures`` publishes as the broker would.

    Acknowledges at once (the future it returns is already settled); ``held`` keeps every
    acknowledgement pending until ``acknowledge()``, as a broker batching events does.
    """

    def __init__(self, failures: int = 0, *, held: bool = False) -> None:
        self.failures = failures
        self.held = held
        self.published: list[OutcomeEvent] = []
        self.pending: list[tuple[OutcomeEvent, asyncio.Future[None]]] = []

    async def submit(self, event: OutcomeEvent) -> asyncio.Future[None]:
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.held:
            self.pending.append((event, ack))
        else:
            self._settle(event, ack)
        return ack

    def acknowledge(self) -> None:
        """Settle every held acknowledgement (failing the first ``failures`` of them)."""
        pending, self.pending = self.pending, []
        for event, ack in pending:
            self._settle(event, ack)

    def _settle(self, event: OutcomeEvent, ack: asyncio.Future[None]) -> None:
        if self.failures > 0:
            self.failures -= 1
            ack.set_exception(EventsUnavailableError("events topic unavailable"))
        else:
            self.published.append(event)
            ack.set_result(None)
