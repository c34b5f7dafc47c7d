"""The deployed pipeline for tests and benchmarks: real Celery workers as subprocesses.

Workers run from the launch scripts in workers/, exactly as deployed, against
servers the caller started. The calling process talks to them only over the
wire: a plain Celery client enqueues, hop-client reads the alert topic,
pymongo and redis read what was stored. It never imports the project's Celery
app, whose settings are read once at import.

`pipelines` is the pytest fixture; `Pipeline` also serves bench/ scripts.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid as uuidlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import confluent_kafka
import pymongo
import pytest
from celery import Celery
from hop.io import StartPosition, Stream
from kombu import Connection
from kombu import Queue as KombuQueue
from pymongo.database import Database

from ..adapters.detector_status import DetectorStatus
from ..adapters.redis_clients import celery_transport_options, redis_client
from ..adapters.redis_keys import KEYS
from ..adapters.state import RedisState
from ..core.engine import LIVE, Coincidence, Observation, brute_force_coincidences
from ..core.messages import Message
from ..core.routing import Queue, TaskName, queue_of
from ..entrypoints import localstack
from ..entrypoints.process_groups import (  # workers stop like servers
    group_alive,
    signal_group,
    spawn_logged,
)
from ..settings import KNOWN_DETECTORS
from .builders import Run, observation_at, retraction
from .slack_api import FakeSlackApi

REPO = Path(__file__).resolve().parents[2]
WORKERS = REPO / "workers"
VENV_BIN = Path(sys.executable).parent
S = 1_000_000_000
# The queues as tasks/app.py declares them; the client must declare them alike to route.
QUEUES = tuple(queue.value for queue in Queue)
# kombu's Redis transport keeps a delivered, unacknowledged message in one of these hashes
# (the coincidence worker has its own: tasks.app.COINCIDENCE_TRANSPORT_OPTIONS).
COINCIDENCE_UNACKED_KEY = "unacked:coincidence"
UNACKED_KEYS = ("unacked", COINCIDENCE_UNACKED_KEY)
# kombu's Redis transport spreads a queue over one list per priority step.
PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")
SLACK_TOKEN = "xoxb-pipeline-test"
# Quick retries, so that a test exhausting them takes seconds.
FAST_RETRIES = {
    "SNEWS_RETRY_MAX": "3",
    "SNEWS_RETRY_BACKOFF_S": "0.2",
    "SNEWS_RETRY_BACKOFF_MAX_S": "1",
}
WORKER_READY_TIMEOUT_S = 60.0
SETTLE_S = 0.5
LOG_TAIL_LINES = 40
_READY = re.compile(r"@\S+ ready\.")


def live_observation(detector: str, t_ns: int, *, p_val: float | None = 0.01) -> Message:
    """A CoincidenceTier observation at an absolute time (live mode refuses stale ones), with
    a random uuid: streams of several runs never collide."""
    return observation_at(detector, t_ns, p_val=p_val, uuid=str(uuidlib.uuid4()))


#: Neutrino times of `fault_stream` fall within this many seconds before now: dense enough for
#: accidental coincidences besides the bursts, well inside the 24 h cache lifetime.
SPAN_S = 12 * 3600
T_S = 10  # the coincidence window of the test settings


def fault_stream(rng: random.Random, now_ns: int, size: int) -> list[Message]:
    """Observations of the 20 detectors with every kind of message the writer must order.

    A burst is 2-6 detectors within 5 s; a supersede is a detector again within T of
    one of its observations; a repeat is an earlier message again, same uuid; a
    retraction names one of the detector's own observations or its latest 1-2.
    """
    detectors = list(KNOWN_DETECTORS)
    stream: list[Message] = []
    observed: list[Message] = []

    def observe(detector: str, t_ns: int) -> None:
        message = live_observation(detector, t_ns, p_val=round(rng.uniform(0.001, 0.5), 4))
        stream.append(message)
        observed.append(message)

    def any_time() -> int:
        return now_ns - rng.randrange(60 * S, SPAN_S * S)

    while len(stream) < size:
        roll = rng.random()
        if roll < 0.05 and stream:
            stream.append(rng.choice(stream))
        elif roll < 0.09 and observed:
            target = rng.choice(observed)
            stream.append(retraction(target.detector_name, target=target.uuid))
        elif roll < 0.11:
            stream.append(retraction(rng.choice(detectors), latest_n=rng.randint(1, 2)))
        elif roll < 0.20 and observed:
            earlier = rng.choice(observed)
            assert earlier.neutrino_time_ns is not None  # a CoincidenceTier observation
            observe(
                earlier.detector_name,
                earlier.neutrino_time_ns + rng.randrange(-(T_S - 1) * S, (T_S - 1) * S),
            )
        elif roll < 0.26:
            start = any_time()
            for detector in rng.sample(detectors, rng.randint(2, 6)):
                observe(detector, start + rng.randrange(0, 5 * S))
        else:
            observe(rng.choice(detectors), any_time())
    return stream[:size]


class ClockedSlackApi(FakeSlackApi):
    """The fake Slack API, also noting when each request arrived (Retry-After checks)."""

    def __init__(self) -> None:
        self.arrivals: list[float] = []
        super().__init__()

    def answer(
        self, method: str, payload: dict[str, Any], authorized: bool
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        self.arrivals.append(time.monotonic())
        return super().answer(method, payload, authorized)


@dataclass
class Worker:
    """One launch script's process group (a Celery main process and its pool)."""

    name: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tail(self) -> str:
        lines = self.log().splitlines()[-LOG_TAIL_LINES:]
        return f"--- last lines of {self.log_path} ---\n" + "\n".join(lines)

    def wait_ready(self) -> None:
        localstack.wait_until(
            lambda: _READY.search(self.log()) is not None,
            WORKER_READY_TIMEOUT_S,
            f"worker {self.name}",
            process=self.process,
            log_path=self.log_path,
        )

    def kill(self) -> None:
        """SIGKILL the whole group, as a crash or the OOM killer would, and reap it."""
        signal_group(self.process.pid, signal.SIGKILL)
        self.process.wait()
        localstack.wait_until(
            lambda: not group_alive(self.process.pid),
            10,
            f"worker {self.name} process group to exit",
        )

    def request_stop(self) -> None:
        """Ask for a warm shutdown (SIGTERM: finish the running task, requeue the rest)."""
        if self.process.poll() is None:
            signal_group(self.process.pid, signal.SIGTERM)

    def stop(self, timeout_s: float = 15.0) -> None:
        """Warm shutdown, SIGKILL if it takes longer than `timeout_s`."""
        self.request_stop()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout_s)
        self.kill()


@dataclass
class Pipeline:
    """One deployment's worth of fresh namespaces on shared servers, and its workers.

    Fresh Redis databases for the broker and the state, fresh alert topics and
    a fresh MongoDB database, so pipelines never see each other's data.
    `settings` overrides the environment the workers get (SNEWS_* names).
    """

    kafka: localstack.Service
    mongo_url: str
    broker_url: str
    state_redis_url: str
    work_dir: Path
    slack_base_url: str | None = None
    settings: Mapping[str, str] = field(default_factory=dict)
    workers: list[Worker] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        suffix = uuidlib.uuid4().hex[:10]
        self.alert_topic = f"alerts-{suffix}"
        self.test_alert_topic = f"test-alerts-{suffix}"
        self.mongo_db = f"snews-{suffix}"
        self.work_dir.mkdir(parents=True, exist_ok=True)
        localstack.create_topics(self.kafka.address, [self.alert_topic, self.test_alert_topic])
        self.env = self._environment()
        master = self.env.get("SNEWS_REDIS_SENTINEL_MASTER", "snews")
        self.client = Celery("pipeline-client", broker=self.broker_url, set_as_current=False)
        self.client.conf.update(
            task_serializer="json",
            accept_content=["json"],
            task_queues=tuple(KombuQueue(name) for name in QUEUES),
            broker_connection_retry_on_startup=True,
            broker_transport_options=celery_transport_options(self.broker_url, master),
        )
        self.broker = redis_client(self.broker_url, master_name=master)
        client = redis_client(self.state_redis_url, master_name=master, decode_responses=True)
        self.state = RedisState(client, heartbeats=DetectorStatus(client).latest)
        self.mongo: pymongo.MongoClient = pymongo.MongoClient(
            self.mongo_url, serverSelectionTimeoutMS=20_000
        )

    def _environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SNEWS_")}
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONUNBUFFERED"] = "1"
        env.update(
            {
                "SNEWS_MODE": "test",
                "SNEWS_BROKER_URL": self.broker_url,
                "SNEWS_RESULT_BACKEND": self.broker_url,
                "SNEWS_STATE_REDIS_URL": self.state_redis_url,
                "SNEWS_MONGO_URL": self.mongo_url,
                "SNEWS_MONGO_DB": self.mongo_db,
                "SNEWS_KAFKA_URL": self.kafka.url,
                "SNEWS_ALERT_TOPIC": self.alert_topic,
                "SNEWS_TEST_ALERT_TOPIC": self.test_alert_topic,
                # Off unless a test turns it on and starts workers/localize: without that
                # worker its deliveries would wait in their queue and the pipeline never drain.
                "SNEWS_LOCALIZATION": "false",
                **FAST_RETRIES,
            }
        )
        if self.slack_base_url is not None:
            env.update(
                {"SNEWS_SLACK_TOKEN": SLACK_TOKEN, "SNEWS_SLACK_BASE_URL": self.slack_base_url}
            )
        env.update(self.settings)
        return env

    # -- processes ------------------------------------------------------------------------------

    def start_workers(self, *roles: str, hostnames: Iterable[str | None] = ()) -> list[Worker]:
        """Launch workers/<role> for each role, in parallel, and wait until each is ready.

        A hostname (`-n name@%h`) lets two workers of one role run side by side.
        """
        names = list(hostnames) or [None] * len(roles)
        started = [self._launch(role, name) for role, name in zip(roles, names, strict=True)]
        for worker in started:
            self._checked(worker.wait_ready)
        return started

    def _launch(self, role: str, hostname: str | None) -> Worker:
        name = f"{hostname or role}-{len(self.workers)}"
        log_path = self.work_dir / f"{name}.log"
        command = [str(WORKERS / role)] + (["--hostname", hostname] if hostname else [])
        process = spawn_logged(command, log_path, cwd=REPO, env=self.env)
        worker = Worker(name, process, log_path)
        self.workers.append(worker)
        return worker

    def start_console(self) -> str:
        """workers/console on a free port; returns its base URL once it answers HTTP."""
        port = localstack.free_port()
        self.env["SNEWS_CONSOLE_PORT"] = str(port)
        console = self._launch("console", None)
        url = f"http://127.0.0.1:{port}"

        def answers() -> bool:
            try:
                urllib.request.urlopen(f"{url}/healthz", timeout=1)
            except urllib.error.HTTPError:  # 401 without credentials: it is up
                return True
            return True

        self._checked(
            lambda: localstack.wait_until(
                answers,
                WORKER_READY_TIMEOUT_S,
                "the console",
                process=console.process,
                log_path=console.log_path,
            )
        )
        return url

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`snews-tasks ARGS` with the workers' environment; raises on a non-zero exit."""
        return subprocess.run(
            [str(VENV_BIN / "snews-tasks"), *args],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )

    def stop_workers(self) -> None:
        """Warm shutdown of every worker, all at once (stopping a stopped one does nothing)."""
        for worker in self.workers:
            worker.request_stop()
        for worker in self.workers:
            worker.stop()

    def close(self, *, show_logs: bool = True) -> None:
        """Stop every worker; print their log tails, which pytest shows when a test failed."""
        self.stop_workers()
        for worker in self.workers if show_logs else ():
            print(worker.tail())
        self.client.close()
        self.broker.close()
        self.state.client.close()
        self.mongo.close()

    # -- input ------------------------------------------------------------------------------------

    def send(self, messages: Iterable[Message | Mapping[str, Any]]) -> None:
        """Enqueue observation messages on the coincidence queue, as the ingest does."""
        with self.client.producer_or_acquire() as producer:
            for message in messages:
                payload = message.to_dict() if isinstance(message, Message) else dict(message)
                self.client.send_task(
                    TaskName.PROCESS, args=[[payload]], queue=Queue.COINCIDENCE, producer=producer
                )

    def send_task(self, task: str, argument: object, headers: Mapping[str, Any]) -> None:
        """One task to the queue its name routes to, as the writer and the ingest send it."""
        self.client.send_task(task, args=[argument], headers=dict(headers), queue=queue_of(task))

    # -- output -----------------------------------------------------------------------------------

    def alerts(self, topic: str | None = None) -> list[dict]:
        """Every message on the alert topic so far, read with hop-client as subscribers do."""
        stream = Stream(auth=False, start_at=StartPosition.EARLIEST, until_eos=True)
        with stream.open(f"{self.kafka.url}/{topic or self.alert_topic}", "r") as reader:
            return [message.content for message in reader]

    def alert_times(self, topic: str | None = None) -> list[tuple[float, dict]]:
        """Every alert on the topic with the unix time its producer created the record (when
        the writer, or the Kafka task, published it)."""
        consumer = confluent_kafka.Consumer(
            {
                "bootstrap.servers": self.kafka.address,
                "group.id": f"times-{uuidlib.uuid4().hex}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            }
        )
        found: list[tuple[float, dict]] = []
        try:
            # Assigned, not subscribed: a group join takes seconds on these brokers.
            consumer.assign(
                [
                    confluent_kafka.TopicPartition(
                        topic or self.alert_topic, 0, confluent_kafka.OFFSET_BEGINNING
                    )
                ]
            )
            while True:
                record = consumer.poll(10.0)
                if record is None:
                    raise AssertionError("the alert topic gave nothing for 10 s")
                error = record.error()
                if error is not None:
                    if error.code() == confluent_kafka.KafkaError._PARTITION_EOF:
                        return found
                    raise AssertionError(f"reading the alert topic: {error.str()}")
                created_ms = record.timestamp()[1]
                found.append((created_ms / 1000, json.loads(record.value() or b"{}")))
        finally:
            consumer.close()

    @property
    def archive(self) -> Database:
        return self.mongo[self.mongo_db]

    def in_flight_payloads(self) -> list[dict]:
        """Coincidence messages delivered to a worker and not yet acknowledged."""
        payloads = []
        for raw in self.broker.hvals(COINCIDENCE_UNACKED_KEY):
            message = json.loads(raw)[0]
            [batch], _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
            payloads += batch
        return payloads

    def processed_uuids(self) -> set[str]:
        return set(cast("list[str]", self.state.client.zrange(KEYS.processed, 0, -1)))

    def cached(self, namespace: str = LIVE) -> list[Observation]:
        return self.state.observations(namespace)

    def coincidences(self, namespace: str = LIVE) -> list[Coincidence]:
        return self.state.coincidences(namespace)

    # -- waiting ----------------------------------------------------------------------------------

    def wait_until(self, predicate: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
        """Poll `predicate`; on timeout fail with the workers' log tails."""
        self._checked(lambda: localstack.wait_until(predicate, timeout_s, what))

    def _checked(self, wait: Callable[[], None]) -> None:
        try:
            wait()
        except RuntimeError as error:
            tails = "\n".join(worker.tail() for worker in self.workers)
            raise AssertionError(f"{error}\n{tails}") from None

    def pending(self) -> int:
        """Messages queued or delivered but not acknowledged, plus undelivered outbox entries."""
        queued = sum(
            self.broker.llen(f"{queue}{suffix}") for queue in QUEUES for suffix in PRIORITY_SUFFIXES
        )
        unacked = sum(self.broker.hlen(key) for key in UNACKED_KEYS)
        return queued + unacked + self.state.client.hlen(KEYS.outbox)

    def drain(self, timeout_s: float = 90) -> None:
        """Wait until nothing is pending and stays so for SETTLE_S.

        A task's follow-up tasks are enqueued before it is acknowledged, so once
        the queues, the unacknowledged sets and the outbox are all empty the
        pipeline is done; SETTLE_S covers the instant a message moves from its
        queue to the unacknowledged set.
        """
        idle_since: list[float] = []

        def settled() -> bool:
            if self.pending():
                idle_since.clear()
                return False
            if not idle_since:
                idle_since.append(time.monotonic())
            return time.monotonic() - idle_since[0] >= SETTLE_S

        self.wait_until(settled, "the pipeline to drain", timeout_s)


# -- what a stream must leave behind ---------------------------------------------------------------


def unique_alerts(alerts: Iterable[dict]) -> dict[tuple[str, int], dict]:
    """Alerts by (alert_id, revision), as consumers deduplicate; repeats must be identical."""
    unique: dict[tuple[str, int], dict] = {}
    for alert in alerts:
        key = (alert["alert_id"], alert["revision"])
        assert unique.setdefault(key, alert) == alert, f"alert {key} published with two contents"
    return unique


def alert_history(alerts: Iterable[dict]) -> Counter:
    """What each alert said, without its id (random per run) or its timestamps."""
    return Counter(
        (a["alert_type"], a["revision"], frozenset(a["observation_uuids"])) for a in alerts
    )


def withdrawn(alert: dict) -> bool:
    """A RETRACTION that ends its coincidence (merged, or fewer than two detectors left)."""
    return alert["alert_type"] == "RETRACTION" and (
        alert["merged_into"] is not None or len(set(alert["detector_names"])) < 2
    )


def assert_alerts_tell_the_state(alerts: Iterable[dict], coincidences: list[Coincidence]) -> None:
    """Each id has one NEW (revision 1) and gapless revisions; the latest ones are the state."""
    by_id: dict[str, list[dict]] = {}
    for (alert_id, _), alert in sorted(unique_alerts(alerts).items()):
        by_id.setdefault(alert_id, []).append(alert)
    for alert_id, revisions in by_id.items():
        assert [a["revision"] for a in revisions] == list(range(1, len(revisions) + 1)), alert_id
        assert [a["alert_type"] == "NEW" for a in revisions] == [True] + [False] * (
            len(revisions) - 1
        ), f"{alert_id}: NEW must be exactly revision 1"
    live = {
        alert_id: frozenset(revisions[-1]["observation_uuids"])
        for alert_id, revisions in by_id.items()
        if not withdrawn(revisions[-1])
    }
    assert live == {c.alert_id: c.uuids for c in coincidences}


def assert_matches_reference(
    pipeline: Pipeline, reference: Run, sent_uuids: set[str], threshold_ns: int = 10 * S
) -> None:
    """After a drained stream: nothing lost or doubled; the state and alerts of `reference`.

    `reference` has replayed the stream in the order the pipeline applied it.
    """
    assert pipeline.processed_uuids() == sent_uuids
    archived = [d["uuid"] for d in pipeline.archive.observations.find({}, {"uuid": True})]
    assert sorted(archived) == sorted(sent_uuids), "every message archived exactly once"

    cached = pipeline.cached()
    coincidences = pipeline.coincidences()
    member_sets = [c.uuids for c in coincidences]
    assert len(set(member_sets)) == len(member_sets), "one coincidence held under two ids"
    assert {o.uuid for o in cached} == {o.uuid for o in reference.cached()}
    assert set(member_sets) == brute_force_coincidences(cached, threshold_ns)
    assert set(member_sets) == reference.member_sets()

    alerts = pipeline.alerts()
    assert_alerts_tell_the_state(alerts, coincidences)
    assert alert_history(unique_alerts(alerts).values()) == alert_history(reference.alerts), (
        "the alerts differ from those of a serial replay"
    )
    stored = {(d["alert_id"], d["revision"]) for d in pipeline.archive.alerts.find()}
    assert stored == set(unique_alerts(alerts))
    assert pipeline.archive.alerts.count_documents({}) == len(stored)


@pytest.fixture
def slack() -> Iterator[ClockedSlackApi]:
    with ClockedSlackApi() as server:
        yield server


@pytest.fixture
def pipelines(
    kafka_service: localstack.Service,
    mongo_service: localstack.Service,
    new_redis_url: Callable[[], str],
    slack: ClockedSlackApi,
    tmp_path: Path,
) -> Iterator[Callable[..., Pipeline]]:
    """Makes pipelines on the session's servers (Slack: the `slack` fixture); stops them after."""
    made: list[Pipeline] = []

    def make(
        *, mongo_url: str | None = None, settings: Mapping[str, str] | None = None
    ) -> Pipeline:
        pipeline = Pipeline(
            kafka=kafka_service,
            mongo_url=mongo_url or mongo_service.url,
            broker_url=new_redis_url(),
            state_redis_url=new_redis_url(),
            work_dir=tmp_path / f"pipeline-{len(made)}",
            slack_base_url=slack.base_url,
            settings=settings or {},
        )
        made.append(pipeline)
        return pipeline

    try:
        yield make
    finally:
        for pipeline in made:
            pipeline.close()


# -- the ingest in front of the pipeline; what a stream left behind after faults ------------------


class IngestProcess:
    """One `snews-tasks ingest` subprocess in its own process group (so it can be SIGKILLed
    whole), with its log kept for assertions."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "snews_tasks", "ingest"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=log_path.parent,
                start_new_session=True,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, as docker and `up` stop it; returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"ingest ignored SIGTERM\n{self.log()}") from None

    def kill(self) -> None:
        """SIGKILL the group, as a crash or the OOM killer would."""
        signal_group(self.process.pid, signal.SIGKILL)
        self.process.wait()


def start_ingest(pipeline: Pipeline) -> Worker:
    """workers/ingest with the pipeline's settings; returns after its first poll.

    The settings must name the observation topic (SNEWS_OBSERVATION_TOPIC). A
    new consumer group starts at the end of the topic, so everything published
    after this returns is read.
    """
    pipeline.state.client.delete(KEYS.ingest_last_poll)
    ingest = pipeline._launch("ingest", None)
    pipeline._checked(
        lambda: localstack.wait_until(
            lambda: bool(pipeline.state.client.exists(KEYS.ingest_last_poll)),
            WORKER_READY_TIMEOUT_S,
            "the ingest's first poll",
            process=ingest.process,
            log_path=ingest.log_path,
        )
    )
    return ingest


def applied_order(pipeline: Pipeline, messages: Iterable[Message]) -> list[Message]:
    """Each archived message once, in the order the writer applied it.

    The writer stamps each archived message with its arrival number `seq`, and a
    repeat is never archived again.
    """
    by_uuid = {m.uuid: m for m in messages}
    documents = pipeline.archive.observations.find({}, {"uuid": True, "seq": True})
    return [by_uuid[d["uuid"]] for d in sorted(documents, key=lambda d: d["seq"])]


def redeliver_unacked(pipeline: Pipeline, delivered_before: float) -> int:
    """Requeue the notification messages delivered before that unix time and never acknowledged.

    kombu does this itself once a message's visibility timeout has passed, which
    for the notify workers is an hour (tasks/app.py); a test that cannot wait that
    long runs kombu's own restore on them now. Returns how many it requeued.
    """
    tags = cast(
        "list[bytes]", pipeline.broker.zrangebyscore("unacked_index", "-inf", delivered_before)
    )
    with Connection(pipeline.broker_url) as connection:
        for tag in tags:
            connection.default_channel.qos.restore_by_tag(tag.decode())
    return len(tags)
