"""The web console's pages and JSON API on a real Redis and MongoDB (Flask's test client;
tests/e2e/test_console_browser.py loads them in Chromium from the running stack)."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator

import pymongo
import pytest
import redis

from snews_tasks.adapters.archive import Archive
from snews_tasks.adapters.detector_status import DetectorStatus
from snews_tasks.adapters.heartbeat_feed import HeartbeatFeed
from snews_tasks.adapters.skymap_store import SkymapStore
from snews_tasks.core.times import NS_PER_S, parse_time_ns
from snews_tasks.entrypoints.console import ConsoleData, StatusCache, create_app
from snews_tasks.entrypoints.localstack import Service
from snews_tasks.entrypoints.status import Check, Report
from snews_tasks.settings import Settings, load_settings
from snews_tasks.tasks.feedback import check_heartbeats
from snews_tasks.testing.heartbeats import beats

pytestmark = pytest.mark.integration
AUTH = {"Authorization": "Basic " + base64.b64encode(b"ops:secret-pw").decode()}
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 32


def console_settings(redis_url: str, mongo: Service, **more: str) -> Settings:
    return load_settings(
        "test",
        environ={
            "SNEWS_STATE_REDIS_URL": redis_url,
            "SNEWS_MONGO_URL": mongo.url,
            "SNEWS_MONGO_DB": f"console-{time.time_ns()}",
            "SNEWS_CONSOLE_BASIC_AUTH": "ops:secret-pw",
            **more,
        },
    )


def record(client: redis.Redis, archive: Archive, heartbeat: dict) -> None:
    """What the storage task does with a heartbeat."""
    seen = parse_time_ns(heartbeat["received_time_utc"], "received_time_utc")
    DetectorStatus(client).record(heartbeat["detector_name"], "ON", seen)
    archive.update_detector_status(heartbeat)
    archive.store_observation(heartbeat)
    HeartbeatFeed(client).append(heartbeat)


@pytest.fixture
def console(redis_url: str, mongo_service: Service) -> Iterator[tuple]:
    settings = console_settings(redis_url, mongo_service)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    archive = Archive(pymongo.MongoClient(mongo_service.url), settings.mongo_db)
    archive.ensure_indexes()
    now = time.time_ns()
    for heartbeat in beats("Super-K", now - 10 * 60 * NS_PER_S, 60, 11):
        record(client, archive, heartbeat)
    for heartbeat in beats("JUNO", now - 12 * 60 * NS_PER_S, 60, 8):
        record(client, archive, heartbeat)
    sent: list[tuple[str, dict]] = []
    check_heartbeats(settings, client, lambda task, doc, headers: sent.append((task, doc)))
    for task, document in sent:
        if task.endswith("store_heartbeat_event"):
            archive.store_heartbeat_event(document)
    for revision, kind in ((1, "NEW"), (2, "UPDATE")):
        archive.store_alert(
            {
                "alert_id": "c-test-1",
                "revision": revision,
                "alert_type": kind,
                "detector_names": ["Super-K", "IceCube", "JUNO"][: revision + 1],
                "neutrino_times_utc": ["2026-01-01T00:00:00.000000000Z"] * (revision + 1),
                "p_values": [0.01] * (revision + 1),
                "false_alarm_rate_per_year": 0.002,
                "combined_significance_sigma": 3.1 if revision == 2 else None,
                "localization": {"ra_deg": 10.0} if revision == 2 else None,
                "sent_time_utc": f"2026-01-01T00:00:0{revision}.000000000Z",
                "is_test": False,
            }
        )
    SkymapStore(archive.db).put("c-test-1-2.png", PNG)
    gathered = threading.Event()  # the first status waits for the test to let it through
    status = StatusCache(
        lambda: (gathered.wait(10), Report([Check("broker", True, "redis://x")]))[1]
    )
    web = create_app(settings, data=ConsoleData(settings), status=status)
    try:
        yield web.test_client(), status, gathered
    finally:
        archive.db.client.drop_database(settings.mongo_db)
        client.close()


def test_detectors_page_flags_the_quiet_detector(console: tuple) -> None:
    web, *_ = console
    page = web.get("/detectors", headers=AUTH)
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert 'class="missed" data-detector="JUNO"' in html
    assert 'class="online" data-detector="Super-K"' in html
    data = web.get("/detectors?format=json", headers=AUTH).get_json()
    rows = {row["detector_name"]: row for row in data["detectors"]}
    assert rows["JUNO"]["missed_since_utc"] is not None
    assert rows["Super-K"]["missed_since_utc"] is None
    assert rows["Super-K"]["mean_interval_s"] == pytest.approx(60)
    assert rows["Super-K"]["latency_s"] == pytest.approx(0.5)
    assert [e["event"] for e in data["events"]] == ["missed"]
    picture = web.get("/detectors/Super-K/timeline.png", headers=AUTH)
    assert picture.mimetype == "image/png" and picture.data.startswith(b"\x89PNG")
    assert web.get("/detectors/Nope/timeline.png", headers=AUTH).status_code == 404


def test_alerts_list_revisions_members_and_sky_map(console: tuple) -> None:
    web, *_ = console
    listing = web.get("/alerts", headers={**AUTH, "Accept": "application/json"}).get_json()
    [alert] = listing["alerts"]
    assert [r["revision"] for r in alert["revisions"]] == [1, 2]
    assert [m["detector_name"] for m in alert["latest"]["members"]] == [
        "Super-K",
        "IceCube",
        "JUNO",
    ]
    assert alert["latest"]["skymap_png"] == "/skymaps/c-test-1-2.png"
    assert alert["revisions"][0]["skymap_png"] is None
    html = web.get("/alerts/c-test-1", headers=AUTH).get_data(as_text=True)
    assert "3.10 σ" in html and 'src="/skymaps/c-test-1-2.png"' in html
    assert web.get("/skymaps/c-test-1-2.png", headers=AUTH).data == PNG
    assert web.get("/skymaps/c-test-1-9.png", headers=AUTH).status_code == 404
    assert web.get("/skymaps/..%2Fetc-1.png", headers=AUTH).status_code == 404
    assert web.get("/alerts/nope", headers=AUTH).status_code == 404


def test_operations_page_shows_the_status_checks(console: tuple) -> None:
    web, status, gathered = console
    assert "being gathered" in web.get("/operations", headers=AUTH).get_data(as_text=True)
    gathered.set()
    deadline = time.monotonic() + 10
    while status.report is None and time.monotonic() < deadline:
        time.sleep(0.05)
    data = web.get("/operations?format=json", headers=AUTH).get_json()
    assert data["healthy"] is True
    assert data["checks"] == [{"name": "broker", "ok": True, "detail": "redis://x", "data": None}]


def test_every_route_needs_the_credentials(console: tuple) -> None:
    web, *_ = console
    for path in ("/detectors", "/alerts", "/operations", "/skymaps/c-test-1-2.png"):
        answer = web.get(path)
        assert answer.status_code == 401, path
        assert answer.headers["WWW-Authenticate"].startswith("Basic")
    wrong = {"Authorization": "Basic " + base64.b64encode(b"ops:wrong").decode()}
    assert web.get("/detectors", headers=wrong).status_code == 401
    page = web.get("/detectors", headers=AUTH)
    assert "script-src" not in page.headers["Content-Security-Policy"]  # none: no script runs
    assert page.headers["X-Content-Type-Options"] == "nosniff"
