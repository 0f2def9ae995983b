"""The suppression list: which refusals are hard bounces, its Protocol, the bounded memory store.

An address the relay refused at RCPT as non-existent or disabled (550/551/553, and with an
enhanced status only 5.1.x or 5.2.1) is not mailed again until its entry expires or an
operator removes it: mailing it again harms the sender's reputation. Policy and content
refusals (5.7.x and the like) say nothing about the mailbox and are never suppressed.
"""

from __future__ import annotations

import enum
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

HARD_BOUNCE_CODES = frozenset({550, 551, 553})
_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)")


class SuppressionReason(enum.StrEnum):
    HARD_BOUNCE = "hard_bounce"
    MANUAL = "manual"
    """Added by an operator (``suppression add``) unless a reason is given."""


@dataclass(frozen=True, slots=True)
class Suppression:
    """One suppressed address (case-folded); times are Unix seconds, expiry None = never."""

    address: str
    reason: str
    created_at: float
    expires_at: float | None
    code: int | None = None
    response: str | None = None

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and self.expires_at <= now


def normalise_address(address: str) -> str:
    """The key of an address on the list: trimmed and case-folded."""
    return address.strip().casefold()


def enhanced_status(response: str) -> str | None:
    """The RFC 3463 enhanced status code a reply's text starts with (``5.1.1``), if any."""
    match = _ENHANCED.match(response)
    return None if match is None else ".".join(match.groups())


def is_hard_bounce(code: int, response: str) -> bool:
    """Whether a RCPT refusal says the mailbox does not exist or is disabled."""
    if code not in HARD_BOUNCE_CODES:
        return False
    status = enhanced_status(response)
    if status is None:
        return True
    return status.startswith("5.1.") or status == "5.2.1"


def hard_bounce(address: str, *, code: int, response: str, now: float, ttl: int) -> Suppression:
    """The entry for a hard-bounced address; ``ttl`` 0 keeps it until removed."""
    return Suppression(
        address=normalise_address(address),
        reason=SuppressionReason.HARD_BOUNCE.value,
        created_at=now,
        expires_at=None if ttl == 0 else now + ttl,
        code=code,
        response=response,
    )


class SuppressionStore(Protocol):
    """Suppressed addresses. Raises SuppressionUnavailableError when the store cannot answer."""

    async def suppressed(self, addresses: Sequence[str]) -> frozenset[str]:
        """Which of ``addresses`` (as given) are on the list now."""
        ...

    async def add(self, entry: Suppression) -> None: ...

    async def remove(self, address: str) -> bool:
        """Take ``address`` off the list; whether it was on it."""
        ...

    async def entries(self) -> list[Suppression]: ...


class MemorySuppressionStore:
    """At most ``max_entries`` addresses in this process; the oldest is dropped beyond that."""

    def __init__(self, *, max_entries: int, clock: Callable[[], float] = time.time) -> None:
        if max_entries <= 0:
            raise ValueError("max_entries must be positive")
        self._max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, Suppression] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def suppressed(self, addresses: Sequence[str]) -> frozenset[str]:
        now = self._clock()
        return frozenset(address for address in addresses if self._live(address, now))

    async def add(self, entry: Suppression) -> None:
        self._entries[entry.address] = entry
        self._entries.move_to_end(entry.address)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    async def remove(self, address: str) -> bool:
        return self._entries.pop(normalise_address(address), None) is not None

    async def entries(self) -> list[Suppression]:
        now = self._clock()
        return [entry for entry in self._entries.values() if not entry.expired(now)]

    def _live(self, address: str, now: float) -> bool:
        key = normalise_address(address)
        entry = self._entries.get(key)
        if entry is None:
            return False
        if entry.expired(now):
            del self._entries[key]
            return False
        return True


def hard_bounces(
    refusals: Iterable[tuple[str, int, str]], *, now: float, ttl: int
) -> list[Suppression]:
    """The entries to add for a transaction's refusals (recipient, code, response)."""
    return [
        hard_bounce(recipient, code=code, response=response, now=now, ttl=ttl)
        for recipient, code, response in refusals
        if is_hard_bounce(code, response)
    ]
