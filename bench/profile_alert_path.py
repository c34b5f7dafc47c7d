"""Where a coincidence message's time goes, in process and in the deployed path.

    .venv/bin/python bench/profile_alert_path.py [--messages 6000] [--flood 30000] [--spy-s 10]

In process: the worker's own `CoincidenceService` (built by
`tasks.coincidence.service()`, configured through SNEWS_* variables) handles
--messages observations of the load mix (load.py: isolated observations plus
a completing pair every 250) against a real redis-server, sending its
follow-up tasks with the real Celery app to that server and publishing its
alerts to a Tansu broker, as the writer does: once as tasks of one
message (what the ingest sends when traffic is light), then --messages fresh
ones as tasks of the ingest's largest batch (one poll under load). Each task
also records its start receipt, as tasks/receipts.py does in the worker. Per
message: wall time and Redis round trips (socket writes, by database: state
or Celery broker); then further batches under cProfile.

Deployed: a backlog of --flood messages on the observation topic is worked
off through the ingest and the coincidence worker (load.flooded) while
py-spy samples both processes for --spy-s seconds; each one's samples are
summed by what they were doing.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import redis.connection


from load import (CACHE_LIFETIME_S, command_line, flooded, header, load_now,
                  markdown_table, mix, percentile, write_section)
from snews_tasks.entrypoints import localstack
from snews_tasks.adapters.kafka_source import MAX_BATCH

SECTION_TITLE = "Where the coincidence worker's time goes"
WARMUP = 200
PROFILED_BATCHES = 4  # run under cProfile after the timed ones
SPY_RATE_HZ = 100
#: Frames of a py-spy stack that say what a sample was doing, tried in this order: the first
#: match names the sample, so inner frames come before the frames that call them. Each is
#: (label, substring of a frame "function (file:line)").
WORKER_ACTIVITIES = (
    ("validation: parse, freshness", "CoincidenceService._check "),
    ("copy of the state reloaded from Redis", "RedisStore._load "),
    ("expiry", "CoincidenceService._expire "),
    ("heartbeats read (alerts only)", "RedisStore.heartbeats "),
    ("staging: apply to the copy, encode the commands", "WriteView.stage"),
    ("engine step: coincidences, alerts", "CoincidenceService._step "),
    ("commit: one Lua script", "RedisStore.transact "),
    ("alerts published to Kafka by the writer", "PublishFromWriter.__call__ "),
    ("hand-on: wait sets, follow-up tasks to the broker", "CoincidenceService._after_commit "),
    ("task start receipt", "_task_started "),
    ("Celery task events (publish to Redis)", "EventDispatcher."),
    ("task run bookkeeping (trace, logging, result)", "trace_task "),
    ("main loop: fetch, decode, unacked bookkeeping, ack", "asynloop "),
)
INGEST_ACTIVITIES = (
    ("Kafka poll and consume", "KafkaSource.poll "),
    ("decode and validate", "Ingest._parse "),
    ("send tasks to the Celery broker", "Ingest._enqueue "),
    ("receipts: read, commit offsets, resend", "Ingest._confirm "),
    ("liveness report to Redis", "Ingest._report "),
    ("log line per message", "Logger.info "),
    ("task documents and the rest of a poll's handling", "Ingest._handle "),
)


# -- in process -----------------------------------------------------------------------------------

class RoundTrips:
    """Counts socket writes per Redis database: one write is one round trip (a pipeline is one)."""

    def __init__(self) -> None:
        self.counts: Counter[int] = Counter()
        self._original = redis.connection.AbstractConnection.send_packed_command

    def __enter__(self) -> RoundTrips:
        original, counts = self._original, self.counts

        def counted(connection: redis.connection.AbstractConnection, *args: object,
                    **kwargs: object) -> None:
            counts[connection.db] += 1
            return original(connection, *args, **kwargs)

        redis.connection.AbstractConnection.send_packed_command = counted
        return self

    def __exit__(self, *_: object) -> None:
        redis.connection.AbstractConnection.send_packed_command = self._original


@dataclass
class Mode:
    """One way of feeding the writer, as timed in process."""

    batch: int
    task_ms: list[float]
    trips: Counter[int]

    @property
    def messages(self) -> int:
        return self.batch * len(self.task_ms)

    def per_message(self, database: int) -> float:
        return self.trips[database] / self.messages


def in_process(count: int) -> tuple[list[Mode], str]:
    """Both feedings against a real Redis and Kafka, and the cProfile text of the batched one."""
    server = localstack.start_redis()
    kafka = localstack.start_kafka(topics=["alerts"])
    try:
        base = f"redis://{localstack.HOST}:{server.port}"
        os.environ.update({"SNEWS_MODE": "test", "SNEWS_BROKER_URL": f"{base}/0",
                           "SNEWS_RESULT_BACKEND": f"{base}/0",
                           "SNEWS_STATE_REDIS_URL": f"{base}/1",
                           "SNEWS_KAFKA_URL": kafka.url, "SNEWS_ALERT_TOPIC": "alerts",
                           "SNEWS_CACHE_LIFETIME_S": str(CACHE_LIFETIME_S)})
        from snews_tasks.adapters.receipts import Receipts
        from snews_tasks.tasks.coincidence import service  # reads the settings at import
        from snews_tasks.tasks.context import state_redis

        svc = service()
        receipts = Receipts(state_redis())

        def task(payloads: list[dict]) -> None:
            receipts.mark_received(uuidlib.uuid4().hex)  # the worker's task_prerun does this
            svc.handle_many(payloads)

        used = 0

        def fresh(n: int) -> list[dict]:
            nonlocal used
            used += n
            return [json.loads(scheduled.payload) for scheduled in mix(n, used - n)]

        for payload in fresh(WARMUP):
            task([payload])
        modes = []
        for batch in (1, MAX_BATCH):
            messages = fresh(count - count % batch)
            mode = Mode(batch, [], Counter())
            with RoundTrips() as trips:
                for i in range(0, len(messages), batch):
                    start = time.perf_counter_ns()
                    task(messages[i:i + batch])
                    mode.task_ms.append((time.perf_counter_ns() - start) / 1e6)
            mode.trips = trips.counts
            modes.append(mode)
        profiled = fresh(PROFILED_BATCHES * MAX_BATCH)
        profile = cProfile.Profile()
        profile.runcall(lambda: [task(profiled[i:i + MAX_BATCH])
                                 for i in range(0, len(profiled), MAX_BATCH)])
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(25)
        return modes, text.getvalue()
    finally:
        kafka.stop()
        server.stop()


# -- the deployed path under py-spy --------------------------------------------------------------

@dataclass
class Spied:
    """One deployed run under py-spy: samples by activity per process, and the rate."""

    worker: Counter[str]
    ingest: Counter[str] | None
    per_s: float


def spy_on_path(count: int, seconds: int, work: Path, *, batched: bool) -> Spied:
    """Sample the coincidence worker (and, batched, the ingest) working off a backlog of
    `count` messages (`load.flooded`), and the messages/s processed meanwhile."""
    payloads = [scheduled.payload for scheduled in mix(count)]
    with flooded(payloads, ("coincidence",), batched=batched) as (deployment, (worker,)):
        targets = {"worker": worker.process.pid}
        if deployment.ingest is not None:
            targets["ingest"] = deployment.ingest.process.pid
        start_count, start = deployment.processed(), time.monotonic()
        spies = {name: subprocess.Popen(
            [py_spy(), "record",
             "--pid", str(pid), "--subprocesses", "--duration", str(seconds),
             "--rate", str(SPY_RATE_HZ), "--nonblocking", "--format", "raw",
             "--output", str(work / f"{name}.txt")],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for name, pid in targets.items()}
        for name, spy in spies.items():
            _, error = spy.communicate()
            if spy.returncode:
                raise RuntimeError(f"py-spy on the {name}: {error.decode(errors='replace')}")
        done = deployment.processed()
        per_s = (done - start_count) / (time.monotonic() - start)
        if done >= count:
            print("warning: the backlog ran dry while sampling; pass a larger --flood",
                  file=sys.stderr)
    read = lambda name: (work / f"{name}.txt").read_text(encoding="utf-8")  # noqa: E731
    return Spied(activities(read("worker"), WORKER_ACTIVITIES),
                 activities(read("ingest"), INGEST_ACTIVITIES) if "ingest" in targets else None,
                 per_s)


def activities(raw: str, known: tuple[tuple[str, str], ...]) -> Counter[str]:
    """py-spy's collapsed stacks ("frame;frame;... count") summed by `known` activities."""
    counts: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack:
            continue
        label = next((label for label, frame in known if frame in stack), "other")
        counts[label] += int(number)
    return counts


# -- report ---------------------------------------------------------------------------------------

def in_process_table(modes: list[Mode]) -> str:
    head = ["CoincidenceService.handle_many against redis-server",
            *(f"tasks of {mode.batch} message{'s' if mode.batch > 1 else ''}" for mode in modes)]
    rows = [
        ["tasks timed", *(str(len(mode.task_ms)) for mode in modes)],
        ["wall time per task, ms (p50 / p99)",
         *(f"{percentile(m.task_ms, 0.5):.2f} / {percentile(m.task_ms, 0.99):.2f}"
           for m in modes)],
        ["wall time per message, ms (mean)",
         *(f"{sum(m.task_ms) / m.messages:.3f}" for m in modes)],
        ["messages/s in process (1 / mean)",
         *(f"{1000 * m.messages / sum(m.task_ms):.0f}" for m in modes)],
        ["Redis round trips per message, state database",
         *(f"{m.per_message(1):.2f}" for m in modes)],
        ["Redis round trips per message, Celery broker database",
         *(f"{m.per_message(0):.2f}" for m in modes)],
    ]
    return markdown_table(head, rows)


def spy_table(what: str, spied: Counter[str]) -> str:
    total = sum(spied.values()) or 1
    return markdown_table([f"{what} ({total} samples)", "% of samples"],
                          [[label, f"{100 * n / total:.1f}"] for label, n in spied.most_common()])


def py_spy() -> str:
    """The py-spy executable: on PATH, or beside this Python (it is not among the test extras)."""
    return shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=6000,
                        help="messages timed in process, per feeding")
    parser.add_argument("--flood", type=int, default=30000,
                        help="backlog on the observation topic for the deployed path")
    parser.add_argument("--reference-flood", type=int, default=3000,
                        help="backlog of one-message tasks on the coincidence queue")
    parser.add_argument("--spy-s", type=int, default=10,
                        help="seconds py-spy samples the coincidence worker and the ingest, "
                             "per feeding")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md")
    args = parser.parse_args()
    if not Path(py_spy()).exists():
        parser.error("py-spy not found on PATH or beside this Python; "
                     "install it with .venv/bin/pip install py-spy")
    head = header(command_line())

    modes, profile_text = in_process(args.messages)
    with tempfile.TemporaryDirectory(prefix="snews-spy-") as work:
        batched = spy_on_path(args.flood, args.spy_s, Path(work), batched=True)
        single = spy_on_path(args.reference_flood, args.spy_s, Path(work), batched=False)
    body = "\n".join([
        head,
        f"In process, after {WARMUP} uncounted messages; each task also records its start "
        "receipt, as the worker does:",
        "",
        in_process_table(modes),
        "",
        f"Deployed path working off a backlog of {args.flood} messages on the observation topic "
        f"({batched.per_s:.0f} messages/s while sampled), py-spy at {SPY_RATE_HZ} Hz for "
        f"{args.spy_s:g} s on the coincidence worker (solo pool: one process) and on the "
        "ingest; idle time is not sampled, and \"other\" is mostly stacks py-spy read only in "
        "part (it samples without pausing the process):",
        "",
        spy_table("coincidence worker", batched.worker),
        "",
        spy_table("ingest", batched.ingest or Counter()),
        "",
        f"For reference, the coincidence worker working off {args.reference_flood} tasks of one "
        f"message each, queued directly ({single.per_s:.0f} messages/s while sampled), the "
        "feeding of light traffic:",
        "",
        spy_table("coincidence worker, one message per task", single.worker),
        "",
        load_now(),
    ])
    print(body)
    print("\ncProfile, in process, batched, by own time:\n"
          + "\n".join(profile_text.splitlines()[:45]))
    if not args.no_write:
        write_section(SECTION_TITLE, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
