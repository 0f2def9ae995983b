"""What a request's attachments hold: decoded bytes, types, sizes, blocked files, URL hosts.

Pure: base64 content is decoded here, URL attachments are only checked (HTTPS, allowed host)
and left for the fetcher adapter. Every problem is an AttachmentError (``attachment_error``).
"""

from __future__ import annotations

import binascii
import mimetypes
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from messaging_service.core.request_extras import Attachment
from messaging_service.errors import AttachmentError

DEFAULT_MAX_ATTACHMENT_BYTES = 10 * 1024 * 1024

# File types that Gmail, Outlook and most filters refuse, or that mark a message as malware.
_BLOCKED = """ade adp apk app appx appxbundle bat cab chm cmd com cpl dll dmg ex_ exe gadget hta
    img inf ins iso isp jar jnlp js jse lib lnk mde msc msi msix msixbundle msp mst nsh pif ps1
    ps1xml ps2 psc1 reg scf scr sct sh shb shs sys vb vbe vbs vhd vhdx vxd ws wsc wsf wsh xll"""
BLOCKED_EXTENSIONS = frozenset(_BLOCKED.split())
BLOCKED_CONTENT_TYPES = frozenset(
    {
        "application/x-msdownload",
        "application/x-msdos-program",
        "application/x-dosexec",
        "application/x-executable",
        "application/x-sh",
        "application/x-bat",
        "application/javascript",
        "text/javascript",
        "application/x-javascript",
        "application/vbscript",
        "text/vbscript",
        "application/hta",
        "application/java-archive",
        "application/x-ms-installer",
        "application/x-msi",
    }
)
_FALLBACK_TYPE = "application/octet-stream"


@dataclass(frozen=True, slots=True)
class AttachmentPart:
    """An attachment ready for the message: its bytes are known."""

    filename: str
    content_type: str
    data: bytes
    content_id: str | None = None

    @property
    def inline(self) -> bool:
        return self.content_id is not None


@dataclass(frozen=True, slots=True)
class RemoteAttachment:
    """An attachment whose bytes must be fetched from ``url`` first (by an adapter)."""

    filename: str
    content_type: str
    url: str
    content_id: str | None = None

    def with_data(self, data: bytes) -> AttachmentPart:
        return AttachmentPart(self.filename, self.content_type, data, self.content_id)


AttachmentSource = AttachmentPart | RemoteAttachment


def resolve(
    attachments: Sequence[Attachment],
    *,
    max_bytes: int = DEFAULT_MAX_ATTACHMENT_BYTES,
    url_hosts: tuple[str, ...] = (),
) -> list[AttachmentSource]:
    """Decode and check every attachment; raise AttachmentError naming the first bad one."""
    resolved: list[AttachmentSource] = []
    total = 0
    content_ids: set[str] = set()
    for attachment in attachments:
        name = attachment.filename
        content_type = attachment.content_type or guess_type(name)
        check_file_type(name, content_type)
        if attachment.content_id is not None:
            if attachment.content_id in content_ids:
                raise AttachmentError(f"content_id {attachment.content_id!r} is used twice")
            content_ids.add(attachment.content_id)
        if attachment.url is not None:
            check_url(attachment.url, url_hosts)
            resolved.append(
                RemoteAttachment(name, content_type, attachment.url, attachment.content_id)
            )
            continue
        assert attachment.content is not None  # the model requires content or url
        total += _decoded_size(attachment.content)
        if total > max_bytes:
            raise AttachmentError(_too_big(name, max_bytes))
        data = _decode(name, attachment.content)
        resolved.append(AttachmentPart(name, content_type, data, attachment.content_id))
    return resolved


def guess_type(filename: str) -> str:
    guessed, encoding = mimetypes.guess_type(filename, strict=False)
    # A compressed file (".tar.gz") is sent as what it is, not as what it unpacks to.
    return _FALLBACK_TYPE if guessed is None or encoding is not None else guessed


def check_file_type(filename: str, content_type: str) -> None:
    extension = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    if extension in BLOCKED_EXTENSIONS:
        raise AttachmentError(f"attachment {filename!r}: .{extension} files are blocked")
    if content_type in BLOCKED_CONTENT_TYPES:
        raise AttachmentError(f"attachment {filename!r}: {content_type} files are blocked")


def check_url(url: str, hosts: tuple[str, ...]) -> None:
    """HTTPS, and a host in EMAIL_ATTACHMENT_URL_HOSTS (lower-case; empty refuses all)."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        parts.port  # noqa: B018 - raises ValueError for a port that is no number
    except ValueError as exc:
        raise AttachmentError(f"attachment URL {url!r} is not a valid URL") from exc
    if parts.scheme != "https":
        raise AttachmentError(f"attachment URL {url!r}: only https:// is fetched")
    if parts.username is not None or parts.password is not None:
        raise AttachmentError("attachment URL must not carry credentials")
    if host not in hosts:
        raise AttachmentError(
            f"attachment URL host {host!r} is not in EMAIL_ATTACHMENT_URL_HOSTS"
            if hosts
            else "attachment URLs are refused: EMAIL_ATTACHMENT_URL_HOSTS is empty"
        )


def total_size(parts: Sequence[AttachmentSource]) -> int:
    return sum(len(part.data) for part in parts if isinstance(part, AttachmentPart))


def too_big(filename: str, max_bytes: int) -> AttachmentError:
    return AttachmentError(_too_big(filename, max_bytes))


def _too_big(filename: str, max_bytes: int) -> str:
    return (
        f"attachment {filename!r}: attachments exceed {max_bytes} bytes together "
        "(EMAIL_MAX_ATTACHMENT_BYTES)"
    )


def _decoded_size(content: str) -> int:
    """Bytes ``content`` decodes to at most: counted before decoding, so a flood costs nothing."""
    return len(content) * 3 // 4


def _decode(filename: str, content: str) -> bytes:
    try:
        # Line breaks are common in base64 from other tools; anything else is refused.
        text = content.replace("\r", "").replace("\n", "") if "\n" in content else content
        return binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise AttachmentError(f"attachment {filename!r}: content is not valid base64") from exc
