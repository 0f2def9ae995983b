"""How fast to send: a configured ceiling, cut on throttling replies and regained linearly (AIMD).

Pure arithmetic on an injected clock; ``ratelimit.py`` turns the allowed rate into waiting.
A relay that answers 421/450/451/452/454 to a real share of our attempts is asking us to
slow down (``PushBack`` tells that apart from a few messages deferred one by one, which the
retry schedule handles alone). The allowed rate is then multiplied by ``decrease`` (at most
once per ``cooldown``, so one burst of throttled replies is one cut, not twenty), and grows
back by a fixed step per second until it reaches the ceiling again — or, with no ceiling
configured, the rate we were sending at when the relay first complained, at which point the
limit is lifted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

# The reply codes a relay uses to push back: too many connections or messages, try later.
THROTTLE_CODES = frozenset({421, 450, 451, 452, 454})


def is_throttling(code: int | None) -> bool:
    return code in THROTTLE_CODES


@dataclass(frozen=True, slots=True)
class AimdPolicy:
    decrease: float = 0.5
    """Multiplicative decrease: the allowed rate is multiplied by this on throttling."""
    recovery: float = 0.05
    """Additive increase per second, as a share of the rate being recovered to."""
    floor: float = 1.0
    """Never slower than this many emails per second."""
    cooldown: float = 1.0
    """Seconds after a cut during which further throttling replies cut nothing."""

    def __post_init__(self) -> None:
        if not 0 < self.decrease < 1:
            raise ValueError("decrease must be between 0 and 1")
        if self.recovery <= 0 or self.floor <= 0 or self.cooldown < 0:
            raise ValueError("recovery and floor must be > 0, cooldown >= 0")


class AdaptiveRate:
    """The send rate allowed now, in emails per second; ``None`` means no limit."""

    def __init__(
        self,
        ceiling: float | None,
        *,
        policy: AimdPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ceiling is not None and ceiling <= 0:
            raise ValueError("ceiling must be > 0 emails per second, or None for no limit")
        self._policy = policy or AimdPolicy()
        self._ceiling = ceiling
        self._clock = clock
        self._target: float | None = ceiling  # what recovery climbs back to
        self._cut: float | None = None  # the rate right after the last cut...
        self._cut_at = 0.0  # ...and when it was made
        self.cuts = 0

    @property
    def ceiling(self) -> float | None:
        return self._ceiling

    @property
    def throttled(self) -> bool:
        """Below the configured rate because the relay pushed back (recovering now)."""
        return self.allowed() != self._ceiling

    def allowed(self) -> float | None:
        if self._cut is None:
            return self._ceiling
        assert self._target is not None
        regained = self._target * self._policy.recovery * (self._clock() - self._cut_at)
        rate = self._cut + regained
        if rate < self._target:
            return rate
        # Fully recovered: back to the ceiling (or to no limit at all).
        self._cut = None
        self._target = self._ceiling
        return self._ceiling

    def on_throttle(self, observed: float) -> bool:
        """The relay pushed back while we sent ``observed`` emails/s; True if that cut the rate."""
        now = self._clock()
        if self._cut is not None and now - self._cut_at < self._policy.cooldown:
            return False
        current = self.allowed()
        if current is None:
            # No ceiling: recover to the rate that was too much, and start from half of it.
            current = max(observed, self._policy.floor)
            self._target = current
        self._cut = max(current * self._policy.decrease, self._policy.floor)
        self._cut_at = now
        self.cuts += 1
        return True


class RateMeter:
    """Events per second over the last completed second (or the current one, at first)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._second = int(clock())
        self._count = 0
        self._previous = 0

    def mark(self) -> None:
        self._roll()
        self._count += 1

    def rate(self) -> float:
        self._roll()
        return float(max(self._previous, self._count))

    def recent(self) -> int:
        """Events in the last completed second and the current one together."""
        self._roll()
        return self._previous + self._count

    def _roll(self) -> None:
        second = int(self._clock())
        if second != self._second:
            self._previous = self._count if second == self._second + 1 else 0
            self._count = 0
            self._second = second


class PushBack:
    """Whether throttling replies are a real share of recent attempts, not a few stray ones.

    A relay over its limit defers much of what we send; a relay that defers the odd message
    (greylisting, a busy mailbox) does not want the whole service slowed down. So a cut needs
    at least ``min_count`` throttling replies making up ``min_share`` of the attempts of the
    last second or two.
    """

    def __init__(
        self,
        *,
        min_share: float = 0.25,
        min_count: int = 3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < min_share <= 1 or min_count < 1:
            raise ValueError("min_share must be in (0, 1] and min_count at least 1")
        self._min_share = min_share
        self._min_count = min_count
        self.attempts = RateMeter(clock)
        self._throttled = RateMeter(clock)

    def attempt(self) -> None:
        self.attempts.mark()

    def throttled(self) -> bool:
        """Count one throttling reply; True when the recent ones amount to push-back."""
        self._throttled.mark()
        throttled = self._throttled.recent()
        attempts = max(self.attempts.recent(), throttled)
        return throttled >= self._min_count and throttled >= self._min_share * attempts
