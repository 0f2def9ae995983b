"""What the benchmark sends: one order confirmation per request, for service and plain loop."""

from __future__ import annotations

import json
from typing import Any

TEMPLATE = "order_confirmation"
SENDER = "Shop <shop@example.com>"
_INDEX = "@@INDEX@@"
_ITEMS = (
    {"name": "Espresso beans, 1 kg", "quantity": 2, "price": "18.50"},
    {"name": "Ceramic mug", "quantity": 1, "price": "9.90"},
    {"name": "Milk frother", "quantity": 1, "price": "34.00"},
)


def request(run_id: str, index: int | str) -> dict[str, Any]:
    """One order confirmation (subject, text and HTML part), the same for service and plain loop."""
    return {
        "id": f"{run_id}-{index}",
        "template": TEMPLATE,
        "to": f"customer{index}@example.com",
        "data": {
            "name": f"Customer {index}",
            "order_id": f"A-{index}",
            "items": [dict(item) for item in _ITEMS],
            "total": "80.90",
        },
    }


class Payloads:
    """Request values as bytes, formatted from one pre-rendered JSON text (fast for a million)."""

    def __init__(self, run_id: str) -> None:
        text = json.dumps(request(run_id, _INDEX), separators=(",", ":"))
        self._parts = text.encode().split(_INDEX.encode())

    def value(self, index: int) -> bytes:
        return str(index).encode().join(self._parts)
