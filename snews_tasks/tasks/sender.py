"""Sending tasks: how the writer, the ingest and the operator's commands hand work on."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from ..adapters.broker import queue_depth
from ..core.routing import queue_of
from .app import app
from .context import broker_redis


class CelerySender:
    """Sends tasks with the Celery app; inside `batch` they share one producer and reach the
    broker in one round trip (kombu's publish batch: the task and its task-sent event are each
    one command of a single pipeline), instead of two round trips per task."""

    def __init__(self) -> None:
        self._producer: Any = None

    def __call__(self, task: str, argument: Any, headers: dict[str, Any]) -> None:
        # No result backend round trip: after one failed backend reconnect Celery refuses to
        # send for good ("the Celery application must be restarted").
        app.send_task(
            task, args=[argument], headers=headers, ignore_result=True, producer=self._producer
        )

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        with app.producer_or_acquire() as producer, producer.batch():
            self._producer = producer
            try:
                yield
            finally:
                self._producer = None


def queue_is_empty(task: str) -> bool:
    """Nothing waits in the queue `task` is routed to: had it been sent and not started, it
    would be there (or, with late acks, among the unacknowledged, and already started)."""
    return queue_depth(broker_redis(), queue_of(task)) == 0
