"""The web console in a real browser (Debian's headless Chromium, driven by Playwright).

Real workers (coincidence, notify) and the console process run from workers/, as deployed;
the test stores heartbeats (regular ones, and a detector that went quiet), sends a burst,
runs the feedback check, then loads every page as a person would and checks what they look
for. Any JavaScript error, console error or failed request fails the test. Screenshots go
to $SNEWS_TEST_ARTIFACTS/console (default: test-artifacts/console in the checkout), which
the test prints.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import ConsoleMessage, Page, Request, sync_playwright

from snews_tasks.adapters.skymap_store import SkymapStore
from snews_tasks.core.routing import TaskName, queue_of
from snews_tasks.core import alert_localization
from snews_tasks.core.localization_request import request_of
from snews_tasks.core.sites import load_sites
from snews_tasks.core.times import NS_PER_S, format_time_ns
from snews_tasks.entrypoints import localstack
from snews_tasks.testing.heartbeats import beats, smtp_service  # noqa: F401
from snews_tasks.testing.pipeline import (  # noqa: F401
    REPO,
    ClockedSlackApi,
    Pipeline,
    live_observation,
    pipelines,
    slack,
)

pytestmark = pytest.mark.e2e
CHROMIUM = "/usr/bin/chromium"  # Debian's, installed by scripts/bootstrap
CONSOLE_AUTH = {"username": "test", "password": "test-only-console"}  # config/test.env
ARTIFACTS = Path(os.environ.get("SNEWS_TEST_ARTIFACTS") or REPO / "test-artifacts") / "console"
REGULAR = ("Super-K", "IceCube", "KamLAND", "SNO+")
QUIET = "JUNO"
BURST = ("Super-K", "IceCube", "KamLAND")


def sky_map_picture(alert_id: str, revision: int) -> bytes:
    """The localization's own picture of the burst's detectors, as if all saw it at once (a
    direction across the plane of their sites), so the screenshots show a real sky map."""
    request = request_of({"alert_id": alert_id, "revision": revision, "is_test": False,
                          "detector_names": list(BURST),
                          "neutrino_times_utc": [format_time_ns(time.time_ns())] * len(BURST)})
    files = alert_localization.run(request, load_sites(None), 32, {}).files()
    [png] = [data for name, data in files.items() if name.endswith(".png")]
    return png


def prepare(pipeline: Pipeline) -> str:
    """Heartbeats, a gap, a burst and the feedback check; returns the burst's alert id."""
    now = time.time_ns()
    start = now - 20 * 60 * NS_PER_S
    heartbeats = [hb for d in REGULAR for hb in beats(d, start, 60, 21)]
    heartbeats += beats(QUIET, start, 60, 15)  # last one 5 min ago
    for heartbeat in heartbeats:
        pipeline.send_task(TaskName.STORE_HEARTBEAT, heartbeat, {})
    pipeline.send(live_observation(d, now - i * NS_PER_S) for i, d in enumerate(BURST))
    pipeline.drain()
    pipeline.client.send_task(TaskName.FEEDBACK_CHECK, queue=queue_of(TaskName.FEEDBACK_CHECK))
    pipeline.drain()
    alerts = list(pipeline.archive.alerts.find({}, {"_id": False}))
    latest = max(alerts, key=lambda a: (len(a["detector_names"]), a["revision"]))
    assert sorted(latest["detector_names"]) == sorted(BURST)
    # What the localization adds to an alert revision: its sky map in the store.
    alert_id, revision = latest["alert_id"], latest["revision"]
    pipeline.archive.alerts.update_one(
        {"alert_id": alert_id, "revision": revision}, {"$set": {"localization": {"ra": 1.0}}}
    )
    SkymapStore(pipeline.archive).put(f"{alert_id}-{revision}.png",
                                      sky_map_picture(alert_id, revision))
    return str(alert_id)


class Browser:
    """One page that records every error the browser reports."""

    def __init__(self, page: Page, base_url: str) -> None:
        self.page = page
        self.base_url = base_url
        self.errors: list[str] = []
        self.timings: dict[str, float] = {}
        page.on("pageerror", lambda error: self.errors.append(f"JavaScript: {error}"))
        page.on("console", self._console)
        page.on("requestfailed", self._failed)
        page.on(
            "response",
            lambda r: r.status >= 400 and self.errors.append(f"HTTP {r.status}: {r.url}"),
        )

    def _failed(self, request: Request) -> None:
        if request.failure != "net::ERR_ABORTED":  # not one a navigation cancelled
            self.errors.append(f"request failed: {request.url} ({request.failure})")

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text}")

    def load(self, path: str, shot: str) -> Page:
        started = time.perf_counter()
        self.page.goto(self.base_url + path, wait_until="load")
        self.timings[path] = time.perf_counter() - started
        for picture in self.page.locator("img").all():  # lazy pictures load once scrolled to
            picture.scroll_into_view_if_needed()
        deadline = time.monotonic() + 30  # (wait_for_function would need the CSP relaxed)
        while not self.page.evaluate("[...document.images].every(i => i.complete)"):
            assert time.monotonic() < deadline, f"{path}: pictures still loading"
            time.sleep(0.1)
        broken = self.page.evaluate(
            "[...document.images].filter(i => !i.complete || i.naturalWidth === 0)"
            ".map(i => i.src)"
        )
        assert broken == [], f"{path}: pictures that did not load: {broken}"
        self.page.screenshot(path=str(ARTIFACTS / f"{shot}.png"), full_page=True)
        assert self.errors == [], f"{path}: {self.errors}"
        return self.page


def test_every_page_shows_what_operators_look_for(
    pipelines: Callable[..., Pipeline], smtp_service: localstack.Service
) -> None:
    pipeline = pipelines(
        settings={"SNEWS_SMTP_HOST": "127.0.0.1", "SNEWS_SMTP_PORT": str(smtp_service.port)}
    )
    pipeline.start_workers("coincidence", "notify")
    base_url = pipeline.start_console()
    alert_id = prepare(pipeline)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    print(f"console screenshots: {ARTIFACTS}")

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            context = chromium.new_context(
                http_credentials=CONSOLE_AUTH, viewport={"width": 1400, "height": 900}
            )
            browser = Browser(context.new_page(), base_url)

            page = browser.load("/detectors", "detectors")
            quiet = page.locator(f'tr[data-detector="{QUIET}"]')
            assert quiet.get_attribute("class") == "missed"
            assert "MISSED since" in quiet.inner_text()
            for detector in REGULAR:
                row = page.locator(f'tr[data-detector="{detector}"]')
                assert row.get_attribute("class") == "online", detector
                assert "60.0 s" in row.inner_text()  # its interval
            events = page.locator("#events").inner_text()
            assert QUIET in events and "juno-shifters@example.org" in events
            assert page.locator("figure img").count() == len(REGULAR) + 1

            page = browser.load("/alerts", "alerts")
            row = page.locator("#alerts tr", has_text=alert_id)
            for detector in BURST:
                assert detector in row.inner_text()
            link = row.get_by_role("link", name=alert_id).get_attribute("href")
            assert link == f"/alerts/{alert_id}"
            page = browser.load(link, "alert")
            members = page.locator("table.members").first.inner_text()
            assert all(detector in members for detector in BURST)
            assert page.locator("figure img").count() == 1  # the sky map

            # The console gathers the status every 5 s: wait for one taken after the check.
            deadline = time.monotonic() + 30
            page = browser.load("/operations", "operations")
            while f"missed: {QUIET}" not in page.inner_text("main"):
                assert time.monotonic() < deadline, page.inner_text("main")
                time.sleep(1)
                page = browser.load("/operations", "operations")
            checks = page.locator("#checks").inner_text()
            assert "heartbeat feedback" in checks and f"missed: {QUIET}" in checks
            assert "queue consumers" in checks

            api = context.request.get(f"{base_url}/detectors?format=json")
            rows = {r["detector_name"]: r for r in api.json()["detectors"]}
            assert rows[QUIET]["missed_since_utc"] is not None
            unauthenticated = playwright.request.new_context().get(f"{base_url}/detectors")
            assert unauthenticated.status == 401
        finally:
            chromium.close()
    print("page load times (s): " + json.dumps({p: round(t, 3) for p, t in browser.timings.items()}))
