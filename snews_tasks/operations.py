"""Operator commands: failed notifications (`failed list|retry`) and health (`status`).

These are CLI-only on purpose: nothing read from Kafka can reset state or
re-drive deliveries.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis

from .settings import Settings

#: A priority-enabled Redis queue is several lists; kombu names them queue + sep + step.
PRIORITY_SEPARATOR = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)
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


# -- failed notifications ---------------------------------------------------------------------


def add_failed_parser(sub: argparse._SubParsersAction) -> None:
    failed = sub.add_parser(
        "failed", help="list or re-drive notifications whose retries ran out",
        description="Notifications (MongoDB archive writes, Kafka alerts, Slack posts) that "
                    "exhausted their retries are recorded with their payload. List them, or "
                    "re-enqueue them once the service is back.")
    actions = failed.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="show failed notifications")
    listing.add_argument("--json", action="store_true", help="print a JSON list of records")
    listing.set_defaults(handler=_failed_list)
    retry = actions.add_parser("retry", help="re-enqueue failed notifications")
    retry.add_argument("ids", nargs="*", metavar="ID", help="record ids (KIND:KEY) from `list`")
    retry.add_argument("--all", action="store_true", help="re-drive every failed notification")
    retry.set_defaults(handler=_failed_retry)


def _record_view(record: dict) -> dict:
    return {
        "id": f"{record['kind']}:{record['key']}",
        "kind": record["kind"],
        "key": record["key"],
        "error": record["error"],
        "attempts": record["attempts"],
        "failed_utc": str(record["failed_utc"]),
        "stored_in": record.get("stored_in"),
    }


def _failed_list(args: argparse.Namespace, settings: Settings) -> int:
    from .tasks.delivery import open_failure_log

    records = [_record_view(r) for r in open_failure_log().list_failures()]
    if args.json:
        print(json.dumps(records, indent=2))
        return 0
    if not records:
        print("no failed notifications")
    for r in records:
        print(f"{r['id']}  attempts={r['attempts']}  failed={r['failed_utc']}  {r['error']}")
    return 0


def _failed_retry(args: argparse.Namespace, settings: Settings) -> int:
    from .celery_app import app
    from .tasks.delivery import REDRIVE_TASKS, open_failure_log

    if bool(args.ids) == args.all:
        print("snews-tasks failed retry: give record ids or --all (not both)")
        return 2
    log = open_failure_log()
    records = {f"{r['kind']}:{r['key']}": r for r in log.list_failures()}
    wanted = list(records) if args.all else args.ids
    unknown = [i for i in wanted if i not in records]
    for record_id in wanted:
        if record_id in unknown:
            continue
        record = records[record_id]
        app.send_task(REDRIVE_TASKS[record["kind"]], args=[record["payload"]],
                      ignore_result=True)
        log.mark_redriven(record["kind"], record["key"])
        print(f"re-driven {record_id}")
    for record_id in unknown:
        print(f"no failed notification {record_id}")
    return 1 if unknown else 0


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


def add_status_parser(sub: argparse._SubParsersAction) -> None:
    status = sub.add_parser(
        "status", help="health of the running system; exit status 1 when unhealthy",
        description="Checks: the Celery broker and the state Redis answer; every queue that has "
                    "registered tasks has a consumer; the ingest polled recently; queue depths; "
                    "failed notifications; detectors online and their last heartbeat; the last "
                    "alert; the canary. Exit status 0 when all pass, 1 otherwise.")
    status.add_argument("--json", action="store_true", help="print the checks as JSON")
    status.add_argument("--timeout", type=float, default=2.0,
                        help="seconds to wait for workers to answer (default 2)")
    status.set_defaults(handler=_status)


def required_queues(app: Any) -> dict[str, list[str]]:
    """Queues that must have a consumer, learned from the registered tasks and their routes."""
    app.loader.import_default_modules()
    needed: dict[str, list[str]] = {}
    for name in sorted(app.tasks):
        if name.startswith("snews."):
            queue = app.amqp.router.route({}, name)["queue"].name
            needed.setdefault(queue, []).append(name)
    return needed


def queue_depth(client: redis.Redis, queue: str) -> int:
    names = [queue] + [f"{queue}{PRIORITY_SEPARATOR}{step}" for step in PRIORITY_STEPS[1:]]
    return sum(client.llen(n) for n in names)


def _status(args: argparse.Namespace, settings: Settings) -> int:
    from .celery_app import app

    report = build_status(app, settings, timeout=args.timeout)
    if args.json:
        print(json.dumps({"healthy": report.healthy,
                          "checks": [c.__dict__ for c in report.checks]}, indent=2, default=str))
    else:
        for c in report.checks:
            print(f"{'OK  ' if c.ok else 'FAIL'} {c.name:<22} {c.detail}")
        print("healthy" if report.healthy else "UNHEALTHY")
    return 0 if report.healthy else 1


def canary_health(*, last_ok: float | None, sent: float | None, now: float,
                  limit_s: float) -> tuple[bool, str]:
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
    broker = redis.Redis.from_url(settings.broker_url, socket_timeout=timeout,
                                  decode_responses=True)
    state = redis.Redis.from_url(settings.state_redis_url, socket_timeout=timeout,
                                 decode_responses=True)

    report.add("broker", lambda: (bool(broker.ping()), redact(settings.broker_url), None))
    report.add("state redis", lambda: (bool(state.ping()), redact(settings.state_redis_url),
                                       None))

    def consumers() -> tuple[bool, str, Any]:
        needed = required_queues(app)
        answers = app.control.inspect(timeout=timeout).active_queues() or {}
        served: dict[str, list[str]] = {}
        for worker, queues in answers.items():
            for q in queues:
                served.setdefault(q["name"], []).append(worker)
        missing = sorted(q for q in needed if q not in served)
        extra = [q for q, workers in served.items() if q == "coincidence" and len(workers) > 1]
        detail = ", ".join(f"{q}: {len(served.get(q, []))}" for q in sorted(needed))
        if missing:
            detail += f"; NO CONSUMER for {', '.join(missing)}"
        if extra:
            detail += "; more than one coincidence worker (safe, but not intended)"
        return not missing, detail, {"needed": needed, "served": served}

    report.add("queue consumers", consumers)

    def depths() -> tuple[bool, str, Any]:
        found = {q: queue_depth(broker, q) for q in sorted(required_queues(app))}
        return True, ", ".join(f"{q}={n}" for q, n in found.items()), found

    report.add("queue depths", depths)

    def ingest() -> tuple[bool, str, Any]:
        last = state.get("snews:ingest:last_poll")
        if last is None:
            return False, "no ingest has polled the observation topic", None
        age = time.time() - float(last)
        return age <= INGEST_STALE_S, f"last poll {age:.1f} s ago (limit {INGEST_STALE_S:g} s)", age

    report.add("ingest", ingest)

    def failures() -> tuple[bool, str, Any]:
        from .tasks.delivery import open_failure_log

        records = open_failure_log().list_failures()
        detail = f"{len(records)} failed" + ("; see `snews-tasks failed list`" if records else "")
        return not records, detail, len(records)

    report.add("failed notifications", failures)

    def detectors() -> tuple[bool, str, Any]:
        window = settings.detector_online_window_s
        seen = {d: json.loads(v) for d, v in state.hgetall("snews:detectors").items()}
        now = time.time()
        rows = {d: {"status": hb["status"], "last_heartbeat_s_ago": round(now - hb["seen_ns"] / 1e9)}
                for d, hb in sorted(seen.items())}
        online = [d for d, r in rows.items()
                  if r["status"] == "ON" and r["last_heartbeat_s_ago"] <= window]
        detail = f"{len(online)} online" + (f": {', '.join(online)}" if online else "")
        return True, detail, rows

    report.add("detectors", detectors)

    def last_alert() -> tuple[bool, str, Any]:
        from pymongo import DESCENDING, MongoClient

        with MongoClient(settings.mongo_url.reveal(), serverSelectionTimeoutMS=int(timeout * 1000)
                         ) as client:
            doc = client[settings.mongo_db].alerts.find_one(
                {}, {"_id": False, "alert_id": True, "revision": True, "alert_type": True,
                     "sent_time_utc": True, "is_test": True},
                sort=[("sent_time_utc", DESCENDING)])
        if doc is None:
            return True, "no alert archived yet", None
        return True, (f"{doc['alert_type']} {doc['alert_id']} rev {doc['revision']} at "
                      f"{doc['sent_time_utc']}{' (test)' if doc.get('is_test') else ''}"), doc

    report.add("last alert", last_alert)

    def canary() -> tuple[bool, str, Any]:
        last_ok, sent = state.get("snews:canary:last_ok"), state.get("snews:canary:sent")
        ok, detail = canary_health(
            last_ok=None if last_ok is None else float(last_ok),
            sent=None if sent is None else json.loads(sent)["time"],
            now=time.time(), limit_s=2 * settings.canary_interval_s)
        return ok, detail, None

    report.add("canary", canary)
    return report
