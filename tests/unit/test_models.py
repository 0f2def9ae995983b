"""The message contract: what a valid request is, and the reason given when it is not."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from messaging_service.core.contract import (
    MAX_RECIPIENTS,
    EmailRequest,
    guess_request_id,
    parse_request,
)
from messaging_service.errors import InvalidPayloadError


def _payload(**fields: Any) -> bytes:
    base: dict[str, Any] = {"id": "req-1", "to": "bob@example.com", "template": "welcome"}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not None}).encode()


def test_templated_request_with_single_recipient() -> None:
    request = parse_request(_payload(data={"name": "Bob"}))
    assert request.id == "req-1"
    assert [a.addr_spec for a in request.to] == ["bob@example.com"]
    assert request.data == {"name": "Bob"}


def test_raw_request_with_display_names_cc_bcc_reply_to() -> None:
    request = parse_request(
        _payload(
            template=None,
            to=["Bob Smith <bob@example.com>", '"Doe, Jane" <jane@example.com>'],
            cc=["carol@example.com"],
            bcc="audit@example.com",
            reply_to="Support <support@example.com>",
            subject="Hello",
            text="hi",
        )
    )
    assert [a.display_name for a in request.to] == ["Bob Smith", "Doe, Jane"]
    assert request.reply_to is not None
    assert request.reply_to.addr_spec == "support@example.com"
    assert request.envelope_recipients == [
        "bob@example.com",
        "jane@example.com",
        "carol@example.com",
        "audit@example.com",
    ]


def test_envelope_recipients_are_unique() -> None:
    request = parse_request(_payload(to=["a@example.com", "A@example.com"], cc=["a@example.com"]))
    assert request.envelope_recipients == ["a@example.com"]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "Invalid JSON"),
        (b"[1, 2]", "object"),
        (b'"text"', "object"),
        (_payload(id=None), "id"),
        (_payload(id=""), "id"),
        (_payload(id="x" * 201), "id"),
        (_payload(id="a\nb"), "id"),
        (_payload(to=None), "to"),
        (_payload(to=[]), "to"),
        (_payload(to="nobody"), "to.0"),
        (_payload(to="bob@example.com\r\nBcc: eve@example.com"), "carriage return"),
        (_payload(cc=["ok@example.com", "bad@@example.com"]), "cc.1"),
        (_payload(template=None, subject="s"), "text or html"),
        (_payload(template=None, text="body"), "subject"),
        (_payload(subject="Hi\r\nBcc: eve@example.com"), "line breaks"),
        (_payload(template="../../etc/passwd"), "template"),
        (_payload(tempalte="welcome"), "tempalte"),
        (_payload(data=[1, 2]), "data"),
        (_payload(to=[f"u{i}@example.com" for i in range(MAX_RECIPIENTS + 1)]), "at most"),
    ],
)
def test_invalid_payloads_say_why(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidPayloadError, match=reason):
        parse_request(raw)


def test_missing_value_is_invalid() -> None:
    with pytest.raises(InvalidPayloadError, match="no value"):
        parse_request(None)


def test_recipient_limit_counts_to_cc_and_bcc_together() -> None:
    half = MAX_RECIPIENTS // 2
    parse_request(
        _payload(
            to=[f"t{i}@example.com" for i in range(half)],
            cc=[f"c{i}@example.com" for i in range(MAX_RECIPIENTS - half)],
        )
    )
    with pytest.raises(InvalidPayloadError, match="at most"):
        parse_request(
            _payload(
                to=[f"t{i}@example.com" for i in range(half)],
                cc=[f"c{i}@example.com" for i in range(MAX_RECIPIENTS - half)],
                bcc=["one-more@example.com"],
            )
        )


def test_guess_request_id_reads_ids_of_invalid_payloads_only_when_safe() -> None:
    assert guess_request_id(b'{"id": "order-9", "to": 5}') == "order-9"
    assert guess_request_id(b'{"id": "bad\\nid"}') is None
    assert guess_request_id(b"[]") is None
    assert guess_request_id(b"\xff") is None
    assert guess_request_id(None) is None


def _parsed_or_reason(raw: bytes) -> EmailRequest | str:
    """Anything else (another exception type) propagates and fails the test."""
    try:
        return parse_request(raw)
    except InvalidPayloadError as exc:
        return str(exc)


@given(st.binary(max_size=300))
def test_any_bytes_either_parse_or_raise_invalid_payload(raw: bytes) -> None:
    result = _parsed_or_reason(raw)
    assert isinstance(result, EmailRequest) or result


@given(
    st.dictionaries(
        st.sampled_from(["id", "to", "cc", "template", "subject", "text", "data", "extra"]),
        st.one_of(st.text(max_size=30), st.lists(st.text(max_size=20), max_size=3), st.none()),
    )
)
def test_near_valid_objects_either_parse_or_raise_invalid_payload(fields: dict[str, Any]) -> None:
    result = _parsed_or_reason(json.dumps(fields).encode())
    assert isinstance(result, EmailRequest) or result
