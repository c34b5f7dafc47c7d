"""Each detector's latest heartbeat in the state Redis: what the false-alarm rate and
`status` read to know who is online."""

from __future__ import annotations

import json
from typing import Any, cast

import redis

from .redis_keys import KEYS, Keys

#: Keep only the newest heartbeat: redeliveries and reordering never roll it back.
#: KEYS = detectors hash; ARGV = detector, seen_ns, record JSON.
RECORD_SCRIPT = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current and tonumber(cjson.decode(current)['seen_ns']) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""


class DetectorStatus:
    """The client must decode responses."""

    def __init__(self, client: redis.Redis, keys: Keys = KEYS) -> None:
        self.client = client
        self.keys = keys
        self._record = client.register_script(RECORD_SCRIPT)

    def record(self, detector: str, status: str, seen_ns: int) -> bool:
        """True when this heartbeat is now the detector's latest."""
        record = json.dumps({"status": status, "seen_ns": seen_ns})
        return bool(self._record(keys=[self.keys.detectors], args=[detector, seen_ns, record]))

    def latest(self) -> dict[str, dict[str, Any]]:
        """detector -> {"status", "seen_ns"} of its latest heartbeat."""
        records = cast("dict[str, str]", self.client.hgetall(self.keys.detectors))
        return {d: json.loads(v) for d, v in records.items()}
