"""The relay as the service sees it: reachable or not, its circuit, the requests held for it.

One writer for each fact: the handler reports what each attempt found (``answered``,
``unreachable``), the prober (``watch``) is the only thing that closes the circuit, and the
requests parked while the circuit is open are held here and handed back here when it closes.
Health, metrics and the watchdog read it; nobody copies its state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from messaging_service.core.circuit import CircuitBreaker, CircuitState
from messaging_service.errors import SmtpTransientError
from messaging_service.service.pool import Job

log = structlog.get_logger(__name__)

Release = Callable[[Job], None]


class Relay:
    """Reachability, the circuit breaker and the parked requests of one SMTP relay."""

    def __init__(self, circuit: CircuitBreaker | None = None) -> None:
        self._circuit = circuit
        self._reachable = False
        self._parked: list[Job] = []
        self._release: Release | None = None
        if circuit is not None:
            circuit.subscribe(self._changed)

    @property
    def reachable(self) -> bool:
        """Whether the last attempt or probe reached the relay."""
        return self._reachable

    @property
    def circuit_open(self) -> bool:
        return self._circuit is not None and self._circuit.is_open

    @property
    def circuit_opened(self) -> int:
        return 0 if self._circuit is None else self._circuit.opened_count

    @property
    def parked(self) -> int:
        """Requests held because the circuit is open."""
        return len(self._parked)

    def on_release(self, release: Release) -> None:
        """Who takes parked requests back when the circuit closes (the request lifecycle)."""
        self._release = release

    def subscribe(self, listener: Callable[[CircuitState], None]) -> None:
        """Be told of every change of the circuit (after the parked requests were released)."""
        if self._circuit is not None:
            self._circuit.subscribe(listener)

    def answered(self) -> None:
        """The relay answered an attempt (accepted or refused it): it is up."""
        self._reachable = True
        if self._circuit is not None:
            self._circuit.record_success()

    def unreachable(self, *, counts: bool = True) -> bool:
        """An attempt could not use the relay; True when the circuit is open now.

        ``counts=False`` for a failure that says the relay is unreachable but is not the kind
        the circuit counts (a transient error without a reply code).
        """
        self._reachable = False
        if self._circuit is not None and counts:
            self._circuit.record_failure()
        return self.circuit_open

    def park(self, job: Job) -> None:
        """Hold ``job`` until the circuit closes; handed back at once if it already has."""
        if self.circuit_open:
            self._parked.append(job)
            return
        self._hand_back([job])

    async def watch(self, probe: Callable[[], Awaitable[None]], interval: float) -> None:
        """Probe the relay whenever it is not known good; a probe that answers closes the circuit.

        Also keeps /readyz honest while no email flows (at start, or after a failed send).
        Runs until cancelled; nothing else ends it, since only it ever closes the circuit.
        """
        while True:
            if self.circuit_open or not self._reachable:
                await self._probe_once(probe)
            await asyncio.sleep(interval)

    async def _probe_once(self, probe: Callable[[], Awaitable[None]]) -> None:
        state = "open" if self.circuit_open else "closed"
        try:
            await probe()
        except SmtpTransientError as exc:
            log.warning("smtp_unreachable", error=str(exc), circuit=state)
            return
        except Exception as exc:  # the task boundary: the prober must outlive any bug
            log.error("smtp_probe_crashed", exc_info=exc, circuit=state)
            return
        self._reachable = True
        log.info("smtp_reachable")
        if self._circuit is None:
            return
        try:
            self._circuit.close()
        except Exception as exc:  # a listener's bug must not end the only closer
            log.error("smtp_probe_crashed", exc_info=exc, circuit=state)

    def _changed(self, state: CircuitState) -> None:
        if state is CircuitState.OPEN:
            self._reachable = False
            log.error("smtp_circuit_opened")
            return
        log.info("smtp_circuit_closed", released=len(self._parked))
        parked, self._parked = self._parked, []
        self._hand_back(parked)

    def _hand_back(self, jobs: list[Job]) -> None:
        if not jobs:
            return
        if self._release is None:
            raise RuntimeError("a request was parked but nobody takes parked requests back")
        for job in jobs:
            self._release(job)
