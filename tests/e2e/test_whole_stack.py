"""End to end: `snews-tasks up`, the detectors' own publisher, and everything downstream.

The whole local system is started as an operator starts it, `snews-tasks --mode
test up`, on fresh 127.0.0.1 ports where nothing answers, so it starts its own
Redis, Tansu and SecantusDB and then every Procfile process. The tests talk to
it only over the wire (snews-pt, hop, pymongo, redis, the CLI, the fake Slack
API); they never import the project's Celery app, whose settings are read once
at import. The tests share one stack and run in file order: the last one stops
it. Whatever `up` started is stopped in the fixture's `finally` in any case.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import confluent_kafka
import pymongo
import pytest
import redis
from hop.io import StartPosition, Stream
from hop.models import JSONBlob
from snews.models.messages import HeartbeatMessage
from snews_pt.messages import Publisher
from snews_pt.snews_sub import display, save_message

from snews_tasks.testing.pipeline import IngestProcess
from snews_tasks.testing.slack_api import FakeSlackApi
from snews_tasks.entrypoints import localstack
from snews_tasks.core.times import format_time_ns
from snews_tasks.entrypoints.stack import DEFAULT_PROCFILE, read_procfile

pytestmark = pytest.mark.e2e

S = 1_000_000_000
READY_TIMEOUT_S = 90.0  # only a hang reaches it
STOP_TIMEOUT_S = 60.0  # `up` gives each of its 10 process groups 10 s before SIGKILL
CLI_TIMEOUT_S = 60.0
TAIL_LINES = 60
SLACK_TOKEN = "xoxb-e2e-test"
MONGO_DB = "snews"
FLOWER_AUTH = "test:test-only-password"  # config/test.env's throwaway credential
PROCESSED_KEY = "snews:processed"  # the coincidence state's zset of processed uuids
QUEUES = ("coincidence", "storage", "alerts", "slack", "mail", "localization")
UNACKED_KEYS = ("unacked", "unacked:coincidence")  # kombu: delivered, not yet acknowledged
#: `up` announces what it started: "up | redis: started on ... (pid N)",
#: "up | ingest: started `workers/ingest` (pid N)".
_STARTED = re.compile(r"^up\s+\| ([\w-]+): started .*\(pid (\d+)\)", re.MULTILINE)

ProcessId = tuple[int, int]  # (pid, start time in clock ticks): immune to PID reuse


# --- processes, by /proc --------------------------------------------------------------------------

def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name (which may hold spaces); None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def alive(process: ProcessId) -> bool:
    """Still running (zombies count as gone: where PID 1 does not reap they stay for good)."""
    fields = _stat_fields(process[0])
    return fields is not None and fields[0] != "Z" and int(fields[19]) == process[1]


def descendants(root: int) -> set[ProcessId]:
    """Every live process below `root`, found through the parent links in /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat_fields(int(entry.name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: set[ProcessId] = set()
    pending = list(children.get(root, []))
    while pending:
        pid = pending.pop()
        fields = _stat_fields(pid)
        if fields is not None and fields[0] != "Z":
            found.add((pid, int(fields[19])))
        pending.extend(children.get(pid, []))
    return found


# --- the stack ------------------------------------------------------------------------------------

class WholeStack:
    """One `snews-tasks --mode MODE up` subprocess, its settings and its combined output.

    In test mode the topics get fresh names; another mode keeps its own (its config file's),
    given in `topics` as observation, alert and test_alert, on the stack's fresh broker."""

    def __init__(self, work_dir: Path, slack: FakeSlackApi, *, mode: str = "test",
                 topics: dict[str, str] | None = None,
                 extra_env: dict[str, str] | None = None) -> None:
        self.work_dir = work_dir
        self.log_path = work_dir / "up.log"
        self.slack = slack
        suffix = uuid.uuid4().hex[:8]
        own_topics = topics is None
        topics = topics or {"observation": f"e2e-observations-{suffix}",
                            "alert": f"e2e-alerts-{suffix}",
                            "test_alert": f"e2e-alerts-test-{suffix}"}
        self.observation_topic = topics["observation"]
        self.alert_topic = topics["alert"]
        self.test_alert_topic = topics["test_alert"]
        redis_port, kafka_port, mongo_port, flower_port, smtp_port, console_port = (
            localstack.free_port() for _ in range(6))
        self.kafka_address = f"127.0.0.1:{kafka_port}"
        self.kafka_url = f"kafka://{self.kafka_address}"
        self.mongo_url = f"mongodb://127.0.0.1:{mongo_port}"
        self.broker_url = f"redis://127.0.0.1:{redis_port}/0"
        self.state_redis_url = f"redis://127.0.0.1:{redis_port}/1"
        self.flower_url = f"http://127.0.0.1:{flower_port}"
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("SNEWS_")}
        self.env = {
            **inherited,
            # beat's schedule file and the servers' work directories stay in this test's dir
            "TMPDIR": str(work_dir),
            "SNEWS_BROKER_URL": self.broker_url, "SNEWS_RESULT_BACKEND": self.broker_url,
            "SNEWS_STATE_REDIS_URL": self.state_redis_url, "SNEWS_KAFKA_URL": self.kafka_url,
            "SNEWS_MONGO_URL": self.mongo_url, "SNEWS_MONGO_DB": MONGO_DB,
            "SNEWS_FLOWER_PORT": str(flower_port),
            "SNEWS_SMTP_PORT": str(smtp_port), "SNEWS_CONSOLE_PORT": str(console_port),
            "SNEWS_SLACK_TOKEN": SLACK_TOKEN, "SNEWS_SLACK_BASE_URL": slack.base_url,
            **({"SNEWS_OBSERVATION_TOPIC": self.observation_topic,
                "SNEWS_ALERT_TOPIC": self.alert_topic,
                "SNEWS_TEST_ALERT_TOPIC": self.test_alert_topic} if own_topics else {}),
            **(extra_env or {}),
        }
        with self.log_path.open("wb") as log:
            # Its own session: a Ctrl-C of pytest reaches the fixture, not `up` behind its back.
            self.process = subprocess.Popen(
                [sys.executable, "-m", "snews_tasks", "--mode", mode, "up"],
                env=self.env, cwd=work_dir, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tail(self, lines: int = TAIL_LINES) -> str:
        return (f"--- last {lines} lines of `snews-tasks up` ({self.log_path}) ---\n"
                + "\n".join(self.log().splitlines()[-lines:]))

    def started(self) -> dict[str, int]:
        """Name -> PID of every server and Procfile process `up` says it started."""
        return {name: int(pid) for name, pid in _STARTED.findall(self.log())}

    def wait_until(self, predicate: Callable[[], object], what: str,
                   timeout: float = READY_TIMEOUT_S) -> None:
        """Poll `predicate`; on timeout, or if `up` exits meanwhile, fail with its output."""
        try:
            localstack.wait_until(lambda: bool(predicate()), timeout, what,
                                  process=self.process)
        except RuntimeError as error:
            raise AssertionError(f"{error}\n{self.tail()}") from None

    def status(self) -> dict[str, dict]:
        """`snews-tasks status --json` as an operator runs it, as check name -> check."""
        result = subprocess.run(
            [sys.executable, "-m", "snews_tasks", "status", "--json", "--timeout", "1"],
            env=self.env, cwd=self.work_dir, capture_output=True, text=True,
            timeout=CLI_TIMEOUT_S)
        try:
            report = json.loads(result.stdout)
        except json.JSONDecodeError:
            raise AssertionError(f"status printed no JSON (exit {result.returncode}):\n"
                                 f"{result.stdout}{result.stderr}") from None
        return {check["name"]: check for check in report["checks"]}

    def read_topic(self, topic: str) -> list[dict]:
        """Everything on `topic` so far, as `snews_pt subscribe` reads it (JSONBlob content)."""
        stream = Stream(auth=False, start_at=StartPosition.EARLIEST, until_eos=True)
        with stream.open(f"{self.kafka_url}/{topic}", "r") as reader:
            return [m.content for m in reader.read() if isinstance(m, JSONBlob)]

    def drained(self) -> bool:
        """No task queued or in flight (canary tasks come and go, so this is polled)."""
        with redis.Redis.from_url(self.broker_url) as broker:
            return not any(broker.llen(queue) for queue in QUEUES) and \
                not any(broker.hlen(key) for key in UNACKED_KEYS)

    def terminate(self) -> int:
        """SIGTERM, as Ctrl-C or an init system stops it; returns its exit status."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"`up` still running {STOP_TIMEOUT_S} s after SIGTERM\n"
                                 f"{self.tail()}") from None

    def clean_up(self) -> None:
        """Stop `up` if it runs, then kill whatever it started that outlived it."""
        leftovers = descendants(self.process.pid) if self.process.poll() is None else set()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for pgid in self.started().values():  # each leads its own process group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        for process in leftovers:
            if alive(process):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process[0], signal.SIGKILL)


def _ready(stack: WholeStack) -> bool:
    """Workers consume every queue and the ingest has polled (so it reads what comes next)."""
    checks = stack.status()
    return checks["queue consumers"]["ok"] and checks["ingest"]["ok"]


@contextlib.contextmanager
def running_stack(work_dir: Path, **options: Any) -> Iterator[WholeStack]:
    """A ready stack (see WholeStack for the options), cleaned up however the block ends."""
    with FakeSlackApi() as slack:
        stack = WholeStack(work_dir, slack, **options)
        try:
            stack.wait_until(lambda: _ready(stack),
                             "`snews-tasks up` ready (status: queue consumers and ingest OK)")
            yield stack
        finally:
            stack.clean_up()


@pytest.fixture(scope="module")
def _whole_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WholeStack]:
    with running_stack(tmp_path_factory.mktemp("whole-stack")) as stack:
        yield stack


@pytest.fixture
def stack(_whole_stack: WholeStack) -> Iterator[WholeStack]:
    """The module's stack; the tail of its output is printed after each test, which pytest
    shows only when the test failed."""
    try:
        yield _whole_stack
    finally:
        print(_whole_stack.tail())


# --- 1. a burst from the collaboration's own client -----------------------------------------------

def test_three_detector_burst_from_snews_pt_reaches_every_consumer(
        stack: WholeStack, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """SPEC 3's 00/09/11 example, published live by snews-pt 3.0.0's Publisher, unmodified."""
    now_ns = time.time_ns()
    detectors = ("IceCube", "JUNO", "Super-K")
    publisher = Publisher(f"{stack.kafka_url}/{stack.observation_topic}", auth=False)
    for detector, offset_s in zip(detectors, (-11, -2, 0), strict=True):
        publisher.add_message({"detector_name": detector, "p_val": 0.01, "is_test": False,
                               "neutrino_time_utc": format_time_ns(now_ns + offset_s * S)})
    queued = list(publisher.message_queue)  # send() empties it
    uuid_of = {m.detector_name: m.uuid for m in queued if m.tier.value == "CoincidenceTier"}
    heartbeat_detectors = {m.detector_name for m in queued if isinstance(m, HeartbeatMessage)}
    assert set(uuid_of) == set(detectors)
    publisher.send()

    with pymongo.MongoClient(stack.mongo_url) as mongo:
        archive = mongo[MONGO_DB]
        mine = {"observation_uuids": {"$in": list(uuid_of.values())}}
        # Each coincidence's NEW alert, then its localization as revision 2: refused here,
        # as detectors seconds apart are inconsistent with any direction.
        stack.wait_until(lambda: archive.alerts.count_documents(mine) >= 4
                         and len(stack.slack.posts) >= 4
                         and len(stack.read_topic(stack.alert_topic)) >= 4,
                         "four alerts archived, posted to Slack and on the alert topic")
        stack.wait_until(stack.drained, "every queue drained")
        observations = list(archive.observations.find({"uuid": {"$in": list(uuid_of.values())}}))
        archived_alerts = {(a["alert_id"], a["revision"]) for a in archive.alerts.find(mine)}
        statuses = {s["detector_name"] for s in archive.detector_status.find(
            {"detector_name": {"$in": list(detectors)}})}

    alerts = stack.read_topic(stack.alert_topic)
    assert len(alerts) == 4, alerts
    by_detectors = {frozenset(a["detector_names"]): a for a in alerts if a["revision"] == 1}
    assert set(by_detectors) == {frozenset(detectors[:2]), frozenset(detectors[1:])}
    for members, alert in by_detectors.items():
        assert (alert["alert_type"], alert["revision"], alert["is_test"]) == ("NEW", 1, False)
        assert sorted(alert["observation_uuids"]) == sorted(uuid_of[d] for d in members)
        assert alert["server_tag"] == "test"
        [localized] = [a for a in alerts if a["alert_id"] == alert["alert_id"]
                       and a["revision"] == 2]
        assert localized["alert_type"] == "UPDATE"
        assert localized["localization"]["refused"].startswith(
            "times inconsistent with any direction")
    test_topic_uuids = {u for a in stack.read_topic(stack.test_alert_topic)
                        for u in a.get("observation_uuids", ())}
    assert not test_topic_uuids & set(uuid_of.values()), "a live alert reached the test topic"

    saved = tmp_path / "subscriber"
    for alert in alerts:  # what `snews_pt subscribe` does with each alert it reads
        save_message(alert, str(saved))
        display(alert)
    shown = capsys.readouterr().out
    assert shown.count("ALERT MESSAGE") == 4
    assert all(detector in shown for detector in detectors)
    assert all(alert["alert_id"] in shown for alert in alerts)
    saved_ids = sorted(json.loads(path.read_text())["alert_id"] for path in saved.iterdir())
    assert saved_ids == sorted(alert["alert_id"] for alert in alerts)

    assert sorted((o["detector_name"], o["tier"]) for o in observations) == [
        (detector, "CoincidenceTier") for detector in sorted(detectors)]
    assert archived_alerts == {(alert["alert_id"], alert["revision"]) for alert in alerts}
    assert statuses == heartbeat_detectors  # snews-pt sends a heartbeat only if asked to

    posts = list(stack.slack.posts)
    assert len(posts) == 4, posts  # canary alerts (test namespace) are never posted
    assert {post["channel"] for post in posts} == {"#snews-test"}
    for alert in alerts:
        [post] = [p for p in posts if f"{alert['alert_id']} rev {alert['revision']}" in p["text"]]
        # only a live NEW alert pages the channel
        assert post["text"].startswith("<!here>") == (alert["alert_type"] == "NEW")
        assert all(detector in post["text"] for detector in alert["detector_names"])

    # The rest of the stack is healthy too: Flower answers, and the canary (beat -> ingest
    # -> coincidence -> test alert topic -> check) has come back.
    request = urllib.request.Request(f"{stack.flower_url}/healthcheck", headers={
        "Authorization": "Basic " + base64.b64encode(FLOWER_AUTH.encode()).decode()})
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert (answer.status, answer.read()) == (200, b"OK")
    stack.wait_until(lambda: all(check["ok"] for check in stack.status().values()),
                     "`snews-tasks status` healthy, canary included")


# --- 2. the ingest killed mid-stream --------------------------------------------------------------

STREAM_DETECTOR = "HALO"
_READING = re.compile(r"reading (\S+) from partition 0 offset (\d+)")
_HANDED_ON = re.compile(r"CoincidenceTier from \S+ \(uuid ([0-9a-f-]+)\)")


class StreamIngest(IngestProcess):
    """The ingest with what this test reads from its log."""

    def handed_on(self) -> list[str]:
        """Uuids of the messages it enqueued (each is logged just before its enqueue)."""
        return _HANDED_ON.findall(self.log())

    def start_offset(self, stack: WholeStack) -> int:
        """Wait until it has assigned its partition; the offset it starts reading at."""
        stack.wait_until(lambda: _READING.search(self.log()) or self.process.poll() is not None,
                         f"the ingest assigning its partition ({self.log_path})")
        found = _READING.search(self.log())
        assert found is not None, self.log()
        return int(found.group(2))


def stream_message(neutrino_ns: int) -> dict:
    return {"tier": "CoincidenceTier", "uuid": str(uuid.uuid4()),
            "detector_name": STREAM_DETECTOR, "neutrino_time_utc": format_time_ns(neutrino_ns),
            "is_test": True}


def produce(bootstrap: str, topic: str, messages: list[dict], chunk: int = 10) -> None:
    """Plain JSON records, as a producer without hop sends them, flushed every `chunk`."""
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    for start in range(0, len(messages), chunk):
        for message in messages[start:start + chunk]:
            producer.produce(topic, json.dumps(message).encode())
        if producer.flush(30) != 0:
            raise RuntimeError(f"the broker did not take the messages for {topic}")


def test_ingest_killed_mid_stream_loses_nothing(stack: WholeStack, tmp_path: Path) -> None:
    """300 messages: the ingest is SIGKILLed while the first 150 stream in, the next 75 are
    published while it is dead, the last 75 after its restart."""
    topic = f"e2e-stream-{uuid.uuid4().hex[:8]}"
    localstack.create_topics(stack.kafka_address, [topic])
    env = {**stack.env, "SNEWS_MODE": "test", "SNEWS_OBSERVATION_TOPIC": topic}
    # One detector, 11 s apart (> T) and half an hour back: no coincidence, no supersede,
    # nothing near the canary's detectors and times.
    first_ns = time.time_ns() - 1800 * S
    messages = [stream_message(first_ns - i * 11 * S) for i in range(300)]
    streaming, while_dead, after_restart = messages[:150], messages[150:225], messages[225:]
    sent = {message["uuid"] for message in messages}

    ingests = [StreamIngest(env, tmp_path / "ingest-1.log")]
    try:
        ingests[0].start_offset(stack)
        publisher = threading.Thread(target=produce,
                                     args=(stack.kafka_address, topic, streaming))
        publisher.start()
        stack.wait_until(lambda: len(ingests[0].handed_on()) >= 50,
                         "the ingest handing on 50 messages")
        ingests[0].kill()
        handed_on_before_kill = len(ingests[0].handed_on())
        publisher.join()
        produce(stack.kafka_address, topic, while_dead)

        ingests.append(StreamIngest(env, tmp_path / "ingest-2.log"))
        resumed_at = ingests[1].start_offset(stack)
        produce(stack.kafka_address, topic, after_restart)

        with pymongo.MongoClient(stack.mongo_url) as mongo:
            archive = mongo[MONGO_DB]
            stored = {"uuid": {"$in": list(sent)}}
            stack.wait_until(lambda: archive.observations.count_documents(stored) >= len(sent),
                             f"all {len(sent)} observations archived")
            stack.wait_until(stack.drained, "every queue drained")
            stored_uuids = [d["uuid"] for d in archive.observations.find(stored, {"uuid": True})]
            rejects = archive.rejected.count_documents({})
            stream_alerts = archive.alerts.count_documents({"detector_names": STREAM_DETECTOR})
        read = [u for ingest in ingests for u in ingest.handed_on()]
    finally:
        for ingest in ingests:
            ingest.kill()

    print(f"the first ingest handed on {handed_on_before_kill} before SIGKILL, the second "
          f"resumed at offset {resumed_at}; {len(read) - len(sent)} read twice")
    # Offsets are committed only once tasks have started: the restart skips nothing unhanded.
    assert resumed_at <= handed_on_before_kill
    assert set(read) == sent
    assert len(stored_uuids) == len(set(stored_uuids)) == len(sent)
    with redis.Redis.from_url(stack.state_redis_url) as state:
        processed = state.zmscore(PROCESSED_KEY, list(sent))
    assert None not in processed
    assert (rejects, stream_alerts) == (0, 0)


# --- 3. stopping -----------------------------------------------------------------------------------

def test_sigterm_stops_everything_up_started(stack: WholeStack) -> None:
    started = stack.started()
    procfile = {entry.name for entry in read_procfile(DEFAULT_PROCFILE)}
    assert set(started) == {"redis", "kafka", "mongo", "smtp"} | procfile, started
    everything = descendants(stack.process.pid)  # servers, workers and their pool children
    assert set(started.values()) <= {pid for pid, _ in everything}
    assert len(everything) > len(started)  # the Celery pools run below their main processes

    assert stack.terminate() == 0, stack.tail()
    survivors = [process for process in everything if alive(process)]
    assert survivors == [], f"still running after `up` exited: {survivors}\n{stack.tail()}"
