"""Receipts: how the ingest learns that a task it sent has reached a worker.

kombu's Redis transport pops a message (BRPOP) and only then records it as
unacknowledged; a Redis crash between the two loses that message, and
nothing in Celery notices. From the moment a task starts, late acks cover
it. So the ingest keeps its own copy, and the Kafka offset, until the task
has started (`P:receipt:ID` set here for a task sent with the header
`snews_receipt`), and sends it again if it has not started long after while
its queue is empty (so it is not merely waiting in line). Receivers are
idempotent, so a task sent twice is harmless. The writer's outbox goes
further: its entries wait until their delivery tasks have finished
(`delivery.deliver_many`).
"""

from __future__ import annotations

from typing import Any

import redis
from celery import signals

from ..celery_app import app, settings
from ..operations import queue_depth
from ..resources import resource
from ..store import RECEIPT_HEADER, RedisStore
from .delivery import state_redis



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
    """A failure here is logged by Celery and the task still runs; the ingest then sends it
    again later, which the receivers absorb."""
    receipt = task.request.get(RECEIPT_HEADER)
    if receipt is not None:
        RedisStore(state_redis()).mark_received(str(receipt))
