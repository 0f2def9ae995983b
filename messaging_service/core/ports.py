"""The Protocols the service's core calls and the adapters implement."""

from __future__ import annotations

from typing import Protocol

from messaging_service.core.values import Claim, DeadLetter, OutgoingEmail, SendReport


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
    """Ids the relay accepted, and claims on ids being sent.

    ``claim`` atomically takes the id for ``token`` unless it was sent or another token holds
    a live claim (its own token's claim answers CLAIMED again); ``record`` marks it sent (the
    claim included); ``release`` drops the claim only while ``token`` still holds it. Every
    method raises SentLogUnavailableError when the store cannot answer.
    """

    async def seen(self, email_id: str) -> bool: ...
    async def claim(self, email_id: str, token: str) -> Claim: ...
    async def record(self, email_id: str) -> None: ...
    async def release(self, email_id: str, token: str) -> None: ...
