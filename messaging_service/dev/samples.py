"""Sample requests for dev mode: one per built-in template, one with an attachment and an
inline image, and one that is dead-lettered."""

from __future__ import annotations

import base64
import struct
import zlib
from dataclasses import dataclass
from typing import Any

from messaging_service.core.values import FailureReason, Outcome


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
        _invoice_sample(),
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


def _invoice_sample() -> Sample:
    """German (de-AT falls back to de), with an invoice attached and a logo shown inline.

    The layout shows the image whose content_id the data names as logo_cid.
    """
    return Sample(
        {
            "id": "sample-invoice-attached",
            "template": "order_confirmation",
            "locale": "de-AT",
            "to": "Hedy Lamarr <hedy@example.com>",
            "data": {
                "name": "Hedy",
                "order_id": "A-1002",
                "items": [{"name": "Kaffeebohnen", "quantity": 1, "price": "12.50"}],
                "total": "12.50",
                "logo_cid": "logo",
            },
            "attachments": [
                {"filename": "Rechnung-A-1002.pdf", "content": _b64(_invoice_pdf())},
                {"filename": "logo.png", "content": _b64(_logo_png()), "content_id": "logo"},
            ],
            "list_unsubscribe": {"url": "https://shop.example.com/unsubscribe/hedy"},
            "headers": {"List-Id": "Shop orders <orders.shop.example.com>"},
            "tags": ["order", "invoice"],
            "metadata": {"order_id": "A-1002"},
        },
        Outcome.SENT,
        label="order_confirmation (de-AT) with an attachment and an inline image",
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _invoice_pdf() -> bytes:
    return (
        b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
        b"2 0 obj << /Type /Pages /Kids [] /Count 0 >> endobj\n"
        b"trailer << /Root 1 0 R >>\n%%EOF\n"
    )


def _logo_png(size: int = 48) -> bytes:
    """A blue square as a real PNG, made here so the package ships no binary sample."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\x00" + b"\x2f\x6f\xed" * size for _ in range(size))
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            chunk(b"IHDR", header),
            chunk(b"IDAT", zlib.compress(rows)),
            chunk(b"IEND", b""),
        )
    )
