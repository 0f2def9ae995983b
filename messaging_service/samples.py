"""Sample requests for dev mode: one per built-in template, and one that is dead-lettered."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .models import FailureReason, Outcome


@dataclass(frozen=True, slots=True)
class Sample:
    """A request and the outcome the service must reach for it."""

    request: dict[str, Any]
    outcome: Outcome
    reason: FailureReason | None = None
    label: str = ""

    @property
    def id(self) -> str:
        return str(self.request["id"])

    def describe(self) -> str:
        what = self.label or str(self.request.get("template"))
        return what if self.outcome is Outcome.SENT else f"{what} (to be dead-lettered)"


def samples() -> list[Sample]:
    """Fresh sample requests (a new list each call: callers may change theirs)."""
    return [
        Sample(
            {
                "id": "sample-welcome",
                "template": "welcome",
                "to": "Ada Lovelace <ada@example.com>",
                "data": {"name": "Ada"},
            },
            Outcome.SENT,
        ),
        Sample(
            {
                "id": "sample-password-reset",
                "template": "password_reset",
                "to": "grace@example.com",
                "data": {"name": "Grace", "reset_url": "https://shop.example.com/reset/s4mpl3"},
            },
            Outcome.SENT,
        ),
        Sample(
            {
                "id": "sample-order-confirmation",
                "template": "order_confirmation",
                "to": "linus@example.com",
                "cc": ["Orders <orders@example.com>"],
                "data": {
                    "name": "Linus",
                    "order_id": "A-1001",
                    "items": [
                        {"name": "Coffee beans", "quantity": 2, "price": "12.50"},
                        {"name": "Grinder", "quantity": 1, "price": 89},
                    ],
                    "total": "114.00",
                },
            },
            Outcome.SENT,
        ),
        # A template variable is missing: rendering fails, a permanent error, dead-lettered
        # at once with the reason and the message in its headers.
        Sample(
            {
                "id": "sample-dead-letter",
                "template": "password_reset",
                "to": "margaret@example.com",
                "data": {"name": "Margaret"},
            },
            Outcome.DEAD_LETTERED,
            FailureReason.TEMPLATE_ERROR,
            label="password_reset without reset_url",
        ),
    ]
