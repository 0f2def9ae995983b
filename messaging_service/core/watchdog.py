"""Liveness: whether requests that wait for a worker are still being finished."""

from __future__ import annotations

import time
from collections.abc import Callable


class Watchdog:
    """Measures how long requests have waited with none finishing; pure, the clock injected.

    The stall clock runs only while some request waits for a worker (queued or being sent)
    and nothing excuses the pause (an open circuit: a relay outage, where a restart would not
    help). Requests waiting for a retry timer are not waiting in this sense. Whenever nothing
    waits or the pause is excused, and whenever a request finishes, the clock starts again,
    so a stall is always measured from the last moment the process was known to be fine.

    Callers report ``progress()`` and call ``stalled()`` at every change they can see (work
    admitted, a retry due) and from the probes; ``timeout`` 0 turns the verdict off but the
    measurement stays available for the metric.
    """

    def __init__(self, timeout: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if timeout < 0:
            raise ValueError(f"timeout must be >= 0 seconds, not {timeout!r}")
        self.timeout = timeout
        self._clock = clock
        self._since = clock()

    def progress(self) -> None:
        """A request finished (sent or dead-lettered)."""
        self._since = self._clock()

    def stalled(self, *, waiting: bool, excused: bool = False) -> float:
        """Seconds without progress while requests waited; 0 when none waits or excused."""
        now = self._clock()
        if not waiting or excused:
            self._since = now
            return 0.0
        return max(now - self._since, 0.0)

    def alive(self, *, waiting: bool, excused: bool = False) -> bool:
        """False once requests have waited ``timeout`` seconds with none finishing."""
        stalled = self.stalled(waiting=waiting, excused=excused)
        return self.timeout == 0 or stalled < self.timeout
