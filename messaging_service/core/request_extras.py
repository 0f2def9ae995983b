"""The optional parts of a request: attachments, custom headers, unsubscribe, locale, tags.

Pydantic checks their shape (a violation is ``invalid_payload`` naming the field or header);
what an attachment holds (its base64, size, file type, URL host) is checked later, in
``attachments``, because a bad attachment is the ``attachment_error`` dead letter instead.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic_core import to_json

from messaging_service.core.addresses import parse_address
from messaging_service.core.wire_schema import Published, whole

MAX_HEADERS = 50
MAX_HEADER_BYTES = 8192
MAX_TAGS = 10
MAX_TAG_LENGTH = 64
MAX_METADATA_BYTES = 2048
MAX_ATTACHMENTS = 20
MAX_FILENAME_LENGTH = 255
MAX_URL_LENGTH = 2000

# RFC 5322 field names: printable ASCII without ":"; ours must start with "X-" or be listed.
_FIELD_NAME = re.compile(r"[!-9;-~]{1,76}")
ALLOWED_HEADERS = ("List-Id", "Precedence", "Auto-Submitted", "In-Reply-To", "References")
_ALLOWED_LOWER = frozenset(name.lower() for name in ALLOWED_HEADERS)
# Headers the service writes itself; "X-" headers among them are refused too.
_OWNED = frozenset({"x-email-id", "dkim-signature"})
# Printable text: no C0/C1 control characters (so no CR or LF), no DEL.
_PRINTABLE = re.compile(r"[^\x00-\x1f\x7f-\x9f]*")
_LOCALE = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8}){0,3}")
_CONTENT_TYPE = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+\-]{0,63}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+\-]{0,63}"
)
_CONTENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-@]{0,99}")
# An HTTPS URL as it may stand between "<" and ">" in List-Unsubscribe: printable ASCII,
# no space, no angle brackets, no comma (the header's list separator).
_HTTPS_URL = re.compile(r"https://[!-+\--;=?-~]+")


def _printable(value: str, what: str) -> str:
    if not _PRINTABLE.fullmatch(value):
        raise ValueError(f"{what} must be printable (no line breaks or control characters)")
    return value


def _filename(value: str) -> str:
    _printable(value, "filename")
    if not value.strip(" .") or "/" in value or "\\" in value:
        raise ValueError("filename must be a plain file name (no folders)")
    return value


def _content_type(value: str) -> str:
    if not _CONTENT_TYPE.fullmatch(value):
        raise ValueError("content_type must be a MIME type such as application/pdf")
    return value.lower()


def _content_id(value: str) -> str:
    if not _CONTENT_ID.fullmatch(value):
        raise ValueError("content_id must be 1..100 of letters, digits, '.', '_', '-', '@'")
    return value


class Attachment(BaseModel):
    """One attachment: inline base64 ``content`` or an HTTPS ``url``; inline with ``content_id``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    filename: Annotated[
        str, Field(min_length=1, max_length=MAX_FILENAME_LENGTH), AfterValidator(_filename)
    ]
    content_type: (
        Annotated[
            str, AfterValidator(_content_type), Published({"pattern": whole(_CONTENT_TYPE.pattern)})
        ]
        | None
    ) = None
    content: str | None = None
    url: Annotated[str, Field(max_length=MAX_URL_LENGTH)] | None = None
    content_id: (
        Annotated[
            str, AfterValidator(_content_id), Published({"pattern": whole(_CONTENT_ID.pattern)})
        ]
        | None
    ) = None

    @model_validator(mode="after")
    def _content_or_url(self) -> Attachment:
        if (self.content is None) == (self.url is None):
            raise ValueError("give exactly one of content (base64) or url")
        return self


def _https_url(value: str) -> str:
    if not _HTTPS_URL.fullmatch(value):
        raise ValueError("must be an https:// URL without spaces, commas or angle brackets")
    return value


def _mailto(value: str) -> str:
    return parse_address(value).addr_spec


class ListUnsubscribe(BaseModel):
    """RFC 2369 List-Unsubscribe targets; a URL also gives RFC 8058 one-click unsubscribe."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: (
        Annotated[
            str,
            Field(max_length=900),
            AfterValidator(_https_url),
            Published({"pattern": whole(_HTTPS_URL.pattern)}),
        ]
        | None
    ) = None
    mailto: Annotated[str, AfterValidator(_mailto)] | None = None

    @model_validator(mode="after")
    def _at_least_one(self) -> ListUnsubscribe:
        if self.url is None and self.mailto is None:
            raise ValueError("give url, mailto or both")
        return self


def check_headers(value: dict[str, str]) -> dict[str, str]:
    """Custom headers: ``X-...`` or a listed name, never one the service owns; bounded."""
    if len(value) > MAX_HEADERS:
        raise ValueError(f"at most {MAX_HEADERS} headers; got {len(value)}")
    seen: set[str] = set()
    size = 0
    for name, text in value.items():
        lower = name.lower()
        if not _FIELD_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a header name")
        custom = lower.startswith("x-") and len(lower) > 2
        if lower in _OWNED or not (custom or lower in _ALLOWED_LOWER):
            raise ValueError(
                f"header {name!r} is not allowed: use X-... or one of {', '.join(ALLOWED_HEADERS)}"
            )
        if lower in seen:
            raise ValueError(f"header {name!r} is given twice")
        seen.add(lower)
        if not text.strip():
            raise ValueError(f"header {name!r} is empty")
        _printable(text, f"header {name!r}")
        size += len(name) + len(text.encode("utf-8"))
    if size > MAX_HEADER_BYTES:
        raise ValueError(f"headers are {size} bytes in all, more than {MAX_HEADER_BYTES}")
    return value


def check_locale(value: str) -> str:
    if not _LOCALE.fullmatch(value):
        raise ValueError("must be a BCP 47 language tag such as de or de-AT")
    return value


def check_tags(value: list[str]) -> list[str]:
    if len(value) > MAX_TAGS:
        raise ValueError(f"at most {MAX_TAGS} tags; got {len(value)}")
    for tag in value:
        if not 1 <= len(tag) <= MAX_TAG_LENGTH:
            raise ValueError(f"each tag must be 1..{MAX_TAG_LENGTH} characters")
        _printable(tag, "a tag")
    return value


def check_metadata(value: dict[str, Any]) -> dict[str, Any]:
    size = len(to_json(value))
    if size > MAX_METADATA_BYTES:
        raise ValueError(f"is {size} bytes as JSON, more than {MAX_METADATA_BYTES}")
    return value


# The fields above as the request declares them; Published says in the JSON Schema what each
# check enforces that a schema can say (header names and sizes, metadata size stay unsaid).
Headers = Annotated[
    dict[str, str], AfterValidator(check_headers), Published({"maxProperties": MAX_HEADERS})
]
Locale = Annotated[
    str, AfterValidator(check_locale), Published({"pattern": whole(_LOCALE.pattern)})
]
Tags = Annotated[
    list[str],
    AfterValidator(check_tags),
    Published(
        {
            "maxItems": MAX_TAGS,
            "items": {"type": "string", "minLength": 1, "maxLength": MAX_TAG_LENGTH},
        }
    ),
]
Metadata = Annotated[dict[str, str], AfterValidator(check_metadata)]
