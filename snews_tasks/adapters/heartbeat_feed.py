"""How heartbeats reach the feedback rule, safely with any number of notify workers.

* The storage task that records a heartbeat also appends it to a Redis stream
  (``P:heartbeats``). Redis numbers stream entries in the order it receives them, so
  however many workers store heartbeats at once there is one order and a position in it.
* One periodic check (beat, every ``SNEWS_HEARTBEAT_CHECK_INTERVAL_S``) takes a lock
  (redis-py's), loads the rule's state and its stream position (``P:feedback:state``),
  feeds the rule the entries after that position, checks every detector at the clock,
  and commits the new state, the new position and the events it raised in one Lua
  script that applies them only while the lock is still its own. A second check that
  starts meanwhile finds the lock taken and does nothing; one whose lock expired
  mid-run commits nothing.
* Raised events wait in ``P:feedback:pending`` until their delivery tasks (archive,
  operations Slack channel, mail) have been sent, so a crash between the commit and the
  sends loses none: the next check sends them. Deliveries are idempotent.
* The stream keeps the last 24 h (the rule's window): with its state lost, the rule
  re-learns every detector from the stream on the next check.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from typing import Any, cast

import redis
from redis.lock import Lock

from .redis_keys import KEYS, Keys

#: Longest a check may hold the lock; it takes milliseconds, this covers a slow Redis.
LOCK_TIMEOUT_S = 60.0
READ_BATCH = 5_000
#: Bound on the stream even if no check runs for days (about a week of 20 detectors at 1/min).
STREAM_MAX_LEN = 250_000
START = "0-0"

#: KEYS = lock, state, pending; ARGV = token, state JSON, then event id / document pairs.
COMMIT_SCRIPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[2], ARGV[2])
for i = 3, #ARGV, 2 do
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
end
return 1
"""


class HeartbeatFeed:
    """The stream, the rule's stored state and the pending events. The client must decode."""

    def __init__(self, client: redis.Redis, keys: Keys = KEYS) -> None:
        self.client = client
        self.keys = keys
        self._commit = client.register_script(COMMIT_SCRIPT)

    def append(self, heartbeat: Mapping[str, Any]) -> str:
        """Queue a recorded heartbeat for the rule; returns its stream id."""
        entry_id = self.client.xadd(
            self.keys.heartbeats,
            {"heartbeat": json.dumps(heartbeat)},
            maxlen=STREAM_MAX_LEN,
            approximate=True,
        )
        return str(entry_id)

    def lock(self) -> Lock:
        return Lock(self.client, self.keys.feedback_lock, timeout=LOCK_TIMEOUT_S, blocking=False)

    def load(self) -> tuple[dict[str, Any] | None, str]:
        """The rule's stored state (None when there is none) and the position after which to
        read."""
        raw = cast("str | None", self.client.get(self.keys.feedback_state))
        if raw is None:
            return None, START
        stored = json.loads(raw)
        return stored.get("rule"), str(stored.get("position") or START)

    def read_after(self, position: str) -> Iterator[tuple[str, dict[str, Any] | str]]:
        """(entry id, heartbeat dict) after `position`, oldest first; an entry that is not a
        JSON object comes as its raw text, for the caller to report."""
        while True:
            entries = cast(
                "list[tuple[str, dict[str, str]]]",
                self.client.xrange(self.keys.heartbeats, min=f"({position}", count=READ_BATCH),
            )
            if not entries:
                return
            for entry_id, fields in entries:
                raw = fields.get("heartbeat", "")
                try:
                    value = json.loads(raw)
                except ValueError:
                    value = None
                yield entry_id, value if isinstance(value, dict) else raw
                position = entry_id

    def commit(
        self, lock: Lock, rule_state: dict[str, Any], position: str, events: Mapping[str, dict]
    ) -> bool:
        """Store the state, the position and the raised events, if `lock` is still held."""
        token = lock.local.token
        token_text = token.decode() if isinstance(token, bytes) else str(token)
        state = json.dumps({"rule": rule_state, "position": position})
        pairs = [part for key, doc in events.items() for part in (key, json.dumps(doc))]
        done = self._commit(
            keys=[self.keys.feedback_lock, self.keys.feedback_state, self.keys.feedback_pending],
            args=[token_text, state, *pairs],
        )
        return bool(done)

    def trim(self, window_s: float) -> None:
        """Forget stream entries older than the rule's window (ids are arrival ms)."""
        oldest_ms = int((time.time() - window_s) * 1000)
        self.client.xtrim(self.keys.heartbeats, minid=f"{oldest_ms}-0", approximate=False)

    def pending(self) -> dict[str, dict[str, Any]]:
        raw = cast("dict[str, str]", self.client.hgetall(self.keys.feedback_pending))
        return {key: json.loads(value) for key, value in raw.items()}

    def handed_on(self, event_ids: list[str]) -> None:
        if event_ids:
            self.client.hdel(self.keys.feedback_pending, *event_ids)
