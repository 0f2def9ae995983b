"""One request from raw record to final outcome: parse, render, send, retry, dead-letter.

The handler never sleeps: a transient failure returns ``RetryIn`` and the caller parks the
delivery outside the worker pool, so a request waiting for its retry holds no worker. While
the relay is down (the circuit is open) it returns ``Parked`` without spending an attempt:
the caller holds the delivery until the circuit closes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import structlog

from messaging_service.core.attachments import (
    AttachmentPart,
    RemoteAttachment,
    total_size,
)
from messaging_service.core.events import (
    EventType,
    RecipientStatus,
)
from messaging_service.core.ports import AttachmentFetcher, DeadLetterSink, Sender, SentLog
from messaging_service.core.retry import Backoff, RetryPolicy
from messaging_service.core.suppression import normalise_address
from messaging_service.core.throttle import is_throttling
from messaging_service.core.values import (
    Claim,
    DeadLetter,
    FailureReason,
    Outcome,
    OutgoingEmail,
    RecipientRefusal,
    SendReport,
)
from messaging_service.errors import (
    AttachmentError,
    AttachmentUnavailableError,
    DeadLetterUnavailableError,
    SentLogUnavailableError,
    ServiceError,
    SmtpError,
    SmtpRejectedError,
    SmtpTransientError,
    SmtpUnavailableError,
)
from messaging_service.service.claims import SendClaims
from messaging_service.service.delivery import Delivery, Parked, RetryIn, Step, Unfetched
from messaging_service.service.health import Health
from messaging_service.service.outcomes import Outcomes
from messaging_service.service.preparer import Preparer
from messaging_service.service.ratelimit import SendRateLimiter
from messaging_service.service.relay import Relay
from messaging_service.service.suppressor import Suppressor
from messaging_service.telemetry import logcontext
from messaging_service.telemetry.metrics import Metrics
from messaging_service.telemetry.tracing import (
    NO_TRACE,
    NO_TRACING,
    Publish,
    RequestTrace,
    Tracing,
)

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Ports:
    """What the handler reaches the outside world through: the adapters, by their Protocols."""

    sender: Sender
    dead_letters: DeadLetterSink
    sent_log: SentLog | None = None
    suppressor: Suppressor | None = None
    fetcher: AttachmentFetcher | None = None


class RequestHandler:
    """Moves a Delivery one step forward. Only the Protocols reach the outside world."""

    def __init__(
        self,
        *,
        preparer: Preparer,
        ports: Ports,
        outcomes: Outcomes,
        policy: RetryPolicy,
        metrics: Metrics,
        health: Health,
        relay: Relay | None = None,
        limiter: SendRateLimiter | None = None,
        dead_letter_backoff: Backoff | None = None,
        tracing: Tracing = NO_TRACING,
    ) -> None:
        self._preparer = preparer
        self._sender = ports.sender
        self._dead_letters = ports.dead_letters
        self._sent_log = ports.sent_log
        self._claims = SendClaims(ports.sent_log, metrics=metrics)
        self._suppressor = ports.suppressor
        self._fetcher = ports.fetcher
        self._outcomes = outcomes
        self._policy = policy
        self._metrics = metrics
        self._health = health
        self._relay = relay if relay is not None else health.relay
        self._limiter = limiter
        self._backoff = dead_letter_backoff or Backoff()
        self._tracing = tracing

    def prepare(self, delivery: Delivery) -> None:
        """Parse, check and render ahead of the worker (see ``Preparer.prepare``)."""
        with self._trace(delivery).active():
            self._preparer.prepare(delivery)

    async def process(self, delivery: Delivery) -> Step:
        """Run the next step: first attempt, a retry, or a dead-letter or event publish."""
        with self._trace(delivery).active():
            if delivery.final_event is not None:
                return await self._outcomes.report(delivery)
            if delivery.dead_letter is not None:
                return await self._publish(delivery)
            if delivery.email is None and delivery.refusal is None and delivery.unfetched is None:
                self.prepare(delivery)
                logcontext.bind(email_id=delivery.email_id)
            if delivery.refusal is not None:
                reason, error = delivery.refusal
                return await self._dead_letter(delivery, reason, error)
            if delivery.unfetched is not None:
                # A redelivered request that was sent already is not worth a download.
                if delivery.email_id is not None and await self._already_sent(delivery.email_id):
                    return await self._duplicate(delivery)
                step = await self._fetch(delivery, delivery.unfetched)
                if step is not None:
                    return step
            assert delivery.email is not None
            return await self._attempt(delivery, delivery.email)

    def acked(self, delivery: Delivery, ack: asyncio.Future[None]) -> Step:
        """The acknowledgement of an ``Acking`` step's final event settled: the next step."""
        with self._trace(delivery).active():
            return self._outcomes.acked(delivery, ack)

    def _trace(self, delivery: Delivery) -> RequestTrace:
        """The request's spans, started on its first step (NO_TRACE when tracing is off)."""
        if delivery.trace is NO_TRACE and self._tracing.enabled:
            delivery.trace = self._tracing.request(delivery.record)
        return delivery.trace

    async def recover(self, delivery: Delivery, error: Exception) -> Step:
        """Decide what to do after an exception nothing translated (a bug, by definition).

        Such a request is treated as transient: it is retried on the normal schedule and then
        dead-lettered, so it always reaches a final outcome and its offset is never stuck.
        """
        self._metrics.unexpected_errors.inc()
        log.error("unexpected_error", exc_info=error, attempt=delivery.attempts)
        if delivery.email_id is not None:
            await self._claims.release(delivery, delivery.email_id)
        if delivery.final_event is not None:
            return await self._outcomes.report(delivery)
        if delivery.dead_letter is not None:
            return await self._publish(delivery)
        delivery.unexpected_failures += 1
        delay = self._policy.delay_after(delivery.unexpected_failures)
        if delay is not None:
            return RetryIn(delay)
        return await self._dead_letter(delivery, FailureReason.RETRIES_EXHAUSTED, error)

    async def _fetch(self, delivery: Delivery, unfetched: Unfetched) -> Step | None:
        """Fetch the attachment URLs still missing, then build; a Step when that failed."""
        parts = unfetched.attachments
        for index, part in enumerate(parts):
            if not isinstance(part, RemoteAttachment):
                continue
            budget = self._preparer.limits.max_attachment_bytes - total_size(parts)
            try:
                if self._fetcher is None:
                    raise AttachmentError("attachment URLs are not fetched by this service")
                with delivery.trace.download(urlsplit(part.url).hostname or ""):
                    data = await self._fetcher.fetch(part.url, max_bytes=budget)
                parts[index] = part.with_data(data)
            except AttachmentError as exc:
                error = AttachmentError(f"attachment {part.filename!r}: {exc}")
                return await self._dead_letter(delivery, FailureReason.ATTACHMENT_ERROR, error)
            except AttachmentUnavailableError as exc:
                # An attempt at delivering it, like a send: the same schedule and the same cap.
                delivery.attempts += 1
                delay = self._policy.next_delay(exc, attempts_made=delivery.attempts)
                if delay is None:
                    return await self._dead_letter(delivery, FailureReason.RETRIES_EXHAUSTED, exc)
                self._metrics.retries_by_lane[delivery.lane].inc()
                log.warning(
                    "attachment_fetch_retry_scheduled",
                    attempt=delivery.attempts,
                    retry_in=delay,
                    error=str(exc),
                )
                return RetryIn(delay)
        complete = [part for part in parts if isinstance(part, AttachmentPart)]
        delivery.email = self._preparer.complete(unfetched, complete)
        delivery.labels = delivery.email.labels
        delivery.unfetched = None
        return None

    async def _attempt(self, delivery: Delivery, email: OutgoingEmail) -> Step:
        claim = await self._claims.claim(delivery, email.email_id)
        if claim is Claim.SENT:
            return await self._duplicate(delivery)
        if claim is Claim.HELD:
            return self._claims.held(delivery)
        remaining = await self._without_suppressed(delivery, email)
        if remaining is None:
            await self._claims.release(delivery, email.email_id)
            self._metrics.suppressed.inc()
            log.info("email_suppressed", recipients=len(delivery.suppressed))
            return await self._outcomes.conclude(
                delivery,
                Outcome.SUPPRESSED,
                self._outcomes.recipients(delivery, RecipientStatus.SUPPRESSED),
            )
        email = remaining
        if self._relay.circuit_open:
            await self._claims.release(delivery, email.email_id)
            log.info("email_parked", reason="smtp_circuit_open", attempt=delivery.attempts)
            return Parked()
        if self._limiter is not None:
            # Should the circuit open while this waits, the send fails fast and is parked
            # below without counting.
            await self._limiter.acquire()
        delivery.attempts += 1
        started = time.perf_counter()
        try:
            report = await self._send(delivery, email)
        except SmtpError as exc:
            await self._claims.release(delivery, email.email_id)
            return await self._failed(delivery, exc, started)
        self._observe_attempt(started, None)
        self._relay_answered()
        return await self._sent(delivery, email, report)

    async def _send(self, delivery: Delivery, email: OutgoingEmail) -> SendReport:
        """One SMTP attempt, in a span of its own with the relay's reply code."""
        with delivery.trace.attempt(delivery.attempts) as span:
            try:
                report = await self._sender.send(email)
            except SmtpError as exc:
                span.reply(exc.code, error=exc)
                raise
            except Exception as exc:
                span.reply(None, error=exc)
                raise
            span.reply(250)
            return report

    async def _failed(self, delivery: Delivery, exc: SmtpError, started: float) -> Step:
        """An attempt the relay refused, deferred, or could not take at all."""
        if isinstance(exc, SmtpRejectedError):
            self._observe_attempt(started, "rejected")
            self._relay_answered()
            await self._hard_bounced(exc.refusals)
            return await self._dead_letter(
                delivery, FailureReason.SMTP_REJECTED, exc, code=exc.code
            )
        if isinstance(exc, SmtpUnavailableError):
            self._observe_attempt(started, "unavailable")
            if self._relay.unreachable():
                # An outage is nobody's fault: this attempt does not count.
                delivery.attempts -= 1
                log.warning("email_parked", reason="smtp_circuit_open", error=str(exc))
                return Parked()
            return await self._transient(delivery, exc)
        if not isinstance(exc, SmtpTransientError):
            raise exc  # a kind the adapter does not raise: a bug, recovered as one
        self._observe_attempt(started, "transient")
        await self._hard_bounced(exc.refusals)
        if exc.code is None:
            self._relay.unreachable(counts=False)
        else:
            self._relay_answered()
            if is_throttling(exc.code):
                self._throttled(exc.code)
        return await self._transient(delivery, exc)

    async def _sent(self, delivery: Delivery, email: OutgoingEmail, report: SendReport) -> Step:
        for refusal in report.refused:
            self._metrics.recipients_refused.inc()
            log.warning(
                "recipient_refused",
                recipient=refusal.recipient,
                smtp_code=refusal.code,
                smtp_message=refusal.message,
            )
        self._metrics.sent_by_lane[delivery.lane].inc()
        log.info(
            "email_sent",
            attempt=delivery.attempts,
            recipients=len(email.recipients),
            **email.labels.log_fields(),
        )
        # Still "right after the 250": nothing above yields to the event loop. Counting first
        # keeps email_sent_total from lagging behind the relay by a store round trip.
        await self._remember(email.email_id)
        await self._hard_bounced(report.refused)
        return await self._outcomes.conclude(
            delivery,
            Outcome.SENT,
            self._outcomes.recipients(delivery, RecipientStatus.ACCEPTED, report.refused),
        )

    async def _duplicate(self, delivery: Delivery) -> Step:
        self._metrics.duplicates_skipped.inc()
        log.info("email_duplicate_skipped", attempts=delivery.attempts)
        return await self._outcomes.conclude(
            delivery,
            Outcome.DUPLICATE,
            self._outcomes.recipients(delivery, RecipientStatus.NOT_SENT),
        )

    def _relay_answered(self) -> None:
        self._relay.answered()

    def _throttled(self, code: int) -> None:
        self._metrics.throttled.inc()
        if self._limiter is None:
            return
        rate = self._limiter.throttled()
        if rate is not None:
            log.warning("send_rate_reduced", smtp_code=code, rate_per_second=round(rate, 2))

    async def _already_sent(self, email_id: str) -> bool:
        """Whether the sent-id record has this id; fails open when the store cannot answer.

        Holding mail back while the store is down would retry and then dead-letter every
        request; sending it risks only the duplicates that the record exists to avoid.
        """
        if self._sent_log is None:
            return False
        try:
            return await self._sent_log.seen(email_id)
        except SentLogUnavailableError as exc:
            self._metrics.dedup_unavailable.labels("seen").inc()
            log.warning("dedup_unavailable", operation="seen", error=str(exc))
            return False

    async def _remember(self, email_id: str) -> None:
        """Record a sent id. The relay already accepted the email: nothing here may undo that."""
        if self._sent_log is None:
            return
        try:
            await self._sent_log.record(email_id)
        except Exception as exc:  # noqa: BLE001 - any failure here would turn a 250 into a resend
            self._metrics.dedup_unavailable.labels("record").inc()
            log.warning(
                "dedup_unavailable",
                operation="record",
                error=str(exc) if isinstance(exc, SentLogUnavailableError) else _short(exc),
            )

    async def _transient(self, delivery: Delivery, exc: SmtpTransientError) -> Step:
        delay = self._policy.next_delay(exc, attempts_made=delivery.attempts)
        if delay is None:
            return await self._dead_letter(
                delivery, FailureReason.RETRIES_EXHAUSTED, exc, code=exc.code
            )
        self._metrics.retries_by_lane[delivery.lane].inc()
        log.warning(
            "email_retry_scheduled",
            attempt=delivery.attempts,
            retry_in=delay,
            smtp_code=exc.code,
            error=str(exc),
        )
        if self._outcomes.events is not None:
            recipients = self._outcomes.recipients(delivery, RecipientStatus.DEFERRED, exc.refusals)
            event = self._outcomes.event(delivery, EventType.DEFERRED, recipients, error=exc)
            with delivery.trace.publish(Publish.EVENT) as headers:
                await self._outcomes.events.deferred(
                    dataclasses.replace(event, retry_in=delay, trace_headers=tuple(headers))
                )
        return RetryIn(delay)

    async def _dead_letter(
        self,
        delivery: Delivery,
        reason: FailureReason,
        error: Exception,
        *,
        code: int | None = None,
    ) -> Step:
        delivery.dead_letter = DeadLetter(
            record=delivery.record,
            reason=reason,
            error=error,
            attempts=delivery.attempts,
            smtp_code=code,
            email_id=delivery.email_id,
        )
        return await self._publish(delivery)

    async def _publish(self, delivery: Delivery) -> Step:
        letter = delivery.dead_letter
        assert letter is not None
        try:
            with delivery.trace.publish(Publish.DEAD_LETTER) as headers:
                if headers:
                    letter = dataclasses.replace(letter, trace_headers=tuple(headers))
                await self._dead_letters.publish(letter)
        except DeadLetterUnavailableError as exc:
            delivery.publish_failures += 1
            self._health.dead_letter_sink_ok = False
            self._metrics.dead_letter_publish_failures.inc()
            delay = self._backoff.delay(delivery.publish_failures)
            log.error(
                "dead_letter_publish_failed",
                reason=letter.reason.value,
                failures=delivery.publish_failures,
                retry_in=delay,
                error=str(exc),
            )
            return RetryIn(delay)
        self._health.dead_letter_sink_ok = True
        self._metrics.dead_letters.labels(letter.reason.value, delivery.lane.value).inc()
        log.warning(
            "email_dead_lettered",
            reason=letter.reason.value,
            attempts=letter.attempts,
            smtp_code=letter.smtp_code,
            error=_short(letter.error),
            error_type=type(letter.error).__name__,
            **delivery.labels.log_fields(),
        )
        refusals = letter.error.refusals if isinstance(letter.error, SmtpError) else ()
        return await self._outcomes.conclude(
            delivery,
            Outcome.DEAD_LETTERED,
            self._outcomes.recipients(delivery, RecipientStatus.FAILED, refusals),
        )

    # Outcome events and the suppression list

    async def _without_suppressed(
        self, delivery: Delivery, email: OutgoingEmail
    ) -> OutgoingEmail | None:
        """``email`` without its suppressed recipients; None when every one is suppressed."""
        if self._suppressor is None:
            return email
        found = await self._suppressor.suppressed(email.recipients)
        delivery.suppressed = frozenset(normalise_address(address) for address in found)
        if not found:
            return email
        remaining = [address for address in email.recipients if address not in found]
        if not remaining:
            return None
        return dataclasses.replace(email, recipients=remaining)

    async def _hard_bounced(self, refusals: Sequence[RecipientRefusal]) -> None:
        if self._suppressor is not None and refusals:
            await self._suppressor.hard_bounced(refusals)

    def _observe_attempt(self, started: float, error_kind: str | None) -> None:
        self._metrics.send_duration.observe(time.perf_counter() - started)
        if error_kind is not None:
            self._metrics.send_errors.labels(error_kind).inc()


def _short(error: BaseException, limit: int = 300) -> str:
    text = str(error) if isinstance(error, ServiceError) else f"{type(error).__name__}: {error}"
    return text if len(text) <= limit else text[: limit - 1] + "…"
