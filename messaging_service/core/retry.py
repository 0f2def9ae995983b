"""Pure retry decisions: whether an error is worth another attempt, and how long to wait."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from messaging_service.errors import RetriableError


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``max_retries`` attempts after the first, waiting ``delays[n]`` before retry n+1.

    The last delay repeats when there are more retries than delays.
    """

    max_retries: int
    delays: Sequence[float]

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if not self.delays or any(delay < 0 for delay in self.delays):
            raise ValueError("delays must be a non-empty list of non-negative seconds")

    def delay_before_retry(self, retry_number: int) -> float:
        """Seconds to wait before retry ``retry_number`` (1-based)."""
        if retry_number < 1:
            raise ValueError("retry numbers start at 1")
        return self.delays[min(retry_number, len(self.delays)) - 1]

    def delay_after(self, attempts_made: int) -> float | None:
        """Seconds before the next attempt, or None when the retries are used up.

        ``attempts_made`` counts attempts so far, including the one that just failed.
        """
        if attempts_made > self.max_retries:
            return None
        return self.delay_before_retry(attempts_made)

    def next_delay(self, error: BaseException, *, attempts_made: int) -> float | None:
        """Seconds before the next attempt after ``error``, or None when the failure is final."""
        if not is_retriable(error):
            return None
        return self.delay_after(attempts_made)


def is_retriable(error: BaseException) -> bool:
    """Retriability is a property of the error's class, never of its message."""
    return isinstance(error, RetriableError)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with a ceiling, for things that must eventually succeed."""

    initial: float = 0.5
    factor: float = 2.0
    ceiling: float = 30.0

    def delay(self, failures: int) -> float:
        """Seconds to wait after ``failures`` consecutive failures (1-based)."""
        exponent = max(failures - 1, 0)
        return min(self.initial * self.factor**exponent, self.ceiling)
