"""The coincidence queue: the single serial writer of the coincidence state.

A message is validated, its namespace's expired observations are dropped,
then one Redis transaction commits the engine's changes together with the
outbox entries (archive documents and alerts). Only after the commit are the
entries handed to the notification queues, so a crash anywhere leaves either
nothing done or a committed outbox that the next task or the sweep delivers.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import AbstractContextManager
from functools import cached_property
from typing import Any

import redis
from kombu.exceptions import OperationalError

from ..celery_app import app, settings
from ..coincidence import namespace_of
from ..messages import Message, MessageError, Tier, format_time_ns
from ..processing import Processor
from ..resources import resource
from ..store import RedisStore, RedisView, StateConflict

log = logging.getLogger(__name__)

SLACK_TASK = "snews.slack.post_alert"
#: Which tasks deliver each kind of outbox entry. Canary alerts skip Slack: the canary proves
#: the path every few minutes, and people need not read that.
DELIVERIES: dict[str, tuple[str, ...]] = {
    "alert": ("snews.storage.store_alert", "snews.kafka.publish_alert", SLACK_TASK),
    "observation": ("snews.storage.store_observation",),
    "reject": ("snews.storage.store_reject",),
}
#: Redis trouble is retried without limit: the message stays queued until the state is reachable.
REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError, StateConflict)

Send = Callable[[str, dict], None]
#: Wraps one dispatch's sends, so a sender can hand them to the broker together.
Batch = Callable[[], AbstractContextManager[object]]


def _archivable_text(payload: Any) -> str:
    """The payload as text MongoDB can store: a reject that cannot be recorded would escape
    the task and fail it. A string may hold lone surrogates (a JSON escape such as \\ud800
    decodes to one), which UTF-8 cannot encode: they are kept as backslash escapes."""
    if isinstance(payload, str):
        return payload.encode("utf-8", "backslashreplace").decode("utf-8")
    return json.dumps(payload, sort_keys=True, default=repr)


def reject_document(payload: Any, error: MessageError, received_ns: int) -> dict:
    """A rejected message as archived: the raw payload, the field and the reason."""
    raw = _archivable_text(payload)
    return {
        "reject_id": hashlib.sha256(raw.encode("utf-8")).hexdigest(),
        "raw": raw,
        "field": error.field,
        "reason": str(error),
        "received_time_utc": format_time_ns(received_ns),
    }


class OnlineDetectors(Collection[str]):
    """The detectors whose heartbeat counts them online, read from the view only when an alert
    is built: most messages raise none, and the read is a round trip inside the transaction."""

    def __init__(self, view: RedisView, processor: Processor, now_ns: int) -> None:
        self.view = view
        self.processor = processor
        self.now_ns = now_ns

    @cached_property
    def _names(self) -> frozenset[str]:
        return frozenset(d for d, hb in self.view.heartbeats().items()
                         if self.processor.is_online(hb["seen_ns"], hb["status"], self.now_ns))

    def __contains__(self, detector: object) -> bool:
        return detector in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


class CoincidenceService:
    """The writer's logic, free of Celery so tests can drive it directly."""

    def __init__(self, processor: Processor, store: RedisStore, send: Send,
                 *, slack_enabled: bool, batch: Batch = contextlib.nullcontext) -> None:
        self.processor = processor
        self.store = store
        self.send = send
        self.batch = batch
        self.skip = set() if slack_enabled else {SLACK_TASK}

    def handle(self, payload: Any, *, now_ns: int | None = None) -> str:
        now_ns = time.time_ns() if now_ns is None else now_ns
        try:
            message = self.processor.parse(payload)
            self.processor.check_fresh(message, now_ns)
            if message.tier not in (Tier.COINCIDENCE, Tier.RETRACTION):
                raise MessageError("tier", f"{message.tier.value} messages go to the storage queue")
            self.expire(namespace_of(message.is_test), now_ns)
            outcome = self.store.transact(lambda view: self._step(view, message, now_ns))
        except MessageError as error:
            self._reject(payload, error, now_ns)
            outcome = f"rejected: {error}"
        except REDIS_ERRORS:
            raise  # the task retries: the message waits for the state to be reachable
        except Exception as error:
            # A bug must not lose the message: it is recorded with its payload, then surfaces.
            self._reject(payload, MessageError(None, f"internal error: {error!r}"), now_ns)
            self.dispatch()
            raise
        self.dispatch()
        return outcome

    def expire(self, namespace: str, now_ns: int) -> str:
        if not self.store.has_observations_before(namespace, now_ns - self.processor.lifetime_ns):
            return "expired 0"  # the usual case: one read instead of a transaction's three

        def step(view: RedisView) -> str:
            changes = self.processor.expire(view, namespace, now_ns=now_ns, new_id=view.new_id)
            if changes.removed:
                view.stage(namespace, changes)
            return changes.outcome

        return self.store.transact(step)

    def dispatch(self, *, older_than_s: float = 0.0) -> int:
        """Hand committed outbox entries to their queues; at-least-once, receivers are idempotent."""
        entries = self.store.outbox(older_than_s=older_than_s)
        if not entries:
            return 0
        with self.batch():
            for entry in entries.values():
                for task in DELIVERIES[entry["kind"]]:
                    if task not in self.skip and not (task == SLACK_TASK
                                                      and entry["document"].get("is_canary")):
                        self.send(task, entry["document"])
        self.store.outbox_done(entries)
        return len(entries)

    def _step(self, view: RedisView, message: Message, now_ns: int) -> str:
        online = OnlineDetectors(view, self.processor, now_ns)
        outcome = self.processor.step(view, message, now_ns=now_ns, seq=view.next_seq(),
                                      new_id=view.new_id, heartbeat_online=online)
        if outcome.changes.outcome == "duplicate":
            return "duplicate"
        view.stage(outcome.namespace, outcome.changes)
        document = {**message.to_dict(), "received_time_utc": format_time_ns(now_ns),
                    "outcome": outcome.changes.outcome}
        view.stage_outbox(f"observation:{message.uuid}",
                          {"kind": "observation", "document": document})
        for alert in outcome.alerts:
            view.stage_outbox(f"alert:{alert['alert_id']}:{alert['revision']}",
                              {"kind": "alert", "document": alert})
        return outcome.changes.outcome

    def close(self) -> None:
        """Worker shutdown closes every resource (`resources.close_all`); this one owns a client."""
        self.store.client.close()

    def _reject(self, payload: Any, error: MessageError, now_ns: int) -> None:
        document = reject_document(payload, error, now_ns)
        log.warning("rejected message: %s", error)
        self.store.client.hset(self.store.key("outbox"), f"reject:{document['reject_id']}",
                               json.dumps({"kind": "reject", "document": document,
                                           "staged_at": time.time(), "order": [time.time(), 0]}))


class CelerySender:
    """Sends follow-up tasks with the Celery app; inside `batch` they share one producer and
    reach the broker in one round trip (kombu's publish batch: the task and its task-sent event
    are each one command of a single pipeline), instead of two round trips per task."""

    def __init__(self) -> None:
        self._producer: Any = None

    def __call__(self, task: str, document: dict) -> None:
        app.send_task(task, args=[document], ignore_result=True, producer=self._producer)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        with app.producer_or_acquire() as producer:
            # Older kombu has no publish batch: the sends then go one by one, as without it.
            batched = producer.batch() if hasattr(producer, "batch") else contextlib.nullcontext()
            with batched:
                self._producer = producer
                try:
                    yield
                finally:
                    self._producer = None


def service() -> CoincidenceService:
    def build() -> CoincidenceService:
        client = redis.Redis.from_url(settings.state_redis_url, decode_responses=True)
        sender = CelerySender()
        return CoincidenceService(Processor(settings), RedisStore(client), sender,
                                  slack_enabled=settings.slack_token is not None,
                                  batch=sender.batch)

    return resource("coincidence-service", build)


#: What the writer waits out with the message in hand: the state Redis, or the broker that
#: takes its follow-up tasks, unreachable. A Celery retry would send the message anew, and
#: when the broker is down that send fails and Celery drops the message (Reject without
#: requeue); a retry would also apply it after the messages behind it.
WAIT_ERRORS = (*REDIS_ERRORS, OperationalError)
WAIT_FIRST_S = 0.5
WAIT_MAX_S = 5.0


@app.task(name="snews.coincidence.process", acks_late=True, reject_on_worker_lost=True)
def process(payload: Any) -> str:
    """One observation message (any JSON payload; bad ones are rejected and recorded)."""
    wait_s = WAIT_FIRST_S
    while True:
        try:
            return service().handle(payload)
        except WAIT_ERRORS as error:
            log.warning("state or broker unreachable (%s: %s); trying the message again in "
                        "%.1f s", type(error).__name__, error, wait_s)
            time.sleep(wait_s)
            wait_s = min(2 * wait_s, WAIT_MAX_S)


@app.task(name="snews.coincidence.expire", bind=True, max_retries=None)
def expire(self: Any) -> dict[str, str]:
    """Periodic expiry, so the cache shrinks even when no message arrives."""
    svc = service()
    now_ns = time.time_ns()
    try:
        result = {ns: svc.expire(ns, now_ns) for ns in ("live", "test")}
        svc.store.forget_processed(now_ns)
        return result
    except REDIS_ERRORS as error:
        raise self.retry(exc=error, countdown=5) from error


@app.task(name="snews.coincidence.sweep_outbox")
def sweep_outbox() -> int:
    """Deliver entries a crashed task committed but never handed on."""
    return service().dispatch(older_than_s=10.0)
