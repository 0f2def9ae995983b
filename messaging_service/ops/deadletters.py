"""Dead letters read back from their topic, and the pure bookkeeping of replaying them.

Replay progress is kept per failure reason (one consumer group per reason, named
``<group>.<reason>``), never as one offset for every reason. A single offset cannot be right
with a ``--reason`` filter: committed past a record it skipped, a later replay of that record's
reason would miss it; held back at the first skipped record, the next run would move again the
records it had already moved after it. Per reason, "everything of this reason below the
committed offset was moved" holds whatever filters earlier runs used, so a dead letter is
moved at most once and none is ever passed over.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from messaging_service.adapters.dead_letters import (
    DEAD_LETTER_HEADERS,
    H_MESSAGE,
    H_REASON,
    H_SMTP_CODE,
)
from messaging_service.core.contract import guess_request_id
from messaging_service.core.values import FailureReason

# The progress bucket of records whose reason header is missing or not one we know.
OTHER = "other"
BUCKETS = (*(reason.value for reason in FailureReason), OTHER)

Header = tuple[str, bytes]


@dataclass(frozen=True, slots=True)
class StoredDeadLetter:
    """One record of the dead-letter topic."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[Header, ...]

    def header(self, name: str) -> str | None:
        """The last value of header ``name`` as text (the service adds each one once)."""
        found = [value for key, value in self.headers if key == name]
        return found[-1].decode("utf-8", errors="replace") if found else None

    @property
    def reason(self) -> str | None:
        return self.header(H_REASON)

    @property
    def bucket(self) -> str:
        """Whose replay progress this record counts towards: its reason, or ``other``."""
        reason = self.reason
        return reason if reason in BUCKETS and reason != OTHER else OTHER

    @property
    def email_id(self) -> str | None:
        return guess_request_id(self.value)

    @property
    def smtp_code(self) -> str | None:
        return self.header(H_SMTP_CODE)

    @property
    def error_message(self) -> str | None:
        return self.header(H_MESSAGE)

    @property
    def original_headers(self) -> tuple[Header, ...]:
        return strip_dead_letter_headers(self.headers)

    def describe(self) -> str:
        """One line for people: where, which request, why."""
        return (
            f"{self.partition}:{self.offset}  id={self.email_id or '?'}  "
            f"reason={self.reason or '?'}  code={self.smtp_code or '-'}  "
            f"{self.error_message or ''}"
        ).rstrip()


def strip_dead_letter_headers(headers: Iterable[Header]) -> tuple[Header, ...]:
    """The headers without those the service added on dead-lettering, in their order."""
    return tuple((key, value) for key, value in headers if key not in DEAD_LETTER_HEADERS)


def replay_group(group: str, bucket: str) -> str:
    """The consumer group that holds the replay progress of one reason."""
    return f"{group}.{bucket}"


class Decision(enum.Enum):
    MOVE = "move"
    ALREADY_REPLAYED = "already_replayed"
    FILTERED_OUT = "filtered_out"


Committed = Mapping[str, Mapping[int, int | None]]


class ReplayProgress:
    """What to do with each dead letter, and which offsets each reason's group may commit.

    ``committed[bucket][partition]`` is that reason's next offset to replay (None: nothing
    replayed yet). Records must be shown in offset order per partition, starting at
    ``start(partition)``.
    """

    def __init__(self, *, buckets: Iterable[str], committed: Committed) -> None:
        self.buckets = frozenset(buckets)
        self._committed = {bucket: dict(committed.get(bucket, {})) for bucket in BUCKETS}
        self._reached: dict[int, int] = {}

    def start(self, partition: int) -> int | None:
        """Where to start reading: the lowest offset any selected reason still needs."""
        offsets = [self._committed[bucket].get(partition) for bucket in self.buckets]
        if not offsets or any(offset is None for offset in offsets):
            return None
        return min(offset for offset in offsets if offset is not None)

    def committed(self, bucket: str, partition: int) -> int | None:
        return self._committed[bucket].get(partition)

    def replayed(self, letter: StoredDeadLetter) -> bool:
        """Whether an earlier replay moved it (by its reason's committed offset)."""
        committed = self._committed[letter.bucket].get(letter.partition)
        return committed is not None and letter.offset < committed

    def decide(self, letter: StoredDeadLetter) -> Decision:
        """Classify the next record of its partition and advance past it."""
        self._reached[letter.partition] = letter.offset + 1
        if letter.bucket not in self.buckets:
            return Decision.FILTERED_OUT
        if self.replayed(letter):
            return Decision.ALREADY_REPLAYED
        return Decision.MOVE

    def moved(self, letter: StoredDeadLetter) -> tuple[str, int, int]:
        """Record that ``letter`` was re-published; the (bucket, partition, offset) to commit."""
        offset = letter.offset + 1
        self._committed[letter.bucket][letter.partition] = offset
        return letter.bucket, letter.partition, offset

    def final_commits(self) -> dict[str, dict[int, int]]:
        """Per selected reason, the offsets it may now commit: every record below them was seen.

        Each selected reason moves past the stretches of other reasons it has read, so the
        next run does not read them again; unselected reasons never move.
        """
        commits: dict[str, dict[int, int]] = {}
        for bucket in sorted(self.buckets):
            for partition, reached in self._reached.items():
                committed = self._committed[bucket].get(partition)
                if committed is None or reached > committed:
                    commits.setdefault(bucket, {})[partition] = reached
                    self._committed[bucket][partition] = reached
        return commits
