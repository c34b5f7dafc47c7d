"""Exponential backoff, the one place it is written: doubling waits up to a cap, with
optional full jitter, and the retry decision for one external service.

Full jitter (uniform in [0, cap]) keeps many workers retrying after the same
outage from hitting the recovering service in lockstep; a server's own
Retry-After is a floor, because retrying earlier only earns another 429.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


def capped_delay(attempt: int, first_s: float, max_s: float) -> float:
    """`first_s` doubled `attempt` times, at most `max_s` (attempt 0 is the first wait)."""
    if attempt < 0:
        raise ValueError(f"attempt: must be >= 0, got {attempt}")
    # min() before the power would overflow for large attempts; cap the exponent instead.
    return min(max_s, first_s * 2.0 ** min(attempt, 64))


class Backoff:
    """Doubling waits for a loop that retries until it succeeds; `reset` after a success."""

    def __init__(self, first_s: float, max_s: float) -> None:
        self.first_s = first_s
        self.max_s = max_s
        self.attempt = 0

    def delay(self) -> float:
        current = capped_delay(self.attempt, self.first_s, self.max_s)
        self.attempt += 1
        return current

    def reset(self) -> None:
        self.attempt = 0


def _always(error: BaseException) -> bool:
    return True


def _no_retry_after(error: BaseException) -> float | None:
    return None


@dataclass(frozen=True)
class RetryPolicy:
    """When and how soon to retry one service.

    `retryable` lists the exception types that may be transient; `check` then
    looks inside an instance (an HTTP status, a Kafka error code) to decide.
    `retry_after` extracts a server-requested wait from an error, if any.
    """

    retryable: tuple[type[BaseException], ...]
    max_retries: int
    backoff_s: float
    backoff_max_s: float
    check: Callable[[BaseException], bool] = _always
    retry_after: Callable[[BaseException], float | None] = _no_retry_after

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries: must be >= 0, got {self.max_retries}")
        if self.backoff_s <= 0:
            raise ValueError(f"backoff_s: must be > 0, got {self.backoff_s}")
        if self.backoff_max_s < self.backoff_s:
            raise ValueError(
                f"backoff_max_s: must be >= backoff_s ({self.backoff_s}), got {self.backoff_max_s}"
            )

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number `attempt` (0 for the first retry): full jitter
        under the capped doubling, raised to `retry_after` when the server asked for more."""
        wait = random.uniform(0.0, capped_delay(attempt, self.backoff_s, self.backoff_max_s))
        if retry_after is not None and retry_after > wait:
            return retry_after
        return wait

    def is_retryable(self, error: BaseException) -> bool:
        """True for errors a later attempt may get past (outage, timeout, rate limit)."""
        return isinstance(error, self.retryable) and self.check(error)

    def next_delay(self, error: BaseException, attempt: int) -> float | None:
        """The wait before retry `attempt`; None means give up and record the failure."""
        if attempt >= self.max_retries or not self.is_retryable(error):
            return None
        return self.delay(attempt, self.retry_after(error))
