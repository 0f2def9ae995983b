"""The contract additions: attachments, headers, unsubscribe, locale, tags, metadata."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from messaging_service.core.contract import parse_request
from messaging_service.errors import InvalidPayloadError


def _payload(**fields: Any) -> bytes:
    base: dict[str, Any] = {"id": "req-1", "to": "bob@example.com", "template": "welcome"}
    base.update(fields)
    return json.dumps(base).encode()


PDF = base64.b64encode(b"%PDF-1.4").decode()


def test_every_addition_is_accepted() -> None:
    request = parse_request(
        _payload(
            attachments=[
                {"filename": "invoice.pdf", "content_type": "application/pdf", "content": PDF},
                {"filename": "terms.pdf", "url": "https://files.example.com/terms.pdf"},
                {"filename": "logo.png", "content": PDF, "content_id": "logo"},
            ],
            headers={"X-Campaign": "spring-sale", "List-Id": "<news.shop.example.com>"},
            list_unsubscribe={
                "url": "https://shop.example.com/u/123",
                "mailto": "unsubscribe@shop.example.com",
            },
            locale="de-AT",
            tags=["order"],
            metadata={"order_id": "A-1"},
        )
    )
    assert [a.filename for a in request.attachments] == ["invoice.pdf", "terms.pdf", "logo.png"]
    assert request.headers["X-Campaign"] == "spring-sale"
    assert request.list_unsubscribe is not None
    assert request.locale == "de-AT"
    assert request.tags == ["order"]
    assert request.metadata == {"order_id": "A-1"}


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"headers": {"From": "x@example.com"}}, "'From'"),
        ({"headers": {"Subject": "x"}}, "'Subject'"),
        ({"headers": {"Content-Type": "text/plain"}}, "'Content-Type'"),
        ({"headers": {"X-Email-Id": "other"}}, "'X-Email-Id'"),
        ({"headers": {"DKIM-Signature": "v=1"}}, "'DKIM-Signature'"),
        ({"headers": {"List-Unsubscribe": "<https://x.example.com>"}}, "'List-Unsubscribe'"),
        ({"headers": {"Received": "x"}}, "'Received'"),
        ({"headers": {"X-Evil": "a\r\nBcc: victim@example.com"}}, "'X-Evil'"),
        ({"headers": {"X-Empty": " "}}, "'X-Empty'"),
        ({"headers": {"X Space": "v"}}, "'X Space'"),
        ({"headers": {"X-": "v"}}, "'X-'"),
        ({"headers": {"X-A": "1", "x-a": "2"}}, "'x-a'"),
        ({"headers": {f"X-H{i}": "v" for i in range(51)}}, "at most 50 headers"),
        ({"headers": {f"X-H{i}": "v" * 400 for i in range(21)}}, "more than 8192"),
        ({"tags": [str(i) for i in range(11)]}, "at most 10 tags"),
        ({"tags": ["x" * 65]}, "1..64"),
        ({"tags": ["a\nb"]}, "tags"),
        ({"metadata": {"a": 1}}, "metadata.a"),
        ({"metadata": {"a": {"b": "c"}}}, "metadata.a"),
        ({"metadata": {f"k{i}": "v" * 100 for i in range(20)}}, "more than 2048"),
        ({"locale": "german"}, "locale"),
        ({"locale": "de_AT"}, "locale"),
        ({"list_unsubscribe": {}}, "list_unsubscribe"),
        ({"list_unsubscribe": {"url": "http://shop.example.com/u"}}, "list_unsubscribe.url"),
        ({"list_unsubscribe": {"url": "https://a.example.com/u>,<x"}}, "list_unsubscribe.url"),
        ({"list_unsubscribe": {"mailto": "not an address"}}, "list_unsubscribe.mailto"),
        ({"attachments": [{"filename": "a.pdf"}]}, "attachments.0"),
        (
            {"attachments": [{"filename": "a.pdf", "content": PDF, "url": "https://x.com/a"}]},
            "attachments.0",
        ),
        ({"attachments": [{"filename": "../a.pdf", "content": PDF}]}, "attachments.0.filename"),
        ({"attachments": [{"filename": "a\r\n.pdf", "content": PDF}]}, "attachments.0.filename"),
        (
            {"attachments": [{"filename": "a", "content": PDF, "content_type": "pdf"}]},
            "attachments.0.content_type",
        ),
        (
            {"attachments": [{"filename": "a", "content": PDF, "content_id": "<x>"}]},
            "attachments.0.content_id",
        ),
        ({"attachments": [{"filename": "a", "content": PDF, "size": 1}]}, "attachments.0.size"),
    ],
)
def test_violations_are_invalid_payload_naming_the_field(
    fields: dict[str, Any], named: str
) -> None:
    with pytest.raises(InvalidPayloadError, match=named.replace("'", "'?").replace(".", r"\.")):
        parse_request(_payload(**fields))


def test_allowed_listed_headers() -> None:
    names = ["List-Id", "Precedence", "Auto-Submitted", "In-Reply-To", "References", "X-Any"]
    request = parse_request(_payload(headers=dict.fromkeys(names, "v")))
    assert list(request.headers) == names
