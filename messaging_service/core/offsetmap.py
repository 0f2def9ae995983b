"""The offset map: finished offsets above a commit point as compact text for commit metadata.

A partition's commit point stops at its first unfinished request, so a request waiting for a
retry holds back everything finished after it. The offset map records those finished offsets
in the metadata string of the commit itself, so whoever reads the partition next (this process
after a crash, or another member after a rebalance) can skip them instead of sending them again.

The text is ``om1`` (format and version), one letter for the body's kind, ``:``, then base64url
(no padding) of: the committed offset as an unsigned LEB128 varint, then either

- ``r`` (runs): varint pairs ``skip, run`` from the committed offset on: ``skip`` offsets not
  finished, then ``run`` finished ones; or
- ``b`` (bits): a bitset, bit ``i`` (little-endian within each byte) for committed offset + i.

The encoder writes whichever covers more finished offsets within the bound (then the shorter).
The committed offset is in the text so that a map is only used with the commit it was written
for. Kafka keeps at most ``offset.metadata.max.bytes`` (4096 by default) of metadata; the
encoder keeps to ``max_bytes`` by encoding the longest prefix that fits, lowest offsets first,
and says how many finished offsets it left out (those are sent again after a crash).
"""

from __future__ import annotations

import base64
import binascii
import bisect
import itertools
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

PREFIX = "om1"
_RUNS = "r"
_BITS = "b"
_HEAD = len(PREFIX) + 2  # prefix, kind letter, ":"
# Kafka offsets are signed 64-bit; anything past this is not an offset a broker can hold.
_MAX_OFFSET = (1 << 63) - 1
_MAX_VARINT_BYTES = 10
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")

Run = tuple[int, int]
"""Finished offsets ``start`` up to (not including) ``stop``."""


@dataclass(frozen=True, slots=True)
class OffsetMap:
    """Finished offsets above ``base`` (the committed offset), as sorted disjoint runs."""

    base: int
    runs: tuple[Run, ...]

    def __contains__(self, offset: object) -> bool:
        if not isinstance(offset, int):
            return False
        index = bisect.bisect_right(self.runs, (offset, _MAX_OFFSET + 1)) - 1
        return index >= 0 and self.runs[index][0] <= offset < self.runs[index][1]

    @property
    def count(self) -> int:
        """How many finished offsets the map holds."""
        return sum(stop - start for start, stop in self.runs)


@dataclass(frozen=True, slots=True)
class Unreadable:
    """Metadata that is no offset map this service can use, and why (for the log)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Encoded:
    """An encoded map: its text, how many finished offsets it holds, how many did not fit."""

    text: str
    encoded: int
    left_out: int


def encode(base: int, runs: Iterable[Run], *, max_bytes: int) -> Encoded:
    """The offset map of ``runs`` (sorted, disjoint, at or above ``base``) in ``max_bytes``.

    Returns an empty text when nothing is finished or not even the header fits.
    """
    if base < 0:
        raise ValueError(f"base must be >= 0, not {base}")
    merged = _merge(runs, base)
    total = sum(stop - start for start, stop in merged)
    # base64 turns 3 bytes into 4 characters; the header is plain ASCII.
    room = (max_bytes - _HEAD) * 3 // 4 - len(_varint(base))
    if total == 0 or room <= 0:
        return Encoded("", 0, total)
    candidates = [_runs_body(base, merged, room)]
    if candidates[0][2] < total or len(candidates[0][1]) > (merged[-1][1] - base + 7) // 8:
        # The bitset can only do better when the runs did not fit or are larger than it.
        candidates.append(_bits_body(base, merged, room))
    kind, body, encoded = max(candidates, key=lambda c: (c[2], -len(c[1])))
    if encoded == 0:
        return Encoded("", 0, total)
    text = base64.urlsafe_b64encode(_varint(base) + body).rstrip(b"=").decode("ascii")
    return Encoded(f"{PREFIX}{kind}:{text}", encoded, total - encoded)


def decode(text: str, *, committed: int) -> OffsetMap | Unreadable:
    """The map in ``text`` if it was written for ``committed``; never raises."""
    if not text:
        return Unreadable("empty")
    if not text.startswith(PREFIX) or len(text) < _HEAD or text[_HEAD - 1] != ":":
        return Unreadable("unknown format")
    kind = text[len(PREFIX)]
    if kind not in (_RUNS, _BITS):
        return Unreadable("unknown kind")
    body = text[_HEAD:]
    if not _BASE64URL.fullmatch(body):
        return Unreadable("not base64")
    try:
        payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        return Unreadable("not base64")
    try:
        base, position = _read_varint(payload, 0)
        runs = (
            _read_runs(payload, position, base)
            if kind == _RUNS
            else _read_bits(payload[position:], base)
        )
    except ValueError as exc:
        return Unreadable(str(exc))
    if base != committed:
        return Unreadable("written for another commit")
    return OffsetMap(base, tuple(runs))


def as_runs(offsets: Iterable[int], restored: Iterable[Run], *, floor: int) -> Iterator[Run]:
    """Runs of ``offsets`` (increasing, below ``floor``), then ``restored`` clipped to ``floor``.

    What a partition's map holds: the finished offsets it tracks, and above the last of them
    the runs the previous commit's map listed that have not been fetched again yet.
    """
    start: int | None = None
    stop = 0
    singles = ((offset, offset + 1) for offset in offsets)
    clipped = ((max(a, floor), b) for a, b in restored if b > max(a, floor))
    for run_start, run_stop in itertools.chain(singles, clipped):
        if start is not None and run_start == stop:
            stop = run_stop
            continue
        if start is not None:
            yield (start, stop)
        start, stop = run_start, run_stop
    if start is not None:
        yield (start, stop)


# --- encoding --------------------------------------------------------------------------------


def _merge(runs: Iterable[Run], base: int) -> list[Run]:
    merged: list[Run] = []
    for start, stop in runs:
        if start < base or stop <= start or (merged and start < merged[-1][1]):
            raise ValueError(f"runs must be sorted, disjoint and at or above {base}")
        if merged and start == merged[-1][1]:
            merged[-1] = (merged[-1][0], stop)
        else:
            merged.append((start, stop))
    return merged


def _runs_body(base: int, runs: list[Run], room: int) -> tuple[str, bytes, int]:
    body = bytearray()
    cursor = base
    encoded = 0
    for start, stop in runs:
        skip = _varint(start - cursor)
        left = room - len(body) - len(skip)
        if left <= 0:
            break
        length = stop - start
        run = _varint(length)
        if len(run) > left:  # the longest part of this run whose length still fits
            length = (1 << (7 * left)) - 1
            run = _varint(length)
        body += skip + run
        encoded += length
        cursor = start + length
        if cursor < stop:
            break
    return _RUNS, bytes(body), encoded


def _bits_body(base: int, runs: list[Run], room: int) -> tuple[str, bytes, int]:
    limit = base + 8 * room  # offsets at or past this do not fit
    span = min(runs[-1][1], limit) - base
    bits = bytearray((span + 7) // 8)
    encoded = 0
    for start, stop in runs:
        stop = min(stop, limit)
        if start >= stop:
            break
        encoded += stop - start
        for offset in range(start - base, stop - base):
            bits[offset >> 3] |= 1 << (offset & 7)
    return _BITS, bytes(bits), encoded


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


# --- decoding --------------------------------------------------------------------------------


def _read_varint(data: bytes, position: int) -> tuple[int, int]:
    value = 0
    for index in range(_MAX_VARINT_BYTES):
        if position + index >= len(data):
            raise ValueError("truncated")
        byte = data[position + index]
        value |= (byte & 0x7F) << (7 * index)
        if not byte & 0x80:
            if value > _MAX_OFFSET:
                raise ValueError("offset out of range")
            return value, position + index + 1
    raise ValueError("varint too long")


def _read_runs(data: bytes, position: int, base: int) -> list[Run]:
    runs: list[Run] = []
    cursor = base
    while position < len(data):
        skip, position = _read_varint(data, position)
        length, position = _read_varint(data, position)
        start = cursor + skip
        cursor = start + length
        if length == 0 or cursor > _MAX_OFFSET:
            raise ValueError("bad run")
        runs.append((start, cursor))
    return runs


def _read_bits(bits: bytes, base: int) -> list[Run]:
    if base + 8 * len(bits) > _MAX_OFFSET:
        raise ValueError("offset out of range")
    return list(_bit_runs(bits, base))


def _bit_runs(bits: bytes, base: int) -> Iterator[Run]:
    start: int | None = None
    for index in range(8 * len(bits)):
        if bits[index >> 3] >> (index & 7) & 1:
            if start is None:
                start = base + index
        elif start is not None:
            yield (start, base + index)
            start = None
    if start is not None:
        yield (start, base + 8 * len(bits))
