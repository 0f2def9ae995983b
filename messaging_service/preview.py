"""Previewing an email: render it with given data, as the service would, without sending."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .attachments import AttachmentPart, AttachmentSource, resolve
from .errors import TemplateError
from .models import EmailRequest, RenderedEmail
from .templates import TemplateRenderer

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
        known = ", ".join(sorted(renderer.names))
        raise TemplateError(f"unknown template {name!r} (known: {known})")
    request = EmailRequest(
        id="preview", template=name, to=[_PREVIEW_RECIPIENT], data=dict(data), locale=locale
    )
    return renderer.render(request)


def preview_request(request: EmailRequest, *, templates_dir: Path | None = None) -> Preview:
    """A whole request as the service would prepare it; raises TemplateError, AttachmentError.

    URL attachments are checked but not fetched (their host is assumed allowed here).
    """
    renderer = TemplateRenderer(templates_dir)
    hosts = tuple(
        (urlsplit(item.url).hostname or "").lower() for item in request.attachments if item.url
    )
    attachments = resolve(request.attachments, url_hosts=hosts)
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
