"""The state one request carries across its attempts, and the steps a handler returns."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from messaging_service.core.attachments import AttachmentSource
from messaging_service.core.contract import EmailRequest
from messaging_service.core.events import OutcomeEvent
from messaging_service.core.lanes import Lane
from messaging_service.core.values import (
    NO_LABELS,
    DeadLetter,
    EmailLabels,
    FailureReason,
    InboundRecord,
    Outcome,
    OutgoingEmail,
    RenderedEmail,
)
from messaging_service.telemetry.tracing import NO_TRACE, RequestTrace


@dataclass(slots=True, eq=False)
class Unfetched:
    """Rendered, but with attachment URLs still to fetch (I/O, so not in ``prepare``).

    Fetched bytes replace their RemoteAttachment here, so a retry fetches only what is missing.
    """

    request: EmailRequest
    rendered: RenderedEmail
    attachments: list[AttachmentSource]


@dataclass(slots=True, eq=False)
class Delivery:
    """The state of one request across its attempts; owned by whoever holds it now."""

    record: InboundRecord
    email_id: str | None = None
    email: OutgoingEmail | None = None
    attempts: int = 0
    dead_letter: DeadLetter | None = None
    publish_failures: int = 0
    unexpected_failures: int = 0
    refusal: tuple[FailureReason, Exception] | None = None
    """Why preparing it failed (it is dead-lettered by its next step), if it did."""
    unfetched: Unfetched | None = None
    labels: EmailLabels = NO_LABELS
    """Template, locale, tags and metadata, once the request was read: logged with outcomes."""
    request: EmailRequest | None = None
    suppressed: frozenset[str] = frozenset()
    """Recipients dropped from the last attempt because they are on the suppression list."""
    final_event: OutcomeEvent | None = None
    """Its outcome is decided; it is finished once the broker acknowledged this event."""
    outcome: Outcome | None = None
    event_failures: int = 0
    lane: Lane = Lane.NORMAL
    """The lane it came in by (its topic): counted by lane in the metrics, named in events."""
    trace: RequestTrace = NO_TRACE
    """Its spans when tracing is on (started by its first step), else the shared no-op."""
    claim_token: str | None = None
    """What it claims its id with in the sent-id record (made on its first claim, then kept)."""
    claimed: bool = False
    """It holds the claim on its id: released after a failed attempt, recorded after a 250."""
    claim_waits: int = 0
    """Times it found its id claimed by another sender and waited (no attempt spent)."""


@dataclass(frozen=True, slots=True)
class Finished:
    outcome: Outcome


@dataclass(frozen=True, slots=True)
class RetryIn:
    seconds: float


@dataclass(frozen=True, slots=True)
class Parked:
    """The relay is down (circuit open): hold the delivery until it is back; no attempt spent."""


@dataclass(frozen=True, slots=True)
class Acking:
    """Its final event is queued: the broker's acknowledgement (``ack``) finishes it.

    It holds no worker meanwhile; events are batched, so many requests share one produce
    request and its round trip.
    """

    ack: asyncio.Future[None]


Step = Finished | RetryIn | Parked | Acking
