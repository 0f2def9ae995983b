"""A circuit breaker for the relay: after enough failures in a row, stop trying until a probe.

Pure state, no I/O: the handler reports each attempt's result, a prober closes the circuit
when the relay answers again, and listeners (the pipeline, health, metrics) are told about
every change. Failures count only while the circuit is closed and any success resets them,
so a slow trickle of errors among successes never opens it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable


class CircuitState(enum.StrEnum):
    CLOSED = "closed"
    """Requests flow; failures are being counted."""
    OPEN = "open"
    """The relay is considered down: no sends, consumption paused, a prober checks it."""


Listener = Callable[[CircuitState], None]


class CircuitBreaker:
    """Opens after ``threshold`` consecutive failures; closes only when told the relay is back."""

    def __init__(self, *, threshold: int) -> None:
        if threshold < 1:
            raise ValueError("threshold must be at least 1")
        self._threshold = threshold
        self._failures = 0
        self._state = CircuitState.CLOSED
        self._listeners: list[Listener] = []
        self.opened_count = 0

    @property
    def state(self) -> CircuitState:
        return self._state

    @property
    def is_open(self) -> bool:
        return self._state is CircuitState.OPEN

    @property
    def threshold(self) -> int:
        return self._threshold

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(state)`` after every change of state, in subscription order."""
        self._listeners.append(listener)

    def record_success(self) -> None:
        """The relay answered (accepted or refused a message): it is up."""
        self._failures = 0

    def record_failure(self) -> None:
        """The relay could not be used; opens the circuit at the threshold."""
        if self._state is CircuitState.OPEN:
            return
        self._failures += 1
        if self._failures >= self._threshold:
            self._change(CircuitState.OPEN)

    def close(self) -> None:
        """A probe reached the relay: let requests flow again."""
        self._failures = 0
        if self._state is CircuitState.OPEN:
            self._change(CircuitState.CLOSED)

    def _change(self, state: CircuitState) -> None:
        self._state = state
        if state is CircuitState.OPEN:
            self.opened_count += 1
        for listener in self._listeners:
            listener(state)
