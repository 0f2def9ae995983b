"""Per-partition bookkeeping of finished offsets, and which offsets are safe to commit."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from enum import Enum
from typing import NamedTuple

from messaging_service.core.offsetmap import OffsetMap, Run, as_runs, encode


class TopicPartition(NamedTuple):
    """A topic and partition; the same shape as aiokafka's ``TopicPartition``."""

    topic: str
    partition: int


class Commit(NamedTuple):
    """What to commit for one partition: the offset, and the offset map as its metadata."""

    offset: int
    metadata: str = ""
    left_out: int = 0
    """Finished offsets above ``offset`` that did not fit in the map (sent again after a crash)."""


class Tracked(Enum):
    """What track() found: a new offset to work on, or one finished before (skip it)."""

    NEW = "new"
    FINISHED_BEFORE = "finished_before"


class PartitionOffsets:
    """One assignment generation of one partition.

    Jobs hold a reference to it, so after a revoke and reassign a late finish from the old
    generation cannot touch the new one.

    The commit point never passes an unfinished tracked offset, whatever order finishes
    arrive in. Tracked offsets from the commit point on sit in a deque; finishing one that
    reaches the head pops every finished offset there, so advancing is amortised O(1).

    With offset maps on (``map_max_bytes`` > 0) each commit also carries the finished offsets
    above its commit point (``offsetmap``), re-encoded only when something changed; an offset
    the last commit's map lists (``restore()``) is finished as soon as it is tracked again, and
    stays in later maps until the commit point passes it.
    """

    __slots__ = (
        "_clock",
        "_committed",
        "_committed_metadata",
        "_encoded",
        "_finished",
        "_first",
        "_last",
        "_left_out",
        "_map_max_bytes",
        "_parked",
        "_passed",
        "_restored",
        "_since",
        "_unfinished",
        "_version",
        "_window",
        "revoked",
        "tp",
    )

    def __init__(
        self,
        tp: TopicPartition,
        *,
        map_max_bytes: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tp = tp
        self._clock = clock
        # When each unfinished offset was tracked: the age of the oldest one is the alarm for
        # a request that never reaches an outcome.
        self._since: dict[int, float] = {}
        # The offset map's bound in characters; 0: no map is written or read.
        self._map_max_bytes = map_max_bytes
        # Runs of offsets not tracked yet that the last commit's offset map says are finished.
        self._restored: deque[Run] = deque()
        self._committed_metadata = ""
        self._left_out = 0
        # Bumped by every change that can change the map; the last encoding is kept with it.
        self._version = 0
        self._encoded: tuple[int, int, Commit] | None = None
        # Set by OffsetTracker.revoke(): this generation is no longer ours to commit.
        self.revoked = False
        self._window: deque[int] = deque()  # tracked offsets from the commit point on
        self._unfinished: set[int] = set()
        self._finished: set[int] = set()  # finished, still in the window
        # Finished offsets behind the commit point, at or past the last committed offset;
        # emptied from the left as commits land, so it stays as long as one commit interval.
        self._passed: deque[int] = deque()
        self._first: int | None = None
        self._last: int | None = None
        self._committed: int | None = None
        # Unfinished offsets whose work waits for a timer (a retry), not for a worker.
        self._parked = 0

    def __repr__(self) -> str:
        return (
            f"PartitionOffsets({self.tp.topic}-{self.tp.partition}, "
            f"commit_point={self.commit_point()}, committed={self._committed}, "
            f"pending={self.pending}, revoked={self.revoked})"
        )

    def track(self, offset: int) -> Tracked:
        """Record a consumed offset; offsets must strictly increase, gaps are fine.

        An offset the restored map lists is finished at once: FINISHED_BEFORE says not to work
        on it again.
        """
        if offset < 0:
            raise ValueError(f"offset must be >= 0, not {offset}")
        if self._last is not None and offset <= self._last:
            raise ValueError(f"offset {offset} tracked after {self._last}; offsets must increase")
        if self._first is None:
            self._first = offset
        self._last = offset
        self._window.append(offset)
        self._unfinished.add(offset)
        self._since[offset] = self._clock()
        self._version += 1
        restored = self._restored
        while restored and restored[0][1] <= offset:
            restored.popleft()
        if restored and restored[0][0] <= offset:
            self.finish(offset)
            return Tracked.FINISHED_BEFORE
        return Tracked.NEW

    def restore(self, offset_map: OffsetMap) -> int:
        """Take the finished offsets of the last commit's map; returns how many are used.

        Offsets tracked already are left as they are (they are being worked on again).
        Ignored when maps are off.
        """
        if not self._map_max_bytes:
            return 0
        floor = offset_map.base if self._last is None else max(offset_map.base, self._last + 1)
        runs = [(max(start, floor), stop) for start, stop in offset_map.runs if stop > floor]
        self._restored = deque(runs)
        self._version += 1
        return sum(stop - start for start, stop in runs)

    def finish(self, offset: int) -> None:
        """Record that ``offset``'s work is final. Idempotent.

        Raises KeyError for an offset that was never tracked. Below the commit point a gap
        cannot be told from an offset finished before, so finishing there is a no-op.
        """
        if offset in self._unfinished:
            self._unfinished.remove(offset)
            del self._since[offset]
            self._finished.add(offset)
            self._version += 1
            self._advance()
            return
        if offset in self._finished:
            return
        point = self.commit_point()
        if self._first is not None and point is not None and self._first <= offset < point:
            return
        raise KeyError(offset)

    def commit_point(self) -> int | None:
        """The offset to commit: the first unfinished tracked offset, or the last tracked + 1.

        None while nothing has been tracked.
        """
        if self._window:
            return self._window[0]
        return None if self._last is None else self._last + 1

    def to_commit(self) -> Commit | None:
        """The commit point and its offset map, if either changed since the last commit."""
        point = self.commit_point()
        if point is None:
            return None
        committed = self._committed
        if committed is not None and point < committed:
            return None
        commit = self._commit(point)
        if point == committed and commit.metadata == self._committed_metadata:
            return None  # neither the point nor the map moved
        return commit

    def _commit(self, point: int) -> Commit:
        if not self._map_max_bytes:
            return Commit(point)
        cached = self._encoded
        if cached is not None and cached[0] == self._version and cached[1] == point:
            return cached[2]
        encoded = encode(point, self._finished_runs(point), max_bytes=self._map_max_bytes)
        commit = Commit(point, encoded.text, encoded.left_out)
        self._encoded = (self._version, point, commit)
        return commit

    def _finished_runs(self, point: int) -> Iterator[Run]:
        """Finished offsets above ``point`` as runs: tracked ones, then restored ones."""
        finished = self._finished
        floor = point if self._last is None else max(point, self._last + 1)
        return as_runs((o for o in self._window if o in finished), self._restored, floor=floor)

    @property
    def map_left_out(self) -> int:
        """Finished offsets above the commit point that the last committed map left out."""
        return self._left_out

    def mark_committed(self, offset: int, metadata: str = "", *, left_out: int = 0) -> None:
        """Record that ``offset`` is committed; an offset below an earlier mark is ignored.

        Any offset is accepted (a commit made for an earlier generation of the partition may
        land after a reassign); it only decides what to_commit() and the counts report.
        """
        if offset < 0:
            raise ValueError(f"offset must be >= 0, not {offset}")
        if self._committed is not None and offset < self._committed:
            return
        self._committed_metadata = metadata
        self._left_out = left_out
        if self._committed is not None and offset == self._committed:
            return
        self._committed = offset
        passed = self._passed
        while passed and passed[0] < offset:
            passed.popleft()

    @property
    def last_tracked(self) -> int | None:
        """The highest offset tracked so far, or None."""
        return self._last

    def oldest_unfinished_age(self) -> float:
        """Seconds since the oldest unfinished offset was tracked; 0 when none is unfinished."""
        window = self._window
        if not window:
            return 0.0
        # The head of the window is always unfinished: finishing it advances the window.
        return max(self._clock() - self._since[window[0]], 0.0)

    @property
    def committed(self) -> int | None:
        """The last offset marked committed, or None."""
        return self._committed

    @property
    def pending(self) -> int:
        """Tracked offsets not finished yet."""
        return len(self._unfinished)

    @property
    def parked(self) -> int:
        """Unfinished offsets waiting for a timer (see park())."""
        return self._parked

    @property
    def waiting(self) -> int:
        """Unfinished offsets queued or being worked on: pending less parked."""
        return len(self._unfinished) - self._parked

    def park(self) -> None:
        """Note that one unfinished offset now waits for a timer (its retry), not a worker."""
        if self._parked >= len(self._unfinished):
            raise ValueError("cannot park more offsets than are unfinished")
        self._parked += 1

    def unpark(self) -> None:
        """Note that a parked offset's timer fired: its work waits for a worker again."""
        if self._parked == 0:
            raise ValueError("no parked offset to unpark")
        self._parked -= 1

    @property
    def finished_uncommitted(self) -> int:
        """Finished offsets at or past the last committed offset."""
        committed = self._committed
        point = self.commit_point()
        if committed is None or point is None or committed <= point:
            return len(self._passed) + len(self._finished)
        # Only after a mark past the commit point (see mark_committed): rare, so O(n) is fine.
        return sum(1 for offset in self._finished if offset >= committed)

    def _advance(self) -> None:
        window = self._window
        finished = self._finished
        committed = self._committed
        while window and window[0] in finished:
            offset = window.popleft()
            finished.remove(offset)
            if committed is None or offset >= committed:
                self._passed.append(offset)


class OffsetTracker:
    """The current generation of every assigned partition."""

    def __init__(
        self, *, map_max_bytes: int = 0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self._partitions: dict[TopicPartition, PartitionOffsets] = {}
        # Bound of each partition's offset map in commit metadata; 0: no maps.
        self._map_max_bytes = map_max_bytes

    def assign(self, tps: Iterable[TopicPartition]) -> None:
        """Start a new generation for each partition.

        A partition that is already assigned gets a fresh generation too; the old one is
        marked revoked, as if revoke() had been called first.
        """
        for tp in tps:
            old = self._partitions.get(tp)
            if old is not None:
                old.revoked = True
            self._partitions[tp] = PartitionOffsets(
                tp, map_max_bytes=self._map_max_bytes, clock=self._clock
            )

    def revoke(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, PartitionOffsets]:
        """Remove the partitions and return their generations, marked revoked.

        Partitions that are not assigned are skipped.
        """
        lost: dict[TopicPartition, PartitionOffsets] = {}
        for tp in tps:
            state = self._partitions.pop(tp, None)
            if state is not None:
                state.revoked = True
                lost[tp] = state
        return lost

    def get(self, tp: TopicPartition) -> PartitionOffsets:
        """The current generation of ``tp``; KeyError when it is not assigned."""
        return self._partitions[tp]

    @property
    def map_left_out(self) -> int:
        """Finished offsets the last committed offset maps left out, over every partition."""
        return sum(state.map_left_out for state in self._partitions.values())

    @property
    def maps_enabled(self) -> bool:
        """Whether offset maps are written to commits and read back on assignment."""
        return self._map_max_bytes > 0

    def restore(self, maps: Mapping[TopicPartition, OffsetMap]) -> dict[TopicPartition, int]:
        """Hand each assigned partition its last commit's map; returns the offsets taken."""
        taken: dict[TopicPartition, int] = {}
        for tp, offset_map in maps.items():
            state = self._partitions.get(tp)
            if state is not None:
                taken[tp] = state.restore(offset_map)
        return taken

    def to_commit(self) -> dict[TopicPartition, Commit]:
        """Each partition whose commit point or offset map changed since its last commit."""
        commits: dict[TopicPartition, Commit] = {}
        for tp, state in self._partitions.items():
            commit = state.to_commit()
            if commit is not None:
                commits[tp] = commit
        return commits

    def mark_committed(self, commits: Mapping[TopicPartition, Commit]) -> None:
        """Record what was committed; partitions no longer assigned are ignored."""
        for tp, commit in commits.items():
            state = self._partitions.get(tp)
            if state is not None:
                state.mark_committed(commit.offset, commit.metadata, left_out=commit.left_out)

    @property
    def pending(self) -> int:
        """Tracked offsets not finished yet, over every assigned partition."""
        return sum(state.pending for state in self._partitions.values())

    @property
    def waiting(self) -> int:
        """Unfinished offsets not parked for a timer, over every assigned partition."""
        return sum(state.waiting for state in self._partitions.values())

    @property
    def finished_uncommitted(self) -> int:
        """Finished offsets not committed yet, over every assigned partition."""
        return sum(state.finished_uncommitted for state in self._partitions.values())

    def states(self) -> list[PartitionOffsets]:
        """The current generation of every assigned partition."""
        return list(self._partitions.values())

    def partitions(self) -> list[TopicPartition]:
        """The assigned partitions, in the order they were assigned."""
        return list(self._partitions)
