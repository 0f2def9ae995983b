"""What the benchmark sends: one order confirmation per request, for service and plain loop."""

from __future__ import annotations

import base64
import json
import random
from typing import Any

TEMPLATE = "order_confirmation"
SENDER = "Shop <shop@example.com>"
_INDEX = "@@INDEX@@"
_ITEMS = (
    {"name": "Espresso beans, 1 kg", "quantity": 2, "price": "18.50"},
    {"name": "Ceramic mug", "quantity": 1, "price": "9.90"},
    {"name": "Milk frother", "quantity": 1, "price": "34.00"},
)


def attachment(size: int) -> dict[str, str]:
    """A PDF-named attachment of ``size`` random (incompressible) bytes, as the contract has it."""
    data = random.Random(size).randbytes(size)
    return {"filename": "invoice.pdf", "content": base64.b64encode(data).decode("ascii")}


def request(run_id: str, index: int | str, *, attachment_bytes: int = 0) -> dict[str, Any]:
    """One order confirmation (subject, text and HTML part), the same for service and plain loop.

    With ``attachment_bytes``, it also carries one attachment of that size (service only).
    """
    extra = {"attachments": [attachment(attachment_bytes)]} if attachment_bytes else {}
    return {
        **extra,
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

    def __init__(self, run_id: str, *, attachment_bytes: int = 0) -> None:
        content = request(run_id, _INDEX, attachment_bytes=attachment_bytes)
        text = json.dumps(content, separators=(",", ":"))
        self._parts = text.encode().split(_INDEX.encode())

    def value(self, index: int) -> bytes:
        return str(index).encode().join(self._parts)
