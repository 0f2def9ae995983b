"""Outcome events in tests: the published JSON Schema, and reading the events topic."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from support.kafka import read_all

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "docs" / "schemas" / "email-event.schema.json"
CE_HEADERS = ("ce_specversion", "ce_id", "ce_type", "ce_source", "ce_time", "content-type")
FINAL_TYPES = frozenset({"email.sent", "email.failed", "email.duplicate", "email.suppressed"})


def validator() -> Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def check_value(value: dict[str, Any]) -> None:
    """Raise AssertionError listing every way ``value`` breaks the schema."""
    errors = sorted(validator().iter_errors(value), key=lambda error: list(error.path))
    if errors:
        described = "; ".join(f"{list(e.path)}: {e.message}" for e in errors)
        raise AssertionError(f"event breaks the schema: {described}\n{value}")


@dataclass(frozen=True)
class PublishedEvent:
    key: bytes | None
    headers: dict[str, str]
    value: dict[str, Any]

    @property
    def type(self) -> str:
        return str(self.value["type"])

    @property
    def request_id(self) -> str | None:
        value = self.value["request_id"]
        return None if value is None else str(value)


async def read_events(
    bootstrap: str,
    topic: str,
    *,
    expected: int | None = None,
    timeout: float = 30.0,  # noqa: ASYNC109
) -> list[PublishedEvent]:
    """Every event on ``topic``, each checked against the schema and its CloudEvents headers."""
    events = []
    for record in await read_all(bootstrap, topic, expected=expected, timeout=timeout):
        headers = {name: value.decode() for name, value in record.headers}
        value = json.loads(record.value)
        check_value(value)
        assert tuple(sorted(headers)) == tuple(sorted(CE_HEADERS)), headers
        assert headers["ce_specversion"] == "1.0"
        assert headers["ce_id"] == value["event_id"]
        assert headers["ce_type"] == value["type"]
        assert headers["ce_time"] == value["time"]
        assert headers["content-type"] == "application/json"
        if value["request_id"] is not None:
            assert record.key == value["request_id"].encode()
        events.append(PublishedEvent(key=record.key, headers=headers, value=value))
    return events


def final_events(events: list[PublishedEvent]) -> dict[str, list[PublishedEvent]]:
    """Request id -> its final events (a correct service publishes exactly one each)."""
    found: dict[str, list[PublishedEvent]] = {}
    for event in events:
        if event.type in FINAL_TYPES:
            found.setdefault(str(event.request_id), []).append(event)
    return found
