"""How fast the web console's pages load with a week of heartbeats from 20 detectors.

Starts Redis and SecantusDB (MongoDB protocol) on free ports, archives a week of
heartbeats from each of the 20 configured detectors (one a minute: 201,600 documents,
plus one detector that fell silent), their last 24 h in the feedback stream, 200
coincidences of two revisions each, then runs the feedback check once so the rule has its
state. The console runs as `snews-tasks console` (waitress), a separate process, as deployed;
each page is fetched over HTTP `--requests` times and the median, 95th percentile and
maximum are reported. A timeline picture is timed twice: drawn (its first request, or once
its minute in the cache has passed) and from the cache. The heartbeats end at the moment
the filling started, and the check runs on that clock, so only the detector that fell
silent is flagged.

    .venv/bin/python bench/console_pages.py [--requests 30] [--no-write]

Refreshes the section of bench/RESULTS.md named below (unless --no-write).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pymongo
import redis
from tqdm import tqdm

from snews_tasks.adapters.archive import Archive
from snews_tasks.adapters.detector_status import DetectorStatus
from snews_tasks.adapters.heartbeat_feed import HeartbeatFeed
from snews_tasks.core.routing import TaskName
from snews_tasks.core.times import NS_PER_S, format_time_ns
from snews_tasks.entrypoints import localstack
from snews_tasks.settings import KNOWN_DETECTORS, load_settings
from snews_tasks.tasks.feedback import check_heartbeats
from snews_tasks.testing.heartbeats import heartbeat_document

RESULTS_FILE = Path(__file__).resolve().parent / "RESULTS.md"
SECTION_TITLE = "Web console page times"
WEEK_S = 7 * 86400
INTERVAL_S = 60
ALERTS = 200
BUDGET_MS = 300.0
QUIET = "JUNO"


def fill(archive: Archive, state: redis.Redis, now_ns: int) -> int:
    """A week of heartbeats per detector (QUIET stops 10 min ago); returns how many."""
    status = DetectorStatus(state)
    beats = WEEK_S // INTERVAL_S
    day_start = now_ns - 86400 * NS_PER_S
    total = 0
    for detector in tqdm(KNOWN_DETECTORS, desc="heartbeats", file=sys.stderr):
        last = beats - (10 if detector == QUIET else 0)
        documents = [
            heartbeat_document(detector, now_ns - (beats - i) * INTERVAL_S * NS_PER_S)
            for i in range(last)
        ]
        archive.observations.insert_many([dict(d) for d in documents])  # it adds _id
        with state.pipeline(transaction=False) as pipe:
            feed = HeartbeatFeed(pipe)  # the storage task's XADD, batched
            for document in documents:
                if document["sent_time_utc"] >= format_time_ns(day_start):
                    feed.append(document)
            pipe.execute()
        final = documents[-1]
        status.record(detector, "ON", now_ns - (beats - last) * INTERVAL_S * NS_PER_S)
        archive.update_detector_status(final)
        total += len(documents)
    for i in range(ALERTS):
        for revision in (1, 2):
            members = ["Super-K", "IceCube", "KamLAND"][: revision + 1]
            archive.store_alert(
                {
                    "alert_id": f"bench-{i:04d}",
                    "revision": revision,
                    "alert_type": "NEW" if revision == 1 else "UPDATE",
                    "detector_names": members,
                    "neutrino_times_utc": [format_time_ns(now_ns - i * 3000 * NS_PER_S)]
                    * len(members),
                    "p_values": [0.01] * len(members),
                    "false_alarm_rate_per_year": 0.01,
                    "sent_time_utc": format_time_ns(now_ns - i * 3000 * NS_PER_S + revision),
                    "is_test": False,
                }
            )
    return total


def fetch(url: str) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as answer:
        answer.read()
    return (time.perf_counter() - started) * 1000


def summary(times_ms: list[float]) -> tuple[float, float, float]:
    ordered = sorted(times_ms)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return statistics.median(ordered), p95, ordered[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=30, help="requests per page")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md")
    args = parser.parse_args()

    redis_server, mongo_server = localstack.start_redis(), localstack.start_mongo()
    console = None
    try:
        port = localstack.free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("SNEWS_")},
            "SNEWS_MODE": "local",
            "SNEWS_STATE_REDIS_URL": f"redis://127.0.0.1:{redis_server.port}/1",
            "SNEWS_BROKER_URL": f"redis://127.0.0.1:{redis_server.port}/0",
            "SNEWS_RESULT_BACKEND": f"redis://127.0.0.1:{redis_server.port}/0",
            "SNEWS_MONGO_URL": mongo_server.url,
            "SNEWS_CONSOLE_PORT": str(port),
        }
        settings = load_settings("local", environ=env)
        state = redis.Redis.from_url(settings.state_redis_url, decode_responses=True)
        archive = Archive(pymongo.MongoClient(mongo_server.url), settings.mongo_db)
        archive.ensure_indexes()
        now = time.time_ns()
        started = time.perf_counter()
        count = fill(archive, state, now)
        print(f"archived {count} heartbeats in {time.perf_counter() - started:.0f} s")
        started = time.perf_counter()

        def archive_events(task: str, document: dict, headers: dict) -> None:
            if task == TaskName.STORE_HEARTBEAT_EVENT:  # the timelines shade archived gaps
                archive.store_heartbeat_event(document)

        outcome = check_heartbeats(settings, state, archive_events, now_ns=now)
        print(f"feedback check: {outcome} in {time.perf_counter() - started:.2f} s")

        console = subprocess.Popen(
            [sys.executable, "-m", "snews_tasks", "console"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        base = f"http://127.0.0.1:{port}"
        localstack.wait_until(lambda: fetch(f"{base}/healthz") > 0, 60, "the console")
        time.sleep(3)  # the status thread's first gathering (its inspect waits 2 s)
        pages = {
            "/detectors": f"{base}/detectors",
            "/detectors?format=json": f"{base}/detectors?format=json",
            "/alerts": f"{base}/alerts",
            "/alerts/<id>": f"{base}/alerts/bench-0007",
            "/operations": f"{base}/operations",
        }
        rows = []
        for name, url in pages.items():
            fetch(url)  # a first request warms Jinja's template cache
            rows.append((name, *summary([fetch(url) for _ in range(args.requests)])))
        drawn = [fetch(f"{base}/detectors/{d}/timeline.png") for d in KNOWN_DETECTORS]
        cached = [fetch(f"{base}/detectors/{d}/timeline.png") for d in KNOWN_DETECTORS]
        rows.append(("timeline.png, drawn (20 detectors)", *summary(drawn)))
        rows.append(("timeline.png, cached (20 detectors)", *summary(cached)))
    finally:
        if console is not None:
            console.terminate()
            console.wait(10)
        mongo_server.stop()
        redis_server.stop()

    lines = [
        f"## {SECTION_TITLE}",
        "",
        f"`.venv/bin/python bench/console_pages.py --requests {args.requests}`, "
        f"{time.strftime('%Y-%m-%d', time.gmtime())}, on this 2-core machine: a week of "
        f"heartbeats from 20 detectors ({count} archived, one a minute each), 24 h of them "
        f"in the feedback stream, {ALERTS} coincidences of 2 revisions; the console as its own "
        "process (waitress) on SecantusDB and Redis. Times are one HTTP request each, "
        f"client-side, in ms; the budget is {BUDGET_MS:.0f} ms a page. Load average at the "
        f"end: {os.getloadavg()[0]:.1f} (2 cores; other work on the machine inflates these).",
        "",
        "| page | median | p95 | max |",
        "|---|---|---|---|",
        *(f"| `{n}` | {m:.1f} | {p:.1f} | {x:.1f} |" for n, m, p, x in rows),
        "",
        "The pages read only per-detector summaries (Redis, the `detector_status` collection and "
        "the feedback rule's state), never the week of heartbeats; a timeline picture reads one "
        "detector's last 24 h through the (tier, detector_name, sent_time_utc) index, is drawn "
        "with matplotlib on request and kept a minute (the pictures load lazily, as each "
        "comes into view). `/operations` serves the status the console gathers "
        "every 5 s in the background (gathering asks every worker and waits its 2 s timeout).",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        existing = RESULTS_FILE.read_text(encoding="utf-8")
        pattern = re.compile(
            rf"^## {re.escape(SECTION_TITLE)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL
        )
        if pattern.search(existing):
            updated = pattern.sub(lambda _: text, existing, count=1)
        else:
            updated = existing.rstrip("\n") + "\n\n" + text
        RESULTS_FILE.write_text(updated, encoding="utf-8")
        print(f"wrote {RESULTS_FILE}")


if __name__ == "__main__":
    main()
