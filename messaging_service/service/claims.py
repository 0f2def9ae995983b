"""Claims on request ids before an SMTP attempt, so two copies in flight are not both sent.

The sent-id record answers a claim atomically (``SentLog.claim``): CLAIMED (send), SENT (a
duplicate) or HELD (another sender has it now: wait, without spending an attempt). The holder
records the id after the relay's 250 or releases the claim after a failed attempt; a claim
whose holder crashed expires after DEDUP_CLAIM_TTL. A store that cannot answer fails open: the
email is sent unguarded, as when ``seen`` fails, because holding mail back while the store is
down would dead-letter every request.
"""

from __future__ import annotations

import itertools
import secrets

import structlog

from messaging_service.core.ports import SentLog
from messaging_service.core.retry import Backoff
from messaging_service.core.values import Claim
from messaging_service.errors import SentLogUnavailableError
from messaging_service.service.delivery import Delivery, RetryIn
from messaging_service.telemetry.metrics import Metrics

log = structlog.get_logger(__name__)

# A live holder usually records or releases within one SMTP round trip; a crashed one only
# lets go when its claim expires, so the waits grow up to half a minute.
CLAIM_WAIT = Backoff(initial=1.0, factor=2.0, ceiling=30.0)


class SendClaims:
    """Claims, releases and waits for one handler; a no-op without a sent-id record."""

    def __init__(
        self, sent_log: SentLog | None, *, metrics: Metrics, wait: Backoff = CLAIM_WAIT
    ) -> None:
        self._log = sent_log
        self._metrics = metrics
        self._wait = wait
        # Unique per handler (random) and per delivery (counted): a token names one holder.
        self._token_prefix = "claim:" + secrets.token_hex(8) + ":"
        self._counter = itertools.count(1)

    async def claim(self, delivery: Delivery, email_id: str) -> Claim | None:
        """The record's answer; None when there is none or it cannot answer (send anyway)."""
        if self._log is None:
            return None
        token = delivery.claim_token
        if token is None:
            token = delivery.claim_token = f"{self._token_prefix}{next(self._counter)}"
        try:
            claim = await self._log.claim(email_id, token)
        except SentLogUnavailableError as exc:
            self._unavailable("claim", exc)
            return None
        delivery.claimed = claim is Claim.CLAIMED
        return claim

    def held(self, delivery: Delivery) -> RetryIn:
        """Another sender holds the id: try again later, without spending an attempt."""
        delivery.claim_waits += 1
        delay = self._wait.delay(delivery.claim_waits)
        self._metrics.claim_waits.inc()
        log.info(
            "email_claim_held",
            waits=delivery.claim_waits,
            retry_in=delay,
            attempt=delivery.attempts,
        )
        return RetryIn(delay)

    async def release(self, delivery: Delivery, email_id: str) -> None:
        """Let go of the claim after an attempt that did not send, so a retry can take it."""
        if self._log is None or not delivery.claimed or delivery.claim_token is None:
            return
        try:
            await self._log.release(email_id, delivery.claim_token)
        except SentLogUnavailableError as exc:
            # It stays until it expires: other copies wait that long, while this delivery's
            # own retry claims it again with the same token.
            self._unavailable("release", exc)
            return
        delivery.claimed = False

    def _unavailable(self, operation: str, exc: SentLogUnavailableError) -> None:
        self._metrics.dedup_unavailable.labels(operation).inc()
        log.warning("dedup_unavailable", operation=operation, error=str(exc))
