"""The canary: a synthetic test burst through the whole path, and the check that it came out.

`snews.canary.send` publishes two test observations (two detectors, 1 s apart,
meta {"canary": true}) to the observation topic with hop-client, so they
travel ingest -> coincidence -> test alert topic exactly like a detector's.
`snews.canary.check` reads the test alert topic to its end (its own consumer
group, so each check reads only what is new) for alerts naming a canary's
uuids. Both run from beat, every canary_interval_s.

State Redis keys (`redis_keys`): the latest canary sent, the canaries whose alert is not
seen yet (a check may read an alert after the next canary went out), and when a check
last found a canary's alert.

`snews-tasks status` reports the canary missing when last_ok is older than
2 x canary_interval_s.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from typing import cast

import redis

from ..adapters.kafka_alerts import read_alerts
from ..adapters.observation_publisher import publish_observations
from ..adapters.redis_keys import KEYS
from ..core.examples import coincidence_message
from ..core.routing import TaskName
from ..core.times import NS_PER_S
from ..settings import Settings
from .app import app
from .context import settings, state_redis

SENT_KEY = KEYS.canary_sent
PENDING_KEY = KEYS.canary_pending
LAST_OK_KEY = KEYS.canary_last_ok
#: A canary unanswered for this many intervals is forgotten (last_ok already shows the gap).
PENDING_INTERVALS = 10
#: Hard limit for one run: hop's reader blocks on close while the broker is unreachable.
TASK_TIME_LIMIT_S = 120


def canary_pair(detectors: tuple[str, ...], now_ns: int) -> list[dict]:
    """Two detectors 1 s apart: the smallest burst that makes an alert."""
    if len(detectors) < 2:
        raise ValueError(f"detectors: the canary needs two, SNEWS_DETECTORS has {len(detectors)}")
    return [
        coincidence_message(
            detector, now_ns - (1 - i) * NS_PER_S, source="canary", meta={"canary": True}
        )
        for i, detector in enumerate(detectors[:2])
    ]


def send_canary(settings: Settings, client: redis.Redis, *, now_ns: int | None = None) -> list[str]:
    """Remember a canary pair, then publish it; returns its uuids. `client` decodes responses.

    Pending before published: a check running meanwhile must never read the alert first.
    """
    now_ns = time.time_ns() if now_ns is None else now_ns
    pair = canary_pair(settings.detectors, now_ns)
    uuids = [message["uuid"] for message in pair]
    sent_at = now_ns / NS_PER_S
    forget_before = sent_at - PENDING_INTERVALS * settings.canary_interval_s
    stale = [
        key for key, value in client.hgetall(PENDING_KEY).items() if float(value) < forget_before
    ]
    with client.pipeline() as pipe:
        pipe.set(SENT_KEY, json.dumps({"time": sent_at, "uuids": uuids}))
        pipe.hset(PENDING_KEY, ",".join(uuids), repr(sent_at))
        if stale:
            pipe.hdel(PENDING_KEY, *stale)
        pipe.execute()
    publish_observations(settings, pair)
    return uuids


def answered(pending: Iterable[str], alerts: Iterable[dict]) -> set[str]:
    """The pending canaries ("uuid,uuid") whose uuids all appear in one alert."""
    waiting = {key: set(key.split(",")) for key in pending}
    found: set[str] = set()
    for alert in alerts:
        members = set(alert.get("observation_uuids") or ())
        found |= {key for key, uuids in waiting.items() if uuids <= members}
    return found


def read_test_alerts(settings: Settings) -> Iterator[dict]:
    """The test alert topic from the canary's committed offset to its current end."""
    return read_alerts(
        settings, settings.test_alert_topic, group_id=f"snews-tasks-canary-{settings.mode}"
    )


def check_canary(settings: Settings, client: redis.Redis) -> int:
    """Mark canaries whose alert has appeared; returns how many were found.

    The alerts are read (and their offsets committed) before the pending canaries: the
    other order misses a canary sent while the reader is open, whose alert is then
    committed unmatched and never read again.
    """
    alerts = list(read_test_alerts(settings))
    found = answered(cast("list[str]", client.hkeys(PENDING_KEY)), alerts)
    if found:
        with client.pipeline() as pipe:
            pipe.hdel(PENDING_KEY, *found)
            pipe.set(LAST_OK_KEY, repr(time.time()))
            pipe.execute()
    return len(found)


@app.task(name=TaskName.CANARY_SEND, time_limit=TASK_TIME_LIMIT_S)
def send() -> list[str]:
    """Beat: a synthetic test burst into the observation topic."""
    return send_canary(settings(), state_redis())


@app.task(name=TaskName.CANARY_CHECK, time_limit=TASK_TIME_LIMIT_S)
def check() -> int:
    """Beat: did the canaries' alerts reach the test alert topic?"""
    return check_canary(settings(), state_redis())
