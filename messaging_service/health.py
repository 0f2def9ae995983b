"""What /healthz and /readyz report: the service's view of its own dependencies."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(slots=True)
class Health:
    """Mutable flags the adapters flip; read by the HTTP endpoints and exported as metrics."""

    joined_group: bool = False
    smtp_reachable: bool = False
    dead_letter_sink_ok: bool = True
    draining: bool = False
    # Set while consumption is paused on purpose for a relay outage (the circuit breaker):
    # nothing finishes then, and the liveness watchdog must not call that stuck.
    circuit_open: bool = False
    started_at: float = field(default_factory=time.monotonic)

    def readiness(self) -> dict[str, bool]:
        return {
            "joined_group": self.joined_group,
            "smtp_reachable": self.smtp_reachable,
            "smtp_circuit_closed": not self.circuit_open,
            "dead_letter_topic_writable": self.dead_letter_sink_ok,
            "accepting_work": not self.draining,
        }

    @property
    def ready(self) -> bool:
        return all(self.readiness().values())
