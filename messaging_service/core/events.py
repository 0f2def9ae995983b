"""Outcome events (pure): what happened to a request, as a CloudEvents Kafka record.

Binary content mode of the CloudEvents Kafka binding: the attributes travel as ``ce_*``
headers, the value is the event's JSON data (docs/schemas/email-event.schema.json). The
``event_id`` is derived from the request, the event type and the attempt, so an event
published again after a redelivery has the same id and consumers can deduplicate.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from messaging_service.core.contract import EmailRequest
from messaging_service.core.lanes import Lane
from messaging_service.core.mime import message_id
from messaging_service.core.suppression import enhanced_status, normalise_address
from messaging_service.core.values import EmailLabels, InboundRecord, RecipientRefusal
from messaging_service.errors import SmtpError

SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/json"
# Fixed namespace of the name-based (v5) event ids: never change it, or ids change too.
_NAMESPACE = uuid.UUID("6f1d1c0e-5a8b-4d7e-9c3a-2b9e8f4a7d10")
_NAMESPACE_BYTES = _NAMESPACE.bytes
# One encoder for every event (``json.dumps`` with options builds a new one per call).
_JSON = json.JSONEncoder(ensure_ascii=False, default=str)


class EventType(enum.StrEnum):
    SENT = "email.sent"
    DEFERRED = "email.deferred"
    FAILED = "email.failed"
    DUPLICATE = "email.duplicate"
    SUPPRESSED = "email.suppressed"

    @property
    def final(self) -> bool:
        return self is not EventType.DEFERRED


class RecipientStatus(enum.StrEnum):
    ACCEPTED = "accepted"
    REFUSED = "refused"
    """Refused by the relay while it accepted the message for others (or for all: failed)."""
    DEFERRED = "deferred"
    FAILED = "failed"
    SUPPRESSED = "suppressed"
    NOT_SENT = "not_sent"
    """Nothing was sent to it this time (a duplicate)."""


@dataclass(frozen=True, slots=True)
class SmtpReply:
    code: int | None
    response: str | None

    @property
    def enhanced_status(self) -> str | None:
        return None if self.response is None else enhanced_status(self.response)


@dataclass(frozen=True, slots=True)
class RecipientResult:
    address: str
    status: RecipientStatus
    smtp: SmtpReply | None = None


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What an event repeats from the request; empty when the payload could not be parsed."""

    request_id: str | None = None
    message_id: str | None = None
    template: str | None = None
    locale: str | None = None
    tags: tuple[str, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)


def request_facts(
    request: EmailRequest | None,
    labels: EmailLabels,
    *,
    request_id: str | None,
    domain: str,
) -> RequestFacts:
    """The one place that reads event fields from the request and its labels.

    ``labels`` name the template and locale actually used (``welcome``, ``de`` for a request
    asking for ``de-AT`` that fell back) once the email was built, and carry tags and metadata.
    """
    if request is None:
        return RequestFacts(request_id=request_id)
    return RequestFacts(
        request_id=request.id,
        message_id=message_id(request.id, domain),
        template=labels.template if labels.template is not None else request.template,
        locale=labels.locale,
        tags=tuple(request.tags),
        metadata=dict(request.metadata),
    )


@dataclass(frozen=True, slots=True)
class OutcomeEvent:
    """One event about one request; ``time`` is Unix seconds."""

    type: EventType
    record: InboundRecord
    facts: RequestFacts
    time: float
    attempt: int
    recipients: Sequence[RecipientResult] = ()
    permanent: bool | None = None
    reason: str | None = None
    smtp: SmtpReply | None = None
    retry_in: float | None = None
    lane: Lane = Lane.NORMAL
    trace_headers: tuple[tuple[str, bytes], ...] = ()
    """W3C trace context of the publish (traceparent, tracestate) when tracing is on."""

    @property
    def event_id(self) -> str:
        return event_id(self.record, self.facts.request_id, self.type, self.attempt)


_REASONS = {
    EventType.DEFERRED: "smtp_transient",
    EventType.DUPLICATE: "already_sent",
    EventType.SUPPRESSED: "suppressed",
}
_PERMANENT = {EventType.FAILED: True, EventType.DEFERRED: False}


def outcome_event(
    type_: EventType,
    *,
    record: InboundRecord,
    facts: RequestFacts,
    time: float,
    attempt: int,
    recipients: Sequence[RecipientResult],
    error: Exception | None = None,
    failure: str | None = None,
    lane: Lane = Lane.NORMAL,
) -> OutcomeEvent:
    """An event with the fields its type implies; ``failure`` is a dead letter's reason."""
    smtp = None
    if isinstance(error, SmtpError) and error.code is not None:
        smtp = SmtpReply(code=error.code, response=error.reply)
    return OutcomeEvent(
        type=type_,
        record=record,
        facts=facts,
        time=time,
        attempt=attempt,
        recipients=recipients,
        permanent=_PERMANENT.get(type_),
        reason=failure if type_ is EventType.FAILED else _REASONS.get(type_),
        smtp=smtp,
        lane=lane,
    )


def recipient_results(
    addresses: Sequence[str],
    *,
    status: RecipientStatus,
    suppressed: frozenset[str] = frozenset(),
    refusals: Sequence[RecipientRefusal] = (),
) -> list[RecipientResult]:
    """Each address with ``status``, unless suppressed or refused at RCPT (with its reply).

    ``suppressed`` holds normalised addresses. A 5xx refusal makes the recipient ``refused``;
    a 4xx one keeps ``status`` (deferred) with the reply.
    """
    refused = {normalise_address(r.recipient): r for r in refusals}
    results = []
    for address in addresses:
        key = normalise_address(address)
        refusal = refused.get(key)
        if key in suppressed:
            results.append(RecipientResult(address, RecipientStatus.SUPPRESSED))
        elif refusal is None:
            results.append(RecipientResult(address, status))
        else:
            permanent = 500 <= refusal.code < 600
            results.append(
                RecipientResult(
                    address,
                    RecipientStatus.REFUSED if permanent else status,
                    SmtpReply(code=refusal.code, response=refusal.message),
                )
            )
    return results


def event_id(record: InboundRecord, request_id: str | None, type_: EventType, attempt: int) -> str:
    """The same request, type and attempt always give the same id (a UUID, version 5).

    A request without a readable id is named by where its record is, which a redelivery
    keeps too.
    """
    subject = (
        f"id:{request_id}"
        if request_id is not None
        else f"record:{record.topic}/{record.partition}/{record.offset}"
    )
    return _uuid5(f"{subject}\x1f{type_.value}\x1f{attempt}")


def _uuid5(name: str) -> str:
    """``str(uuid.uuid5(_NAMESPACE, name))`` without building UUID objects (a third the time)."""
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name.encode("utf-8")).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # the RFC 4122 variant
    text = digest.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def rfc3339(seconds: float) -> str:
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_value(event: OutcomeEvent) -> dict[str, Any]:
    """The event's data: the record value, as JSON (docs/schemas/email-event.schema.json)."""
    record = event.record
    facts = event.facts
    elapsed = None
    if record.timestamp_ms is not None and record.timestamp_ms > 0:
        elapsed = max(0, round(event.time * 1000) - record.timestamp_ms)
    return {
        "event_id": event.event_id,
        "type": event.type.value,
        "time": rfc3339(event.time),
        "request_id": facts.request_id,
        "message_id": facts.message_id,
        "template": facts.template,
        "locale": facts.locale,
        "recipients": [
            {"address": r.address, "status": r.status.value, "smtp": _smtp(r.smtp)}
            for r in event.recipients
        ],
        "attempt": event.attempt,
        "permanent": event.permanent,
        "reason": event.reason,
        "smtp": _smtp(event.smtp),
        "retry_in_seconds": event.retry_in,
        "processing_time_ms": elapsed,
        "tags": list(facts.tags),
        "metadata": dict(facts.metadata),
        "source": {"topic": record.topic, "partition": record.partition, "offset": record.offset},
        "lane": event.lane.value,
    }


def _smtp(reply: SmtpReply | None) -> dict[str, Any] | None:
    if reply is None:
        return None
    return {
        "code": reply.code,
        "enhanced_status": reply.enhanced_status,
        "response": reply.response,
    }


@dataclass(frozen=True, slots=True)
class EventRecord:
    """An event as a Kafka record: key, value and headers (binary content mode)."""

    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]


def event_record(event: OutcomeEvent, *, source: str) -> EventRecord:
    """``source`` is the CloudEvents source: ``messaging-service/<KAFKA_GROUP_ID>``."""
    value = event_value(event)
    request_id = event.facts.request_id
    headers = {
        "ce_specversion": SPEC_VERSION,
        "ce_id": value["event_id"],
        "ce_type": event.type.value,
        "ce_source": source,
        "ce_time": value["time"],
        "content-type": CONTENT_TYPE,
    }
    return EventRecord(
        key=request_id.encode() if request_id is not None else event.record.key,
        value=_JSON.encode(value).encode(),
        headers=(
            *((name, text.encode()) for name, text in headers.items()),
            *event.trace_headers,
        ),
    )


def event_source(group_id: str) -> str:
    return f"messaging-service/{group_id}"


class EventSink(Protocol):
    """Queues events for the broker; the returned future settles with its acknowledgement.

    ``submit`` raises EventsUnavailableError when the event cannot even be queued; the future
    fails with EventsUnavailableError when the broker did not acknowledge it in time. Events
    are batched while they wait, so a caller that needs the acknowledgement need not hold
    anything but the future.
    """

    async def submit(self, event: OutcomeEvent) -> asyncio.Future[None]: ...
