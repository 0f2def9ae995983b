"""The published contract's generated part: the request's JSON Schema, from the pydantic model.

``python -m messaging_service.ops.schemas`` (scripts/generate-schemas) writes
docs/schemas/email-request.schema.json, which docs/asyncapi.yaml references; a test fails when
the file and the model disagree. The service itself never imports this module.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from messaging_service.core.contract import EmailRequest

REQUEST_SCHEMA_FILE = Path("docs/schemas/email-request.schema.json")


def request_schema() -> dict[str, Any]:
    """The JSON Schema of a request record's value (draft 2020-12, pydantic's validation mode)."""
    schema = EmailRequest.model_json_schema(mode="validation")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def render_request_schema() -> str:
    return json.dumps(request_schema(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    """Write the schema (to the given path, default the docs file); with --check, compare only."""
    check = "--check" in argv
    paths = [arg for arg in argv if arg != "--check"]
    path = Path(paths[0]) if paths else REQUEST_SCHEMA_FILE
    text = render_request_schema()
    if check:
        if not path.exists() or path.read_text() != text:
            print(f"{path} differs from the EmailRequest model: run scripts/generate-schemas")
            return 1
        return 0
    path.write_text(text)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
