"""The Celery broker's Redis, read directly: how deep a queue is.

kombu's Redis transport keeps a queue as a list (several lists when priorities
are enabled, named queue + separator + step); `status`, the ingest and the
outbox sweep need its length without going through a consumer.
"""

from __future__ import annotations

import redis

PRIORITY_SEPARATOR = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)


def queue_depth(client: redis.Redis, queue: str) -> int:
    names = [queue] + [f"{queue}{PRIORITY_SEPARATOR}{step}" for step in PRIORITY_STEPS[1:]]
    return sum(int(client.llen(n)) for n in names)
