"""snews-pt's connection test: recognise its message, build the echo, bound the echoes.

``snews_pt test-connection`` (snews-pt 3.0.0) writes a Heartbeat-tier message with id
``0_test-connection`` and ``meta.status`` "sending" (in fact "received": see
`SENT_STATUSES`) to the observation topic, then reads
the connection-test topic for the same message with ``meta.status`` "received" (it
compares the whole message, so everything else must come back exactly as sent). The
message is neither a heartbeat (it has no detector status) nor an observation: it never
reaches the coincidence cache or a detector's status. The echo is all it causes, and a
flood of them is bounded per detector (`EchoLimiter`), so nothing read from Kafka can make
the server write without limit.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Mapping
from typing import Any, Final

from .errors import MessageError

CONNECTION_TEST_ID: Final = "0_test-connection"
TIER: Final = "ConnectionTest"  # the archive's tier for these messages: not a heartbeat
WINDOW_S: Final = 60.0
#: snews-pt 3.0.0 means to send "sending", but builds its expected echo from a shallow copy of
#: the message and sets "received" in the meta both share before it sends: it sends "received".
SENT_STATUSES: Final = ("sending", "received")


def is_connection_test(data: Mapping[str, Any]) -> bool:
    """A message claiming to be a connection test (then checked by `echo_of`)."""
    return data.get("id") == CONNECTION_TEST_ID


def echo_of(data: Mapping[str, Any], *, detectors: Collection[str]) -> dict[str, Any]:
    """The message to write back: the same with ``meta.status`` "received". Raises
    MessageError naming the field when it is not a connection test snews-pt would send."""
    detector = data.get("detector_name")
    if not isinstance(detector, str) or detector not in detectors:
        raise MessageError(
            "detector_name", f"must be one of the configured detectors, got {detector!r}"
        )
    if data.get("tier") != "Heartbeat":
        raise MessageError("tier", f"a connection test is 'Heartbeat', got {data.get('tier')!r}")
    meta = data.get("meta")
    if not isinstance(meta, Mapping) or meta.get("status") not in SENT_STATUSES:
        raise MessageError(
            "meta.status", f"a connection test has meta.status {' or '.join(SENT_STATUSES)}"
        )
    return {**data, "meta": {**meta, "status": "received"}}


def archived(data: Mapping[str, Any], *, received_time_utc: str, echoed: bool) -> dict[str, Any]:
    """The archive's record: the message as sent, under its own tier, and whether it was
    echoed (False when the detector's echo limit held it back)."""
    uuid = data.get("uuid")
    if not isinstance(uuid, str) or not uuid:
        uuid = f"{CONNECTION_TEST_ID}:{data['detector_name']}:{data.get('sent_time_utc')}"
    return {
        "uuid": uuid,
        "tier": TIER,
        "detector_name": data["detector_name"],
        "received_time_utc": received_time_utc,
        "echoed": echoed,
        "message": dict(data),
    }


class EchoLimiter:
    """At most `per_minute` echoes per detector in any 60 s (a sliding window of send times)."""

    def __init__(self, per_minute: int) -> None:
        if per_minute < 1:
            raise ValueError(f"per_minute: must be >= 1, got {per_minute}")
        self.per_minute = per_minute
        self._sent: dict[str, deque[float]] = {}

    def allow(self, detector: str, now_s: float) -> bool:
        sent = self._sent.setdefault(detector, deque())
        while sent and now_s - sent[0] >= WINDOW_S:
            sent.popleft()
        if len(sent) >= self.per_minute:
            return False
        sent.append(now_s)
        return True
