"""One retry policy per external service (MongoDB, Kafka, Slack).

A delivery task makes one attempt; when it fails, the policy decides whether the
error is worth retrying (a broker that is down, a rate limit) or permanent (a
bad token, a missing channel), and how long to wait. Waits grow exponentially
with *full jitter* (uniform in [0, cap]) so that many workers retrying after the
same outage do not hit the recovering service in lockstep; a server's own
Retry-After is a floor, because retrying earlier only earns another 429.

The Celery wrapper uses it like this::

    except Exception as error:
        delay = policy.next_delay(error, self.request.retries)
        if delay is None:      # permanent, or retries exhausted
            failure_log.record_failure(...)
        else:
            raise self.retry(exc=error, countdown=delay)
"""

from __future__ import annotations

import http.client
import math
import random
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass

import adc.errors
import confluent_kafka
from pymongo.errors import (AutoReconnect, ConnectionFailure, NetworkTimeout,
                            ServerSelectionTimeoutError)
from slack_sdk.errors import SlackApiError

from .settings import Settings


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
            raise ValueError(f"backoff_max_s: must be >= backoff_s ({self.backoff_s}), "
                             f"got {self.backoff_max_s}")

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number `attempt` (0 for the first retry).

        Full jitter in [0, min(backoff_max_s, backoff_s * 2**attempt)], raised to
        `retry_after` when the server asked for a longer wait.
        """
        if attempt < 0:
            raise ValueError(f"attempt: must be >= 0, got {attempt}")
        # min() before the power would overflow for large attempts; cap the exponent instead.
        cap = min(self.backoff_max_s, self.backoff_s * 2.0 ** min(attempt, 64))
        wait = random.uniform(0.0, cap)
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


# --- MongoDB -----------------------------------------------------------------------------------

# ConnectionFailure is the base of the others; they are listed so the intent is explicit.
MONGO_RETRYABLE: tuple[type[BaseException], ...] = (
    AutoReconnect, ServerSelectionTimeoutError, NetworkTimeout, ConnectionFailure)


def mongo_policy(settings: Settings) -> RetryPolicy:
    """MongoDB unreachable or failing over; write errors (bad documents) are permanent."""
    return RetryPolicy(MONGO_RETRYABLE, settings.retry_max, settings.retry_backoff_s,
                       settings.retry_backoff_max_s)


# --- Kafka -------------------------------------------------------------------------------------

KAFKA_RETRYABLE: tuple[type[BaseException], ...] = (
    adc.errors.KafkaException, confluent_kafka.KafkaException, TimeoutError)

# librdkafka marks its local errors (timeouts, lost connections) as not retriable, but for a
# task that retries minutes later they are exactly the transient ones.
KAFKA_TRANSIENT_CODES = frozenset({
    confluent_kafka.KafkaError._TIMED_OUT,
    confluent_kafka.KafkaError._MSG_TIMED_OUT,
    confluent_kafka.KafkaError._TRANSPORT,
    confluent_kafka.KafkaError._ALL_BROKERS_DOWN,
})


def _kafka_error_of(error: BaseException) -> confluent_kafka.KafkaError | None:
    if isinstance(error, adc.errors.KafkaException):
        return error.error
    if isinstance(error, confluent_kafka.KafkaException) and error.args:
        first = error.args[0]
        return first if isinstance(first, confluent_kafka.KafkaError) else None
    return None


def is_transient_kafka_error(error: BaseException) -> bool:
    """A broker outage or timeout, not a rejected message (too large, unauthorised)."""
    if isinstance(error, TimeoutError):
        return True
    kafka_error = _kafka_error_of(error)
    if kafka_error is None:
        return False
    return kafka_error.retriable() or kafka_error.code() in KAFKA_TRANSIENT_CODES


def kafka_policy(settings: Settings) -> RetryPolicy:
    """Broker down or slow; a message the broker refuses is permanent."""
    return RetryPolicy(KAFKA_RETRYABLE, settings.retry_max, settings.retry_backoff_s,
                       settings.retry_backoff_max_s, check=is_transient_kafka_error)


# --- Slack -------------------------------------------------------------------------------------

# HTTPException covers a response cut off mid-way (IncompleteRead, RemoteDisconnected).
SLACK_RETRYABLE: tuple[type[BaseException], ...] = (
    SlackApiError, urllib.error.URLError, ConnectionError, TimeoutError,
    http.client.HTTPException)


def is_transient_slack_error(error: BaseException) -> bool:
    """Rate limits and server errors pass; `ok: false` answers (bad channel, bad token) do not."""
    if isinstance(error, SlackApiError):
        status = getattr(error.response, "status_code", None)
        return isinstance(status, int) and (status == 429 or status >= 500)
    return True


def slack_retry_after(error: BaseException) -> float | None:
    """Slack's Retry-After header (seconds) on a 429, or None when absent or unreadable."""
    if not isinstance(error, SlackApiError):
        return None
    headers = getattr(error.response, "headers", None) or {}
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if isinstance(value, list):  # some slack_sdk paths keep header values as lists
        value = value[0] if value else None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def slack_policy(settings: Settings) -> RetryPolicy:
    """Slack down, slow or rate limiting (honouring Retry-After); API refusals are permanent."""
    return RetryPolicy(SLACK_RETRYABLE, settings.retry_max, settings.retry_backoff_s,
                       settings.retry_backoff_max_s, check=is_transient_slack_error,
                       retry_after=slack_retry_after)
