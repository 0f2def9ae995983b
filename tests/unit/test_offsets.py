"""Offset bookkeeping: the commit point never passes an unfinished offset, per generation."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from messaging_service.core.offsetmap import OffsetMap, decode
from messaging_service.core.offsets import (
    Commit,
    OffsetTracker,
    PartitionOffsets,
    TopicPartition,
    Tracked,
)

TP = TopicPartition("emails", 0)
OTHER = TopicPartition("emails", 1)


def tracked(*offsets: int) -> PartitionOffsets:
    state = PartitionOffsets(TP)
    for offset in offsets:
        state.track(offset)
    return state


def test_nothing_to_commit_before_anything_is_tracked() -> None:
    state = PartitionOffsets(TP)
    assert state.commit_point() is None
    assert state.to_commit() is None
    assert state.pending == 0
    assert state.finished_uncommitted == 0


def test_in_order_finishes_move_the_commit_point_one_by_one() -> None:
    state = tracked(0, 1, 2)
    assert state.commit_point() == 0
    state.finish(0)
    assert state.commit_point() == 1
    state.finish(1)
    assert state.commit_point() == 2
    state.finish(2)
    assert state.commit_point() == 3


def test_out_of_order_finishes_wait_for_the_first_unfinished_offset() -> None:
    state = tracked(0, 1, 2, 3)
    state.finish(2)
    state.finish(1)
    state.finish(3)
    assert state.commit_point() == 0
    assert state.pending == 1
    state.finish(0)
    assert state.commit_point() == 4
    assert state.pending == 0


def test_gaps_in_offsets_are_skipped() -> None:
    state = tracked(10, 13, 20)
    assert state.commit_point() == 10
    state.finish(13)
    assert state.commit_point() == 10
    state.finish(10)
    assert state.commit_point() == 20
    state.finish(20)
    assert state.commit_point() == 21


def test_to_commit_only_when_the_commit_point_moved() -> None:
    state = tracked(5, 6, 7)
    assert state.to_commit() == Commit(5)  # never committed: the first commit is worth making
    state.mark_committed(5)
    assert state.to_commit() is None
    state.finish(6)
    assert state.to_commit() is None  # 5 still holds the point
    state.finish(5)
    assert state.to_commit() == Commit(7)
    state.mark_committed(7)
    assert state.committed == 7
    assert state.to_commit() is None


def test_an_older_commit_landing_late_does_not_move_the_mark_back() -> None:
    state = tracked(0, 1, 2)
    state.finish(0)
    state.finish(1)
    state.mark_committed(2)
    state.mark_committed(1)
    assert state.committed == 2
    assert state.to_commit() is None


def test_a_mark_past_the_commit_point_holds_to_commit_back_until_passed() -> None:
    """A commit made for an earlier generation can land on a new one after a reassign."""
    state = PartitionOffsets(TP)
    state.mark_committed(100)
    state.track(100)
    state.track(101)
    assert state.to_commit() is None
    state.finish(101)
    assert state.finished_uncommitted == 1
    state.finish(100)
    assert state.to_commit() == Commit(102)
    assert state.finished_uncommitted == 2


def test_finish_is_idempotent() -> None:
    state = tracked(0, 1, 2)
    state.finish(1)
    state.finish(1)
    assert state.pending == 2
    assert state.finished_uncommitted == 1
    state.finish(0)
    state.finish(0)  # below the commit point now
    assert state.commit_point() == 2
    assert state.pending == 1
    assert state.finished_uncommitted == 2


@pytest.mark.parametrize("offset", [4, 12, 15, 99])
def test_finishing_an_untracked_offset_raises_key_error(offset: int) -> None:
    state = tracked(5, 10, 14)
    state.finish(5)  # commit point 10: 12 is a gap inside the window, 4 before the first
    with pytest.raises(KeyError):
        state.finish(offset)
    assert state.pending == 2


def test_finishing_on_an_empty_partition_raises_key_error() -> None:
    with pytest.raises(KeyError):
        PartitionOffsets(TP).finish(0)


def test_a_gap_behind_the_commit_point_cannot_be_told_apart_so_finishing_it_is_a_no_op() -> None:
    state = tracked(5, 10)
    state.finish(5)
    state.finish(7)
    assert state.commit_point() == 10
    assert state.finished_uncommitted == 1


@pytest.mark.parametrize("offset", [3, 2])
def test_offsets_must_strictly_increase(offset: int) -> None:
    state = tracked(1, 3)
    with pytest.raises(ValueError, match="increase"):
        state.track(offset)


def test_negative_offsets_are_rejected() -> None:
    state = PartitionOffsets(TP)
    with pytest.raises(ValueError, match=">= 0"):
        state.track(-1)
    with pytest.raises(ValueError, match=">= 0"):
        state.mark_committed(-1)


def test_pending_and_finished_uncommitted_follow_commits() -> None:
    state = tracked(0, 1, 2, 3, 4)
    for offset in (0, 1, 2, 4):
        state.finish(offset)
    assert state.pending == 1
    assert state.finished_uncommitted == 4
    state.mark_committed(2)  # an older commit point: 2 is still uncommitted
    assert state.finished_uncommitted == 2
    state.mark_committed(3)
    assert state.finished_uncommitted == 1  # only 4, waiting behind 3
    state.finish(3)
    assert state.finished_uncommitted == 2
    state.mark_committed(5)
    assert state.finished_uncommitted == 0
    assert state.pending == 0


def test_repr_names_the_partition_and_commit_point() -> None:
    text = repr(tracked(7))
    assert "emails-0" in text
    assert "commit_point=7" in text


@given(st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=60), st.randoms())
def test_commit_point_after_any_finish_order(gaps: list[int], rnd: random.Random) -> None:
    """Whatever order a random subset finishes in, the point is the first unfinished offset."""
    offsets: list[int] = []
    offset = 0
    for gap in gaps:
        offset += gap
        offsets.append(offset)
    state = tracked(*offsets)
    finishing = rnd.sample(offsets, rnd.randint(0, len(offsets)))
    unfinished = set(offsets)
    for offset in finishing:
        state.finish(offset)
        unfinished.discard(offset)
        point = state.commit_point()
        assert point is not None
        assert all(point <= left for left in unfinished)
        assert point == (min(unfinished) if unfinished else offsets[-1] + 1)


class PartitionMachine(RuleBasedStateMachine):
    """Random track / finish / commit interleavings checked against a plain model."""

    def __init__(self) -> None:
        super().__init__()
        self.state = PartitionOffsets(TP)
        self.tracked: list[int] = []
        self.finished: set[int] = set()
        self.committed: int | None = None

    @rule(gap=st.integers(min_value=1, max_value=4))
    def track(self, gap: int) -> None:
        offset = (self.tracked[-1] if self.tracked else -1) + gap
        self.state.track(offset)
        self.tracked.append(offset)

    @precondition(lambda self: self.tracked)
    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        # Any tracked offset, finished or not: finishing again must change nothing.
        offset = data.draw(st.sampled_from(self.tracked))
        self.state.finish(offset)
        self.finished.add(offset)

    @rule()
    def commit(self) -> None:
        commit = self.state.to_commit()
        offset = None if commit is None else commit.offset
        assert offset == self._expected_to_commit()
        if offset is not None:
            self.state.mark_committed(offset)
            self.committed = offset

    @precondition(lambda self: self.committed is not None)
    @rule(data=st.data())
    def late_older_commit(self, data: st.DataObject) -> None:
        assert self.committed is not None
        self.state.mark_committed(data.draw(st.integers(0, self.committed)))

    def _expected_point(self) -> int | None:
        unfinished = [o for o in self.tracked if o not in self.finished]
        if unfinished:
            return unfinished[0]
        return self.tracked[-1] + 1 if self.tracked else None

    def _expected_to_commit(self) -> int | None:
        point = self._expected_point()
        if point is None or (self.committed is not None and point <= self.committed):
            return None
        return point

    @invariant()
    def commit_point_is_the_first_unfinished_offset(self) -> None:
        point = self.state.commit_point()
        assert point == self._expected_point()
        if point is not None:
            assert all(point <= o for o in self.tracked if o not in self.finished)

    @invariant()
    def counts_match(self) -> None:
        assert self.state.pending == len(self.tracked) - len(self.finished)
        floor = -1 if self.committed is None else self.committed
        assert self.state.finished_uncommitted == sum(1 for o in self.finished if o >= floor)


TestPartitionMachine = PartitionMachine.TestCase


def test_revoke_returns_the_old_generation_and_reassign_is_fresh() -> None:
    tracker = OffsetTracker()
    tracker.assign([TP, OTHER])
    old = tracker.get(TP)
    old.track(0)
    old.track(1)
    lost = tracker.revoke([TP])
    assert lost == {TP: old}
    assert old.revoked
    assert not tracker.get(OTHER).revoked
    with pytest.raises(KeyError):
        tracker.get(TP)
    tracker.assign([TP])
    new = tracker.get(TP)
    assert new is not old
    assert not new.revoked
    assert new.commit_point() is None
    old.finish(0)  # a late finish from the old generation
    assert new.commit_point() is None
    assert tracker.to_commit() == {}


def test_revoking_an_unassigned_partition_is_skipped() -> None:
    tracker = OffsetTracker()
    tracker.assign([TP])
    assert tracker.revoke([OTHER]) == {}
    assert tracker.partitions() == [TP]


def test_assigning_an_assigned_partition_starts_a_new_generation() -> None:
    tracker = OffsetTracker()
    tracker.assign([TP])
    old = tracker.get(TP)
    tracker.assign([TP])
    assert tracker.get(TP) is not old
    assert old.revoked


def test_tracker_to_commit_lists_only_partitions_whose_point_moved() -> None:
    tracker = OffsetTracker()
    tracker.assign([TP, OTHER])
    assert tracker.to_commit() == {}
    tracker.get(TP).track(0)
    tracker.get(OTHER).track(10)
    tracker.get(OTHER).track(11)
    assert tracker.to_commit() == {TP: Commit(0), OTHER: Commit(10)}
    tracker.mark_committed({TP: Commit(0), OTHER: Commit(10)})
    assert tracker.to_commit() == {}
    tracker.get(OTHER).finish(10)
    assert tracker.to_commit() == {OTHER: Commit(11)}


def test_mark_committed_ignores_partitions_no_longer_assigned() -> None:
    tracker = OffsetTracker()
    tracker.assign([TP, OTHER])
    old = tracker.get(TP)
    old.track(0)
    old.finish(0)
    offsets = tracker.to_commit()
    assert offsets == {TP: Commit(1)}
    tracker.revoke([TP])
    tracker.mark_committed(offsets)
    assert old.committed is None
    assert tracker.partitions() == [OTHER]
    tracker.mark_committed({TopicPartition("elsewhere", 3): Commit(5)})


def test_tracker_counts_add_up_over_partitions() -> None:
    tracker = OffsetTracker()
    tracker.assign([TP, OTHER])
    for offset in range(3):
        tracker.get(TP).track(offset)
        tracker.get(OTHER).track(offset)
    tracker.get(TP).finish(1)
    tracker.get(OTHER).finish(0)
    tracker.get(OTHER).finish(2)
    assert tracker.pending == 3
    assert tracker.finished_uncommitted == 3
    tracker.mark_committed(tracker.to_commit())
    assert tracker.finished_uncommitted == 2  # OTHER's 0 is committed
    lost = tracker.revoke([OTHER])
    assert lost[OTHER].pending == 1
    assert tracker.pending == 2
    assert tracker.finished_uncommitted == 1


def test_parked_offsets_are_pending_but_not_waiting() -> None:
    tracker = OffsetTracker()
    tracker.assign([TP, OTHER])
    for offset in range(3):
        tracker.get(TP).track(offset)
    tracker.get(OTHER).track(0)
    state = tracker.get(TP)
    state.park()
    state.park()
    assert (state.pending, state.parked, state.waiting) == (3, 2, 1)
    assert (tracker.pending, tracker.waiting) == (4, 2)
    state.unpark()
    assert (state.parked, state.waiting) == (1, 2)
    assert tracker.states() == [state, tracker.get(OTHER)]


def test_parking_more_than_is_unfinished_or_unparking_nothing_raises() -> None:
    state = tracked(0)
    with pytest.raises(ValueError, match="unpark"):
        state.unpark()
    state.park()
    with pytest.raises(ValueError, match="park"):
        state.park()


def test_topic_partition_has_aiokafka_shape() -> None:
    tp = TopicPartition(topic="t", partition=2)
    assert tp == ("t", 2)
    assert (tp.topic, tp.partition) == ("t", 2)


# --- offset maps -------------------------------------------------------------------------


def mapped(*offsets: int, max_bytes: int = 4096) -> PartitionOffsets:
    state = PartitionOffsets(TP, map_max_bytes=max_bytes)
    for offset in offsets:
        state.track(offset)
    return state


def map_of(commit: Commit | None) -> set[int]:
    assert commit is not None
    found = decode(commit.metadata, committed=commit.offset)
    assert isinstance(found, OffsetMap), found
    return {o for start, stop in found.runs for o in range(start, stop)}


def test_without_maps_commits_carry_no_metadata() -> None:
    state = tracked(0, 1, 2)
    state.finish(1)
    assert state.to_commit() == Commit(0)
    assert state.restore(OffsetMap(0, ((1, 3),))) == 0
    assert state.track(3) is Tracked.NEW


def test_the_map_lists_the_finished_offsets_above_the_commit_point() -> None:
    state = mapped(*range(10))
    for offset in (2, 3, 5, 9):
        state.finish(offset)
    commit = state.to_commit()
    assert commit is not None
    assert commit.offset == 0
    assert map_of(commit) == {2, 3, 5, 9}


def test_a_changed_map_is_worth_a_commit_even_when_the_point_stays() -> None:
    state = mapped(0, 1, 2)
    commit = state.to_commit()
    assert commit == Commit(0)  # nothing finished above it: no metadata
    state.mark_committed(commit.offset, commit.metadata)
    assert state.to_commit() is None
    state.finish(2)
    commit = state.to_commit()
    assert commit is not None
    assert commit.offset == 0
    assert map_of(commit) == {2}
    state.mark_committed(commit.offset, commit.metadata)
    assert state.to_commit() is None


def test_restored_offsets_are_finished_when_fetched_again() -> None:
    state = PartitionOffsets(TP, map_max_bytes=4096)
    assert state.restore(OffsetMap(5, ((7, 9), (12, 13)))) == 3
    assert [state.track(o) for o in range(5, 10)] == [
        Tracked.NEW,
        Tracked.NEW,
        Tracked.FINISHED_BEFORE,
        Tracked.FINISHED_BEFORE,
        Tracked.NEW,
    ]
    assert state.pending == 3
    state.finish(5)
    state.finish(6)
    assert state.commit_point() == 9


def test_restored_offsets_stay_in_the_map_until_the_commit_point_passes_them() -> None:
    state = PartitionOffsets(TP, map_max_bytes=4096)
    state.restore(OffsetMap(5, ((7, 9), (12, 13))))
    state.track(5)
    commit = state.to_commit()
    assert commit is not None
    assert commit.offset == 5
    assert map_of(commit) == {7, 8, 12}  # 7, 8 and 12 not fetched again yet
    state.finish(5)
    for offset in range(6, 12):
        state.track(offset)
    state.finish(6)
    commit = state.to_commit()
    assert commit is not None
    assert commit.offset == 9
    assert map_of(commit) == {12}
    for offset in range(9, 12):
        state.finish(offset)
    assert state.track(12) is Tracked.FINISHED_BEFORE
    assert state.to_commit() == Commit(13)


def test_a_map_arriving_after_records_were_tracked_leaves_them_to_be_worked_on() -> None:
    state = mapped(5, 6, 7)
    assert state.restore(OffsetMap(5, ((6, 10),))) == 2  # 8 and 9; 6 and 7 are being worked on
    assert state.pending == 3
    assert state.track(8) is Tracked.FINISHED_BEFORE


def test_left_out_offsets_are_counted_in_the_commit_and_after_it() -> None:
    state = mapped(*range(3000), max_bytes=40)
    for offset in range(1, 3000, 2):
        state.finish(offset)
    commit = state.to_commit()
    assert commit is not None
    assert len(commit.metadata) <= 40
    assert commit.left_out > 0
    assert len(map_of(commit)) + commit.left_out == 1500
    tracker = OffsetTracker(map_max_bytes=40)
    tracker.assign([TP])
    tracker.get(TP).track(0)
    tracker.get(TP).track(2)
    tracker.get(TP).finish(2)
    tracker.mark_committed({TP: Commit(0, "x", left_out=7)})
    assert tracker.map_left_out == 7


def test_tracker_restore_skips_partitions_not_assigned() -> None:
    tracker = OffsetTracker(map_max_bytes=4096)
    tracker.assign([TP])
    taken = tracker.restore({TP: OffsetMap(0, ((1, 3),)), OTHER: OffsetMap(0, ((1, 2),))})
    assert taken == {TP: 2}
    assert tracker.maps_enabled
    assert not OffsetTracker().maps_enabled


@given(finishes=st.lists(st.integers(0, 199), max_size=200))
def test_finished_offsets_in_commits_round_trip_through_a_restart(finishes: list[int]) -> None:
    """Commit, 'crash', restore in a new generation: exactly the finished offsets are skipped."""
    first = PartitionOffsets(TP, map_max_bytes=4096)
    for offset in range(200):
        first.track(offset)
    for offset in finishes:
        first.finish(offset)
    commit = first.to_commit()
    assert commit is not None
    finished = set(finishes)
    above = {o for o in finished if o > commit.offset}
    if commit.metadata:
        assert map_of(commit) == above
    else:
        assert not above
    second = PartitionOffsets(TP, map_max_bytes=4096)
    found = decode(commit.metadata, committed=commit.offset)
    if isinstance(found, OffsetMap):
        second.restore(found)
    skipped = {o for o in range(commit.offset, 200) if second.track(o) is Tracked.FINISHED_BEFORE}
    assert skipped == above
