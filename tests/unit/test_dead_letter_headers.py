"""Dead-letter records keep the original headers and add the documented ones."""

from __future__ import annotations

from messaging_service.adapters.dead_letters import (
    DEAD_LETTER_HEADERS,
    MAX_MESSAGE_LENGTH,
    dead_letter_headers,
)
from messaging_service.core.values import DeadLetter, FailureReason
from messaging_service.errors import SmtpRejectedError
from support.fakes import record


def _headers(letter: DeadLetter) -> dict[str, str]:
    return {name: value.decode() for name, value in dead_letter_headers(letter, group_id="g1")}


def test_headers_describe_origin_reason_attempts_and_code() -> None:
    original = record(b"{}", offset=42, partition=3, timestamp_ms=1_700_000_000_123)
    letter = DeadLetter(
        record=original,
        reason=FailureReason.SMTP_REJECTED,
        error=SmtpRejectedError("550 5.1.1 no such user", code=550),
        attempts=1,
        smtp_code=550,
    )
    headers = _headers(letter)
    assert headers == {
        "trace": "abc",
        "kafka_dlt-original-topic": "email.requests",
        "kafka_dlt-original-partition": "3",
        "kafka_dlt-original-offset": "42",
        "kafka_dlt-original-timestamp": "1700000000123",
        "kafka_dlt-original-consumer-group": "g1",
        "kafka_dlt-exception-fqcn": "messaging_service.errors.SmtpRejectedError",
        "kafka_dlt-exception-message": "550 5.1.1 no such user",
        "email-failure-reason": "smtp_rejected",
        "email-attempts": "1",
        "email-smtp-code": "550",
    }
    assert set(headers) - {"trace"} == set(DEAD_LETTER_HEADERS)


def test_original_headers_come_first_and_unchanged() -> None:
    letter = DeadLetter(
        record=record(b"x"), reason=FailureReason.INVALID_PAYLOAD, error=ValueError("x"), attempts=0
    )
    assert dead_letter_headers(letter, group_id="g")[0] == ("trace", b"abc")


def test_smtp_code_header_only_when_a_reply_decided() -> None:
    letter = DeadLetter(
        record=record(b"x"), reason=FailureReason.INVALID_PAYLOAD, error=ValueError("x"), attempts=0
    )
    headers = _headers(letter)
    assert "email-smtp-code" not in headers
    assert headers["email-attempts"] == "0"


def test_exception_message_is_short_and_single_line() -> None:
    letter = DeadLetter(
        record=record(b"x"),
        reason=FailureReason.TEMPLATE_ERROR,
        error=ValueError("line one\nline two " + "y" * 2000),
        attempts=0,
    )
    message = _headers(letter)["kafka_dlt-exception-message"]
    assert "\n" not in message
    assert len(message) <= MAX_MESSAGE_LENGTH
