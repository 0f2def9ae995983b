"""Every kind of email we send, scored by real filters: SpamAssassin and rspamd, offline.

Each scores below 1.0 in SpamAssassin with none of the structural rules that mark badly built
mail; rspamd, run privately with its network modules off, finds none of its structural
symbols either (``URI_COUNT_ODD`` among them: text and HTML link the same URLs).
"""

from __future__ import annotations

import base64
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from messaging_service.core.attachments import AttachmentPart, resolve
from messaging_service.core.contract import EmailRequest
from messaging_service.core.mime import MessageBuilder
from messaging_service.core.templates import TemplateRenderer
from support.filters import Rspamd, missing, rspamd, spamassassin

pytestmark = pytest.mark.filters

RENDERER = TemplateRenderer()
BUILDER = MessageBuilder("Shop <no-reply@shop.example.com>")
DATA: dict[str, Any] = {
    "name": "Ada",
    "reset_url": "https://shop.example.com/account/reset/7f3a9c2e",
    "order_id": "A-1001",
    "items": [
        {"name": "Coffee beans", "quantity": 2, "price": "12.50"},
        {"name": "Grinder", "quantity": 1, "price": 89},
    ],
    "total": "114.00",
}
SA_STRUCTURAL = (
    "MISSING_MID",
    "MISSING_DATE",
    "MIME_HTML_ONLY",
    "MIME_QP_LONG_LINE",
    "HTML_MIME_NO_HTML_TAG",
    "MPART_ALT_DIFF.*",
    "MIME_BOUND_.*",
    "TVD_.*",
    "MISSING_HEADERS",
    "MISSING_FROM",
    "MISSING_SUBJECT",
    "MIME_HEADER_CTYPE_ONLY",
    "MIME_BASE64_TEXT",
    "MIME_BAD_.*",
    "MIME_NO_TEXT",
)
RSPAMD_STRUCTURAL = (
    "URI_COUNT_ODD",
    "MISSING_MID",
    "MISSING_DATE",
    "MIME_HTML_ONLY",
    "MISSING_MIME_VERSION",
    "R_MISSING_CHARSET",
    "BROKEN_CONTENT_TYPE",
    "BROKEN_HEADERS",
    "MIME_BAD.*",
    "MV_CASE",
    "CTE_CASE",
    "R_PARTS_DIFFER",
    "PARTS_DIFFER",
    "MIME_BASE64_TEXT.*",
    "INVALID_MSGID",
    "MISSING_TO",
    "HTML_SHORT_LINK_IMG_.*",
)


def png(width: int = 16, height: int = 16) -> bytes:
    """A real PNG image (a blue square), made here so the test needs no binary files."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\x00" + b"\x2f\x6f\xed" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def pdf() -> bytes:
    return (
        b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
        b"2 0 obj << /Type /Pages /Kids [] /Count 0 >> endobj\n"
        b"trailer << /Root 1 0 R >>\n%%EOF\n"
    )


def build(payload: dict[str, Any]) -> bytes:
    base: dict[str, Any] = {
        "id": f"deliverability-{len(str(payload))}",
        "to": "Bob <bob@example.com>",
    }
    request = EmailRequest.model_validate({**base, **payload})
    attachments = resolve(request.attachments)
    parts = [part for part in attachments if isinstance(part, AttachmentPart)]
    return BUILDER.build(request, RENDERER.render(request), parts).message


INVOICE_TEXT = (
    "your invoice A-1001 is attached as a PDF file. Thank you for your order of two bags of "
    "coffee beans and one grinder, which left our warehouse this morning. The parcel should "
    "reach you within two to three working days; we will send you the tracking number as "
    "soon as the carrier has scanned it. If anything is missing or damaged, just reply to "
    "this email and our support team will sort it out. You can also find all your invoices "
    "in your account under Orders."
)


def cases() -> dict[str, bytes]:
    messages = {
        f"{name}.{locale or 'default'}": build({"template": name, "locale": locale, "data": DATA})
        for name, locale in sorted(RENDERER.variants, key=str)
    }
    messages["raw"] = build(
        {
            "subject": "Your invoice for November",
            "text": "Hello Bob,\n\nthank you for shopping with us. Your invoice for November is "
            "ready in your account.\n\nKind regards,\nThe Shop team\n",
            "html": "<!DOCTYPE html><html><head><title>Your invoice</title></head><body>"
            "<p>Hello Bob,</p><p>thank you for shopping with us. Your invoice for November is "
            "ready in your account.</p><p>Kind regards,<br>The Shop team</p></body></html>",
        }
    )
    messages["attachments"] = build(
        {
            "subject": "Your invoice A-1001",
            "text": f"Hello Bob,\n\n{INVOICE_TEXT}\n\nKind regards,\nThe Shop team\n",
            "html": "<!DOCTYPE html><html><head><title>Your invoice</title></head><body>"
            '<p><img src="cid:logo" alt="Shop" width="16" height="16"></p>'
            f"<p>Hello Bob,</p><p>{INVOICE_TEXT}</p>"
            "<p>Kind regards,<br>The Shop team</p></body></html>",
            "attachments": [
                {"filename": "invoice-A-1001.pdf", "content": base64.b64encode(pdf()).decode()},
                {
                    "filename": "logo.png",
                    "content": base64.b64encode(png()).decode(),
                    "content_id": "logo",
                },
            ],
            # List-Unsubscribe without List-Id is SpamAssassin's __LIST_PARTIAL (README).
            "headers": {
                "X-Campaign": "invoices",
                "List-Id": "Shop invoices <invoices.shop.example.com>",
            },
            "list_unsubscribe": {
                "url": "https://shop.example.com/unsubscribe/123",
                "mailto": "unsubscribe@shop.example.com",
            },
        }
    )
    return messages


CASES = cases()
# A deliberately badly built message: proves the filters and the rule names are really in use.
BAD = (
    b"From: no-reply@shop.example.com\r\nTo: bob@example.com\r\nSubject: Hello\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
    b"<p>Hello Bob</p>\r\n"
)


@pytest.mark.parametrize("name", sorted(CASES))
def test_spamassassin_scores_below_one_with_no_structural_rule(name: str) -> None:
    reason = missing("spamassassin")
    if reason:
        pytest.skip(reason)
    verdict = spamassassin(CASES[name])
    assert verdict.matching(*SA_STRUCTURAL) == [], verdict.rules
    assert verdict.score < 1.0, verdict.rules


def test_spamassassin_sees_a_badly_built_message() -> None:
    reason = missing("spamassassin")
    if reason:
        pytest.skip(reason)
    verdict = spamassassin(BAD)
    assert {"MISSING_MID", "MISSING_DATE", "MIME_HTML_ONLY"} <= set(verdict.rules)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rspamd]:
    reason = missing("rspamd", "rspamc")
    if reason:
        pytest.skip(reason)
    with rspamd(tmp_path_factory.mktemp("rspamd")) as running:
        yield running


@pytest.mark.parametrize("name", sorted(CASES))
def test_rspamd_finds_no_structural_symbol(daemon: Rspamd, name: str) -> None:
    verdict = daemon.check(CASES[name])
    assert verdict.matching(*RSPAMD_STRUCTURAL) == [], verdict.rules
    assert verdict.message_score < 1.0, verdict.rules


def test_rspamd_sees_a_badly_built_message(daemon: Rspamd) -> None:
    verdict = daemon.check(BAD)
    assert {"MISSING_MID", "MISSING_DATE", "MIME_HTML_ONLY"} <= set(verdict.rules), verdict.rules


def test_rspamd_counts_odd_links(daemon: Rspamd, tmp_path: Path) -> None:
    """The old password_reset shape (the URL twice in HTML, once in text) is URI_COUNT_ODD."""
    url = DATA["reset_url"]
    odd = build(
        {
            "subject": "Reset your password",
            "text": f"Hello Ada,\n\nopen this link to choose a new password:\n\n{url}\n",
            "html": f'<html><body><p>Hello Ada,</p><p><a href="{url}">Choose a new password</a>'
            f'</p><p>If the button does not work: <a href="{url}">{url}</a></p></body></html>',
        }
    )
    assert "URI_COUNT_ODD" in daemon.check(odd).rules
