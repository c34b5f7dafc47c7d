from __future__ import annotations

import urllib.error

import adc.errors
import confluent_kafka
import pytest
import redis
from pymongo.errors import (AutoReconnect, DuplicateKeyError, NetworkTimeout, OperationFailure,
                            ServerSelectionTimeoutError)
from slack_sdk.errors import SlackApiError
from slack_sdk.web import SlackResponse

from snews_tasks.adapters.retry_policies import kafka_policy, mongo_policy, slack_policy
from snews_tasks.core import backoff
from snews_tasks.core.backoff import Backoff, RetryPolicy
from snews_tasks.settings import load_settings

SETTINGS = load_settings("test", environ={})


def policy(max_retries: int = 5, backoff_s: float = 1.0, backoff_max_s: float = 10.0
           ) -> RetryPolicy:
    return RetryPolicy((ConnectionError,), max_retries, backoff_s, backoff_max_s)


def slack_error(status: int, error: str, headers: dict[str, str] | None = None) -> SlackApiError:
    response = SlackResponse(client=None, http_verb="POST", api_url="chat.postMessage",
                             req_args={}, data={"ok": False, "error": error},
                             headers=headers or {}, status_code=status)
    return SlackApiError("The request to the Slack API failed.", response)


def kafka_error(code: int) -> confluent_kafka.KafkaError:
    return confluent_kafka.KafkaError(code)


def test_delay_stays_within_zero_and_the_capped_exponential(monkeypatch) -> None:
    upper = policy(backoff_s=1.0, backoff_max_s=10.0)
    monkeypatch.setattr(backoff.random, "uniform", lambda low, high: high)
    assert [upper.delay(attempt) for attempt in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert upper.delay(10_000) == 10.0  # no overflow for absurd attempt numbers
    monkeypatch.setattr(backoff.random, "uniform", lambda low, high: low)
    assert upper.delay(3) == 0.0


def test_delay_is_jittered_and_bounded() -> None:
    samples = [policy().delay(2) for _ in range(500)]
    assert all(0.0 <= sample <= 4.0 for sample in samples)
    assert len(set(samples)) > 400  # full jitter, not a fixed schedule
    assert max(samples) > 3.0 and min(samples) < 1.0


def test_retry_after_is_a_floor_not_a_ceiling(monkeypatch) -> None:
    monkeypatch.setattr(backoff.random, "uniform", lambda low, high: high)
    assert policy().delay(0, retry_after=30.0) == 30.0
    assert policy().delay(3, retry_after=0.5) == 8.0


def test_invalid_policy_and_attempt_are_refused() -> None:
    with pytest.raises(ValueError, match="backoff_max_s"):
        policy(backoff_s=5.0, backoff_max_s=1.0)
    with pytest.raises(ValueError, match="max_retries"):
        policy(max_retries=-1)
    with pytest.raises(ValueError, match="attempt"):
        policy().delay(-1)


def test_next_delay_gives_up_when_retries_are_exhausted_or_the_error_is_permanent() -> None:
    three = policy(max_retries=3)
    assert three.next_delay(ConnectionError("down"), 2) is not None
    assert three.next_delay(ConnectionError("down"), 3) is None
    assert three.next_delay(ValueError("bad alert"), 0) is None


@pytest.mark.parametrize("error, retryable", [
    (AutoReconnect("primary stepped down"), True),
    (ServerSelectionTimeoutError("no server"), True),
    (NetworkTimeout("timed out"), True),
    (OperationFailure("bad update"), False),
    (DuplicateKeyError("E11000"), False),
    (ValueError("observation: field 'uuid' ..."), False),
])
def test_mongo_policy_classifies(error: BaseException, retryable: bool) -> None:
    assert mongo_policy(SETTINGS).is_retryable(error) is retryable


@pytest.mark.parametrize("error, retryable", [
    (adc.errors.KafkaException(kafka_error(confluent_kafka.KafkaError._MSG_TIMED_OUT)), True),
    (adc.errors.KafkaException(kafka_error(confluent_kafka.KafkaError._TRANSPORT)), True),
    (confluent_kafka.KafkaException(kafka_error(confluent_kafka.KafkaError._ALL_BROKERS_DOWN)),
     True),
    (confluent_kafka.KafkaException(kafka_error(confluent_kafka.KafkaError._TIMED_OUT)), True),
    (adc.errors.KafkaException(kafka_error(confluent_kafka.KafkaError.MSG_SIZE_TOO_LARGE)),
     False),
    (adc.errors.KafkaException(
        kafka_error(confluent_kafka.KafkaError.TOPIC_AUTHORIZATION_FAILED)), False),
    (TimeoutError("no delivery report"), True),
    (ValueError("alert: field 'is_test' ..."), False),
])
def test_kafka_policy_classifies(error: BaseException, retryable: bool) -> None:
    assert kafka_policy(SETTINGS).is_retryable(error) is retryable


@pytest.mark.parametrize("error, retryable", [
    (slack_error(429, "ratelimited", {"Retry-After": "3"}), True),
    (slack_error(500, "internal_error"), True),
    (slack_error(503, "service_unavailable"), True),
    (slack_error(200, "channel_not_found"), False),
    (slack_error(200, "invalid_auth"), False),
    (urllib.error.URLError("connection refused"), True),
    (ConnectionResetError("reset"), True),
    (TimeoutError("read timed out"), True),
    # The state Redis, which remembers what was posted, restarting or failing over.
    (redis.ConnectionError("Connection closed by server."), True),
    (ValueError("alert: field 'alert_type' ..."), False),
])
def test_slack_policy_classifies(error: BaseException, retryable: bool) -> None:
    assert slack_policy(SETTINGS).is_retryable(error) is retryable


def test_slack_policy_waits_at_least_retry_after() -> None:
    slack = slack_policy(SETTINGS)
    assert slack.retry_after(slack_error(429, "ratelimited", {"retry-after": "42"})) == 42.0
    assert slack.retry_after(slack_error(429, "ratelimited", {"Retry-After": "soon"})) is None
    assert slack.retry_after(slack_error(429, "ratelimited")) is None
    assert slack.next_delay(slack_error(429, "ratelimited", {"Retry-After": "42"}), 0) >= 42.0


def test_policies_take_their_numbers_from_settings() -> None:
    for service_policy in (mongo_policy(SETTINGS), kafka_policy(SETTINGS), slack_policy(SETTINGS)):
        assert service_policy.max_retries == SETTINGS.retry_max
        assert service_policy.backoff_s == SETTINGS.retry_backoff_s
        assert service_policy.backoff_max_s == SETTINGS.retry_backoff_max_s


def test_backoff_doubles_to_its_cap_and_starts_again_after_a_reset() -> None:
    waits = Backoff(0.5, 3.0)
    assert [waits.delay() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    waits.reset()
    assert waits.delay() == 0.5
