"""docs/asyncapi.yaml: valid for the AsyncAPI project's own parser, and in step with the code."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from messaging_service.adapters.dead_letters import DEAD_LETTER_HEADERS
from messaging_service.config import KafkaSettings
from messaging_service.core.events import EventType
from messaging_service.ops.schemas import REQUEST_SCHEMA_FILE, render_request_schema, request_schema
from support.events import CE_HEADERS
from support.tools import REPO, asyncapi_parser, load_yaml

pytestmark = pytest.mark.deploy

DOCUMENT = REPO / "docs" / "asyncapi.yaml"
VALIDATOR = Path(__file__).resolve().parents[1] / "support" / "validate_asyncapi.cjs"


def parse(document: Path) -> tuple[int, list[dict[str, Any]]]:
    node, modules = asyncapi_parser()
    result = subprocess.run(
        [str(node), str(VALIDATOR), str(modules), str(document)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, result.stderr
    return result.returncode, lines


def without_parser_keys(value: Any) -> Any:
    """A schema as the parser returns it, minus the ids it adds (x-parser-*)."""
    if isinstance(value, dict):
        return {
            key: without_parser_keys(item)
            for key, item in value.items()
            if not key.startswith("x-parser-")
        }
    if isinstance(value, list):
        return [without_parser_keys(item) for item in value]
    return value


@pytest.fixture(scope="module")
def parsed() -> dict[str, Any]:
    code, lines = parse(DOCUMENT)
    summary = lines[-1]
    errors = [line for line in lines if line.get("severity") == 0]
    assert code == 0, errors or summary
    assert summary["valid"] is True
    return summary


def test_the_asyncapi_parser_accepts_the_document_with_the_three_channels(
    parsed: dict[str, Any],
) -> None:
    assert parsed["version"] == "3.0.0"
    assert sorted(parsed["channels"]) == ["deadLetters", "events", "requests"]
    assert sorted(parsed["messages"]) == ["deadLetter", "emailEvent", "emailRequest"]


def with_local_refs_resolved(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with each ``{"$ref": "#/$defs/X"}`` replaced by X, as the parser resolves them."""
    definitions = schema.get("$defs", {})

    def resolve(value: Any) -> Any:
        if isinstance(value, dict):
            ref = value.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/") and len(value) == 1:
                return resolve(definitions[ref.removeprefix("#/$defs/")])
            return {key: resolve(item) for key, item in value.items()}
        if isinstance(value, list):
            return [resolve(item) for item in value]
        return value

    resolved: dict[str, Any] = resolve(schema)
    return resolved


def test_the_request_payload_in_the_document_is_the_models_schema(parsed: dict[str, Any]) -> None:
    resolved = without_parser_keys(parsed["payloads"]["emailRequest"]["schema"])
    assert resolved == with_local_refs_resolved(request_schema())


def test_the_request_schema_file_is_generated_from_the_model() -> None:
    stored = (REPO / REQUEST_SCHEMA_FILE).read_text()
    assert stored == render_request_schema(), "run scripts/generate-schemas"


def test_the_event_payload_is_the_published_event_schema(parsed: dict[str, Any]) -> None:
    resolved = without_parser_keys(parsed["payloads"]["emailEvent"]["schema"])
    stored = json.loads((REPO / "docs" / "schemas" / "email-event.schema.json").read_text())
    # The parser inlines the schema's internal $refs, so compare what they cannot change.
    assert resolved["required"] == stored["required"]
    assert set(resolved["properties"]) == set(stored["properties"])
    assert resolved["properties"]["type"] == stored["properties"]["type"]
    assert set(stored["properties"]["type"]["enum"]) == {t.value for t in EventType}


def test_headers_and_default_addresses_match_the_code() -> None:
    document = load_yaml(DOCUMENT)
    schemas = document["components"]["schemas"]
    assert set(schemas["deadLetterHeaders"]["properties"]) == set(DEAD_LETTER_HEADERS)
    assert set(schemas["cloudEventHeaders"]["required"]) == set(CE_HEADERS)
    defaults = KafkaSettings.model_fields
    channels = document["channels"]
    assert channels["requests"]["address"] == defaults["topic"].default
    assert channels["deadLetters"]["address"] == defaults["dlq_topic"].default
    assert channels["events"]["address"] == defaults["events_topic"].default


def test_the_parser_rejects_a_broken_document(tmp_path: Path) -> None:
    """The check can fail: a payload schema with an unknown type is an error."""
    broken = tmp_path / "asyncapi.yaml"
    broken.write_text(DOCUMENT.read_text().replace("type: object", "type: objekt", 1))
    code, lines = parse(broken)
    assert code == 1
    assert lines[-1]["valid"] is False
