"""What every notification task shares: one attempt, the service's retry policy, a failure record.

A retryable error is retried with the policy's backoff (Celery's retry, so
Flower shows each one); an error that is not retryable, or the last retry's,
is recorded with its payload for `snews-tasks failed retry` and then raised,
so the task also shows as failed in Flower. Nothing is dropped silently: the
writer's outbox entry of a delivery (header `snews_outbox`) goes only once
the delivery is done or its failure recorded, and a retry tells it when it is
due, so the outbox sweep sends again a delivery that died any other way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import redis
from pymongo import MongoClient

from ..celery_app import settings
from ..archive import Archive
from ..failures import FailureLog
from ..resources import resource
from ..retry import RetryPolicy
from ..store import OUTBOX_HEADER, RedisStore

log = logging.getLogger(__name__)
R = TypeVar("R")

#: Which task re-drives each kind of failure record.
REDRIVE_TASKS = {
    "alert_kafka": "snews.kafka.publish_alert",
    "alert_slack": "snews.slack.post_alert",
    "alert_store": "snews.storage.store_alert",
    "observation_store": "snews.storage.store_observation",
    "reject_store": "snews.storage.store_reject",
    "heartbeat_store": "snews.storage.store_heartbeat",
}


def state_redis() -> redis.Redis:
    return resource("state-redis", lambda: redis.Redis.from_url(settings.state_redis_url,
                                                                decode_responses=True))


def open_failure_log() -> FailureLog:
    """Connects lazily: it must exist while MongoDB is down, to fall back to Redis."""
    client: MongoClient = MongoClient(settings.mongo_url.reveal(), appname="snews_tasks-failures",
                                      serverSelectionTimeoutMS=2_000, connectTimeoutMS=2_000)
    return FailureLog(Archive(client, settings.mongo_db), state_redis())


def failure_log() -> FailureLog:
    return resource("failure-log", open_failure_log)


def deliver(task: Any, *, kind: str, key: str, document: Mapping[str, Any],
            policy: RetryPolicy, attempt: Callable[[], R]) -> R:
    """Run one attempt; retry it, or record it as failed, by the service's policy."""
    return deliver_many(task, kind=kind, records={key: document}, policy=policy,
                        attempt=attempt)


def deliver_many(task: Any, *, kind: str, records: Mapping[str, Mapping[str, Any]],
                 policy: RetryPolicy, attempt: Callable[[], R]) -> R:
    """`deliver` for an attempt covering several documents: a failure is recorded for each,
    under its own key, so `failed retry` re-drives them one by one."""
    entries = [str(e) for e in task.request.get(OUTBOX_HEADER) or ()]
    try:
        result = attempt()
    except Exception as error:
        what = next(iter(records)) if len(records) == 1 else f"({len(records)} documents)"
        delay = policy.next_delay(error, task.request.retries)
        if delay is not None:
            log.warning("%s %s: attempt %d failed (%s), retrying in %.1f s", kind, what,
                        task.request.retries + 1, type(error).__name__, delay)
            _tell_outbox(entries,
                         lambda store: store.deliveries_retrying(entries, task.name, delay))
            # The policy's limit, not None: None means the task's own max_retries (Celery's
            # default, 3), past which retry() re-raises and the failure would go unrecorded.
            raise task.retry(exc=error, countdown=delay,
                             max_retries=policy.max_retries) from error
        for key, document in records.items():
            failure_log().record_failure(kind=kind, key=key, payload=document,
                                         error=f"{type(error).__name__}: {error}",
                                         attempts=task.request.retries + 1)
        _tell_outbox(entries, lambda store: store.deliveries_done(entries, task.name))  # reported
        raise
    _tell_outbox(entries, lambda store: store.deliveries_done(entries, task.name))
    return result


def _tell_outbox(entries: list[str], change: Callable[[RedisStore], None]) -> None:
    """Best effort: should the state Redis not answer, the sweep sends the delivery again
    later, and receivers are idempotent. Tasks not from the outbox (re-drives, the ingest's)
    have no entries."""
    if not entries:
        return
    try:
        change(RedisStore(state_redis()))
    except redis.RedisError as error:
        log.warning("could not update the outbox (%s: %s); the delivery may be sent again",
                    type(error).__name__, error)
