"""The service's error tree: every failure is retriable or permanent, decided by class."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # models imports this module; the annotation alone needs the class
    from messaging_service.core.values import RecipientRefusal


class ServiceError(Exception):
    """Base of every error the service raises on purpose."""


class RetriableError(ServiceError):
    """A transient failure: the same action may succeed later."""


class PermanentError(ServiceError):
    """A failure that will not go away by trying again."""


class InvalidPayloadError(PermanentError):
    """The Kafka record is not a valid email request."""


class RecipientNotAllowedError(PermanentError):
    """A recipient's domain is outside EMAIL_ALLOWED_DOMAINS."""


class AttachmentError(PermanentError):
    """An attachment cannot be sent: bad base64, too big, a blocked file type, a URL whose host
    is not allowed or that answered 4xx, or a redirect to another host."""


class AttachmentUnavailableError(RetriableError):
    """An attachment URL could not be fetched for now: a 5xx answer, a timeout, no connection."""


class TemplateError(PermanentError):
    """The template is unknown, a variable is missing, or rendering failed."""


class SmtpError(ServiceError):
    """Base for failures reported by (or on the way to) the SMTP relay.

    ``code`` is the SMTP reply code when a reply decided the failure, else ``None``;
    ``refusals`` holds each recipient's RCPT refusal when the relay refused them all, and
    ``reply`` the text of the reply that decided it.
    """

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        refusals: Sequence[RecipientRefusal] = (),
        reply: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reply = reply
        """The text of the relay's reply after the code (``5.1.1 no such user``), if any."""
        self.refusals: tuple[RecipientRefusal, ...] = tuple(refusals)


class SmtpTransientError(SmtpError, RetriableError):
    """Connect error, disconnect, timeout or a 4xx reply."""


class SmtpUnavailableError(SmtpTransientError):
    """The relay could not be used at all: no connection, a timeout, or a refused session.

    Unlike a 4xx reply about one message, this says the relay is down (or our settings are
    wrong for it): enough of these in a row open the circuit breaker.
    """


class SmtpRejectedError(SmtpError, PermanentError):
    """A 5xx reply, or every recipient refused with 5xx."""


class DeadLetterUnavailableError(RetriableError):
    """The dead-letter topic could not be written (broker down, timeout)."""


class SentLogUnavailableError(RetriableError):
    """The record of sent request ids could not be read or written (store down, timeout)."""


def describe_error(exc: BaseException) -> str:
    """``Type: message`` for a library exception, naming the type once.

    Some libraries (aiokafka) already start their message with the type name.
    """
    name = type(exc).__name__
    text = str(exc)
    if text.startswith(name):
        return text
    return f"{name}: {text}" if text else name


class EventsUnavailableError(RetriableError):
    """The outcome-events topic could not be written (broker down, timeout)."""


class SuppressionUnavailableError(RetriableError):
    """The suppression list could not be read or written (store down, timeout)."""
