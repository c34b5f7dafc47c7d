"""The base of every notification task: one attempt, the service's retry policy, a failure
record, and the writer's outbox told on every exit path.

A retryable error is retried with the policy's backoff (Celery's retry, so
Flower shows each one); an error that is not retryable, or the last retry's,
is recorded with its payload for `snews-tasks failed retry` and then raised, so
the task also shows as failed in Flower. Nothing is dropped silently: a task
sent from the writer's outbox (header `OUTBOX_HEADER`) reports to it when it
returns (delivered, skipped or already done), when its failure is recorded, and
when a retry is due; an entry goes once all of its deliveries have finished. A
task that dies any other way (worker killed, the failure record itself failing)
leaves its entry, and the outbox sweep sends it again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any, TypeVar

import redis
from celery import Task, states
from pymongo import MongoClient

from ..adapters.archive import Archive
from ..adapters.failures import FailureLog
from ..adapters.outbox import OUTBOX_HEADER, Outbox
from ..core.backoff import RetryPolicy
from ..core.routing import FailureKind
from .context import resource, settings, state_redis

log = logging.getLogger(__name__)
R = TypeVar("R")


class Delivered(StrEnum):
    """What a notification task did, when it did not fail."""

    DELIVERED = "delivered"
    ALREADY_DONE = "already done"  # an earlier run delivered it (a redelivery)
    DISABLED = "disabled"  # the service is not configured (no Slack token)


def open_failure_log() -> FailureLog:
    """Connects lazily: it must exist while MongoDB is down, to fall back to Redis."""
    client: MongoClient = MongoClient(
        settings().mongo_url.get_secret_value(),
        appname="snews_tasks-failures",
        serverSelectionTimeoutMS=2_000,
        connectTimeoutMS=2_000,
    )
    return FailureLog(Archive(client, settings().mongo_db), state_redis())


def failure_log() -> FailureLog:
    return resource("failure-log", open_failure_log)


class DeliveryTask(Task):
    """Celery task base (``@app.task(base=DeliveryTask, bind=True)``)."""

    def deliver(
        self,
        *,
        kind: FailureKind,
        records: Mapping[str, Mapping[str, Any]],
        policy: RetryPolicy,
        attempt: Callable[[], R],
    ) -> R:
        """Run one attempt covering `records` (failure key -> document); retry it, or record
        each document's failure under its own key, by the service's policy."""
        try:
            return attempt()
        except Exception as error:
            what = next(iter(records)) if len(records) == 1 else f"({len(records)} documents)"
            delay = policy.next_delay(error, self.request.retries)
            if delay is not None:
                log.warning(
                    "%s %s: attempt %d failed (%s), retrying in %.1f s",
                    kind,
                    what,
                    self.request.retries + 1,
                    type(error).__name__,
                    delay,
                )
                # Before the retry is sent: it may start, and finish, before this returns.
                self._tell_outbox(
                    lambda outbox, entries: outbox.deliveries_retrying(entries, self.name, delay)
                )
                # The policy's limit, not None: None means the task's own max_retries
                # (Celery's default, 3), past which retry() re-raises unrecorded.
                raise self.retry(
                    exc=error, countdown=delay, max_retries=policy.max_retries
                ) from error
            for key, document in records.items():
                failure_log().record_failure(
                    kind=kind,
                    key=key,
                    payload=document,
                    error=f"{type(error).__name__}: {error}",
                    attempts=self.request.retries + 1,
                )
            self.request.failure_recorded = True
            raise

    def after_return(
        self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        """Every exit but a retry (Celery skips this hook for those): a success, a skip and a
        recorded failure finish the delivery; any other failure leaves it to the sweep."""
        if status == states.SUCCESS or getattr(self.request, "failure_recorded", False):
            self._tell_outbox(lambda outbox, entries: outbox.deliveries_done(entries, self.name))

    def _tell_outbox(self, change: Callable[[Outbox, list[str]], None]) -> None:
        """Best effort: should the state Redis not answer, the sweep sends the delivery again
        later, and receivers are idempotent. Tasks not from the outbox (re-drives, the
        ingest's) have no entries."""
        entries = [str(e) for e in self.request.get(OUTBOX_HEADER) or ()]
        if not entries:
            return
        try:
            change(Outbox(state_redis()), entries)
        except redis.RedisError as error:
            log.warning(
                "could not update the outbox (%s: %s); the delivery may be sent again",
                type(error).__name__,
                error,
            )
