"""Wire bytes of a message, checked by parsing them back with the standard library."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email import policy
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import formatdate
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from messaging_service.core.addresses import Address
from messaging_service.core.contract import MAX_SUBJECT_LENGTH, EmailRequest
from messaging_service.core.mime import MessageBuilder, message_id
from messaging_service.core.templates import TemplateRenderer
from messaging_service.core.values import OutgoingEmail, RenderedEmail

NOW = 1_700_000_000.0
BUILDER = MessageBuilder("Shop <no-reply@shop.example>", clock=lambda: NOW)


def request(**fields: Any) -> EmailRequest:
    payload: dict[str, Any] = {
        "id": "req-1",
        "to": "Bob <bob@example.com>",
        "subject": "Hello",
        "text": "Hi Bob\n",
    }
    payload.update(fields)
    return EmailRequest.model_validate(payload)


def build(req: EmailRequest, builder: MessageBuilder = BUILDER) -> OutgoingEmail:
    rendered = RenderedEmail(subject=req.subject or "", text=req.text, html=req.html)
    return builder.build(req, rendered)


def parse(email: OutgoingEmail) -> EmailMessage:
    return BytesParser(policy=policy.default).parsebytes(email.message)


def head(email: OutgoingEmail) -> bytes:
    return email.message.split(b"\r\n\r\n", 1)[0] + b"\r\n"


def header_lines(email: OutgoingEmail, name: str) -> list[bytes]:
    """The physical lines of one header, folding included."""
    match = re.search(rb"(?m)^" + name.encode() + rb":.*\r\n(?:[ \t].*\r\n)*", head(email))
    assert match is not None, name
    return match.group().split(b"\r\n")[:-1]


def content(message: EmailMessage) -> str:
    return cast(str, message.get_content()).replace("\r\n", "\n")


def assert_wire_format(email: OutgoingEmail, *, limit: int = 998) -> None:
    assert email.message.endswith(b"\r\n")
    lines = email.message.split(b"\r\n")
    assert not any(b"\r" in line or b"\n" in line for line in lines), "bare CR or LF"
    assert max(len(line) for line in lines) <= limit
    assert email.message.isascii()


def test_text_only_message() -> None:
    email = build(request(cc="Carol <carol@example.com>", reply_to="help@shop.example"))
    message = parse(email)
    assert message["From"] == "Shop <no-reply@shop.example>"
    assert message["To"] == "Bob <bob@example.com>"
    assert message["Cc"] == "Carol <carol@example.com>"
    assert message["Reply-To"] == "help@shop.example"
    assert message["Subject"] == "Hello"
    assert f"\r\nDate: {formatdate(NOW, usegmt=True)}\r\n".encode() in email.message
    assert message["Date"].datetime == datetime.fromtimestamp(NOW, UTC)
    assert message["Message-ID"] == message_id("req-1", "shop.example")
    assert message["X-Email-Id"] == "req-1"
    assert message["MIME-Version"] == "1.0"
    assert message.get_content_type() == "text/plain"
    assert message.get_content_charset() == "utf-8"
    assert message["Content-Transfer-Encoding"] == "7bit"  # ASCII in short lines
    assert content(message) == "Hi Bob\n"
    assert not message.defects
    assert_wire_format(email, limit=78)


def test_html_only_message() -> None:
    email = build(request(text=None, html="<p>Grüße &amp; <b>mehr</b></p>"))
    message = parse(email)
    assert message.get_content_type() == "text/html"
    assert content(message) == "<p>Grüße &amp; <b>mehr</b></p>"
    assert_wire_format(email)


def test_text_and_html_make_multipart_alternative_text_first() -> None:
    email = build(request(text="plain €\n", html="<p>rich €</p>"))
    message = parse(email)
    assert message.get_content_type() == "multipart/alternative"
    parts = list(message.iter_parts())
    assert [part.get_content_type() for part in parts] == ["text/plain", "text/html"]
    assert [content(cast(EmailMessage, part)) for part in parts] == ["plain €\n", "<p>rich €</p>"]
    assert all(part["Content-Transfer-Encoding"] == "quoted-printable" for part in parts)
    assert message.get_boundary() == "=_" + message_id("req-1", "x")[1:33]
    assert not message.defects
    assert_wire_format(email)


@pytest.mark.parametrize(
    ("text", "alone", "with_html"),
    [
        ("short ascii\n.leading dot\nlast\n", "7bit", "7bit"),
        ("x" * 78 + "\n", "7bit", "7bit"),
        ("x" * 79 + "\n", "quoted-printable", "quoted-printable"),  # lines of at most 78
        ("nul \0 inside\n", "quoted-printable", "quoted-printable"),
        ("looks like a boundary: --=_x\n", "quoted-printable", "quoted-printable"),
        ("caf\u00e9\n", "quoted-printable", "quoted-printable"),
        ("windows\r\nline ends\r\n", "7bit", "7bit"),
        # Alone, 7bit would have to add a line break to end the message with CRLF.
        ("no newline at the end", "quoted-printable", "7bit"),
    ],
)
def test_text_parts_are_7bit_where_allowed_and_round_trip(
    text: str, alone: str, with_html: str
) -> None:
    for html, encoding in ((None, alone), ("<p>and HTML</p>", with_html)):
        email = build(request(text=text, html=html))
        message = parse(email)
        part = message if html is None else cast(EmailMessage, next(message.iter_parts()))
        assert part["Content-Transfer-Encoding"] == encoding
        assert content(part) == text.replace("\r\n", "\n")
        assert not message.defects
        assert_wire_format(email, limit=78)


def test_optional_headers_are_left_out() -> None:
    email = build(request())
    assert b"\r\nCc:" not in email.message
    assert b"\r\nReply-To:" not in email.message


def test_bcc_is_on_the_envelope_only() -> None:
    email = build(request(to="bob@example.com", cc="carol@example.com", bcc="eve@example.com"))
    assert b"eve" not in email.message
    assert b"bcc" not in email.message.lower()
    assert email.recipients == ["bob@example.com", "carol@example.com", "eve@example.com"]
    assert email.sender == "no-reply@shop.example"
    assert email.email_id == "req-1"


def test_message_id_is_deterministic_per_request_id() -> None:
    first = parse(build(request(id="order-1", subject="One")))["Message-ID"]
    again = parse(build(request(id="order-1", subject="Two", text="other")))["Message-ID"]
    other = parse(build(request(id="order-2")))["Message-ID"]
    assert first == again == message_id("order-1", "shop.example")
    assert other != first
    assert re.fullmatch(r"<[0-9a-f]{32}@shop\.example>", first)


def test_message_id_is_safe_for_any_id() -> None:
    assert re.fullmatch(r"<[0-9a-f]{32}@d\.example>", message_id("a <b>@c\r\n", "d.example"))


def test_non_ascii_subject_and_display_names_round_trip() -> None:
    subject = "Ihre Bestellung ✓ ist bestätigt — 注文確認 🎉"
    builder = MessageBuilder("Shöp, Inc. <no-reply@shop.example>", clock=lambda: NOW)
    email = build(
        request(
            to=["Zoë Ünïcødé <zoe@example.com>", '"Smith, John" <john@example.com>'],
            subject=subject,
        ),
        builder,
    )
    message = parse(email)
    assert message["Subject"] == subject
    zoe, john = message["To"].addresses
    assert (zoe.display_name, zoe.addr_spec) == ("Zoë Ünïcødé", "zoe@example.com")
    assert (john.display_name, john.addr_spec) == ("Smith, John", "john@example.com")
    assert message["From"].addresses[0].display_name == "Shöp, Inc."
    assert b"=?utf-8?b?" in head(email)
    assert_wire_format(email, limit=78)


def test_long_non_ascii_display_name_is_split_into_encoded_words() -> None:
    name = "Ζωή Παπαδοπούλου-Ευαγγελοπούλου της Θεσσαλονίκης και των Αθηνών"
    lines = header_lines(build(request(to=f"{name} <zoe@example.com>")), "To")
    assert len(lines) > 1
    assert all(len(line) <= 78 for line in lines)
    phrase = b"".join(lines).decode().removeprefix("To:").removesuffix(" <zoe@example.com>")
    # RFC 2047 decoding (adjacent encoded words join without their whitespace).
    assert str(make_header(decode_header(phrase))) == name


@pytest.mark.parametrize(
    "subject",
    [
        "  leading and trailing  ",
        "looks =?utf-8?q?encoded?= but is not",
        "tab\there",
        "bell\x07 and form feed\x0c",
        "x" * 500,
        " ".join(["word"] * 150),
        "a" + " " * 300 + "b",
    ],
)
def test_awkward_ascii_subjects_round_trip_in_short_lines(subject: str) -> None:
    email = build(request(subject=subject))
    assert parse(email)["Subject"] == subject
    assert all(len(line) <= 78 for line in header_lines(email, "Subject"))
    assert_wire_format(email)


def test_fifty_recipients_fold_between_addresses() -> None:
    to = [f"Customer {n} <customer{n}@example.com>" for n in range(50)]
    email = build(request(to=to))
    lines = header_lines(email, "To")
    assert len(lines) > 10
    assert all(len(line) <= 78 for line in lines)
    assert all(line.startswith(b" ") for line in lines[1:])
    parsed = parse(email)["To"].addresses
    assert [a.addr_spec for a in parsed] == [f"customer{n}@example.com" for n in range(50)]
    assert [a.display_name for a in parsed] == [f"Customer {n}" for n in range(50)]
    assert_wire_format(email)


def test_bodies_use_crlf_and_short_quoted_printable_lines() -> None:
    text = "one\r\ntwo\rthree\nfour " + "é" * 200 + "\n.\nlast line ="
    email = build(request(text=text, html="<p>" + "x" * 500 + "</p>\n"))
    message = parse(email)
    text_part, html_part = (cast(EmailMessage, part) for part in message.iter_parts())
    assert content(text_part) == "one\ntwo\nthree\nfour " + "é" * 200 + "\n.\nlast line ="
    assert content(html_part) == "<p>" + "x" * 500 + "</p>\n"
    assert_wire_format(email, limit=78)
    body_lines = email.message.split(b"\r\n\r\n", 1)[1].split(b"\r\n")
    assert max(len(line) for line in body_lines) <= 76


@pytest.mark.parametrize("text", ["", "no newline", "one newline\n", "two\n\n"])
def test_single_part_body_round_trips_exactly(text: str) -> None:
    email = build(request(text=text))
    assert content(parse(email)) == text
    assert_wire_format(email)


def test_body_containing_boundary_like_text_round_trips() -> None:
    boundary = "=_" + message_id("req-1", "x")[1:33]
    text = f"--{boundary}\n--{boundary}--\n"
    email = build(request(text=text, html=text))
    parts = [content(cast(EmailMessage, p)) for p in parse(email).iter_parts()]
    assert parts == [text, text]


def test_rendered_template_builds_a_valid_message() -> None:
    data = {
        "name": "Zoë",
        "order_id": "A-1",
        "items": [{"name": "Widget", "quantity": 2, "price": 9.5}],
        "total": 19,
    }
    req = EmailRequest.model_validate(
        {"id": "o-1", "template": "order_confirmation", "to": "zoe@example.com", "data": data}
    )
    email = BUILDER.build(req, TemplateRenderer().render(req))
    message = parse(email)
    assert message["Subject"] == "Your order A-1 is confirmed"
    text = message.get_body(("plain",))
    assert text is not None
    assert "2 x Widget: 9.50" in content(cast(EmailMessage, text))
    assert_wire_format(email)


@pytest.mark.parametrize(
    "rendered",
    [
        RenderedEmail(subject="Hi\r\nBcc: eve@example.com", text="x", html=None),
        RenderedEmail(subject="Hi\nX-Evil: 1", text="x", html=None),
    ],
)
def test_line_break_in_subject_is_refused(rendered: RenderedEmail) -> None:
    with pytest.raises(ValueError, match="line break"):
        BUILDER.build(request(), rendered)


def test_line_break_in_a_display_name_is_refused() -> None:
    sneaky = Address(addr_spec="bob@example.com", display_name="Bob\r\nBcc: eve@example.com")
    with pytest.raises(ValueError, match="line break"):
        build(request(to=[sneaky]))


def test_unsafe_addr_spec_is_refused() -> None:
    sneaky = Address(addr_spec="bob@example.com>\r\nBcc: eve@example.com")
    with pytest.raises(ValueError, match="cannot be put in a header"):
        build(request(to=[sneaky]))


def test_message_without_a_body_is_refused() -> None:
    with pytest.raises(ValueError, match="body"):
        BUILDER.build(request(), RenderedEmail(subject="s", text=None, html=None))


def _single_line_text(max_size: int) -> st.SearchStrategy[str]:
    return st.text(max_size=max_size).map(lambda s: s.replace("\r", "").replace("\n", ""))


@given(
    subject=_single_line_text(MAX_SUBJECT_LENGTH).filter(bool),
    text=st.none() | st.text(),
    html=st.none() | st.text(),
)
def test_any_valid_content_round_trips(subject: str, text: str | None, html: str | None) -> None:
    if text is None and html is None:
        text = ""
    email = build(request(subject=subject, text=text, html=html))
    assert_wire_format(email)
    message = parse(email)
    assert message["Subject"] == subject
    assert not message.defects
    expected = [
        (kind, body.replace("\r\n", "\n").replace("\r", "\n"))
        for kind, body in (("text/plain", text), ("text/html", html))
        if body is not None
    ]
    parts = list(message.iter_parts()) if message.is_multipart() else [message]
    got = [(part.get_content_type(), content(cast(EmailMessage, part))) for part in parts]
    assert got == expected
