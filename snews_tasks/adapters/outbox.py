"""The writer's outbox: what a commit promised to deliver, kept until every delivery has finished.

A state commit stages its archive documents, alerts and rejects here in the
same transaction (`state.WriteView.stage_outbox`). After the commit the writer
hands each entry to its delivery tasks and records which tasks it waits for; a
delivery task reports when it has finished (delivered, or its failure recorded),
or when its retry is due. An entry goes when its last delivery has finished. The
sweep hands on what a crash left behind and sends again a delivery that died
without finishing and waits for no retry.
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Iterable, Mapping
from typing import cast

import redis

from .redis_keys import KEYS, Keys

#: Message header of a delivery task: the outbox entries it delivers.
OUTBOX_HEADER = "snews_outbox"
#: A delivery not finished this long after its hand-on, with its queue empty and no retry
#: due, was lost (on its way, or with its worker); longer than one attempt may take.
DELIVERY_RESEND_AFTER_S = 30.0
#: How long past its due time a retry may take to start before it counts as lost.
RETRY_GRACE_S = 30.0

#: One delivery task has finished: KEYS = wait set, sent zset, outbox, retries;
#: ARGV = task, entry key.
DELIVERY_DONE_SCRIPT = """
redis.call('SREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[2] .. '|' .. ARGV[1])
if redis.call('SCARD', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[2])
  redis.call('HDEL', KEYS[3], ARGV[2])
end
return 1
"""


class Outbox:
    """The outbox keys of one state Redis. The client must decode responses."""

    def __init__(self, client: redis.Redis, keys: Keys = KEYS) -> None:
        self.client = client
        self.keys = keys
        self._delivery_done = client.register_script(DELIVERY_DONE_SCRIPT)

    def pending(self, *, older_than_s: float = 0.0) -> dict[str, dict]:
        """Entries not yet handed on; a sweep passes an age, leaving fresh ones to their task."""
        cutoff = time.time() - older_than_s
        raw = cast("dict[str, str]", self.client.hgetall(self.keys.outbox))
        entries = {k: json.loads(v) for k, v in raw.items()}
        sent = set(cast("list[str]", self.client.zrange(self.keys.outbox_sent, 0, -1)))
        return dict(
            sorted(
                ((k, e) for k, e in entries.items() if k not in sent and e["staged_at"] <= cutoff),
                key=lambda item: item[1]["order"],
            )
        )

    def handing_on(self, deliveries: Mapping[str, Collection[str]]) -> None:
        """Record, before the tasks are sent, which tasks each entry waits for: a task may start
        before the send returns, and its start must find its name to remove."""
        if not deliveries:
            return
        handed = {key: tasks for key, tasks in deliveries.items() if tasks}
        done = [key for key in deliveries if key not in handed]  # nothing to deliver
        # Three commands for the whole batch plus one per entry: under load the writer hands on
        # hundreds of entries per commit, and encoding three commands each was a large part
        # of its time (bench/profile_alert_path.py).
        with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(*(self.keys.outbox_wait(key) for key in deliveries))
            for key, tasks in handed.items():
                pipe.sadd(self.keys.outbox_wait(key), *tasks)
            if handed:
                pipe.zadd(self.keys.outbox_sent, dict.fromkeys(handed, time.time()))
            if done:
                pipe.hdel(self.keys.outbox, *done)
            pipe.execute()

    def not_handed_on(self, keys: Iterable[str]) -> None:
        """Undo `handing_on` when the sends failed: the entries wait to be handed on again."""
        keys = list(keys)
        with self.client.pipeline(transaction=True) as pipe:
            pipe.zrem(self.keys.outbox_sent, *keys)
            pipe.delete(*(self.keys.outbox_wait(key) for key in keys))
            pipe.execute()

    def deliveries_done(self, entry_keys: Iterable[str], task: str) -> None:
        """A delivery task has finished: delivered, or its failure recorded for an operator.
        An entry goes when its last one has."""
        with self.client.pipeline(transaction=False) as pipe:
            for key in entry_keys:
                self._delivery_done(
                    keys=[
                        self.keys.outbox_wait(key),
                        self.keys.outbox_sent,
                        self.keys.outbox,
                        self.keys.outbox_retry,
                    ],
                    args=[task, key],
                    client=pipe,
                )
            pipe.execute()

    def deliveries_retrying(self, entry_keys: Iterable[str], task: str, due_s: float) -> None:
        """The task retries in `due_s`: meanwhile its queue is empty and it is not lost."""
        until = time.time() + due_s + RETRY_GRACE_S
        items = [part for key in entry_keys for part in (f"{key}|{task}", until)]
        if items:
            self.client.hset(self.keys.outbox_retry, items=items)

    def unfinished(self, *, older_than_s: float) -> dict[str, tuple[dict, list[str]]]:
        """Entries handed on long ago whose delivery tasks have not finished and wait for no
        retry: each with the names of those tasks."""
        keys = cast(
            "list[str]",
            self.client.zrangebyscore(self.keys.outbox_sent, "-inf", time.time() - older_than_s),
        )
        if not keys:
            return {}
        with self.client.pipeline(transaction=False) as pipe:
            pipe.hmget(self.keys.outbox, keys)
            pipe.hgetall(self.keys.outbox_retry)
            for key in keys:
                pipe.smembers(self.keys.outbox_wait(key))
            raws, retries, *waits = pipe.execute()
        now = time.time()
        found: dict[str, tuple[dict, list[str]]] = {}
        for key, raw, wait in zip(keys, raws, waits, strict=True):
            tasks = sorted(t for t in wait if float(retries.get(f"{key}|{t}", 0)) <= now)
            if raw and tasks:
                found[key] = (json.loads(raw), tasks)
        return found
