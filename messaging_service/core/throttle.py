"""How fast to send: a configured ceiling, cut on throttling replies and regained linearly (AIMD).

Pure arithmetic on an injected clock; ``ratelimit.py`` turns the allowed rate into waiting.
A relay that answers 421/450/451/452/454 to a real share of our attempts is asking us to
slow down. ``PushBack`` tells that apart from a few messages deferred one by one, which the
retry schedule handles alone: a verdict needs ``min_attempts`` attempts (20) among which
``min_count`` throttling replies (3) make up ``min_share`` (a quarter), counted over the
shortest run of recent seconds (at most ``window``, 30 s) that holds that many attempts. So
the first handful of attempts after a relay outage decide nothing, whatever share of them
was deferred, and a busy service still judges on the last second or two.

The allowed rate is then multiplied by ``decrease`` (at most once per ``cooldown``, so one
burst of throttled replies is one cut, not twenty), and grows back by a fixed step per
second until it reaches the ceiling again. With no ceiling configured, the cut starts from
the rate we were sending at, and recovery climbs back to the busiest second among the last
``memory`` (60) seconds in which anything was sent, or to the rate now if that is higher,
at which point the limit is lifted. Idle seconds do not count towards ``memory``, so a
relay outage never ages out the rate sent before it, and a near-idle second right after the
outage never becomes the rate to recover to. That target errs high on purpose: too high,
the climb passes the relay's limit and is cut again, as AIMD does; too low, it would hold the
service below its traffic for the whole climb.
"""

from __future__ import annotations

import time
from collections import deque
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
    def target(self) -> float | None:
        """The rate recovery climbs back to (``None``: no limit and no cut under way)."""
        self.allowed()
        return self._target

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

    def on_throttle(self, observed: float, *, peak: float = 0.0) -> bool:
        """The relay pushed back while we sent ``observed`` emails/s; True if that cut the rate.

        ``peak`` is the busiest recent second (see ``RateMeter.peak``). Without a ceiling the
        cut starts from half of ``observed`` and recovery climbs back to the higher of the two,
        so a cut made in a quiet second does not hold the service below its usual rate.
        """
        now = self._clock()
        if self._cut is not None and now - self._cut_at < self._policy.cooldown:
            return False
        current = self.allowed()
        if current is None:
            current = max(observed, self._policy.floor)
            self._target = max(current, peak)
        self._cut = max(current * self._policy.decrease, self._policy.floor)
        self._cut_at = now
        self.cuts += 1
        return True


class RateMeter:
    """Events per second: the last completed second (or the current one), and a recent peak."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, *, memory: int = 60) -> None:
        if memory < 1:
            raise ValueError("memory must be at least 1 second")
        self._clock = clock
        self._second = int(clock())
        self._count = 0
        self._previous = 0
        self._busy: deque[int] = deque(maxlen=memory)  # counts of completed non-idle seconds

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

    def peak(self) -> float:
        """The busiest second among the last ``memory`` seconds with any event, and this one.

        Idle seconds are skipped: after an outage this is still the rate from before it.
        """
        self._roll()
        return float(max(max(self._busy, default=0), self._count))

    def _roll(self) -> None:
        second = int(self._clock())
        if second != self._second:
            if self._count:
                self._busy.append(self._count)
            self._previous = self._count if second == self._second + 1 else 0
            self._count = 0
            self._second = second


@dataclass(slots=True)
class _Second:
    second: int
    attempts: int = 0
    throttled: int = 0


class PushBack:
    """Whether throttling replies are a real share of enough recent attempts.

    A relay over its limit defers much of what we send; a relay that defers the odd message
    (greylisting, a busy mailbox) does not want the whole service slowed down, and a handful
    of attempts says nothing either way. So a cut needs at least ``min_attempts`` attempts and
    ``min_count`` throttling replies making up ``min_share`` of them, over the most recent
    whole seconds (the current one included, ``window`` at most) that add up to
    ``min_attempts``: the last second or two of a busy service, longer for a slow one.
    """

    def __init__(
        self,
        *,
        min_share: float = 0.25,
        min_count: int = 3,
        min_attempts: int = 20,
        window: int = 30,
        memory: int = 60,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < min_share <= 1 or min_count < 1:
            raise ValueError("min_share must be in (0, 1] and min_count at least 1")
        if min_attempts < min_count or window < 1:
            raise ValueError("min_attempts must be at least min_count, window at least 1 s")
        self._min_share = min_share
        self._min_count = min_count
        self._min_attempts = min_attempts
        self._window = window
        self._clock = clock
        self._seconds: deque[_Second] = deque()
        self.attempts = RateMeter(clock, memory=memory)

    def attempt(self) -> None:
        self.attempts.mark()
        self._now().attempts += 1

    def throttled(self) -> bool:
        """Count one throttling reply; True when the recent ones amount to push-back."""
        self._now().throttled += 1
        attempts = throttled = 0
        for second in reversed(self._seconds):
            attempts += second.attempts
            throttled += second.throttled
            if attempts >= self._min_attempts:
                break
        attempts = max(attempts, throttled)
        return (
            attempts >= self._min_attempts
            and throttled >= self._min_count
            and throttled >= self._min_share * attempts
        )

    def _now(self) -> _Second:
        second = int(self._clock())
        while self._seconds and self._seconds[0].second <= second - self._window:
            self._seconds.popleft()
        if not self._seconds or self._seconds[-1].second != second:
            self._seconds.append(_Second(second))
        return self._seconds[-1]
