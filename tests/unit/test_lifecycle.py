"""A request's stages: only the drawn transitions exist, and the partition's books follow them."""

from __future__ import annotations

from typing import cast

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from messaging_service.core.offsets import PartitionOffsets, TopicPartition
from messaging_service.service.lifecycle import Lifecycle, Request, Stage, TransitionError
from support.fakes import record

TP = TopicPartition("email.requests", 0)
_LIVE = {
    Stage.ADMITTED,
    Stage.PREPARED,
    Stage.SENDING,
    Stage.ACKING,
    Stage.WAITING_RETRY,
    Stage.PARKED,
}
_HELD = {Stage.WAITING_RETRY, Stage.PARKED}


def new_request(partition: PartitionOffsets, offset: int) -> Request:
    partition.track(offset)
    return Request(record(b"{}", offset=offset), partition, cast(Lifecycle, None))


def test_the_success_path_reads_top_to_bottom() -> None:
    partition = PartitionOffsets(TP)
    request = new_request(partition, 0)
    for stage in (Stage.PREPARED, Stage.SENDING, Stage.WAITING_RETRY, Stage.PREPARED):
        request.to(stage)
    assert partition.pending == 1
    request.to(Stage.SENDING)
    request.to(Stage.PARKED)
    assert (partition.parked, partition.waiting) == (1, 0)
    request.to(Stage.PREPARED)
    request.to(Stage.SENDING)
    request.to(Stage.ACKING)  # its final event is queued: pending, holding no worker
    assert (partition.pending, partition.parked, partition.waiting) == (1, 0, 1)
    assert partition.commit_point() == 0
    request.to(Stage.FINISHED)
    assert partition.pending == 0
    assert partition.commit_point() == 1


@pytest.mark.parametrize(
    ("path", "bad"),
    [
        ((), Stage.FINISHED),  # admitted, never sent
        ((Stage.PREPARED,), Stage.WAITING_RETRY),  # only a step decides a retry
        ((Stage.PREPARED, Stage.SENDING, Stage.FINISHED), Stage.SENDING),  # final is final
        ((Stage.PREPARED, Stage.SENDING, Stage.PARKED), Stage.SENDING),  # back in line first
        ((Stage.PREPARED, Stage.SENDING, Stage.ACKING), Stage.SENDING),  # only its ack decides
        ((Stage.PREPARED, Stage.SENDING, Stage.ACKING), Stage.PARKED),
        ((Stage.RELEASED,), Stage.PREPARED),
    ],
)
def test_a_transition_that_is_not_drawn_is_refused(path: tuple[Stage, ...], bad: Stage) -> None:
    request = new_request(PartitionOffsets(TP), 0)
    for stage in path:
        request.to(stage)
    with pytest.raises(TransitionError):
        request.to(bad)


def test_a_released_request_leaves_the_revoked_books_alone() -> None:
    partition = PartitionOffsets(TP)
    request = new_request(partition, 0)
    request.to(Stage.PREPARED)
    request.to(Stage.SENDING)
    request.to(Stage.WAITING_RETRY)
    partition.revoked = True
    request.to(Stage.RELEASED)
    assert partition.parked == 1  # as it was when the partition was let go


class RequestMachine(RuleBasedStateMachine):
    """Random lives of requests on one partition; the books always match their stages."""

    @initialize()
    def start(self) -> None:
        self.partition = PartitionOffsets(TP)
        self.requests: list[Request] = []
        self.next_offset = 0

    def _in(self, stages: set[Stage]) -> list[Request]:
        return [request for request in self.requests if request.stage in stages]

    @rule(gap=st.integers(min_value=0, max_value=2))
    def admit(self, gap: int) -> None:
        self.next_offset += gap
        self.requests.append(new_request(self.partition, self.next_offset))
        self.next_offset += 1

    @precondition(lambda self: self._in({Stage.ADMITTED}))
    @rule(data=st.data())
    def prepare(self, data: st.DataObject) -> None:
        data.draw(st.sampled_from(self._in({Stage.ADMITTED}))).to(Stage.PREPARED)

    @precondition(lambda self: self._in({Stage.ADMITTED, Stage.PREPARED}))
    @rule(data=st.data())
    def worker_takes_it(self, data: st.DataObject) -> None:
        data.draw(st.sampled_from(self._in({Stage.ADMITTED, Stage.PREPARED}))).to(Stage.SENDING)

    @precondition(lambda self: self._in({Stage.SENDING}))
    @rule(
        data=st.data(),
        outcome=st.sampled_from([Stage.WAITING_RETRY, Stage.PARKED, Stage.ACKING, Stage.FINISHED]),
    )
    def step_decides(self, data: st.DataObject, outcome: Stage) -> None:
        data.draw(st.sampled_from(self._in({Stage.SENDING}))).to(outcome)

    @precondition(lambda self: self._in({Stage.ACKING}))
    @rule(data=st.data(), outcome=st.sampled_from([Stage.WAITING_RETRY, Stage.FINISHED]))
    def ack_settles(self, data: st.DataObject, outcome: Stage) -> None:
        data.draw(st.sampled_from(self._in({Stage.ACKING}))).to(outcome)

    @precondition(lambda self: self._in(_HELD))
    @rule(data=st.data())
    def handed_back(self, data: st.DataObject) -> None:
        data.draw(st.sampled_from(self._in(_HELD))).to(Stage.PREPARED)

    @precondition(lambda self: self.requests)
    @rule(data=st.data(), stage=st.sampled_from(list(Stage)))
    def anything_else_is_refused_or_allowed(self, data: st.DataObject, stage: Stage) -> None:
        request = data.draw(st.sampled_from(self.requests))
        before = (request.stage, self.partition.pending, self.partition.parked)
        allowed = {
            Stage.ADMITTED: {Stage.PREPARED, Stage.SENDING, Stage.RELEASED},
            Stage.PREPARED: {Stage.SENDING, Stage.RELEASED},
            Stage.SENDING: {
                Stage.WAITING_RETRY,
                Stage.PARKED,
                Stage.ACKING,
                Stage.FINISHED,
                Stage.RELEASED,
            },
            Stage.ACKING: {Stage.WAITING_RETRY, Stage.FINISHED, Stage.RELEASED},
            Stage.WAITING_RETRY: {Stage.PREPARED, Stage.RELEASED},
            Stage.PARKED: {Stage.PREPARED, Stage.RELEASED},
        }.get(request.stage, set())
        if stage in allowed and stage is not Stage.RELEASED:
            request.to(stage)
        elif stage not in allowed:
            with pytest.raises(TransitionError):
                request.to(stage)
            assert before == (request.stage, self.partition.pending, self.partition.parked)

    @invariant()
    def books_match_stages(self) -> None:
        live = self._in(_LIVE)
        assert self.partition.pending == len(live)
        assert self.partition.parked == len(self._in(_HELD))
        assert self.partition.waiting == len(live) - len(self._in(_HELD))
        unfinished = [request.record.offset for request in live]
        expected = None  # nothing tracked yet
        if self.requests:
            last = max(request.record.offset for request in self.requests)
            expected = min(unfinished) if unfinished else last + 1
        assert self.partition.commit_point() == expected


TestRequestMachine = RequestMachine.TestCase
