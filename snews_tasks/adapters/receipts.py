"""Receipts: how the ingest learns that a task it sent has reached a worker.

kombu's Redis transport pops a message (BRPOP) and only then records it as
unacknowledged; a Redis crash between the two loses that message, and nothing
in Celery notices. From the moment a task starts, late acks cover it. So the
ingest keeps its own copy, and the Kafka offset, until the task has started (a
worker sets the receipt of a task sent with the header `RECEIPT_HEADER` when it
starts it), and sends it again if it has not started long after while its
queue is empty. Receivers are idempotent, so a task sent twice is harmless.
"""

from __future__ import annotations

import redis

from .redis_keys import KEYS, Keys

#: Message header of the tasks whose start is recorded.
RECEIPT_HEADER = "snews_receipt"
RECEIPT_TTL_S = 86_400
#: An ingest task not started this long after its send, with its queue empty, was lost on
#: its way, or is held by a worker that froze after taking it. The writer starts a batch
#: within milliseconds of taking it (one at a time, solo pool), so a second means trouble,
#: and a standby holds the writer lease by then. A notification worker reserves messages
#: ahead of its busy processes, so it gets longer before one is sent twice.
RESEND_AFTER_S = 10.0
RESEND_WRITER_BATCH_AFTER_S = 1.0


class Receipts:
    def __init__(self, client: redis.Redis, keys: Keys = KEYS) -> None:
        self.client = client
        self.keys = keys

    def mark_received(self, receipt: str) -> None:
        self.client.set(self.keys.receipt(receipt), "1", ex=RECEIPT_TTL_S)

    def received(self, receipts: list[str]) -> list[bool]:
        """For each receipt, whether its task has started."""
        if not receipts:
            return []
        return [v is not None for v in self.client.mget([self.keys.receipt(r) for r in receipts])]
