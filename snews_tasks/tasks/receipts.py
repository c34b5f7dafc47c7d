"""Receipts: how a sender learns that a task it sent has reached a worker.

kombu's Redis transport pops a message (BRPOP) and only then records it as
unacknowledged; a Redis crash between the two loses that message, and
nothing in Celery notices. From the moment a task starts, late acks cover
it. So a sender that must not lose a task keeps its own copy until the task
has started, and sends it again if it has not started long after while its
queue is empty (so it is not merely waiting in line). Receivers are
idempotent, so a task sent twice is harmless.

Two senders use this, with a header each, recorded when the task starts:
  snews_receipt  ingest's tasks: `P:receipt:ID` is set; ingest holds the Kafka
                 offset (and the message) until then
  snews_outbox   the coincidence writer's follow-ups: the task's name leaves
                 the entry's wait set, and the outbox entry goes with the last
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import signals

from ..celery_app import app, settings
from ..operations import queue_depth
from ..resources import resource
from ..store import OUTBOX_HEADER, RECEIPT_HEADER, RedisStore
from .delivery import state_redis

log = logging.getLogger(__name__)



def queue_of(task: str) -> str:
    return app.amqp.router.route({}, task)["queue"].name


def broker_redis() -> redis.Redis:
    return resource("broker-redis", lambda: redis.Redis.from_url(
        settings.broker_url, socket_timeout=5, socket_connect_timeout=5))


def queue_is_empty(task: str) -> bool:
    """Nothing waits in the queue `task` is routed to: had it been sent and not started, it
    would be there (or, with late acks, among the unacknowledged, and already started)."""
    return queue_depth(broker_redis(), queue_of(task)) == 0


@signals.task_prerun.connect
def _task_started(task: Any = None, **_: Any) -> None:
    """A failure here is logged by Celery and the task still runs; its sender then sends it
    again later, which the receivers absorb."""
    request = task.request
    receipt, entries = request.get(RECEIPT_HEADER), request.get(OUTBOX_HEADER)
    if receipt is None and not entries:
        return
    store = RedisStore(state_redis())
    if receipt is not None:
        store.mark_received(str(receipt))
    if entries:
        store.deliveries_started([str(e) for e in entries], task.name)
