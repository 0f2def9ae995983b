"""The handler's view of the suppression list: drop suppressed recipients, add hard bounces.

Both fail open: a store that cannot answer costs the list (a suppressed address may be mailed
again), never delivery; each failure is logged and counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import structlog

from messaging_service.core.suppression import SuppressionStore, hard_bounces
from messaging_service.core.values import RecipientRefusal
from messaging_service.errors import SuppressionUnavailableError
from messaging_service.telemetry.metrics import Metrics

log = structlog.get_logger(__name__)


class Suppressor:
    def __init__(
        self,
        store: SuppressionStore,
        *,
        ttl: int,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._ttl = ttl
        self._metrics = metrics
        self._clock = clock

    async def suppressed(self, recipients: Sequence[str]) -> frozenset[str]:
        """Which recipients are on the list; none when the store cannot answer."""
        try:
            found = await self._store.suppressed(recipients)
        except SuppressionUnavailableError as exc:
            self._metrics.suppression_unavailable.labels("check").inc()
            log.warning("suppression_unavailable", operation="check", error=str(exc))
            return frozenset()
        for recipient in recipients:
            if recipient in found:
                self._metrics.recipients_suppressed.inc()
                log.info("recipient_suppressed", recipient=recipient)
        return found

    async def hard_bounced(self, refusals: Sequence[RecipientRefusal]) -> None:
        """Put every hard-bounced recipient on the list; never raises."""
        entries = hard_bounces(
            ((r.recipient, r.code, r.message) for r in refusals), now=self._clock(), ttl=self._ttl
        )
        for entry in entries:
            try:
                await self._store.add(entry)
            except Exception as exc:  # noqa: BLE001 - the relay already answered: nothing may undo that
                self._metrics.suppression_unavailable.labels("add").inc()
                log.warning("suppression_unavailable", operation="add", error=_describe(exc))
                continue
            self._metrics.suppressions_added.inc()
            log.warning(
                "recipient_suppressed_hard_bounce",
                recipient=entry.address,
                smtp_code=entry.code,
                smtp_message=entry.response,
                expires_at=entry.expires_at,
            )


def _describe(exc: Exception) -> str:
    if isinstance(exc, SuppressionUnavailableError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"[:300]
