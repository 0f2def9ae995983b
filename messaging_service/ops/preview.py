"""Previewing an email, and checking a request, as the service would, without sending."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from messaging_service.config import EmailSettings
from messaging_service.core.attachments import AttachmentPart, AttachmentSource, resolve
from messaging_service.core.contract import (
    EmailRequest,
    RequestLimits,
    check_recipient_domains,
    parse_request,
)
from messaging_service.core.templates import TemplateRenderer
from messaging_service.core.values import RenderedEmail
from messaging_service.errors import AttachmentError, TemplateError

# The recipient does not take part in rendering; the request only needs a valid one.
_PREVIEW_RECIPIENT = "preview@example.com"


@dataclass(frozen=True, slots=True)
class Preview:
    """What the service would send, before the wire format: parts, attachments, headers."""

    rendered: RenderedEmail
    attachments: Sequence[AttachmentSource] = ()
    headers: Sequence[tuple[str, str]] = field(default_factory=tuple)


def render_template(
    name: str,
    data: Mapping[str, Any],
    *,
    templates_dir: Path | None = None,
    locale: str | None = None,
) -> RenderedEmail:
    """Subject and bodies of template ``name``; raise TemplateError saying what went wrong."""
    renderer = TemplateRenderer(templates_dir)
    if name not in renderer.names:
        raise _unknown(name, renderer)
    request = EmailRequest(
        id="preview", template=name, to=[_PREVIEW_RECIPIENT], data=dict(data), locale=locale
    )
    return renderer.render(request)


def check_request(value: bytes, settings: EmailSettings) -> EmailRequest:
    """Everything the service checks before sending, rendering included, with its settings.

    Raises InvalidPayloadError, RecipientNotAllowedError, TemplateError (an unknown template,
    a missing variable, or templates in EMAIL_TEMPLATES_DIR that do not compile) or
    AttachmentError: the reasons the service would dead-letter the request for. Attachment
    URLs are checked (HTTPS, an allowed host), not fetched.
    """
    limits = RequestLimits(
        max_record_bytes=settings.max_record_bytes,
        max_recipients=settings.max_recipients,
        max_data_depth=settings.max_data_depth,
        max_data_bytes=settings.max_data_bytes,
        max_attachment_bytes=settings.max_attachment_bytes,
        attachment_url_hosts=settings.attachment_url_hosts,
    )
    request = parse_request(value, limits)
    check_recipient_domains(request, settings.allowed_domains)
    attachments = resolve(
        request.attachments,
        max_bytes=limits.max_attachment_bytes,
        url_hosts=limits.attachment_url_hosts,
    )
    renderer = TemplateRenderer(settings.templates_dir, render_timeout=settings.render_timeout)
    if request.template is not None and request.template not in renderer.names:
        raise _unknown(request.template, renderer)
    rendered = renderer.render(request)
    if rendered.html is None and any(part.content_id for part in attachments):
        raise AttachmentError("an attachment with content_id (inline) needs an HTML body")
    return request


def _unknown(name: str, renderer: TemplateRenderer) -> TemplateError:
    known = ", ".join(sorted(renderer.names))
    return TemplateError(f"unknown template {name!r} (known: {known})")


def preview_request(request: EmailRequest, *, templates_dir: Path | None = None) -> Preview:
    """A whole request as the service would prepare it; raises TemplateError, AttachmentError.

    URL attachments are checked but not fetched (their host is assumed allowed here).
    """
    renderer = TemplateRenderer(templates_dir)
    hosts = tuple(
        (urlsplit(item.url).hostname or "").lower() for item in request.attachments if item.url
    )
    attachments = resolve(request.attachments, url_hosts=hosts)
    if request.template is not None and request.template not in renderer.names:
        raise _unknown(request.template, renderer)
    headers = list(request.headers.items())
    if request.list_unsubscribe is not None:
        url, mailto = request.list_unsubscribe.url, request.list_unsubscribe.mailto
        targets = ([] if url is None else [f"<{url}>"]) + (
            [] if mailto is None else [f"<mailto:{mailto}>"]
        )
        headers.append(("List-Unsubscribe", ", ".join(targets)))
        if request.list_unsubscribe.url is not None:
            headers.append(("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))
    return Preview(renderer.render(request), attachments, headers)


def format_rendered(rendered: RenderedEmail | Preview) -> str:
    """The rendered parts as one readable text, each part under its own heading."""
    preview = rendered if isinstance(rendered, Preview) else Preview(rendered)
    email = preview.rendered
    parts = [f"Subject: {email.subject}"]
    if email.locale is not None:
        parts[0] += f"\nTemplate: {email.template} ({email.locale})"
    if preview.headers:
        lines = "\n".join(f"{name}: {value}" for name, value in preview.headers)
        parts.append(f"----- headers -----\n{lines}")
    if email.text is not None:
        parts.append(f"----- text -----\n{email.text.rstrip()}")
    if email.html is not None:
        parts.append(f"----- html -----\n{email.html.rstrip()}")
    if preview.attachments:
        lines = "\n".join(_describe(part) for part in preview.attachments)
        parts.append(f"----- attachments -----\n{lines}")
    return "\n\n".join(parts) + "\n"


def _describe(part: AttachmentSource) -> str:
    where = f", inline as cid:{part.content_id}" if part.content_id is not None else ""
    if isinstance(part, AttachmentPart):
        return f"{part.filename} ({part.content_type}, {len(part.data):,} bytes{where})"
    return f"{part.filename} ({part.content_type}{where}), fetched from {part.url} when sent"


def write_rendered(rendered: RenderedEmail | Preview, out_dir: Path, name: str) -> list[Path]:
    """Write ``OUT/NAME/subject.txt``, ``body.txt`` and ``body.html`` (those that exist), and
    each attachment with content as ``OUT/NAME/attachments/FILENAME``.

    A folder per template, so previews never mix with template sources of the same name.
    """
    preview = rendered if isinstance(rendered, Preview) else Preview(rendered)
    email = preview.rendered
    folder = out_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    files = {"subject.txt": email.subject + "\n", "body.txt": email.text}
    files["body.html"] = email.html
    written = []
    for file_name, content in files.items():
        path = folder / file_name
        if content is None:
            path.unlink(missing_ok=True)  # a stale part from an earlier preview would mislead
            continue
        path.write_text(content, encoding="utf-8")
        written.append(path)
    for part in preview.attachments:
        if isinstance(part, AttachmentPart):
            path = folder / "attachments" / part.filename  # a plain name: the contract says so
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(part.data)
            written.append(path)
    return written
