"""Retry decisions are pure: by error class and attempt count."""

from __future__ import annotations

import pytest

from messaging_service.core.retry import Backoff, RetryPolicy, is_retriable
from messaging_service.errors import (
    InvalidPayloadError,
    SmtpRejectedError,
    SmtpTransientError,
)


def test_default_schedule_is_one_five_ten_seconds() -> None:
    policy = RetryPolicy(max_retries=3, delays=(1, 5, 10))
    transient = SmtpTransientError("451 later", code=451)
    assert [policy.next_delay(transient, attempts_made=n) for n in (1, 2, 3, 4)] == [
        1,
        5,
        10,
        None,
    ]


def test_last_delay_repeats_when_retries_outnumber_delays() -> None:
    policy = RetryPolicy(max_retries=5, delays=(2,))
    assert [policy.delay_after(n) for n in range(1, 7)] == [2, 2, 2, 2, 2, None]


def test_zero_retries_means_first_failure_is_final() -> None:
    policy = RetryPolicy(max_retries=0, delays=(1,))
    assert policy.next_delay(SmtpTransientError("timeout"), attempts_made=1) is None


@pytest.mark.parametrize(
    "error", [SmtpRejectedError("550 no", code=550), InvalidPayloadError("bad"), ValueError("x")]
)
def test_permanent_and_unknown_errors_are_not_retried(error: Exception) -> None:
    policy = RetryPolicy(max_retries=3, delays=(1, 5, 10))
    assert not is_retriable(error)
    assert policy.next_delay(error, attempts_made=1) is None


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="max_retries"):
        RetryPolicy(max_retries=-1, delays=(1,))
    with pytest.raises(ValueError, match="delays"):
        RetryPolicy(max_retries=1, delays=())
    with pytest.raises(ValueError, match="start at 1"):
        RetryPolicy(max_retries=1, delays=(1,)).delay_before_retry(0)


def test_backoff_grows_to_its_ceiling() -> None:
    backoff = Backoff(initial=0.5, factor=2, ceiling=3)
    assert [backoff.delay(n) for n in range(1, 6)] == [0.5, 1, 2, 3, 3]
