"""The offset map: round trips, the size bound, truncation and garbage in commit metadata."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from messaging_service.core.offsetmap import (
    PREFIX,
    OffsetMap,
    Run,
    Unreadable,
    as_runs,
    decode,
    encode,
)

KAFKA_DEFAULT_MAX = 4096


def runs_from(offsets: set[int]) -> list[Run]:
    runs: list[Run] = []
    for offset in sorted(offsets):
        if runs and runs[-1][1] == offset:
            runs[-1] = (runs[-1][0], offset + 1)
        else:
            runs.append((offset, offset + 1))
    return runs


def offsets_of(runs: tuple[Run, ...] | list[Run]) -> set[int]:
    return {offset for start, stop in runs for offset in range(start, stop)}


@st.composite
def finished_above(draw: st.DrawFn) -> tuple[int, set[int]]:
    base = draw(st.integers(0, 2**40))
    relative = draw(st.sets(st.integers(0, 5000), max_size=400))
    return base, {base + offset for offset in relative}


def test_nothing_finished_encodes_as_empty_metadata() -> None:
    assert encode(10, [], max_bytes=KAFKA_DEFAULT_MAX).text == ""


def test_every_tenth_waiting_encodes_a_thousand_offsets_in_a_few_hundred_characters() -> None:
    base = 1_000_000
    finished = {base + i for i in range(1, 1000) if i % 10}
    encoded = encode(base, runs_from(finished), max_bytes=KAFKA_DEFAULT_MAX)
    assert encoded.text.startswith(PREFIX)
    assert encoded.encoded == len(finished)
    assert encoded.left_out == 0
    assert len(encoded.text) < 300
    found = decode(encoded.text, committed=base)
    assert isinstance(found, OffsetMap)
    assert offsets_of(found.runs) == finished


def test_a_long_run_costs_a_few_bytes() -> None:
    encoded = encode(5, [(6, 1_000_006)], max_bytes=KAFKA_DEFAULT_MAX)
    assert encoded.encoded == 1_000_000
    assert len(encoded.text) < 20


def test_random_finishes_fit_as_a_bitset() -> None:
    """Alternating offsets cost two varint bytes per run; the bitset costs one bit each."""
    base = 0
    finished = set(range(1, 8000, 2))
    encoded = encode(base, runs_from(finished), max_bytes=KAFKA_DEFAULT_MAX)
    assert encoded.text.startswith(PREFIX + "b:")
    assert encoded.left_out == 0
    found = decode(encoded.text, committed=base)
    assert isinstance(found, OffsetMap)
    assert offsets_of(found.runs) == finished


def test_what_does_not_fit_is_left_out_from_the_top() -> None:
    base = 100
    finished = set(range(101, 100_000, 2))  # 49,950 single offsets: far beyond 500 characters
    encoded = encode(base, runs_from(finished), max_bytes=500)
    assert len(encoded.text) <= 500
    assert encoded.encoded + encoded.left_out == len(finished)
    assert 0 < encoded.encoded < len(finished)
    found = decode(encoded.text, committed=base)
    assert isinstance(found, OffsetMap)
    kept = offsets_of(found.runs)
    assert kept == {o for o in finished if o <= max(kept)}  # a prefix: the lowest offsets


def test_part_of_a_run_is_kept_when_the_whole_run_does_not_fit() -> None:
    # Room for the header and base, then one skip byte and one run byte: 127 of the run.
    encoded = encode(0, [(1, 100_000)], max_bytes=5 + 4)
    assert encoded.encoded == 127
    assert encoded.left_out == 100_000 - 1 - 127


def test_a_bound_too_small_for_the_header_encodes_nothing() -> None:
    encoded = encode(0, [(1, 5)], max_bytes=4)
    assert encoded == encoded.__class__("", 0, 4)


def test_a_map_written_for_another_commit_is_not_used() -> None:
    text = encode(10, [(11, 20)], max_bytes=KAFKA_DEFAULT_MAX).text
    assert decode(text, committed=12) == Unreadable("written for another commit")


def test_metadata_that_is_no_offset_map_is_unreadable() -> None:
    for text, reason in [
        ("", "empty"),  # Tansu drops metadata; plain commits write none
        ("some other consumer's note", "unknown format"),
        ("om2r:AAAA", "unknown format"),  # a later version
        ("om1x:AAAA", "unknown kind"),
        ("om1r:!!!", "not base64"),
        ("om1r:", "truncated"),
        ("om1r:gA", "truncated"),  # a varint whose continuation byte is missing
        ("om1r:AAAA", "bad run"),  # a run of length 0
    ]:
        assert decode(text, committed=0) == Unreadable(reason), text


def test_contains_looks_offsets_up_in_the_runs() -> None:
    offset_map = OffsetMap(10, ((11, 13), (20, 21)))
    assert [o for o in range(9, 23) if o in offset_map] == [11, 12, 20]
    assert "11" not in offset_map
    assert offset_map.count == 3


@given(finished_above(), st.integers(0, 6000))
def test_round_trip_keeps_the_lowest_offsets_within_the_bound(
    case: tuple[int, set[int]], max_bytes: int
) -> None:
    base, finished = case
    encoded = encode(base, runs_from(finished), max_bytes=max_bytes)
    assert len(encoded.text) <= max_bytes
    assert encoded.text.isascii()
    assert encoded.encoded + encoded.left_out == len(finished)
    if not encoded.text:
        assert encoded.encoded == 0
        return
    found = decode(encoded.text, committed=base)
    assert isinstance(found, OffsetMap)
    kept = offsets_of(found.runs)
    assert len(kept) == encoded.encoded
    assert kept == set(sorted(finished)[: encoded.encoded])


@given(finished_above())
def test_under_kafkas_default_bound_everything_small_fits(case: tuple[int, set[int]]) -> None:
    base, finished = case
    encoded = encode(base, runs_from(finished), max_bytes=3072)
    assert encoded.left_out == 0


@given(st.text(max_size=200), st.integers(0, 2**63 - 1))
def test_decoding_any_text_never_raises(text: str, committed: int) -> None:
    decode(text, committed=committed)
    decode(PREFIX + "r:" + text, committed=committed)
    decode(PREFIX + "b:" + text, committed=committed)


@given(st.binary(max_size=300), st.sampled_from("rb"))
def test_decoding_any_payload_never_raises_and_stays_above_its_base(
    payload: bytes, kind: str
) -> None:
    import base64

    text = f"{PREFIX}{kind}:" + base64.urlsafe_b64encode(payload).decode().rstrip("=")
    found = decode(text, committed=0)
    if isinstance(found, OffsetMap):
        assert all(found.base <= start < stop for start, stop in found.runs)


def test_as_runs_joins_tracked_offsets_and_restored_runs_clipped_to_the_floor() -> None:
    runs = as_runs([3, 4, 6, 9], [(5, 8), (10, 12), (14, 15)], floor=10)
    assert list(runs) == [(3, 5), (6, 7), (9, 12), (14, 15)]
    assert list(as_runs([], [(1, 4)], floor=5)) == []
