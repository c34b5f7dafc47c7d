"""The web console: what operators and detector shifters ask, on server-rendered pages.

Flask with Jinja templates (``entrypoints/templates``) and one stylesheet
(``entrypoints/static``); no script, nothing fetched from elsewhere. Served by waitress.
Read-only: re-driving and resets stay on the command line.

* ``/detectors``  online/offline, last heartbeat, interval, missed-beat state, latency, and
  a 24 h timeline picture per detector (``/detectors/<name>/timeline.png``, cached a minute);
* ``/alerts``, ``/alerts/<id>``  each coincidence with its revisions, members, times, FAR,
  combined significance and sky map when the alert has them;
* ``/operations``  the checks `snews-tasks status` prints (`status.build_status`, one source
  for both), gathered in the background every few seconds, since asking the workers takes
  the whole inspect timeout;
* ``/skymaps/<name>``  sky-map files from `adapters.skymap_store` (the stable URL a GCN
  notice points at).

Each page is also JSON, for scripts: the same route with ``?format=json`` or
``Accept: application/json``. Outside local mode on 127.0.0.1 every route needs HTTP basic
auth (``SNEWS_CONSOLE_BASIC_AUTH``), the rule Flower follows.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from flask import Flask, Response, abort, jsonify, redirect, render_template, request
from pymongo import DESCENDING, MongoClient
from waitress import serve as waitress_serve
from werkzeug.wrappers import Response as BaseResponse

from ..adapters.archive import Archive
from ..adapters.detector_status import DetectorStatus
from ..adapters.skymap_store import CONTENT_TYPES, SkymapStore, check_name
from ..core.heartbeat_feedback import HeartbeatError, event_from_dict, usable_heartbeats
from ..core.heartbeat_plot import timeline_png
from ..core.times import NS_PER_S, format_time_ns
from ..settings import Settings
from ..tasks.app import app as celery_app
from .status import EVENTS_SHOWN_S, Report, build_status, feedback_states

log = logging.getLogger(__name__)

TIMELINE_S = 86400
TIMELINE_CACHE_S = 60.0
STATUS_REFRESH_S = 5.0
STATUS_TIMEOUT_S = 2.0
ALERT_REVISIONS_SHOWN = 500
ALERT_FIELDS = (
    "alert_id",
    "revision",
    "alert_type",
    "detector_names",
    "neutrino_times_utc",
    "p_values",
    "observation_uuids",
    "initial_neutrino_time_utc",
    "false_alarm_rate_per_year",
    "false_alarm_rate_reason",
    "combined_p_value",
    "combined_significance_sigma",
    "localization",
    "is_test",
    "is_firedrill",
    "sent_time_utc",
    "merged_into",
)


class StatusCache:
    """The latest `build_status` report, refreshed by a daemon thread."""

    def __init__(self, gather: Callable[[], Report], every_s: float = STATUS_REFRESH_S) -> None:
        self._gather = gather
        self.every_s = every_s
        self.report: Report | None = None
        self.taken_at: float | None = None
        self._started = threading.Event()

    def start(self) -> None:
        if not self._started.is_set():
            self._started.set()
            threading.Thread(target=self._run, name="status-refresh", daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                report = self._gather()
                self.report, self.taken_at = report, time.time()
            except Exception:  # the page shows the report's age; a broken probe must not stop it
                log.exception("gathering the status failed")
            time.sleep(self.every_s)


class ConsoleData:
    """Everything the pages read, from the state Redis and the archive."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state = redis.Redis.from_url(
            settings.state_redis_url, decode_responses=True, socket_timeout=5
        )
        client: MongoClient = MongoClient(
            settings.mongo_url.get_secret_value(),
            appname="snews_tasks-console",
            serverSelectionTimeoutMS=3_000,
        )
        self.archive = Archive(client, settings.mongo_db)
        self.skymaps = SkymapStore(self.archive.db)
        self._timelines: dict[str, tuple[float, bytes]] = {}
        self._timeline_lock = threading.Lock()

    # -- detectors

    def detectors(self, now_ns: int) -> dict[str, Any]:
        latest = DetectorStatus(self.state).latest()
        states = feedback_states(self.state, now_ns)
        recorded = {
            doc["detector_name"]: doc
            for doc in self.archive.detector_status.find({}, {"_id": False})
        }
        window_s = self.settings.detector_online_window_s
        rows = []
        for name in self.settings.detectors:
            seen = latest.get(name)
            rule = states.get(name, {})
            seen_ago = None if seen is None else (now_ns - seen["seen_ns"]) / NS_PER_S
            status = None if seen is None else seen["status"]
            rows.append(
                {
                    "detector_name": name,
                    "online": status == "ON" and seen_ago is not None and seen_ago <= window_s,
                    "status": status,
                    "last_heartbeat_utc": rule.get("last_heartbeat_utc"),
                    "last_received_s_ago": seen_ago,
                    "mean_interval_s": rule.get("mean_interval_s"),
                    "allowed_gap_s": rule.get("allowed_gap_s"),
                    "watched": rule.get("watched", False),
                    "beats_in_window": rule.get("beats_in_window", 0),
                    "missed_since_utc": rule.get("missed_since_utc"),
                    "latency_s": recorded.get(name, {}).get("latency_s"),
                }
            )
        rows.sort(key=lambda r: (r["missed_since_utc"] is None, r["status"] is None))
        since = format_time_ns(now_ns - EVENTS_SHOWN_S * NS_PER_S)
        return {
            "now_utc": format_time_ns(now_ns),
            "online_window_s": window_s,
            "detectors": rows,
            "events": self.archive.heartbeat_events_since(since, limit=100),
        }

    def timeline(self, detector: str, now_ns: int) -> bytes:
        """The detector's last 24 h as a PNG, drawn at most once a minute."""
        with self._timeline_lock:
            cached = self._timelines.get(detector)
            if cached and time.monotonic() - cached[0] < TIMELINE_CACHE_S:
                return cached[1]
        start_ns = now_ns - TIMELINE_S * NS_PER_S
        records = self.archive.heartbeats(
            detector, format_time_ns(start_ns), format_time_ns(now_ns + 60 * NS_PER_S)
        )
        # The gaps shaded are those the live rule reported (a gap begins before its event).
        archived = self.archive.heartbeat_events_since(
            format_time_ns(start_ns - TIMELINE_S * NS_PER_S), detector=detector
        )
        events = []
        for document in archived:
            with contextlib.suppress(HeartbeatError):
                events.append(event_from_dict(document))
        png = timeline_png(usable_heartbeats(records), detector, start_ns, now_ns, events)
        with self._timeline_lock:
            self._timelines[detector] = (time.monotonic(), png)
        return png

    # -- alerts

    def alerts(self) -> list[dict[str, Any]]:
        """The latest alert revisions, grouped by coincidence, newest coincidence first."""
        documents = self.archive.alerts.find(
            {},
            {"_id": False, **dict.fromkeys(ALERT_FIELDS, True)},
            sort=[("sent_time_utc", DESCENDING)],
            limit=ALERT_REVISIONS_SHOWN,
        )
        return self._coincidences(list(documents))

    def alert(self, alert_id: str) -> dict[str, Any] | None:
        revisions = list(
            self.archive.alerts.find(
                {"alert_id": alert_id}, {"_id": False, **dict.fromkeys(ALERT_FIELDS, True)}
            )
        )
        return self._coincidences(revisions)[0] if revisions else None

    def _coincidences(self, documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Alert revisions grouped by coincidence, in their first appearance's order, each
        revision with every field (None when an older alert lacks it), its members, and its
        sky-map picture's URL when the store has one (one query for all)."""
        names = [f"{d['alert_id']}-{d['revision']}.png" for d in documents if d.get("localization")]
        present = (
            {
                doc["filename"]
                for doc in self.skymaps.files.find({"filename": {"$in": names}}, {"filename": True})
            }
            if names
            else set()
        )
        grouped: dict[str, list[dict[str, Any]]] = {}
        for document in documents:
            grouped.setdefault(document["alert_id"], []).append(document)
        return [self._coincidence(revisions, present) for revisions in grouped.values()]

    @staticmethod
    def _coincidence(revisions: list[dict[str, Any]], present: set[str]) -> dict[str, Any]:
        revisions = sorted(
            (dict.fromkeys(ALERT_FIELDS) | r for r in revisions), key=lambda r: r["revision"]
        )
        for revision in revisions:
            picture = f"{revision['alert_id']}-{revision['revision']}.png"
            revision["skymap_png"] = f"/skymaps/{picture}" if picture in present else None
            revision["members"] = [
                {"detector_name": d, "neutrino_time_utc": t, "p_value": p}
                for d, t, p in zip(
                    revision.get("detector_names") or [],
                    revision.get("neutrino_times_utc") or [],
                    revision.get("p_values") or [],
                    strict=False,
                )
            ]
        return {
            "alert_id": revisions[-1]["alert_id"],
            "latest": revisions[-1],
            "revisions": revisions,
        }


def _duration(seconds: float | None) -> str:
    """Seconds as a person reads them in a table cell."""
    if seconds is None:
        return "\u2013"  # the en dash the templates show for "nothing"
    if abs(seconds) < 120:
        return f"{seconds:.1f} s"
    if abs(seconds) < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _wants_json() -> bool:
    if request.args.get("format") == "json":
        return True
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json"


def _page(template: str, data: dict[str, Any]) -> BaseResponse:
    if _wants_json():
        return jsonify(data)
    return Response(render_template(template, **data))


def _check_auth(expected: str) -> BaseResponse | None:
    auth = request.authorization
    given = f"{auth.username}:{auth.password}" if auth and auth.type == "basic" else ""
    if hmac.compare_digest(given.encode(), expected.encode()):
        return None
    return Response(
        "authentication required\n",
        401,
        {"WWW-Authenticate": 'Basic realm="SNEWS console", charset="UTF-8"'},
    )


def create_app(
    settings: Settings, *, data: ConsoleData | None = None, status: StatusCache | None = None
) -> Flask:
    """The console's WSGI app; `status` gathers in the background once the app serves."""
    data = data or ConsoleData(settings)
    status = status or StatusCache(
        lambda: build_status(celery_app, settings, timeout=STATUS_TIMEOUT_S)
    )
    web = Flask(__name__)
    web.json.sort_keys = False  # type: ignore[attr-defined]
    auth = settings.console_basic_auth

    @web.before_request
    def _authenticate() -> BaseResponse | None:
        status.start()
        return _check_auth(auth.get_secret_value()) if auth is not None else None

    @web.after_request
    def _headers(response: BaseResponse) -> BaseResponse:
        response.headers["Content-Security-Policy"] = (
            "default-src 'none'; style-src 'self'; img-src 'self'; frame-ancestors 'none'"
        )
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    web.add_template_filter(_duration, "duration")

    @web.context_processor
    def _common() -> dict[str, Any]:
        return {"server_tag": settings.server_tag, "mode": settings.mode}

    @web.get("/")
    def index() -> BaseResponse:
        return redirect("/detectors")

    @web.get("/healthz")
    def healthz() -> BaseResponse:
        return Response("ok\n", mimetype="text/plain")

    @web.get("/detectors")
    def detectors() -> BaseResponse:
        return _page("detectors.html", data.detectors(time.time_ns()))

    @web.get("/detectors/<name>/timeline.png")
    def timeline(name: str) -> BaseResponse:
        if name not in settings.detectors:
            abort(404)
        png = data.timeline(name, time.time_ns())
        return Response(png, mimetype="image/png", headers={"Cache-Control": "max-age=60"})

    @web.get("/alerts")
    def alerts() -> BaseResponse:
        return _page("alerts.html", {"alerts": data.alerts()})

    @web.get("/alerts/<alert_id>")
    def alert(alert_id: str) -> BaseResponse:
        found = data.alert(alert_id)
        if found is None:
            abort(404)
        return _page("alert.html", found)

    @web.get("/operations")
    def operations() -> BaseResponse:
        report, taken = status.report, status.taken_at
        page = {
            "gathered_utc": None if taken is None else format_time_ns(int(taken * NS_PER_S)),
            "age_s": None if taken is None else time.time() - taken,
            "healthy": None if report is None else report.healthy,
            "checks": [] if report is None else [c.__dict__ for c in report.checks],
        }
        return _page("operations.html", page)

    @web.get("/skymaps/<name>")
    def skymap(name: str) -> BaseResponse:
        try:
            check_name(name)
        except ValueError:
            abort(404)
        content = data.skymaps.get(name)
        if content is None:
            abort(404)
        kind = CONTENT_TYPES[name.rsplit(".", 1)[1]]
        return Response(content, mimetype=kind, headers={"Cache-Control": "max-age=86400"})

    return web


def serve(settings: Settings) -> None:
    """Run the console with waitress until stopped (SIGTERM or Ctrl-C)."""
    web = create_app(settings)
    log.info(
        "console on http://%s:%d (%s)",
        settings.console_address,
        settings.console_port,
        "basic auth" if settings.console_basic_auth else "no auth: local on 127.0.0.1",
    )
    waitress_serve(
        web, host=settings.console_address, port=settings.console_port, threads=8, ident="snews"
    )
