"""Workers reconnect to the broker every fraction of a second, not after 2, 6, 12 s.

kombu's connection retry, as Celery's consumer calls it, waits 2 s, then 4 s more, and so
on. A Sentinel failover promotes a replica in about 2 s, so a worker would often come back
after 6 s; with short, even waits it comes back a fraction of a second after the promotion.
"""

from __future__ import annotations

import functools
from typing import Any

from celery.worker.consumer import Consumer

RETRY_EVERY_S = 0.2
RETRY_MAX_S = 1.0


class FastReconnectConsumer(Consumer):
    def ensure_connected(self, conn: Any) -> Any:
        conn.ensure_connection = functools.partial(
            type(conn).ensure_connection,
            conn,
            interval_start=RETRY_EVERY_S,
            interval_step=RETRY_EVERY_S,
            interval_max=RETRY_MAX_S,
        )
        try:
            return super().ensure_connected(conn)
        finally:
            del conn.ensure_connection
