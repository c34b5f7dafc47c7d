"""Health of the running system: what `snews-tasks status` prints (and, later, the console
shows): one source for both.

Which queues must have a consumer is learned from the registered tasks and their
routes, not from a list someone must keep up to date.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from pymongo import DESCENDING, MongoClient

from ..adapters.archive import Archive
from ..adapters.broker import queue_depth
from ..adapters.detector_status import DetectorStatus
from ..adapters.heartbeat_feed import HeartbeatFeed
from ..adapters.lease import LeaseHolder, lease_holder, writers
from ..adapters.mail import contacts_path, load_contacts
from ..adapters.redis_clients import primary_address, redis_client
from ..adapters.redis_keys import KEYS
from ..core.heartbeat_feedback import HeartbeatFeedback
from ..core.routing import Queue
from ..core.times import NS_PER_S, format_time_ns
from ..settings import Settings
from ..tasks.base import open_failure_log

INGEST_STALE_S = 60.0


def redact(url: str) -> str:
    """A URL fit for output: the password, if any, replaced."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def short_error(error: BaseException) -> str:
    """One line an operator can read; driver errors can run to a screenful."""
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text[:160]}"


# -- status -------------------------------------------------------------------------------------


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    data: Any = None


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    def add(self, name: str, probe: Callable[[], tuple[bool, str, Any]]) -> None:
        try:
            ok, detail, data = probe()
        except Exception as error:  # a health check reports what broke; it never crashes
            ok, detail, data = False, short_error(error), None
        self.checks.append(Check(name, ok, detail, data))

    @property
    def healthy(self) -> bool:
        return all(c.ok for c in self.checks)


def required_queues(app: Any) -> dict[str, list[str]]:
    """Queues that must have a consumer, learned from the registered tasks and their routes."""
    app.loader.import_default_modules()
    needed: dict[str, list[str]] = {}
    for name in sorted(app.tasks):
        if name.startswith("snews."):
            queue = app.amqp.router.route({}, name)["queue"].name
            needed.setdefault(queue, []).append(name)
    return needed


def significance_summary(latest: dict[str, Any] | None, threshold: float | None) -> str:
    """The latest significance-tier combination in one line."""
    limit = "alerts off" if threshold is None else f"alerts at {threshold:g} sigma"
    if latest is None:
        return f"no significance-tier message combined yet ({limit})"
    best = latest.get("most_significant")
    if best is None:
        found = "no bins that two detectors cover"
    else:
        found = (
            f"{best['combined_significance_sigma']:.2f} sigma from "
            f"{', '.join(best['detectors'])} at {best['start_utc']}"
        )
    return f"latest at {latest['computed_time_utc']}: {found} ({limit})"


def canary_health(
    *, last_ok: float | None, sent: float | None, now: float, limit_s: float
) -> tuple[bool, str]:
    """The canary's verdict; a fresh stack's first canary gets `limit_s` to come back."""
    if last_ok is not None:
        age = now - last_ok
        return age <= limit_s, f"last canary alert {age:.0f} s ago (limit {limit_s:g} s)"
    if sent is None:
        return False, "no canary has been sent: is beat running?"
    if now - sent <= limit_s:
        return True, f"first canary sent {now - sent:.0f} s ago, its alert not seen yet"
    return False, f"a canary sent {now - sent:.0f} s ago never came back"


def build_status(app: Any, settings: Settings, *, timeout: float) -> Report:
    report = Report()
    broker = redis_client(
        settings.broker_url,
        master_name=settings.redis_sentinel_master,
        socket_timeout=timeout,
        decode_responses=True,
    )
    state = redis_client(
        settings.state_redis_url,
        master_name=settings.redis_sentinel_master,
        socket_timeout=timeout,
        decode_responses=True,
    )

    report.add("broker", lambda: (bool(broker.ping()), redact(settings.broker_url), None))
    report.add("state redis", lambda: (bool(state.ping()), redact(settings.state_redis_url), None))

    def consumers() -> tuple[bool, str, Any]:
        needed = required_queues(app)
        if not settings.localization:
            needed.pop(Queue.LOCALIZATION, None)
        answers = app.control.inspect(timeout=timeout).active_queues() or {}
        served: dict[str, list[str]] = {}
        for worker, queues in answers.items():
            for q in queues:
                served.setdefault(q["name"], []).append(worker)
        missing = sorted(q for q in needed if q not in served)
        extra = [q for q, workers in served.items() if q == Queue.COINCIDENCE and len(workers) > 1]
        detail = ", ".join(f"{q}: {len(served.get(q, []))}" for q in sorted(needed))
        if missing:
            detail += f"; NO CONSUMER for {', '.join(missing)}"
        if extra:
            detail += "; more than one worker consumes the coincidence queue"
        return not missing and not extra, detail, {"needed": needed, "served": served}

    report.add("queue consumers", consumers)

    def writer() -> tuple[bool, str, Any]:
        holder = lease_holder(state)
        known = writers(state)
        standbys = sorted(
            LeaseHolder(token, 0).name
            for token, record in known.items()
            if record["role"] == "standby"
        )
        spare = f"; standby: {', '.join(standbys)}" if standbys else "; no standby"
        data = {"leader": holder.name if holder else None, "standbys": standbys}
        if holder is None:
            return (
                False,
                "nobody holds the writer lease: no coincidence worker writes" + spare,
                data,
            )
        return True, f"{holder.name} writes (lease renewed {holder.ttl_ms} ms ahead){spare}", data

    report.add("coincidence writer", writer)

    def redis_primary() -> tuple[bool, str, Any]:
        primary = primary_address(state)
        replicas = int(state.info("replication").get("connected_slaves", 0))
        if primary is None:
            return True, f"one server, {replicas} replica(s), no failover", {"replicas": replicas}
        where = f"{primary[0]}:{primary[1]}"
        data = {"primary": where, "replicas": replicas}
        if replicas == 0:
            return False, f"primary {where} (Sentinel) has no replica: no failover possible", data
        return True, f"primary {where} (Sentinel), {replicas} replica(s) connected", data

    report.add("redis", redis_primary)

    def depths() -> tuple[bool, str, Any]:
        found = {q: queue_depth(broker, q) for q in sorted(required_queues(app))}
        return True, ", ".join(f"{q}={n}" for q, n in found.items()), found

    report.add("queue depths", depths)

    def ingest() -> tuple[bool, str, Any]:
        last = state.get(KEYS.ingest_last_poll)
        if last is None:
            return False, "no ingest has polled the observation topic", None
        age = time.time() - float(last)
        return age <= INGEST_STALE_S, f"last poll {age:.1f} s ago (limit {INGEST_STALE_S:g} s)", age

    report.add("ingest", ingest)

    def failures() -> tuple[bool, str, Any]:
        records = open_failure_log().list_failures()
        detail = f"{len(records)} failed" + ("; see `snews-tasks failed list`" if records else "")
        return not records, detail, len(records)

    report.add("failed notifications", failures)

    def detectors() -> tuple[bool, str, Any]:
        window = settings.detector_online_window_s
        seen = DetectorStatus(state).latest()
        now = time.time()
        rows = {
            d: {"status": hb["status"], "last_heartbeat_s_ago": round(now - hb["seen_ns"] / 1e9)}
            for d, hb in sorted(seen.items())
        }
        online = [
            d
            for d, r in rows.items()
            if r["status"] == "ON" and r["last_heartbeat_s_ago"] <= window
        ]
        detail = f"{len(online)} online" + (f": {', '.join(online)}" if online else "")
        return True, detail, rows

    report.add("detectors", detectors)

    def last_alert() -> tuple[bool, str, Any]:
        with _archive(settings, timeout) as archive:
            doc = archive.alerts.find_one(
                {},
                {
                    "_id": False,
                    "alert_id": True,
                    "revision": True,
                    "alert_type": True,
                    "sent_time_utc": True,
                    "is_test": True,
                },
                sort=[("sent_time_utc", DESCENDING)],
            )
        if doc is None:
            return True, "no alert archived yet", None
        return (
            True,
            (
                f"{doc['alert_type']} {doc['alert_id']} rev {doc['revision']} at "
                f"{doc['sent_time_utc']}{' (test)' if doc.get('is_test') else ''}"
            ),
            doc,
        )

    report.add("last alert", last_alert)

    def significance() -> tuple[bool, str, Any]:
        with _archive(settings, timeout) as archive:
            latest = archive.latest_significance()
        return True, significance_summary(latest, settings.significance_alert_sigma), latest

    report.add("significance tier", significance)

    def canary() -> tuple[bool, str, Any]:
        last_ok, sent = state.get(KEYS.canary_last_ok), state.get(KEYS.canary_sent)
        ok, detail = canary_health(
            last_ok=None if last_ok is None else float(last_ok),
            sent=None if sent is None else json.loads(sent)["time"],
            now=time.time(),
            limit_s=2 * settings.canary_interval_s,
        )
        return ok, detail, None

    report.add("canary", canary)

    def heartbeats() -> tuple[bool, str, Any]:
        states = feedback_states(state, time.time_ns())
        missed = {d: s["missed_since_utc"] for d, s in states.items() if s["missed_since_utc"]}
        watched = sum(s["watched"] for s in states.values())
        detail = f"{watched} detectors watched; " + (
            "missed: " + ", ".join(f"{d} (since {t})" for d, t in sorted(missed.items()))
            if missed
            else "no missed heartbeats"
        )
        with _archive(settings, timeout) as archive:
            since = format_time_ns(time.time_ns() - EVENTS_SHOWN_S * NS_PER_S)
            events = archive.heartbeat_events_since(since, limit=50)
        if events:
            detail += f"; {len(events)} events in 24 h, latest: " + ", ".join(
                f"{e['event']} {e['detector_name']} {e['time_utc']}" for e in events[:3]
            )
        # A quiet detector is the detector's news, not an unhealthy service.
        return True, detail, {"detectors": states, "events": events}

    report.add("heartbeat feedback", heartbeats)

    def contacts() -> tuple[bool, str, Any]:
        found = load_contacts(contacts_path(settings), settings.detectors)
        without = [d for d in settings.detectors if not found.get(d)]
        detail = f"{len(settings.detectors) - len(without)} detectors have contacts" + (
            f"; none (not mailed) for {', '.join(without)}" if without else ""
        )
        return True, detail, {"without": without}

    report.add("contacts", contacts)
    return report


#: `status` and the console list the heartbeat events of this last stretch.
EVENTS_SHOWN_S = 86400


def feedback_states(state: redis.Redis, now_ns: int) -> dict[str, dict[str, Any]]:
    """Per detector, what the heartbeat feedback rule knows now (empty before its first check)."""
    stored, _ = HeartbeatFeed(state).load()
    if stored is None:
        return {}
    return HeartbeatFeedback.from_dict(stored).detector_states(now_ns)


@contextlib.contextmanager
def _archive(settings: Settings, timeout: float) -> Iterator[Archive]:
    client: MongoClient = MongoClient(
        settings.mongo_url.get_secret_value(), serverSelectionTimeoutMS=int(timeout * 1000)
    )
    with client:
        yield Archive(client, settings.mongo_db)
