"""The request contract: what a producer may put in a record, parsed and checked once."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import to_json

from messaging_service.core.addresses import Address, parse_address
from messaging_service.core.request_extras import (
    MAX_ATTACHMENTS,
    Attachment,
    Headers,
    ListUnsubscribe,
    Locale,
    Metadata,
    Tags,
)
from messaging_service.core.wire_schema import ADDRESS_SCHEMA, OneOrList, Published
from messaging_service.errors import InvalidPayloadError, RecipientNotAllowedError

MAX_RECIPIENTS = 50
MAX_ID_LENGTH = 200
MAX_SUBJECT_LENGTH = 998
_ID_PATTERN = re.compile(r"[\x20-\x7e]+")
# The same in JSON Schema, with at least one character that is not a space (id.strip()).
_ID_SCHEMA_PATTERN = r"^[\x20-\x7e]*[\x21-\x7e][\x20-\x7e]*$"
_TEMPLATE_NAME = r"^[a-z0-9][a-z0-9_\-]{0,99}$"


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """Bounds on untrusted input; each names the setting that sets it in its error."""

    max_record_bytes: int = 1_048_576
    max_recipients: int = MAX_RECIPIENTS
    max_data_depth: int = 10
    max_data_bytes: int = 65_536
    max_attachment_bytes: int = 10 * 1024 * 1024
    attachment_url_hosts: tuple[str, ...] = ()


def _limits(info: ValidationInfo) -> RequestLimits:
    context = info.context
    limits = context.get("limits") if isinstance(context, dict) else None
    return limits if isinstance(limits, RequestLimits) else RequestLimits()


def _address(value: Any) -> Address:
    if isinstance(value, Address):
        return value
    if not isinstance(value, str):
        raise ValueError("an address must be a string")
    return parse_address(value)


def _address_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


# On the wire an address is a string; these give the published JSON Schema (docs/asyncapi.yaml,
# generated from this model by scripts/generate-schemas) the wire shape, not Address's fields.
# OneOrList keeps the list's own schema, so a Field constraint (to's min_length) is published.
EmailAddress = Annotated[
    Address, BeforeValidator(_address), WithJsonSchema(ADDRESS_SCHEMA, mode="validation")
]
AddressList = Annotated[list[EmailAddress], BeforeValidator(_address_list), OneOrList()]


def _no_line_breaks(value: str | None, what: str) -> str | None:
    if value is not None and ("\r" in value or "\n" in value):
        raise ValueError(f"{what} must not contain line breaks")
    return value


class EmailRequest(BaseModel):
    """One email request as published to the requests topic (untrusted input)."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=False)

    id: Annotated[str, Published({"pattern": _ID_SCHEMA_PATTERN})] = Field(
        min_length=1, max_length=MAX_ID_LENGTH
    )
    template: str | None = Field(default=None, pattern=_TEMPLATE_NAME)
    to: AddressList = Field(min_length=1)
    cc: AddressList = Field(default_factory=list)
    bcc: AddressList = Field(default_factory=list)
    reply_to: EmailAddress | None = None
    subject: str | None = Field(default=None, max_length=MAX_SUBJECT_LENGTH)
    text: str | None = None
    html: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    attachments: list[Attachment] = Field(default_factory=list, max_length=MAX_ATTACHMENTS)
    headers: Headers = Field(default_factory=dict)
    list_unsubscribe: ListUnsubscribe | None = None
    locale: Locale | None = None
    tags: Tags = Field(default_factory=list)
    metadata: Metadata = Field(default_factory=dict)

    @field_validator("id")
    @classmethod
    def _id_is_printable_ascii(cls, value: str) -> str:
        if not _ID_PATTERN.fullmatch(value) or not value.strip():
            raise ValueError("id must be printable ASCII (no line breaks or control characters)")
        return value

    @model_validator(mode="before")
    @classmethod
    def _recipient_count(cls, value: Any, info: ValidationInfo) -> Any:
        # Counted before any address is parsed, so a flood of addresses costs nothing.
        if isinstance(value, dict):
            limit = _limits(info).max_recipients
            total = sum(_count(value.get(name)) for name in ("to", "cc", "bcc"))
            if total > limit:
                raise ValueError(
                    f"at most {limit} recipients in to, cc and bcc "
                    f"(EMAIL_MAX_RECIPIENTS); got {total}"
                )
        return value

    @field_validator("data")
    @classmethod
    def _data_bounded(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        limits = _limits(info)
        if _deeper_than(value, limits.max_data_depth):
            raise ValueError(
                f"nested deeper than {limits.max_data_depth} levels (EMAIL_MAX_DATA_DEPTH)"
            )
        size = len(to_json(value))
        if size > limits.max_data_bytes:
            raise ValueError(
                f"is {size} bytes as JSON, more than {limits.max_data_bytes} (EMAIL_MAX_DATA_BYTES)"
            )
        return value

    @field_validator("subject")
    @classmethod
    def _subject_single_line(cls, value: str | None) -> str | None:
        return _no_line_breaks(value, "subject")

    @model_validator(mode="after")
    def _content_and_recipients(self) -> EmailRequest:
        if self.template is None:
            if not self.subject:
                raise ValueError("subject is required when no template is given")
            if self.text is None and self.html is None:
                raise ValueError("text or html is required when no template is given")
        return self

    @property
    def envelope_recipients(self) -> list[str]:
        """Every recipient once, in order: to, cc, then bcc (Bcc appears nowhere else)."""
        seen: dict[str, None] = {}
        for address in (*self.to, *self.cc, *self.bcc):
            seen.setdefault(address.addr_spec.lower(), None)
        return list(seen)


def _count(value: Any) -> int:
    if isinstance(value, str):
        return 1
    return len(value) if isinstance(value, list) else 0


def _deeper_than(data: Any, limit: int) -> bool:
    """Whether containers nest more than ``limit`` levels (``data`` itself is level 1)."""
    level: list[Any] = [data]
    for _ in range(limit):
        level = [
            child
            for node in level
            for child in (node.values() if isinstance(node, dict) else node)
            if isinstance(child, dict | list)
        ]
        if not level:
            return False
    return True


def parse_request(value: bytes | None, limits: RequestLimits | None = None) -> EmailRequest:
    """Decode and validate a record value; raise InvalidPayloadError saying what is wrong."""
    limits = limits or RequestLimits()
    if value is None:
        raise InvalidPayloadError("record has no value")
    if len(value) > limits.max_record_bytes:
        raise InvalidPayloadError(
            f"record is {len(value)} bytes, more than {limits.max_record_bytes} "
            "(EMAIL_MAX_RECORD_BYTES)"
        )
    try:
        return EmailRequest.model_validate_json(value, context={"limits": limits})
    except ValidationError as exc:
        raise InvalidPayloadError(_summarise(exc)) from exc


def check_recipient_domains(request: EmailRequest, allowed: tuple[str, ...]) -> None:
    """Raise RecipientNotAllowedError naming every to/cc/bcc address outside ``allowed``.

    ``allowed`` holds lower-case ASCII domains; an empty tuple allows every domain. A domain
    admits itself and its subdomains: ``example.com`` admits ``eu.example.com``, never
    ``badexample.com``.
    """
    if not allowed:
        return
    refused = [
        address.addr_spec
        for address in (*request.to, *request.cc, *request.bcc)
        if not domain_allowed(address.domain, allowed)
    ]
    if refused:
        shown = ", ".join(refused[:3]) + (
            f" and {len(refused) - 3} more" if len(refused) > 3 else ""
        )
        raise RecipientNotAllowedError(f"recipient domain not in EMAIL_ALLOWED_DOMAINS: {shown}")


def domain_allowed(domain: str, allowed: tuple[str, ...]) -> bool:
    domain = domain.lower().rstrip(".")
    return any(domain == name or domain.endswith("." + name) for name in allowed)


def guess_request_id(value: bytes | None) -> str | None:
    """The ``id`` of a payload that failed validation, when one can be read, for logs."""
    if value is None:
        return None
    try:
        document = json.loads(value)
    except (ValueError, RecursionError):  # RecursionError: hostile nesting
        return None
    candidate = document.get("id") if isinstance(document, dict) else None
    if isinstance(candidate, str) and _ID_PATTERN.fullmatch(candidate[:MAX_ID_LENGTH]):
        return candidate[:MAX_ID_LENGTH]
    return None


def _summarise(exc: ValidationError, limit: int = 3) -> str:
    parts = []
    for error in exc.errors(include_url=False, include_input=False)[:limit]:
        where = ".".join(str(part) for part in error["loc"]) or "payload"
        parts.append(f"{where}: {error['msg']}")
    more = exc.error_count() - limit
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)
