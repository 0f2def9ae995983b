"""Previewing a template, and checking a request, as the service would, without sending."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .config import EmailSettings
from .errors import TemplateError
from .models import (
    EmailRequest,
    RenderedEmail,
    RequestLimits,
    check_recipient_domains,
    parse_request,
)
from .templates import TemplateRenderer

# The recipient does not take part in rendering; the request only needs a valid one.
_PREVIEW_RECIPIENT = "preview@example.com"


def render_template(
    name: str, data: Mapping[str, Any], *, templates_dir: Path | None = None
) -> RenderedEmail:
    """Subject and bodies of template ``name``; raise TemplateError saying what went wrong."""
    renderer = TemplateRenderer(templates_dir)
    if name not in renderer.names:
        raise _unknown(name, renderer)
    request = EmailRequest(id="preview", template=name, to=[_PREVIEW_RECIPIENT], data=dict(data))
    return renderer.render(request)


def check_request(value: bytes, settings: EmailSettings) -> EmailRequest:
    """Everything the service checks before sending, rendering included, with its settings.

    Raises InvalidPayloadError, RecipientNotAllowedError or TemplateError (an unknown
    template, a missing variable, or templates in EMAIL_TEMPLATES_DIR that do not compile):
    the reasons the service would dead-letter the request for.
    """
    limits = RequestLimits(
        max_record_bytes=settings.max_record_bytes,
        max_recipients=settings.max_recipients,
        max_data_depth=settings.max_data_depth,
        max_data_bytes=settings.max_data_bytes,
    )
    request = parse_request(value, limits)
    check_recipient_domains(request, settings.allowed_domains)
    renderer = TemplateRenderer(settings.templates_dir, render_timeout=settings.render_timeout)
    if request.template is not None and request.template not in renderer.names:
        raise _unknown(request.template, renderer)
    renderer.render(request)
    return request


def _unknown(name: str, renderer: TemplateRenderer) -> TemplateError:
    known = ", ".join(sorted(renderer.names))
    return TemplateError(f"unknown template {name!r} (known: {known})")


def format_rendered(rendered: RenderedEmail) -> str:
    """The rendered parts as one readable text, each part under its own heading."""
    parts = [f"Subject: {rendered.subject}"]
    if rendered.text is not None:
        parts.append(f"----- text -----\n{rendered.text.rstrip()}")
    if rendered.html is not None:
        parts.append(f"----- html -----\n{rendered.html.rstrip()}")
    return "\n\n".join(parts) + "\n"


def write_rendered(rendered: RenderedEmail, out_dir: Path, name: str) -> list[Path]:
    """Write ``OUT/NAME/subject.txt``, ``body.txt`` and ``body.html`` (those that exist).

    A folder per template, so previews never mix with template sources of the same name.
    """
    folder = out_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    files = {"subject.txt": rendered.subject + "\n", "body.txt": rendered.text}
    files["body.html"] = rendered.html
    written = []
    for file_name, content in files.items():
        path = folder / file_name
        if content is None:
            path.unlink(missing_ok=True)  # a stale part from an earlier preview would mislead
            continue
        path.write_text(content, encoding="utf-8")
        written.append(path)
    return written
