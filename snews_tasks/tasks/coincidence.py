"""The coincidence queue: the single serial writer of the coincidence state.

A message is validated, its namespace's expired observations are dropped,
then one Redis transaction commits the engine's changes together with the
outbox entries (archive documents and alerts). Only after the commit are the
entries handed to the notification queues, so a crash anywhere leaves either
nothing done or a committed outbox that the next task or the sweep delivers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import redis

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


def reject_document(payload: Any, error: MessageError, received_ns: int) -> dict:
    """A rejected message as archived: the raw payload, the field and the reason."""
    raw = payload if isinstance(payload, str) else json.dumps(payload, sort_keys=True, default=repr)
    return {
        "reject_id": hashlib.sha256(raw.encode("utf-8", "surrogateescape")).hexdigest(),
        "raw": raw,
        "field": error.field,
        "reason": str(error),
        "received_time_utc": format_time_ns(received_ns),
    }


class CoincidenceService:
    """The writer's logic, free of Celery so tests can drive it directly."""

    def __init__(self, processor: Processor, store: RedisStore, send: Send,
                 *, slack_enabled: bool) -> None:
        self.processor = processor
        self.store = store
        self.send = send
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
        def step(view: RedisView) -> str:
            changes = self.processor.expire(view, namespace, now_ns=now_ns, new_id=view.new_id)
            if changes.removed:
                view.stage(namespace, changes)
            return changes.outcome

        return self.store.transact(step)

    def dispatch(self, *, older_than_s: float = 0.0) -> int:
        """Hand committed outbox entries to their queues; at-least-once, receivers are idempotent."""
        entries = self.store.outbox(older_than_s=older_than_s)
        for entry in entries.values():
            for task in DELIVERIES[entry["kind"]]:
                if task not in self.skip and not (task == SLACK_TASK
                                                  and entry["document"].get("is_canary")):
                    self.send(task, entry["document"])
        self.store.outbox_done(entries)
        return len(entries)

    def _step(self, view: RedisView, message: Message, now_ns: int) -> str:
        heartbeats = view.heartbeats()
        online = [d for d, hb in heartbeats.items()
                  if self.processor.is_online(hb["seen_ns"], hb["status"], now_ns)]
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


def _send(task: str, document: dict) -> None:
    app.send_task(task, args=[document], ignore_result=True)


def service() -> CoincidenceService:
    def build() -> CoincidenceService:
        client = redis.Redis.from_url(settings.state_redis_url, decode_responses=True)
        return CoincidenceService(Processor(settings), RedisStore(client), _send,
                                  slack_enabled=settings.slack_token is not None)

    return resource("coincidence-service", build)


@app.task(name="snews.coincidence.process", bind=True, acks_late=True,
          reject_on_worker_lost=True, max_retries=None)
def process(self: Any, payload: Any) -> str:
    """One observation message (any JSON payload; bad ones are rejected and recorded)."""
    try:
        return service().handle(payload)
    except REDIS_ERRORS as error:
        raise self.retry(exc=error, countdown=1) from error


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
