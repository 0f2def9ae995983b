"""What /healthz and /readyz report: the service's view of its own dependencies."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from messaging_service.service.relay import Relay


@dataclass(slots=True)
class Health:
    """Readiness, read by the HTTP endpoints and exported as metrics.

    Each flag has one writer: the pipeline (``joined_group``, ``draining``) and the handler
    (``dead_letter_sink_ok``, ``events_sink_ok``); the relay's state is read from the relay
    itself, never copied.
    """

    relay: Relay = field(default_factory=Relay)
    joined_group: bool = False
    dead_letter_sink_ok: bool = True
    events_sink_ok: bool = True
    draining: bool = False
    started_at: float = field(default_factory=time.monotonic)

    def readiness(self) -> dict[str, bool]:
        return {
            "joined_group": self.joined_group,
            "smtp_reachable": self.relay.reachable,
            "smtp_circuit_closed": not self.relay.circuit_open,
            "dead_letter_topic_writable": self.dead_letter_sink_ok,
            "events_topic_writable": self.events_sink_ok,
            "accepting_work": not self.draining,
        }

    @property
    def ready(self) -> bool:
        return all(self.readiness().values())
