"""The coincidence queue: the single serial writer of the coincidence state (`writer`),
its periodic expiry and its outbox sweep."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

from kombu.exceptions import BatchPublishError, OperationalError

from ..adapters.state import WriterFenced
from ..core.backoff import Backoff
from ..core.processing import Processor
from ..core.routing import TaskName
from .app import app
from .context import resource, settings, state_client
from .kafka import alert_publisher
from .sender import CelerySender, queue_is_empty
from .writer import REDIS_ERRORS, CoincidenceService, PublishFromWriter
from .writer_lease import LEASE_LOST_EXIT, lease_token

log = logging.getLogger(__name__)
R = TypeVar("R")


def service() -> CoincidenceService:
    """The process's writer, built once (once it holds the writer lease: commits carry its
    token, and a commit after the lease was taken over is refused)."""

    def build() -> CoincidenceService:
        current = settings()
        client = state_client()
        sender = CelerySender()
        return CoincidenceService.on_redis(
            client,
            Processor(current),
            sender,
            lease_token=lease_token(),
            queue_is_empty=queue_is_empty,
            slack_enabled=current.slack_token is not None,
            batch=sender.batch,
            publish_now=PublishFromWriter(alert_publisher),
            localization_enabled=current.localization,
        )

    return resource("coincidence-service", build)


#: What the writer waits out with the messages in hand: the state Redis, or the broker that
#: takes its follow-up tasks, unreachable (a publish batch cut short says so with its own
#: error; the next try finds the batch applied and hands on what the outbox still holds).
#: A Celery retry would send the messages anew, and when the broker is down that send fails
#: and Celery drops them (Reject without requeue); it would also apply them after the
#: messages behind them.
WAIT_ERRORS = (*REDIS_ERRORS, OperationalError, BatchPublishError)
WAIT_FIRST_S = 0.2
WAIT_MAX_S = 1.0  # a Redis failover takes about 2 s: resume right after it


def _fenced() -> NoReturn:
    """Another writer holds the lease: acknowledge nothing (the batch in hand goes back to
    the queue for it) and stop; the supervisor starts this worker again as a standby."""
    log.error("this writer's lease was taken over: exiting without acknowledging the batch")
    logging.shutdown()
    os._exit(LEASE_LOST_EXIT)


def _waiting_out_outages(work: Callable[[], R]) -> R:
    """Run `work` on the writer until the state and the broker let it through; a writer
    whose lease was taken over stops at once."""
    backoff = Backoff(WAIT_FIRST_S, WAIT_MAX_S)
    while True:
        try:
            return work()
        except WriterFenced:
            _fenced()
        except WAIT_ERRORS as error:
            wait_s = backoff.delay()
            log.warning(
                "state or broker unreachable (%s: %s); trying again in %.1f s",
                type(error).__name__,
                error,
                wait_s,
            )
            time.sleep(wait_s)


@app.task(name=TaskName.PROCESS, acks_late=True, reject_on_worker_lost=True)
def process(payloads: list) -> list[str]:
    """A batch of observation messages (any JSON payloads; bad ones are rejected and recorded).
    Anything but a list is taken as one message, so it is rejected and recorded too."""
    batch = payloads if isinstance(payloads, list) else [payloads]
    return _waiting_out_outages(lambda: service().handle_many(batch))


@app.task(name=TaskName.ATTACH_LOCALIZATION, acks_late=True, reject_on_worker_lost=True)
def attach_localization(result: dict) -> str:
    """A localize task's result (`tasks.localize`): the coincidence's next revision carries
    it, if its members are still those localized. Only the localize task sends this; the
    ingest sends observation messages to `process` alone."""
    return _waiting_out_outages(lambda: service().attach_localization(result))


@app.task(name=TaskName.EXPIRE, bind=True, max_retries=None)
def expire(self: Any) -> dict[str, str]:
    """Periodic expiry, so the cache shrinks even when no message arrives."""
    try:
        return service().expire(time.time_ns())
    except WriterFenced:
        _fenced()
    except REDIS_ERRORS as error:
        raise self.retry(exc=error, countdown=5) from error


@app.task(name=TaskName.SWEEP_OUTBOX)
def sweep_outbox() -> dict[str, int]:
    """Deliver entries a crashed task committed but never handed on, and send again the
    deliveries that were lost on their way to a worker."""
    svc = service()
    return {"handed on": svc.dispatch(older_than_s=10.0), "sent again": svc.resend_unfinished()}
