"""The writer's lease: which coincidence worker may commit, with a token that fences the rest.

Several coincidence workers may run (hosts apart); one holds the lease and consumes the
coincidence queue, the others wait. The holder renews it well within its time to live; a
holder that stops renewing (frozen, killed, cut off) loses it, and a standby takes it over
within about one time to live. Every state commit checks, inside its Lua script, that the
lease still carries the committing worker's token (`state.COMMIT_SCRIPT`), so a holder that
wakes after losing it cannot commit anything.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from dataclasses import dataclass
from typing import cast

import redis

from .redis_keys import KEYS, Keys

#: A lease not renewed for this long is free; renewals come every RENEW_S.
TTL_MS = 1000
RENEW_S = 0.2
#: How often a standby tries to take the lease.
ACQUIRE_EVERY_S = 0.1
FORGET_AFTER_S = 3600.0

RENEW_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def new_token(name: str) -> str:
    """A token naming its holder (host, process), unique across restarts."""
    return f"{name}|{socket.gethostname()}|{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class LeaseHolder:
    """Who holds the lease now, as `status` shows it."""

    token: str
    ttl_ms: int

    @property
    def name(self) -> str:
        return self.token.split("|", 1)[0]


class WriterLease:
    """One worker's side of the lease. The client must decode responses."""

    def __init__(
        self, client: redis.Redis, token: str, *, keys: Keys = KEYS, ttl_ms: int = TTL_MS
    ) -> None:
        self.client = client
        self.token = token
        self.keys = keys
        self.ttl_ms = ttl_ms
        self._renew = client.register_script(RENEW_SCRIPT)
        self._release = client.register_script(RELEASE_SCRIPT)

    def acquire(self) -> bool:
        """Take the lease if nobody holds it."""
        return bool(self.client.set(self.keys.writer_lease, self.token, nx=True, px=self.ttl_ms))

    def renew(self) -> bool:
        """Extend the lease; False when it is no longer ours (it expired and was taken)."""
        return bool(self._renew(keys=[self.keys.writer_lease], args=[self.token, self.ttl_ms]))

    def release(self) -> None:
        """Give the lease up at a clean shutdown, so a standby need not wait for it to expire."""
        self._release(keys=[self.keys.writer_lease], args=[self.token])

    def announce(self, role: str) -> None:
        """Record this worker as leader or standby, for `status`; forget workers not heard of
        for an hour (each start of a worker is a new token)."""
        now = time.time()
        self.client.hset(self.keys.writers, self.token, json.dumps({"role": role, "seen": now}))
        records = cast("dict[str, str]", self.client.hgetall(self.keys.writers))
        stale = [
            token
            for token, raw in records.items()
            if now - float(json.loads(raw)["seen"]) > FORGET_AFTER_S
        ]
        if stale:
            self.client.hdel(self.keys.writers, *stale)


def lease_holder(client: redis.Redis, keys: Keys = KEYS) -> LeaseHolder | None:
    with client.pipeline(transaction=False) as pipe:
        pipe.get(keys.writer_lease)
        pipe.pttl(keys.writer_lease)
        token, ttl = pipe.execute()
    return None if token is None else LeaseHolder(str(token), int(ttl))


def writers(
    client: redis.Redis, *, seen_within_s: float = 60.0, keys: Keys = KEYS
) -> dict[str, dict[str, object]]:
    """The coincidence workers that announced themselves recently: token -> role, seen."""
    now = time.time()
    found = {}
    for token, raw in cast("dict[str, str]", client.hgetall(keys.writers)).items():
        record = json.loads(raw)
        if now - float(record["seen"]) <= seen_within_s:
            found[token] = record
    return found
