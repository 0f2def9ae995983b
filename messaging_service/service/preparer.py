"""Turning a record into wire bytes, once and without I/O: parse, check, render, build."""

from __future__ import annotations

from messaging_service.core.attachments import AttachmentPart, resolve
from messaging_service.core.contract import (
    EmailRequest,
    RequestLimits,
    check_recipient_domains,
    guess_request_id,
    parse_request,
)
from messaging_service.core.mime import MessageBuilder
from messaging_service.core.templates import TemplateRenderer
from messaging_service.core.values import EmailLabels, FailureReason, OutgoingEmail, RenderedEmail
from messaging_service.errors import (
    AttachmentError,
    InvalidPayloadError,
    RecipientNotAllowedError,
    TemplateError,
)
from messaging_service.service.delivery import Delivery, Unfetched


class Preparer:
    """The pure first half of a request's handling; the handler does the rest, with I/O."""

    def __init__(
        self,
        *,
        renderer: TemplateRenderer,
        builder: MessageBuilder,
        limits: RequestLimits | None = None,
        allowed_domains: tuple[str, ...] = (),
    ) -> None:
        self._renderer = renderer
        self._builder = builder
        self.limits = limits or RequestLimits()
        self._allowed_domains = allowed_domains

    def prepare(self, delivery: Delivery) -> None:
        """Parse, check and render the request into wire bytes, once; no I/O, never awaits.

        The pipeline calls this before a delivery waits for a worker, so a worker freed by
        the relay's reply can send at once instead of rendering first. A request that cannot
        be prepared keeps its reason, and its next step dead-letters it. Other exceptions
        (bugs) propagate; the delivery stays unprepared and ``process`` tries again.
        """
        if delivery.email is not None or delivery.refusal is not None:
            return
        if delivery.unfetched is not None:
            return
        try:
            prepared = self._prepare(delivery)
        except InvalidPayloadError as exc:
            delivery.refusal = (FailureReason.INVALID_PAYLOAD, exc)
        except RecipientNotAllowedError as exc:
            delivery.refusal = (FailureReason.RECIPIENT_NOT_ALLOWED, exc)
        except TemplateError as exc:
            delivery.refusal = (FailureReason.TEMPLATE_ERROR, exc)
        except AttachmentError as exc:
            delivery.refusal = (FailureReason.ATTACHMENT_ERROR, exc)
        else:
            if isinstance(prepared, Unfetched):
                delivery.unfetched = prepared
            else:
                delivery.email = prepared
                delivery.labels = prepared.labels

    def complete(self, unfetched: Unfetched, parts: list[AttachmentPart]) -> OutgoingEmail:
        """The email of a request whose attachment URLs have all been fetched."""
        return self._builder.build(unfetched.request, unfetched.rendered, parts)

    def _prepare(self, delivery: Delivery) -> OutgoingEmail | Unfetched:
        value = delivery.record.value
        try:
            request = parse_request(value, self.limits)
        except InvalidPayloadError:
            # An oversized record is not parsed again just to find its id.
            small = value is not None and len(value) <= self.limits.max_record_bytes
            delivery.email_id = guess_request_id(value) if small else None
            raise
        delivery.email_id = request.id
        delivery.labels = EmailLabels(
            template=request.template, tags=tuple(request.tags), metadata=request.metadata
        )
        delivery.request = request  # for the outcome events
        check_recipient_domains(request, self._allowed_domains)
        if not request.attachments:
            return self._builder.build(request, self._render(delivery, request))
        limits = self.limits
        attachments = resolve(
            request.attachments,
            max_bytes=limits.max_attachment_bytes,
            url_hosts=limits.attachment_url_hosts,
        )
        rendered = self._render(delivery, request)
        if rendered.html is None and any(part.content_id for part in attachments):
            raise AttachmentError("an attachment with content_id (inline) needs an HTML body")
        ready = [part for part in attachments if isinstance(part, AttachmentPart)]
        if len(ready) < len(attachments):
            return Unfetched(request, rendered, attachments)
        return self._builder.build(request, rendered, ready)

    def _render(self, delivery: Delivery, request: EmailRequest) -> RenderedEmail:
        with delivery.trace.render():
            return self._renderer.render(request)
