"""MIME entities for messages with attachments: multipart/mixed, related, base64 parts.

Each function returns one entity: its Content-* header lines, a blank line, and its content,
CRLF throughout, with no CRLF after the content (the next delimiter owns it, RFC 2046).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from urllib.parse import quote

from messaging_service.core.attachments import AttachmentPart

CRLF = "\r\n"
# Characters RFC 2231 allows unencoded in an extended parameter value (attribute-char).
_ATTRIBUTE_SAFE = "!#$&+-.^_`|~"
_PARAM_CHUNK = 50
_QUOTED_MAX = 70


def multipart(subtype: str, boundary: str, parts: Iterable[bytes], *, extra: str = "") -> bytes:
    """``multipart/SUBTYPE`` holding ``parts`` (whole entities) in order."""
    head = f'Content-Type: multipart/{subtype};{extra}{CRLF} boundary="{boundary}"{CRLF}{CRLF}'
    delimiter = f"{CRLF}--{boundary}{CRLF}".encode("ascii")
    body = delimiter.join(parts)
    return b"".join(
        (
            head.encode("ascii"),
            f"--{boundary}{CRLF}".encode("ascii"),
            body,
            f"{CRLF}--{boundary}--{CRLF}".encode("ascii"),
        )
    )


def related(html: bytes, images: Sequence[AttachmentPart], boundary: str) -> bytes:
    """The HTML body and the images it refers to as ``cid:...`` (RFC 2387)."""
    parts = [html, *(attachment_entity(image) for image in images)]
    return multipart("related", boundary, parts, extra=' type="text/html";')


def attachment_entity(part: AttachmentPart) -> bytes:
    """One attachment, base64 in 76-character lines; inline ones carry their Content-ID."""
    disposition = "inline" if part.inline else "attachment"
    lines = [
        "Content-Type: " + part.content_type + parameter("name", part.filename),
        "Content-Disposition: " + disposition + parameter("filename", part.filename),
        "Content-Transfer-Encoding: base64",
    ]
    if part.content_id is not None:
        lines.append(f"Content-ID: <{part.content_id}>")
    head = (CRLF.join(lines) + CRLF + CRLF).encode("ascii")
    # encodebytes writes 76-character lines ending in "\n"; the last line end is dropped, as
    # the delimiter that follows brings its own CRLF.
    encoded = base64.encodebytes(part.data).replace(b"\n", b"\r\n")
    return head + encoded[:-2]


def parameter(name: str, value: str) -> str:
    """``;`` and ``name="value"`` on a line of its own, or RFC 2231 encoded (and continued)."""
    if (
        value.isascii()
        and value.isprintable()
        and '"' not in value
        and "\\" not in value
        and len(name) + len(value) <= _QUOTED_MAX
    ):
        return f';{CRLF} {name}="{value}"'
    encoded = quote(value, safe=_ATTRIBUTE_SAFE, encoding="utf-8")
    chunks = _chunks(encoded)
    if len(chunks) == 1:
        return f";{CRLF} {name}*=utf-8''{encoded}"
    charset = ["utf-8''"] + [""] * (len(chunks) - 1)
    return "".join(
        f";{CRLF} {name}*{index}*={prefix}{chunk}"
        for index, (prefix, chunk) in enumerate(zip(charset, chunks, strict=True))
    )


def _chunks(encoded: str) -> list[str]:
    """Pieces of at most 50 characters, never cutting a ``%XX`` escape."""
    chunks = []
    start = 0
    while start < len(encoded):
        end = min(start + _PARAM_CHUNK, len(encoded))
        percent = encoded.rfind("%", max(end - 2, start), end)
        if percent != -1 and end < len(encoded):
            end = percent
        chunks.append(encoded[start:end])
        start = end
    return chunks
