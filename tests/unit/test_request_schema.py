"""The published request schema refuses what the model refuses, where a schema can say it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from messaging_service.core.contract import parse_request
from messaging_service.dev.samples import samples
from messaging_service.errors import InvalidPayloadError
from messaging_service.ops.schemas import REQUEST_SCHEMA_FILE
from support.tools import REPO

BASE: dict[str, Any] = {"id": "req-1", "to": "bob@example.com", "template": "welcome"}
ATTACHMENT: dict[str, Any] = {"filename": "a.pdf", "content": "JVBERg=="}


@pytest.fixture(scope="module")
def schema() -> Draft202012Validator:
    document = json.loads((REPO / REQUEST_SCHEMA_FILE).read_text())
    Draft202012Validator.check_schema(document)
    return Draft202012Validator(document)


def model_accepts(payload: dict[str, Any]) -> bool:
    try:
        parse_request(json.dumps(payload).encode())
    except InvalidPayloadError:
        return False
    return True


def with_(**fields: Any) -> dict[str, Any]:
    return {**BASE, **fields}


def test_a_request_with_an_empty_to_list_is_refused_by_the_model_and_the_schema(
    schema: Draft202012Validator,
) -> None:
    payload = with_(to=[])
    assert not model_accepts(payload)
    assert [list(error.path) for error in schema.iter_errors(payload)] == [["to"]]


ACCEPTED = {
    "one address": with_(),
    "a list of one": with_(to=["Bob <bob@example.com>"]),
    "empty cc and bcc": with_(cc=[], bcc=[]),
    "cc as one address": with_(cc="carol@example.com"),
    "inner spaces in the id": with_(id=" order 123 "),
    "a locale": with_(locale="de-AT"),
    "ten tags": with_(tags=[f"t{n}" for n in range(10)]),
    "fifty headers": with_(headers={f"X-H{n}": "v" for n in range(50)}),
    "an inline attachment": with_(
        attachments=[{**ATTACHMENT, "content_type": "image/png", "content_id": "logo@x"}]
    ),
    "one-click unsubscribe": with_(list_unsubscribe={"url": "https://example.com/u?a=1"}),
}

REFUSED = {
    "an empty to list": with_(to=[]),
    "to missing": {"id": "req-1", "template": "welcome"},
    "to not a string": with_(to=[42]),
    "an id of spaces": with_(id="   "),
    "an id with a line break": with_(id="a\nb"),
    "an id with a non-ASCII character": with_(id="caf\u00e9"),
    "a locale that is no language tag": with_(locale="german"),
    "eleven tags": with_(tags=[f"t{n}" for n in range(11)]),
    "an empty tag": with_(tags=[""]),
    "a tag too long": with_(tags=["x" * 65]),
    "fifty-one headers": with_(headers={f"X-H{n}": "v" for n in range(51)}),
    "a content type that is no MIME type": with_(
        attachments=[{**ATTACHMENT, "content_type": "pdf"}]
    ),
    "a content id with a space": with_(attachments=[{**ATTACHMENT, "content_id": "my logo"}]),
    "an http unsubscribe URL": with_(list_unsubscribe={"url": "http://example.com/u"}),
    "an unsubscribe URL with a comma": with_(list_unsubscribe={"url": "https://a.example/u,v"}),
    "twenty-one attachments": with_(attachments=[ATTACHMENT] * 21),
    "an unknown field": with_(colour="blue"),
}


@pytest.mark.parametrize("payload", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_the_model_and_the_schema_accept(
    payload: dict[str, Any], schema: Draft202012Validator
) -> None:
    assert model_accepts(payload)
    assert schema.is_valid(payload)


@pytest.mark.parametrize("payload", REFUSED.values(), ids=REFUSED.keys())
def test_the_model_and_the_schema_refuse(
    payload: dict[str, Any], schema: Draft202012Validator
) -> None:
    assert not model_accepts(payload)
    assert not schema.is_valid(payload)


def test_every_dev_mode_sample_is_valid_for_the_schema(schema: Draft202012Validator) -> None:
    for sample in samples():
        assert schema.is_valid(sample.request), sample.label
