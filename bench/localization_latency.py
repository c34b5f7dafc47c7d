"""The first alert's latency with localization on and off, and how soon the map follows.

    .venv/bin/python bench/localization_latency.py [--runs 10] [--warmup 2] [--nside 64]

Starts Redis, Tansu and SecantusDB (snews_tasks.localstack), a fake Slack API and the workers
from workers/ (snews_tasks/testing/pipeline.py), twice: localization off (coincidence and notify
workers, SNEWS_LOCALIZATION=false) and on (plus workers/localize). Each run sends one
observation (IceCube), lets it settle, then enqueues a second one (Super-K, 12 ms later: a
direction exists) whose coincidence makes a NEW alert, and times from that enqueue until

  * first alert  - a subscriber received the NEW alert,
  * localized    - a subscriber received the UPDATE carrying its localization (on only),

and reports the gap between the two. The subscriber is a confluent-kafka consumer with
fetch.wait.max.ms=10 (see bench/pipeline_latency.py: hop's reader would measure the local
broker's 500 ms fetch wait). The localize worker logs, for each localization, when its result
was sent (map computed, FITS stored) and when its PNG picture was stored; reported too.
Warm-up runs are not counted.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from confluent_kafka import Consumer

from snews_tasks.entrypoints import localstack
from snews_tasks.testing.pipeline import S, Pipeline, live_observation
from snews_tasks.testing.slack_api import FakeSlackApi

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline_latency import (  # noqa: E402
    nearest_rank,
    parse_runs,
    receive_alert_with,
    runs_parser,
    subscriber,
)

RUN_SPACING_S = 60
_COMPUTED = re.compile(r"revision \d+: localization added: .*\(result sent after (\d+) ms, "
                       r"picture stored after (\d+) ms\)")


def receive(consumer: Consumer, observation_uuid: str, localized: bool) -> int:
    """Arrival time (ns) of the alert naming `observation_uuid`, with or without a map."""
    return receive_alert_with(
        consumer, observation_uuid, lambda alert: (alert.get("localization") is not None) == localized
    )[2]


def one_run(pipeline: Pipeline, consumer: Consumer, t_ns: int, localize: bool) -> dict:
    first = live_observation("IceCube", t_ns)
    second = live_observation("Super-K", t_ns + 12_000_000)
    pipeline.send([first])
    pipeline.drain()
    enqueued_ns = time.time_ns()
    pipeline.send([second])
    new_ns = receive(consumer, second.uuid, localized=False)
    result = {"first alert": (new_ns - enqueued_ns) / 1e6}
    if localize:
        localized_ns = receive(consumer, second.uuid, localized=True)
        result["localized"] = (localized_ns - enqueued_ns) / 1e6
        result["gap"] = (localized_ns - new_ns) / 1e6
    pipeline.drain()
    return result


def measure(services: dict, slack: FakeSlackApi, work: Path, args: argparse.Namespace,
            localize: bool) -> tuple[list[dict], list[tuple[float, float]]]:
    redis_server, kafka, mongo = services["redis"], services["kafka"], services["mongo"]
    base = f"redis://{localstack.HOST}:{redis_server.port}"
    database = 2 if localize else 0
    pipeline = Pipeline(kafka=kafka, mongo_url=mongo.url, broker_url=f"{base}/{database}",
                        state_redis_url=f"{base}/{database + 1}", work_dir=work / str(localize),
                        slack_base_url=slack.base_url,
                        settings={"SNEWS_LOCALIZATION": "true" if localize else "false",
                                  "SNEWS_SKYMAP_NSIDE": str(args.nside)})
    try:
        pipeline.start_workers("coincidence", "notify", *(["localize"] if localize else []))
        consumer = subscriber(kafka, pipeline.alert_topic)
        count = args.warmup + args.runs
        first_t_ns = time.time_ns() - (count + 1) * RUN_SPACING_S * S
        runs = [one_run(pipeline, consumer, first_t_ns + i * RUN_SPACING_S * S, localize)
                for i in range(count)][args.warmup:]
        consumer.close()
        logs = "".join(w.log() for w in pipeline.workers if w.name.startswith("localize"))
        computed = [(float(sent), float(stored)) for sent, stored in _COMPUTED.findall(logs)]
    finally:
        pipeline.close(show_logs=False)
    return runs, computed[args.warmup:]


def row(label: str, values: list[float]) -> str:
    ordered = sorted(values)
    return (f"| {label} | {statistics.median(ordered):.1f} | {nearest_rank(ordered, 0.9):.1f} | "
            f"{ordered[-1]:.1f} |")


def main() -> int:
    parser = runs_parser(__doc__)
    parser.add_argument("--nside", type=int, default=64, help="HEALPix resolution (default 64)")
    args = parse_runs(parser)

    started: list[localstack.Service] = []
    try:
        services = {}
        for name, start in (("redis", localstack.start_redis), ("kafka", localstack.start_kafka),
                            ("mongo", localstack.start_mongo)):
            services[name] = start()
            started.append(services[name])
        with FakeSlackApi() as slack, tempfile.TemporaryDirectory(prefix="snews-bench-") as work:
            off, _ = measure(services, slack, Path(work), args, localize=False)
            print(f"localization off: {args.runs} runs measured", file=sys.stderr)
            on, computed = measure(services, slack, Path(work), args, localize=True)
    finally:
        for service in reversed(started):
            service.stop()

    print(f"two-detector burst, {args.runs} runs per mode ({args.warmup} warm-up runs not "
          f"counted), nside {args.nside}; ms from the enqueue of the second observation:")
    print("\n| | median | p90 | max |\n|---|---|---|---|")
    print(row("first alert received, localization off", [r["first alert"] for r in off]))
    print(row("first alert received, localization on", [r["first alert"] for r in on]))
    print(row("localized revision received, localization on", [r["localized"] for r in on]))
    print(row("localized revision after the first alert", [r["gap"] for r in on]))
    if computed:
        print(row("localize task: map and FITS stored, result sent (worker log)",
                  [sent for sent, _ in computed]))
        print(row("localize task: PNG picture stored too (worker log)",
                  [stored for _, stored in computed]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
