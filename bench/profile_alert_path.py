"""Where a coincidence message's time goes, in process and in the deployed worker.

    .venv/bin/python bench/profile_alert_path.py [--messages 3000] [--spy-s 10]

In process: the worker's own `CoincidenceService` (built by
`tasks.coincidence.service()`, configured through SNEWS_* variables) handles
--messages observations of the load mix (load.py: isolated observations plus
a completing pair every 250) against a real redis-server, sending its
follow-up tasks with the real Celery app to that server. Per message: wall
time and Redis round trips (socket writes, by database: state or Celery
broker); then the last 1000 messages again under cProfile.

Deployed: the coincidence worker from workers/coincidence drains a queue of
the same messages while py-spy samples both its processes (the Celery main
process and the pool child) for --spy-s seconds; the samples are summed by
what they were doing.
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
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import redis.connection

sys.path.insert(0, str(Path(__file__).resolve().parent))

from load import (CACHE_LIFETIME_S, deployed, header, markdown_table,  # noqa: E402
                  observation_stream, percentile, write_section, command_line)
from snews_tasks import localstack  # noqa: E402

SECTION_TITLE = "Where the coincidence worker's time goes"
STREAM_RATE = 500  # the load mix: a pair every PAIR_EVERY_S among STREAM_RATE per second
PAIR_EVERY_S = 0.5
PROFILED = 1000  # the last messages run under cProfile, after the timed ones
#: Frames of a py-spy stack that say what a sample was doing, tried in this order: the first
#: match names the sample. Each is (label, substring of a frame "function (file:line)").
ACTIVITIES = (
    ("expiry check (per message)", "CoincidenceService.expire "),
    ("state transaction: engine + reads + commit", "RedisStore.transact "),
    ("outbox: read, enqueue follow-ups, delete", "CoincidenceService.dispatch "),
    ("message validation", "Processor.parse "),
    ("Celery task events (publish to Redis)", "EventDispatcher."),
    ("task run bookkeeping (trace, logging, result)", "trace_task "),
    ("main process: fetch, unacked bookkeeping, ack", "asynloop "),
    ("pool child: waiting for / reading the next task", "Worker.workloop "),
)


def flood_messages(count: int) -> list[dict]:
    """`count` observations of the load mix, as the ingest enqueues them."""
    stream = observation_stream(STREAM_RATE, count / STREAM_RATE, PAIR_EVERY_S)
    return [json.loads(scheduled.payload) for scheduled in stream[:count]]


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


def in_process(messages: list[dict]) -> tuple[list[float], Counter[int], str]:
    """Per-message ms, round trips by database, and the cProfile text, against a real Redis."""
    server = localstack.start_redis()
    try:
        base = f"redis://{localstack.HOST}:{server.port}"
        os.environ.update({"SNEWS_MODE": "test", "SNEWS_BROKER_URL": f"{base}/0",
                           "SNEWS_RESULT_BACKEND": f"{base}/0",
                           "SNEWS_STATE_REDIS_URL": f"{base}/1",
                           "SNEWS_CACHE_LIFETIME_S": str(CACHE_LIFETIME_S)})
        from snews_tasks.tasks.coincidence import service  # reads the settings at import

        handle: Callable[[dict], str] = service().handle
        warmup, measured, profiled = messages[:200], messages[200:-PROFILED], messages[-PROFILED:]
        for payload in warmup:
            handle(payload)
        samples = []
        with RoundTrips() as trips:
            for payload in measured:
                start = time.perf_counter_ns()
                handle(payload)
                samples.append((time.perf_counter_ns() - start) / 1e6)
        profile = cProfile.Profile()
        profile.runcall(lambda: [handle(payload) for payload in profiled])
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(25)
        per_message = Counter({db: n / len(measured) for db, n in trips.counts.items()})
        return samples, per_message, text.getvalue()
    finally:
        server.stop()


# -- the deployed worker under py-spy ------------------------------------------------------------

def spy_on_worker(messages: list[dict], seconds: int, out: Path) -> tuple[Counter[str], float]:
    """Sample the coincidence worker draining `messages`: samples by activity, messages/s."""
    with deployed(roles=(), ingest=False) as deployment:
        pipeline = deployment.pipeline
        pipeline.send(messages)
        (worker,) = pipeline.start_workers("coincidence")
        processed_key = pipeline.state.key("processed")
        count = lambda: pipeline.state.client.zcard(processed_key)  # noqa: E731
        start_count, start = count(), time.monotonic()
        subprocess.run([shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"),
                        "record", "--pid", str(worker.process.pid), "--subprocesses",
                        "--duration", str(seconds), "--rate", "200", "--nonblocking",
                        "--format", "raw", "--output", str(out)],
                       check=True, capture_output=True)
        rate = (count() - start_count) / (time.monotonic() - start)
        if count() >= len(messages):
            print("warning: the queue ran dry while sampling; pass more --messages",
                  file=sys.stderr)
    return activities(out.read_text(encoding="utf-8")), rate


def activities(raw: str) -> Counter[str]:
    """py-spy's collapsed stacks ("frame;frame;... count") summed by ACTIVITIES."""
    counts: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack:
            continue
        label = next((label for label, frame in ACTIVITIES if frame in stack), "other")
        counts[label] += int(number)
    return counts


# -- report ---------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--spy-s", type=int, default=10)
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md")
    args = parser.parse_args()
    head = header(command_line())
    messages = flood_messages(args.messages)

    samples, trips, profile_text = in_process(messages)
    with tempfile.TemporaryDirectory(prefix="snews-spy-") as work:
        spied, worker_rate = spy_on_worker(flood_messages(args.messages), args.spy_s,
                                           Path(work) / "worker.txt")
    total = sum(spied.values())
    in_process_rows = [
        ["wall time per message, ms (p50 / p99)",
         f"{percentile(samples, 0.5):.2f} / {percentile(samples, 0.99):.2f}"],
        ["messages/s in process (1 / mean)", f"{1000 * len(samples) / sum(samples):.0f}"],
        ["Redis round trips per message, state database", f"{trips.get(1, 0):.1f}"],
        ["Redis round trips per message, Celery broker database", f"{trips.get(0, 0):.1f}"],
    ]
    spy_rows = [[label, f"{100 * n / total:.1f}"] for label, n in spied.most_common()]
    body = "\n".join([
        head,
        f"In process, {len(samples)} messages timed after 200 uncounted:",
        "",
        markdown_table(["CoincidenceService.handle against redis-server", ""], in_process_rows),
        "",
        f"Deployed worker draining a queue ({worker_rate:.0f} messages/s while sampled), "
        f"py-spy at 200 Hz for {args.spy_s:g} s over the Celery main process and its pool "
        f"child ({total} samples; idle time is not sampled):",
        "",
        markdown_table(["activity", "% of samples"], spy_rows),
    ])
    print(body)
    print("\ncProfile, in process, by own time:\n" + "\n".join(profile_text.splitlines()[:45]))
    if not args.no_write:
        write_section(SECTION_TITLE, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
