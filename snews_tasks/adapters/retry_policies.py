"""One retry policy per external service: which of its errors are worth retrying.

A delivery task makes one attempt; when it fails, the service's policy decides
whether the error may be transient (a server down, a rate limit) or permanent
(a bad token, a missing channel), and how long to wait (`core.backoff`).
"""

from __future__ import annotations

import http.client
import math
import smtplib
import ssl
import urllib.error
from typing import Any

import adc.errors
import confluent_kafka
import redis
from pymongo.errors import (
    AutoReconnect,
    ConnectionFailure,
    NetworkTimeout,
    ServerSelectionTimeoutError,
)
from slack_sdk.errors import SlackApiError

from ..core.backoff import RetryPolicy
from ..settings import Settings
from .skymap_store import NotStored

# --- MongoDB -----------------------------------------------------------------------------------

# ConnectionFailure is the base of the others; they are listed so the intent is explicit.
MONGO_RETRYABLE: tuple[type[BaseException], ...] = (
    AutoReconnect,
    ServerSelectionTimeoutError,
    NetworkTimeout,
    ConnectionFailure,
)


def _policy(
    settings: Settings, retryable: tuple[type[BaseException], ...], **inspect: Any
) -> RetryPolicy:
    """The deployment's retry limits and backoff, for one service's retryable errors."""
    return RetryPolicy(
        retryable,
        settings.retry_max,
        settings.retry_backoff_s,
        settings.retry_backoff_max_s,
        **inspect,
    )


def mongo_policy(settings: Settings) -> RetryPolicy:
    """MongoDB unreachable or failing over; write errors (bad documents) are permanent."""
    return _policy(settings, MONGO_RETRYABLE)


#: The state Redis unreachable or slow (a heartbeat updates both it and the archive).
REDIS_RETRYABLE: tuple[type[BaseException], ...] = (redis.ConnectionError, redis.TimeoutError)


def heartbeat_policy(settings: Settings) -> RetryPolicy:
    """A heartbeat is recorded in the state Redis and archived in MongoDB: either outage."""
    return _policy(settings, MONGO_RETRYABLE + REDIS_RETRYABLE)


# --- Kafka -------------------------------------------------------------------------------------

KAFKA_RETRYABLE: tuple[type[BaseException], ...] = (
    adc.errors.KafkaException,
    confluent_kafka.KafkaException,
    TimeoutError,
)

# librdkafka marks its local errors (timeouts, lost connections) as not retriable, but for a
# task that retries minutes later they are exactly the transient ones.
KAFKA_TRANSIENT_CODES = frozenset(
    {
        confluent_kafka.KafkaError._TIMED_OUT,
        confluent_kafka.KafkaError._MSG_TIMED_OUT,
        confluent_kafka.KafkaError._TRANSPORT,
        confluent_kafka.KafkaError._ALL_BROKERS_DOWN,
    }
)


def _kafka_error_of(error: BaseException) -> confluent_kafka.KafkaError | None:
    if isinstance(error, adc.errors.KafkaException):
        wrapped: confluent_kafka.KafkaError = error.error
        return wrapped
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
    return _policy(settings, KAFKA_RETRYABLE, check=is_transient_kafka_error)


# --- GCN ---------------------------------------------------------------------------------------


def is_transient_gcn_error(error: BaseException) -> bool:
    """As for the alert topics, and an authentication failure too: with OpenID Connect that
    is also what GCN's token endpoint being unreachable looks like. A wrong secret then ends
    in the failure record after the retries, where `failed retry` re-drives it once fixed."""
    kafka_error = _kafka_error_of(error)
    if kafka_error is not None and kafka_error.code() == confluent_kafka.KafkaError._AUTHENTICATION:
        return True
    return is_transient_kafka_error(error)


def gcn_policy(settings: Settings) -> RetryPolicy:
    """GCN's broker (or the local notice topic) down or slow, or its token endpoint away; a
    notice the broker refuses is permanent."""
    return _policy(settings, KAFKA_RETRYABLE, check=is_transient_gcn_error)


# --- Slack -------------------------------------------------------------------------------------

# HTTPException covers a response cut off mid-way (IncompleteRead, RemoteDisconnected).
SLACK_RETRYABLE: tuple[type[BaseException], ...] = (
    SlackApiError,
    urllib.error.URLError,
    ConnectionError,
    TimeoutError,
    http.client.HTTPException,
)


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
    if value is None:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def slack_policy(settings: Settings) -> RetryPolicy:
    """Slack down, slow or rate limiting (honouring Retry-After); API refusals are permanent.
    A localized revision's picture is read from MongoDB (GridFS), and what was posted is
    remembered in the state Redis: their outages, and a picture not stored yet, are retried
    too."""
    return _policy(
        settings,
        (*SLACK_RETRYABLE, *MONGO_RETRYABLE, *REDIS_RETRYABLE, NotStored),
        check=is_transient_slack_error,
        retry_after=slack_retry_after,
    )


# --- SMTP --------------------------------------------------------------------------------------

# smtplib's errors are OSErrors, as are refused connections, timeouts and name lookups.
SMTP_RETRYABLE: tuple[type[BaseException], ...] = (OSError,)


def _transient_code(code: object) -> bool:
    return isinstance(code, int) and 400 <= code < 500


def is_transient_smtp_error(error: BaseException) -> bool:
    """A server down, disconnecting or answering 4xx (try later); 5xx answers (bad address,
    refused login) and a server without STARTTLS are permanent."""
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        return all(_transient_code(code) for code, _ in error.recipients.values())
    if isinstance(error, smtplib.SMTPResponseException):
        return _transient_code(error.smtp_code)
    return not isinstance(error, smtplib.SMTPNotSupportedError | ssl.SSLCertVerificationError)


def mail_policy(settings: Settings) -> RetryPolicy:
    """The SMTP server down or busy: mail waits (and ends in a failure record to re-drive)."""
    return _policy(settings, SMTP_RETRYABLE, check=is_transient_smtp_error)


# --- Localization --------------------------------------------------------------------------------


def localization_policy(
    settings: Settings, broker_errors: tuple[type[BaseException], ...]
) -> RetryPolicy:
    """The localize task reads timing-tier messages and stores sky maps in MongoDB, then hands
    its result to the writer through the Celery broker: an outage of either is retried. The
    broker's errors are the caller's to name (the adapters know nothing of Celery)."""
    return _policy(settings, MONGO_RETRYABLE + broker_errors)
