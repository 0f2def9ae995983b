"""The values that flow through the service once a record is consumed: records, emails, outcomes."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


class Outcome(enum.StrEnum):
    """Where a request ended: all are final, and only final requests are committed."""

    SENT = "sent"
    DEAD_LETTERED = "dead_lettered"
    DUPLICATE = "duplicate"
    """Its id was already sent (a redelivery): finished without sending it again."""
    SUPPRESSED = "suppressed"
    """Every recipient is on the suppression list: finished without an SMTP attempt."""


class Claim(enum.Enum):
    """What the sent-id record answered a sender claiming a request id before an attempt."""

    CLAIMED = "claimed"
    """Nobody else holds it and it was not sent: this sender holds it until it records the
    id (after the relay's 250) or releases it (after a failed attempt), or the claim expires."""
    SENT = "sent"
    """It was sent already: finish as a duplicate."""
    HELD = "held"
    """Another sender holds a live claim on it: neither send nor skip; ask again later."""


class FailureReason(enum.StrEnum):
    """Why a request was dead-lettered; the value is the ``email-failure-reason`` header."""

    INVALID_PAYLOAD = "invalid_payload"
    TEMPLATE_ERROR = "template_error"
    SMTP_REJECTED = "smtp_rejected"
    RETRIES_EXHAUSTED = "retries_exhausted"
    RECIPIENT_NOT_ALLOWED = "recipient_not_allowed"
    ATTACHMENT_ERROR = "attachment_error"


@dataclass(frozen=True, slots=True)
class InboundRecord:
    """A consumed Kafka record, independent of the client library."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class RenderedEmail:
    """Subject and bodies after templating; at least one body is present.

    ``template`` and ``locale`` name the template files actually used (``welcome``, ``de``
    for a request asking for ``de-AT`` that fell back), None for raw bodies or no locale.
    """

    subject: str
    text: str | None
    html: str | None
    template: str | None = None
    locale: str | None = None


@dataclass(frozen=True, slots=True)
class EmailLabels:
    """What a request says about itself that is never sent: logged with it, for events."""

    template: str | None = None
    locale: str | None = None
    tags: tuple[str, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)

    def log_fields(self) -> dict[str, object]:
        """The fields worth logging: those that are set."""
        fields: dict[str, object] = {}
        if self.template is not None:
            fields["template"] = self.template
        if self.locale is not None:
            fields["locale"] = self.locale
        if self.tags:
            fields["tags"] = list(self.tags)
        if self.metadata:
            fields["metadata"] = dict(self.metadata)
        return fields


NO_LABELS = EmailLabels()


@dataclass(frozen=True, slots=True)
class OutgoingEmail:
    """What goes on the wire: envelope and the complete message bytes (CRLF line endings)."""

    email_id: str
    sender: str
    recipients: Sequence[str]
    message: bytes
    labels: EmailLabels = NO_LABELS


@dataclass(frozen=True, slots=True)
class RecipientRefusal:
    recipient: str
    code: int
    message: str


@dataclass(frozen=True, slots=True)
class SendReport:
    """The relay accepted the message; ``refused`` lists recipients it turned down."""

    refused: tuple[RecipientRefusal, ...] = ()


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A request that cannot be delivered, and why."""

    record: InboundRecord
    reason: FailureReason
    error: Exception
    attempts: int
    smtp_code: int | None = None
    email_id: str | None = field(default=None)
    trace_headers: tuple[tuple[str, bytes], ...] = ()
    """W3C trace context of the publish (traceparent, tracestate) when tracing is on; they
    replace the record's own."""
