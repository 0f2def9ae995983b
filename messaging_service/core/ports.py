"""The Protocols the service's core calls and the adapters implement."""

from __future__ import annotations

from typing import Protocol

from messaging_service.core.values import DeadLetter, OutgoingEmail, SendReport


class Sender(Protocol):
    """Sends one message to the relay. Raises SmtpTransientError or SmtpRejectedError."""

    async def send(self, email: OutgoingEmail) -> SendReport: ...


class AttachmentFetcher(Protocol):
    """Fetches an attachment URL's bytes, at most ``max_bytes`` of them.

    Raises AttachmentError (refused, 4xx, too big) or AttachmentUnavailableError (5xx, timeout).
    """

    async def fetch(self, url: str, *, max_bytes: int) -> bytes: ...


class DeadLetterSink(Protocol):
    """Publishes a dead letter and returns once the broker acknowledged it.

    Raises DeadLetterUnavailableError when it could not.
    """

    async def publish(self, letter: DeadLetter) -> None: ...


class SentLog(Protocol):
    """Ids the relay accepted. Raises SentLogUnavailableError when the store cannot answer."""

    async def seen(self, email_id: str) -> bool: ...
    async def record(self, email_id: str) -> None: ...
