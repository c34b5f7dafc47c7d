"""The coincidence worker takes the writer lease before it consumes the coincidence queue.

Several coincidence workers may run; each starts as a standby, its coincidence queue
deselected. A thread takes the lease when it is free and then renews it; once this worker
holds it, a consumer bootstep starts consuming the queue. A worker that loses the lease
(frozen or cut off for longer than its time to live, so a standby took over) exits at once,
acknowledging nothing: the batch it held goes back to the queue (a short visibility timeout,
`app.COINCIDENCE_TRANSPORT_OPTIONS`) for the new holder, and the supervisor restarts it as a
standby. A commit it had in flight is refused by the fenced commit script.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import redis
from celery import bootsteps

from ..adapters.lease import ACQUIRE_EVERY_S, RENEW_S, WriterLease, new_token
from ..core.routing import Queue
from .context import state_client

log = logging.getLogger(__name__)

#: Exit status of a writer that lost its lease (the supervisor restarts it).
LEASE_LOST_EXIT = 75
ANNOUNCE_EVERY_S = 1.0


class LeaseKeeper(threading.Thread):
    """Takes the lease when free, renews it while held, and ends the process when it is lost."""

    def __init__(self, lease: WriterLease) -> None:
        super().__init__(name="writer-lease", daemon=True)
        self.lease = lease
        self.held = threading.Event()
        self._stopping = threading.Event()
        self._renewed = 0.0
        self._announced = 0.0

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._tick()
            except redis.RedisError as error:
                log.warning("writer lease: %s: %s", type(error).__name__, error)
                self._give_up_if_expired()
            self._stopping.wait(RENEW_S if self.held.is_set() else ACQUIRE_EVERY_S)

    def _tick(self) -> None:
        if not self.held.is_set():
            if self.lease.acquire():
                self._renewed = time.monotonic()
                self.held.set()
                log.warning("writer lease taken (%s): this worker now writes", self.lease.token)
        elif self.lease.renew():
            self._renewed = time.monotonic()
        else:
            self._lost("taken over by another writer")
        if time.monotonic() - self._announced >= ANNOUNCE_EVERY_S:
            self.lease.announce("leader" if self.held.is_set() else "standby")
            self._announced = time.monotonic()

    def _give_up_if_expired(self) -> None:
        """Unable to renew: past the time to live a standby may hold it, so stop writing."""
        if self.held.is_set() and time.monotonic() - self._renewed > self.lease.ttl_ms / 1000:
            self._lost("not renewed within its time to live")

    def _lost(self, why: str) -> None:
        log.error("writer lease lost (%s): exiting without acknowledging the batch in hand", why)
        logging.shutdown()
        os._exit(LEASE_LOST_EXIT)

    def stop(self) -> None:
        """Clean shutdown: hand the lease over at once instead of after its time to live."""
        self._stopping.set()
        if self.held.is_set():
            try:
                self.lease.release()
            except redis.RedisError:
                log.warning("writer lease not released; it expires by itself")


_keeper: list[LeaseKeeper] = []


def lease_token() -> str:
    """This process's lease token, for the fenced commit ("" in a process without a lease)."""
    return _keeper[0].lease.token if _keeper else ""


class WriterGate(bootsteps.StartStopStep):
    """Consumer bootstep: the coincidence queue is consumed only while the lease is held."""

    requires = ("celery.worker.consumer.tasks:Tasks",)
    enabled = False  # set for a worker started for the coincidence queue (app.py)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        if self.enabled:
            c.app.amqp.queues.deselect(Queue.COINCIDENCE.value)  # until the lease is ours

    def start(self, c: Any) -> None:
        """Also after each broker reconnection, when the consumer starts its steps again."""
        if not self.enabled:
            return
        if not _keeper:
            client = state_client(socket_timeout=0.5)
            _keeper.append(LeaseKeeper(WriterLease(client, new_token(c.hostname))))
            _keeper[0].start()
        c.timer.call_repeatedly(0.05, self._consume_once_held, (c,))

    @staticmethod
    def _consume_once_held(c: Any) -> None:
        consuming = Queue.COINCIDENCE.value in c.app.amqp.queues.consume_from
        if not consuming and _keeper[0].held.is_set():
            c.add_task_queue(Queue.COINCIDENCE.value)

    def shutdown(self, c: Any) -> None:
        if _keeper:
            _keeper[0].stop()
