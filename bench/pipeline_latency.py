"""Alert latency through the deployed pipeline: real servers, real Celery workers.

    .venv/bin/python bench/pipeline_latency.py [--runs 10] [--warmup 2]

Starts Redis, a Tansu Kafka broker and SecantusDB (snews_tasks.localstack),
a fake Slack API, and the workers from workers/ (snews_tasks/testing/pipeline.py starts
them), then runs the three-detector example (t, t+9 s, t+11 s) once per run,
each run at its own neutrino times. Timed: the enqueue of the third message,
whose coincidence makes a NEW alert, until

  * processed  - the coincidence task began (the alert's sent_time_utc),
  * produced   - the alert record was produced to Kafka (its CreateTime, 1 ms resolution),
  * consumed   - a subscriber received it.

The subscriber is a confluent-kafka consumer with fetch.wait.max.ms=10, not
hop-client's reader: hop's reader keeps librdkafka's default 500 ms fetch wait,
and these local brokers hold every fetch that long (LOCAL-SERVICES.md), which
would measure the broker's wait instead of the pipeline. Apache Kafka answers a
fetch as soon as data arrives. Warm-up runs (each notify pool process opens its
Kafka producer on first use) are not counted.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from confluent_kafka import Consumer


from snews_tasks.testing.pipeline import S, Pipeline, live_observation
from snews_tasks.testing.slack_api import FakeSlackApi
from snews_tasks.entrypoints import localstack
from snews_tasks.core.times import parse_time_ns

# Neutrino times of consecutive runs lie this far apart, so their coincidences never touch.
RUN_SPACING_S = 60
RECEIVE_TIMEOUT_S = 30.0


def subscriber(kafka: localstack.Service, topic: str) -> Consumer:
    """A consumer that asks for data every 10 ms; ready once it holds its partition."""
    consumer = Consumer({"bootstrap.servers": kafka.address, "group.id": f"bench-{uuid.uuid4()}",
                         "auto.offset.reset": "earliest", "fetch.wait.max.ms": 10,
                         "enable.auto.commit": False})
    consumer.subscribe([topic])
    deadline = time.monotonic() + RECEIVE_TIMEOUT_S
    while not consumer.assignment():
        if time.monotonic() > deadline:
            raise RuntimeError(f"no partition of {topic} assigned within {RECEIVE_TIMEOUT_S} s")
        consumer.poll(0.05)
    return consumer


def receive_alert_with(consumer: Consumer, observation_uuid: str,
                       accept: Callable[[dict], bool] = lambda alert: True
                       ) -> tuple[dict, int, int]:
    """The alert naming `observation_uuid` (and that `accept` takes), its record's CreateTime
    (ms), its arrival (ns)."""
    deadline = time.monotonic() + RECEIVE_TIMEOUT_S
    while time.monotonic() < deadline:
        record = consumer.poll(0.5)
        if record is None or record.error():
            continue
        arrived_ns = time.time_ns()
        alert = json.loads(record.value())
        if observation_uuid in alert["observation_uuids"] and accept(alert):
            return alert, record.timestamp()[1], arrived_ns
    raise RuntimeError(f"no alert naming {observation_uuid} within {RECEIVE_TIMEOUT_S} s")


def one_run(pipeline: Pipeline, consumer: Consumer, t_ns: int) -> dict[str, float]:
    """Latencies in ms of the third message's alert, with the first two already processed."""
    first, second, third = (live_observation("IceCube", t_ns),
                            live_observation("JUNO", t_ns + 9 * S),
                            live_observation("Super-K", t_ns + 11 * S))
    pipeline.send([first, second])
    receive_alert_with(consumer, second.uuid)
    pipeline.drain()
    enqueued_ns = time.time_ns()
    pipeline.send([third])
    alert, created_ms, arrived_ns = receive_alert_with(consumer, third.uuid)
    processed_ns = parse_time_ns(alert["sent_time_utc"], "sent_time_utc")
    return {"processed": (processed_ns - enqueued_ns) / 1e6,
            "produced": created_ms - enqueued_ns / 1e6,
            "consumed": (arrived_ns - enqueued_ns) / 1e6}


def nearest_rank(sorted_values: list[float], fraction: float) -> float:
    return sorted_values[max(0, math.ceil(fraction * len(sorted_values)) - 1)]


def runs_parser(doc: str) -> argparse.ArgumentParser:
    """The latency benches' options: measured and uncounted runs."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="measured runs (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="uncounted runs first (default 2)")
    return parser


def parse_runs(parser: argparse.ArgumentParser) -> argparse.Namespace:
    args = parser.parse_args()
    if args.runs < 1 or args.warmup < 0:
        parser.error("--runs must be >= 1 and --warmup >= 0")
    return args


def main() -> int:
    args = parse_runs(runs_parser(__doc__))

    services: list[localstack.Service] = []
    try:
        redis_server = localstack.start_redis()
        services.append(redis_server)
        kafka = localstack.start_kafka()
        services.append(kafka)
        mongo = localstack.start_mongo()
        services.append(mongo)
        with FakeSlackApi() as slack, tempfile.TemporaryDirectory(prefix="snews-bench-") as work:
            base = f"redis://{localstack.HOST}:{redis_server.port}"
            pipeline = Pipeline(kafka=kafka, mongo_url=mongo.url, broker_url=f"{base}/0",
                                state_redis_url=f"{base}/1", work_dir=Path(work),
                                slack_base_url=slack.base_url)
            try:
                pipeline.start_workers("coincidence", "notify")
                consumer = subscriber(kafka, pipeline.alert_topic)
                first_t_ns = time.time_ns() - (args.warmup + args.runs + 1) * RUN_SPACING_S * S
                runs = [one_run(pipeline, consumer, first_t_ns + i * RUN_SPACING_S * S)
                        for i in range(args.warmup + args.runs)][args.warmup:]
                consumer.close()
            finally:
                pipeline.close(show_logs=False)
    finally:
        for service in reversed(services):
            service.stop()

    print(f"three-detector example, {args.runs} runs ({args.warmup} warm-up runs not counted); "
          "enqueue of the third message until:")
    print(f"{'':<44}{'median':>9}{'p90':>9}{'max':>9}  ms")
    labels = {"processed": "coincidence task began (alert sent_time)",
              "produced": "alert produced to Kafka (record CreateTime)",
              "consumed": "alert consumed (fetch.wait.max.ms=10)"}
    for key, label in labels.items():
        values = sorted(run[key] for run in runs)
        print(f"{label:<44}{statistics.median(values):>9.1f}{nearest_rank(values, 0.9):>9.1f}"
              f"{values[-1]:>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
