"""Dead letters read back, header stripping, and the per-reason replay bookkeeping."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from messaging_service.adapters.dead_letters import DEAD_LETTER_HEADERS, dead_letter_headers
from messaging_service.core.values import DeadLetter, FailureReason
from messaging_service.errors import SmtpRejectedError
from messaging_service.ops.deadletters import (
    BUCKETS,
    OTHER,
    Decision,
    ReplayProgress,
    StoredDeadLetter,
    replay_group,
    strip_dead_letter_headers,
)
from support.fakes import record


def letter(
    offset: int, reason: str | None, *, partition: int = 0, value: bytes = b"{}"
) -> StoredDeadLetter:
    headers = [("trace", b"abc")]
    if reason is not None:
        headers.append(("email-failure-reason", reason.encode()))
    return StoredDeadLetter(partition, offset, b"key", value, tuple(headers))


def test_a_dead_letter_written_by_the_service_reads_back_with_its_reason_and_message() -> None:
    original = record(json.dumps({"id": "order-7"}).encode(), offset=12)
    headers = dead_letter_headers(
        DeadLetter(
            original,
            FailureReason.SMTP_REJECTED,
            SmtpRejectedError("550 no such user", code=550),
            attempts=1,
            smtp_code=550,
        ),
        group_id="svc",
    )
    stored = StoredDeadLetter(0, 3, original.key, original.value, tuple(headers))

    assert stored.reason == "smtp_rejected"
    assert stored.bucket == "smtp_rejected"
    assert stored.email_id == "order-7"
    assert stored.smtp_code == "550"
    assert stored.error_message == "550 no such user"
    assert stored.original_headers == (("trace", b"abc"),)
    assert stored.describe() == (
        "0:3  id=order-7  reason=smtp_rejected  code=550  550 no such user"
    )


def test_stripping_keeps_other_headers_in_order_including_repeated_names() -> None:
    headers = [
        ("a", b"1"),
        *((name, b"x") for name in DEAD_LETTER_HEADERS),
        ("b", b"2"),
        ("a", b"3"),
        ("email-failure-reason", b"again"),
    ]

    assert strip_dead_letter_headers(headers) == (("a", b"1"), ("b", b"2"), ("a", b"3"))


def test_a_missing_or_unknown_reason_counts_as_other() -> None:
    assert letter(0, None).bucket == OTHER
    assert letter(0, "cosmic_rays").bucket == OTHER
    assert letter(0, "other").bucket == OTHER
    assert letter(0, None).describe().startswith("0:0  id=?  reason=?  code=-")


def test_replay_groups_are_named_per_reason() -> None:
    assert replay_group("svc-dlq-replay", "smtp_rejected") == "svc-dlq-replay.smtp_rejected"


def test_a_filtered_replay_moves_only_its_reason_and_commits_only_that_reason() -> None:
    progress = ReplayProgress(buckets={"smtp_rejected"}, committed={})
    records = [letter(0, "smtp_rejected"), letter(1, "invalid_payload"), letter(2, "smtp_rejected")]

    decisions = [progress.decide(r) for r in records]
    for r, decision in zip(records, decisions, strict=True):
        if decision is Decision.MOVE:
            progress.moved(r)

    assert decisions == [Decision.MOVE, Decision.FILTERED_OUT, Decision.MOVE]
    assert progress.final_commits() == {}  # each move was committed as it happened
    assert progress.committed("smtp_rejected", 0) == 3
    assert progress.committed("invalid_payload", 0) is None


def test_reading_starts_at_the_lowest_offset_a_selected_reason_still_needs() -> None:
    committed = {"smtp_rejected": {0: 5, 1: 2}, "invalid_payload": {0: 3}}

    both = ReplayProgress(buckets={"smtp_rejected", "invalid_payload"}, committed=committed)
    one = ReplayProgress(buckets={"smtp_rejected"}, committed=committed)

    assert both.start(0) == 3
    assert both.start(1) is None  # invalid_payload never replayed there: from the beginning
    assert one.start(1) == 2


def test_records_below_their_reasons_offset_are_already_replayed() -> None:
    progress = ReplayProgress(buckets=BUCKETS, committed={"smtp_rejected": {0: 2}})

    assert progress.decide(letter(1, "smtp_rejected")) is Decision.ALREADY_REPLAYED
    assert progress.decide(letter(2, "smtp_rejected")) is Decision.MOVE
    assert progress.replayed(letter(1, "smtp_rejected"))
    assert not progress.replayed(letter(1, "invalid_payload"))


def test_final_commits_move_selected_reasons_past_what_was_read() -> None:
    progress = ReplayProgress(
        buckets={"smtp_rejected", "template_error"}, committed={"template_error": {0: 9}}
    )
    for offset in range(4):
        progress.decide(letter(offset, "invalid_payload"))

    assert progress.final_commits() == {"smtp_rejected": {0: 4}}  # template_error is ahead
    assert progress.final_commits() == {}


reasons = st.sampled_from([*BUCKETS, None])
filters = st.frozensets(st.sampled_from(BUCKETS), max_size=3).map(lambda f: f or frozenset(BUCKETS))


@given(
    topic=st.lists(st.tuples(st.integers(0, 1), reasons), max_size=30),
    runs=st.lists(st.tuples(filters, st.none() | st.integers(1, 4)), max_size=6),
)
def test_whatever_filters_and_limits_replays_use_each_dead_letter_moves_at_most_once(
    topic: list[tuple[int, str | None]],
    runs: list[tuple[frozenset[str], int | None]],
) -> None:
    """And one replay of everything, at the end, leaves nothing unmoved."""
    partitions: dict[int, list[StoredDeadLetter]] = {0: [], 1: []}
    for partition, reason in topic:
        partitions[partition].append(
            letter(len(partitions[partition]), reason, partition=partition)
        )
    committed: dict[str, dict[int, int | None]] = {bucket: {} for bucket in BUCKETS}
    moved: list[tuple[int, int]] = []

    def run(buckets: frozenset[str], limit: int | None) -> None:
        progress = ReplayProgress(buckets=buckets, committed=committed)
        count = 0
        for partition, records in partitions.items():
            start = progress.start(partition) or 0
            for stored in records[start:]:
                if limit is not None and count >= limit:
                    break
                if progress.decide(stored) is Decision.MOVE:
                    bucket, part, offset = progress.moved(stored)
                    committed[bucket][part] = offset
                    moved.append((stored.partition, stored.offset))
                    count += 1
        for bucket, offsets in progress.final_commits().items():
            committed[bucket].update(offsets)

    for buckets, limit in runs:
        run(buckets, limit)
    run(frozenset(BUCKETS), None)

    everything = [(p, r.offset) for p, records in partitions.items() for r in records]
    assert sorted(moved) == sorted(everything)
