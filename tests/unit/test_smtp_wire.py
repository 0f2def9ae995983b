"""The bytes of one SMTP transaction: DATA preparation and envelope addresses."""

from __future__ import annotations

import pytest

from messaging_service.adapters.smtp_wire import data_bytes, envelope_address


def test_crlf_message_is_sent_as_it_is_with_the_end_marker() -> None:
    message = b"Subject: hi\r\n\r\nHello.\r\n"

    assert data_bytes(message) == (message + b".\r\n", len(message))


@pytest.mark.parametrize(
    ("message", "wire"),
    [
        (b"a\nb\n", b"a\r\nb\r\n"),
        (b"a\rb\r", b"a\r\nb\r\n"),
        (b"a\r\r\nb", b"a\r\n\r\nb\r\n"),
        (b"a\n\rb\r\n", b"a\r\n\r\nb\r\n"),
        (b"no line end", b"no line end\r\n"),
        (b"", b"\r\n"),
    ],
)
def test_lone_cr_and_lf_become_crlf_and_the_message_ends_with_one(
    message: bytes, wire: bytes
) -> None:
    assert data_bytes(message) == (wire + b".\r\n", len(wire))


@pytest.mark.parametrize(
    ("message", "wire"),
    [
        (b".starts with a dot\r\n", b"..starts with a dot\r\n"),
        (b"a\r\n.\r\nb\r\n", b"a\r\n..\r\nb\r\n"),
        (b"a\r\n..two\r\n.\r\n", b"a\r\n...two\r\n..\r\n"),
        (b"a\n.lf only\n", b"a\r\n..lf only\r\n"),
        (b"not.at.the start\r\n", b"not.at.the start\r\n"),
    ],
)
def test_lines_starting_with_a_dot_get_one_more(message: bytes, wire: bytes) -> None:
    data, size = data_bytes(message)

    assert data == wire + b".\r\n"
    # SIZE counts the message as sent before dot-stuffing (RFC 1870).
    assert size == len(wire) - (wire.count(b"\n..") + wire.startswith(b".."))


def test_envelope_address_is_ascii_bytes() -> None:
    assert envelope_address("alice+tag@example.com") == b"alice+tag@example.com"


@pytest.mark.parametrize(
    "address",
    [
        "j\u00fcrgen@example.com",
        "alice @example.com",
        "alice@example.com>",
        "<alice@example.com",
        "alice@example.com\r\nRCPT TO:<eve@example.com",
        "alice\x00@example.com",
        "",
    ],
)
def test_address_that_cannot_go_on_the_envelope_is_a_value_error(address: str) -> None:
    with pytest.raises(ValueError, match=r"envelope|ASCII"):
        envelope_address(address)
