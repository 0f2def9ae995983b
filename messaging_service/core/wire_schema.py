"""How the request model reads in its published JSON Schema: the wire shape of its fields.

Only the schema pydantic generates (``messaging_service.ops.schemas``) sees these markers;
validation never does. Each marker starts from the schema pydantic derives from the field (its
``Field`` constraints included) and adds to it, so a constraint declared once is both enforced
and published.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from pydantic import GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

ADDRESS_SCHEMA: dict[str, Any] = {
    "type": "string",
    "description": 'A mailbox: "bob@example.com" or "Bob <bob@example.com>".',
}


@dataclass(frozen=True, slots=True)
class OneOrList:
    """A list field that also takes one address: the single string, or the list's own schema."""

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        listed = handler.resolve_ref_schema(handler(schema))
        return {
            "anyOf": [copy.deepcopy(ADDRESS_SCHEMA), listed],
            "description": "One address, or a list of them.",
        }


@dataclass(frozen=True, slots=True, eq=False)  # eq=False: hashable by identity, as typing needs
class Published:
    """What a validator function enforces, said in JSON Schema keywords (added to the field's)."""

    keywords: dict[str, Any] = field(default_factory=dict)

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        generated = handler.resolve_ref_schema(handler(schema))
        return {**generated, **copy.deepcopy(self.keywords)}


def whole(pattern: str) -> str:
    """A Python ``fullmatch`` pattern as a JSON Schema ``pattern`` (which searches)."""
    return f"^(?:{pattern})$"
