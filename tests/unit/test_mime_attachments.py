"""Messages with attachments, inline images, custom and unsubscribe headers, parsed back."""

from __future__ import annotations

import re
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

import pytest

from messaging_service.core.attachments import AttachmentPart
from messaging_service.core.contract import EmailRequest
from messaging_service.core.mime import MessageBuilder
from messaging_service.core.values import OutgoingEmail, RenderedEmail

BUILDER = MessageBuilder("Shop <no-reply@shop.example.com>", clock=lambda: 1_700_000_000.0)
PDF = AttachmentPart("invoice.pdf", "application/pdf", bytes(range(256)) * 40)
LOGO = AttachmentPart("logo.png", "image/png", b"\x89PNG\r\n\x1a\n" + b"\0" * 300, "logo")


def build(
    attachments: tuple[AttachmentPart, ...] = (),
    *,
    text: str | None = "Hi Bob\n",
    html: str | None = '<p>Hi <img src="cid:logo"></p>\n',
    **fields: Any,
) -> OutgoingEmail:
    payload: dict[str, Any] = {"id": "req-1", "to": "bob@example.com", "subject": "Hello"}
    payload.update(text=text, html=html, **fields)
    request = EmailRequest.model_validate(payload)
    return BUILDER.build(request, RenderedEmail("Hello", text, html), attachments)


def parse(email: OutgoingEmail) -> EmailMessage:
    message = BytesParser(policy=policy.default).parsebytes(email.message)
    for part in message.walk():
        assert not part.defects, (part.get_content_type(), part.defects)
    return message


def structure(part: EmailMessage) -> Any:
    if part.is_multipart():
        return (part.get_content_type(), [structure(p) for p in part.iter_parts()])  # type: ignore[arg-type]
    return part.get_content_type()


def test_attachment_and_inline_image_structure() -> None:
    message = parse(build((PDF, LOGO)))
    assert structure(message) == (
        "multipart/mixed",
        [
            (
                "multipart/alternative",
                ["text/plain", ("multipart/related", ["text/html", "image/png"])],
            ),
            "application/pdf",
        ],
    )
    parts = {p.get_filename(): p for p in message.walk() if p.get_filename()}
    assert parts["invoice.pdf"].get_content() == PDF.data
    assert parts["invoice.pdf"].get_content_disposition() == "attachment"
    assert parts["logo.png"].get_content() == LOGO.data
    assert parts["logo.png"]["Content-ID"] == "<logo>"
    assert parts["logo.png"].get_content_disposition() == "inline"


def test_base64_lines_are_76_characters() -> None:
    body = build((PDF,)).message.split(b'filename="invoice.pdf"', 1)[1]
    lines = body.split(b"\r\n\r\n", 1)[1].split(b"\r\n--", 1)[0].split(b"\r\n")
    assert {len(line) for line in lines[:-1]} == {76}
    assert 0 < len(lines[-1]) <= 76


def test_without_attachments_the_bytes_are_as_before() -> None:
    plain = build(())
    assert b"multipart/mixed" not in plain.message
    assert structure(parse(plain)) == ("multipart/alternative", ["text/plain", "text/html"])


@pytest.mark.parametrize(
    ("text", "html", "expected"),
    [
        ("Hi\n", None, ("multipart/mixed", ["text/plain", "application/pdf"])),
        (None, "<p>Hi</p>", ("multipart/mixed", ["text/html", "application/pdf"])),
    ],
)
def test_single_body_with_an_attachment(text: str | None, html: str | None, expected: Any) -> None:
    assert structure(parse(build((PDF,), text=text, html=html))) == expected


def test_html_only_with_inline_image_is_related() -> None:
    message = parse(build((LOGO,), text=None))
    assert structure(message) == ("multipart/related", ["text/html", "image/png"])


@pytest.mark.parametrize(
    "name",
    [
        "Rechnung März.pdf",
        "請求書.pdf",
        'quote"d.pdf',
        "a" * 200 + ".pdf",
        "ü" * 120 + ".pdf",
        "€%'*;.pdf",
    ],
)
def test_file_names_survive_rfc2231(name: str) -> None:
    email = build((AttachmentPart(name, "application/pdf", b"x"),))
    message = parse(email)
    [part] = [p for p in message.walk() if p.get_content_disposition() == "attachment"]
    assert part.get_filename() == name
    assert all(len(line) <= 998 for line in email.message.split(b"\r\n"))
    assert all(len(line) <= 78 for line in email.message.split(b"\r\n") if b"filename" in line)


def test_custom_and_unsubscribe_headers() -> None:
    email = build(
        headers={"X-Campaign": "spring-sale", "X-Long": "word " * 40, "X-Umlaut": "Grüße"},
        list_unsubscribe={
            "url": "https://shop.example.com/u/123",
            "mailto": "unsubscribe@shop.example.com",
        },
    )
    message = parse(email)
    assert message["X-Campaign"] == "spring-sale"
    assert message["X-Umlaut"] == "Grüße"
    assert str(message["X-Long"]).split() == ["word"] * 40
    assert str(message["List-Unsubscribe"]) == (
        "<https://shop.example.com/u/123>, <mailto:unsubscribe@shop.example.com>"
    )
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert all(len(line) <= 78 for line in email.message.split(b"\r\n\r\n")[0].split(b"\r\n"))


def test_mailto_only_has_no_one_click_header() -> None:
    message = parse(build(list_unsubscribe={"mailto": "u@shop.example.com"}))
    assert str(message["List-Unsubscribe"]) == "<mailto:u@shop.example.com>"
    assert message["List-Unsubscribe-Post"] is None


def test_labels_carry_tags_and_metadata() -> None:
    email = build(tags=["order"], metadata={"order_id": "A-1"})
    assert email.labels.tags == ("order",)
    assert email.labels.metadata == {"order_id": "A-1"}
    assert b"A-1" not in email.message
    assert re.search(rb"order", email.message) is None
