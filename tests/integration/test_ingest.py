"""`snews-tasks ingest` as a subprocess against a real Kafka-protocol topic and a real Redis broker.

The Celery queues are read straight from the broker Redis (kombu's lists), so
the assertions see exactly what a worker would be handed.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path

import confluent_kafka
import pytest
import redis
from hop.io import Stream
from hop.models import Blob, JSONBlob
from snews_pt.messages import Publisher

from snews_tasks.testing.pipeline import IngestProcess
from snews_tasks.entrypoints import localstack
from snews_tasks.adapters.receipts import RECEIPT_HEADER, RESEND_WRITER_BATCH_AFTER_S, Receipts
from snews_tasks.adapters.redis_keys import KEYS
from snews_tasks.core.routing import TaskName
from snews_tasks.core.times import format_time_ns, parse_time_ns
from snews_tasks.settings import KNOWN_DETECTORS, load_settings
from snews_tasks.tasks import canary
from snews_tasks.tasks.canary import check_canary, send_canary

pytestmark = pytest.mark.integration

DEADLINE_S = 30.0  # only a hang or a lost message reaches it
GROUP_ID = "snews-tasks-ingest-test"


def wait_for(predicate: Callable[[], object], what: str, timeout: float = DEADLINE_S) -> None:
    localstack.wait_until(lambda: bool(predicate()), timeout, what)


class Harness:
    """Topic, broker and state Redis for one test, and the ingest processes it started."""

    def __init__(self, kafka: localstack.Service, broker_url: str, state_url: str,
                 tmp_path: Path) -> None:
        self.kafka = kafka
        self.topic = f"observations-{uuid.uuid4().hex[:8]}"
        self.broker = redis.Redis.from_url(broker_url)
        self.state = redis.Redis.from_url(state_url)
        self.log_path = tmp_path / "ingest.log"
        environ = {k: v for k, v in os.environ.items() if not k.startswith("SNEWS_")}
        self.env = {**environ, "SNEWS_MODE": "test", "SNEWS_BROKER_URL": broker_url,
                    "SNEWS_RESULT_BACKEND": broker_url, "SNEWS_STATE_REDIS_URL": state_url,
                    "SNEWS_KAFKA_URL": kafka.url, "SNEWS_OBSERVATION_TOPIC": self.topic}
        self.processes: list[IngestProcess] = []
        self.taken: dict[str, list[dict]] = {}
        localstack.create_topics(kafka.address, [self.topic])

    def start_ingest(self, *, wait_for_poll: bool = True) -> IngestProcess:
        """Start one; by default wait for its first poll, after which every publish is read."""
        self.state.delete(KEYS.ingest_last_poll)
        ingest = IngestProcess(self.env, self.log_path)
        self.processes.append(ingest)
        if wait_for_poll:
            wait_for(lambda: self.state.get(KEYS.ingest_last_poll) or ingest.process.poll() is not None,
                     "the ingest's first poll")
            assert ingest.process.poll() is None, ingest.log()
        return ingest

    def publish(self, *messages: object) -> None:
        """hop's writer: dicts as JSONBlob, bytes as Blob (what snews-pt wraps its pickle in)."""
        writer = Stream(auth=False).open(f"{self.kafka.url}/{self.topic}", "w",
                                         automatic_offload=False)
        with writer:
            for message in messages:
                writer.write(JSONBlob(content=message) if isinstance(message, dict)
                             else Blob(content=message))

    def counter(self, key: str) -> int:
        return int(self.state.get(key) or 0)

    def wait_received(self, count: int) -> None:
        wait_for(lambda: self.counter(KEYS.ingest_count("received")) >= count,
                 f"{count} messages through the ingest ({self.log_path.read_text()})")

    def take(self, queue: str) -> None:
        """Act as a worker taking every queued task (without starting it): the ingest sends
        the coincidence messages it holds back once the queue is empty."""
        while (raw := self.broker.rpop(queue)) is not None:
            self.taken.setdefault(queue, []).append(json.loads(raw))

    def envelopes(self, queue: str) -> list[dict]:
        """The task messages taken and still queued, in the order a worker takes them."""
        queued = [json.loads(raw) for raw in reversed(self.broker.lrange(queue, 0, -1))]
        return self.taken.get(queue, []) + queued

    def tasks(self, queue: str, count: int) -> list[tuple[str, dict]]:
        """(task name, document), once `count` documents were handed on, in the order a
        worker takes them; a coincidence batch gives one pair per message."""
        def documents() -> list[tuple[str, dict]]:
            self.take(queue)
            found = []
            for envelope in self.envelopes(queue):
                [argument], _kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
                task = envelope["headers"]["task"]
                found += [(task, d) for d in (argument if task == TaskName.PROCESS
                                              else [argument])]
            return found

        wait_for(lambda: len(documents()) >= count, f"{count} documents on {queue}")
        found = documents()
        assert len(found) == count, found
        return found

    def wait_committed(self, offset: int, queue: str = "coincidence") -> None:
        """Act as the workers meanwhile: take every task of `queue` and record it started."""
        store = Receipts(self.state)

        def committed() -> bool:
            self.take(queue)
            for envelope in self.taken.get(queue, []):
                store.mark_received(envelope["headers"][RECEIPT_HEADER])
            return self.committed_offset() == offset

        wait_for(committed, f"offset {offset} committed")

    def committed_offset(self) -> int:
        consumer = confluent_kafka.Consumer({"bootstrap.servers": self.kafka.address,
                                             "group.id": GROUP_ID})
        try:
            [partition] = consumer.committed([confluent_kafka.TopicPartition(self.topic, 0)],
                                             timeout=10)
            return partition.offset
        finally:
            consumer.close()

    def stop_all(self) -> None:
        for ingest in self.processes:
            ingest.stop()


@pytest.fixture
def harness_factory(new_redis_url: Callable[[], str], tmp_path: Path
                    ) -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(kafka: localstack.Service, broker_url: str | None = None) -> Harness:
        harness = Harness(kafka, broker_url or new_redis_url(), new_redis_url(), tmp_path)
        made.append(harness)
        return harness

    try:
        yield make
    finally:
        for harness in made:
            harness.stop_all()


def now_utc(offset_s: float = 0.0) -> str:
    return format_time_ns(time.time_ns() + round(offset_s * 1e9))


def coincidence(detector: str, **fields: object) -> dict:
    return {"tier": "CoincidenceTier", "uuid": str(uuid.uuid4()), "detector_name": detector,
            "neutrino_time_utc": now_utc(), "is_test": True, **fields}


def test_each_message_becomes_one_task_on_its_queue(kafka_service, harness_factory) -> None:
    harness = harness_factory(kafka_service)
    before_start = coincidence("KamLAND")
    harness.publish(before_start)  # a new consumer group starts at the end of the topic
    harness.start_ingest()

    json_coincidence = coincidence("IceCube", p_val=0.02, extra="kept in meta")
    heartbeat = {"tier": "Heartbeat", "uuid": str(uuid.uuid4()), "detector_name": "JUNO",
                 "detector_status": "ON", "sent_time_utc": now_utc()}
    retraction = {"tier": "Retraction", "uuid": str(uuid.uuid4()), "detector_name": "IceCube",
                  "retract_message_uuid": json_coincidence["uuid"], "is_test": True}
    significance = {"tier": "SignificanceTier", "uuid": str(uuid.uuid4()),
                    "detector_name": "Super-K", "p_values": [0.5, 0.01], "t_bin_width_sec": 1}
    unknown_detector = coincidence("Kamiokande")
    harness.publish(json_coincidence, heartbeat, retraction, significance, unknown_detector,
                    b"\x00\x01 not a message", pickle.dumps(date(2026, 1, 1)))
    pt_time = now_utc(-3)
    publisher = Publisher(f"{kafka_service.url}/{harness.topic}", auth=False)
    publisher.add_message({"detector_name": "KM3NeT", "neutrino_time_utc": pt_time,
                           "p_val": 0.07, "is_test": True})
    publisher.send()

    harness.wait_received(8)
    coincidence_tasks = harness.tasks("coincidence", 3)
    storage_tasks = harness.tasks("storage", 5)

    assert [task for task, _ in coincidence_tasks] == [TaskName.PROCESS] * 3
    first, second, pt = (document for _, document in coincidence_tasks)
    assert first == {**{k: v for k, v in json_coincidence.items() if k != "extra"},
                     "is_firedrill": False, "is_pre_sn": False, "meta": {"extra": "kept in meta"}}
    assert (second["tier"], second["retract_message_uuid"]) == ("Retraction",
                                                                json_coincidence["uuid"])
    assert (pt["detector_name"], pt["neutrino_time_utc"], pt["p_val"], pt["is_test"]) == (
        "KM3NeT", pt_time, 0.07, True)  # snews-pt's pickled model, via the restricted decoder
    assert "received_time_utc" not in first

    by_task: dict[str, list[dict]] = {}
    for task, document in storage_tasks:
        by_task.setdefault(task, []).append(document)
    assert sorted(by_task) == ["snews.storage.store_heartbeat",
                               "snews.storage.store_observation", "snews.storage.store_reject"]
    [stored_heartbeat] = by_task["snews.storage.store_heartbeat"]
    assert (stored_heartbeat["uuid"], stored_heartbeat["detector_status"]) == (
        heartbeat["uuid"], "ON")
    assert stored_heartbeat["received_time_utc"].endswith("Z")
    [stored_significance] = by_task["snews.storage.store_observation"]
    assert (stored_significance["uuid"], stored_significance["p_values"]) == (
        significance["uuid"], [0.5, 0.01])
    assert "received_time_utc" in stored_significance

    rejects = by_task["snews.storage.store_reject"]
    assert [r["field"] for r in rejects] == ["detector_name", "payload", "payload"]
    assert "Kamiokande" in rejects[0]["reason"] and unknown_detector["uuid"] in rejects[0]["raw"]
    assert rejects[1]["raw"] == "\x00\x01 not a message"
    assert rejects[2]["raw_encoding"] == "base64"  # a pickle is not UTF-8
    assert base64.b64decode(rejects[2]["raw"]).startswith(b"\x80")
    assert "datetime" in rejects[2]["reason"]  # the refused pickle global is named
    assert len({r["reject_id"] for r in rejects}) == 3

    all_documents = json.dumps([coincidence_tasks, storage_tasks])
    assert before_start["uuid"] not in all_documents
    assert (harness.counter(KEYS.ingest_count("enqueued")), harness.counter(KEYS.ingest_count("rejected"))) == (5, 3)


def test_heartbeats_the_feedback_could_not_use_are_rejected(kafka_service, harness_factory) -> None:
    """Unknown detector, garbage status, a sent time an hour ahead: rejected with the field
    named, so none reaches a detector's status or its heartbeat statistics."""
    harness = harness_factory(kafka_service)
    harness.start_ingest()

    def heartbeat(detector: str, status: str, sent: str) -> dict:
        return {"tier": "Heartbeat", "uuid": str(uuid.uuid4()), "detector_name": detector,
                "detector_status": status, "sent_time_utc": sent}

    harness.publish(heartbeat("Kamiokande", "ON", now_utc()), heartbeat("JUNO", "MAYBE", now_utc()),
                    heartbeat("JUNO", "ON", now_utc(3600)), heartbeat("JUNO", "ON", now_utc(30)))
    harness.wait_received(4)
    tasks = harness.tasks("storage", 4)
    rejects = [document for task, document in tasks if task == TaskName.STORE_REJECT]
    assert [r["field"] for r in rejects] == ["detector_name", "detector_status", "sent_time_utc"]
    assert "after received_time_utc (tolerance 60 s)" in rejects[2]["reason"]
    [accepted] = [document for task, document in tasks if task == TaskName.STORE_HEARTBEAT]
    assert accepted["detector_name"] == "JUNO"  # 30 s ahead: within the clock tolerance


def test_restart_continues_after_the_committed_offset(kafka_service, harness_factory) -> None:
    harness = harness_factory(kafka_service)
    ingest = harness.start_ingest()
    early = [coincidence(detector) for detector in ("IceCube", "JUNO", "Super-K")]
    harness.publish(*early)
    harness.wait_received(3)
    harness.wait_committed(3)
    assert ingest.stop() == 0

    late = [coincidence(detector) for detector in ("KamLAND", "LVD")]
    harness.publish(*late)
    harness.start_ingest()
    harness.wait_received(5)
    harness.publish(coincidence("NOvA"))  # a sentinel: everything before it has been read
    harness.wait_received(6)

    uuids = [document["uuid"] for _, document in harness.tasks("coincidence", 6)]
    assert uuids[:5] == [m["uuid"] for m in early + late]


def test_the_offset_waits_for_the_task_to_start_and_a_lost_task_is_sent_again(
        kafka_service, harness_factory) -> None:
    """A task the broker lost (a Redis crash as kombu moves it to a worker) is sent again once
    its queue is empty; until a worker starts it, its offset stays uncommitted."""
    harness = harness_factory(kafka_service)
    ingest = harness.start_ingest()
    message = coincidence("IceCube")
    harness.publish(message)
    harness.wait_received(1)
    [lost] = harness.envelopes("coincidence")
    harness.broker.delete("coincidence")  # the message is gone, no worker ever started it
    time.sleep(1)
    assert harness.committed_offset() == 0  # where it started, not past the message

    wait_for(lambda: harness.envelopes("coincidence"), "the lost task sent again",
             timeout=RESEND_WRITER_BATCH_AFTER_S + DEADLINE_S)
    [again] = harness.envelopes("coincidence")
    assert again["headers"][RECEIPT_HEADER] == lost["headers"][RECEIPT_HEADER]
    assert [d["uuid"] for _, d in harness.tasks("coincidence", 1)] == [message["uuid"]]
    assert "not started, 1 s after it was sent, with its queue empty" in ingest.log()
    assert harness.committed_offset() == 0  # where it started, not past the message

    harness.wait_committed(1)


def test_celery_broker_outage_holds_the_offset_until_the_enqueue(
        kafka_service, harness_factory, tmp_path) -> None:
    broker_dir = tmp_path / "broker"
    broker = localstack.start_redis(data_dir=broker_dir, appendonly=True)
    try:
        harness = harness_factory(kafka_service, broker.url)
        ingest = harness.start_ingest()
        before, during = coincidence("IceCube"), coincidence("JUNO")
        harness.publish(before)
        harness.wait_received(1)
        harness.wait_committed(1)

        port = broker.port
        broker.stop()
        harness.publish(during)
        outage_logged = "Celery broker unreachable since"
        wait_for(lambda: outage_logged in ingest.log(), "the ingest noticing the broker outage")
        # Stopped while the enqueue fails: it exits, and its final commit leaves `during` out.
        assert ingest.stop() == 0
        assert harness.committed_offset() == 1

        ingest = harness.start_ingest(wait_for_poll=False)
        wait_for(lambda: ingest.log().count(outage_logged) == 2, "the new ingest retrying")
        broker = localstack.start_redis(port, data_dir=broker_dir, appendonly=True)
        harness.wait_received(2)
        harness.wait_committed(2)
        assert ingest.stop() == 0
        assert [d["uuid"] for _, d in harness.tasks("coincidence", 2)] == [before["uuid"],
                                                                          during["uuid"]]
        log = ingest.log()
        assert log.count(outage_logged) == 2  # once per process, not once per attempt
        assert log.count("Celery broker reachable again") == 1
    finally:
        broker.stop()


def test_observation_broker_outage_resumes_without_restart(harness_factory, tmp_path) -> None:
    data_dir = tmp_path / "noida"
    kafka = localstack.start_kafka(engine="noida", data_dir=data_dir)
    try:
        harness = harness_factory(kafka)
        ingest = harness.start_ingest()
        before, during_restart = coincidence("IceCube"), coincidence("JUNO")
        harness.publish(before)
        harness.wait_received(1)
        harness.wait_committed(1)

        port = kafka.port
        kafka.stop()
        wait_for(lambda: "observation broker unreachable since" in ingest.log(),
                 "the ingest noticing the broker outage")
        # It keeps polling (the liveness key moves) and logs the outage only once.
        polled = harness.state.get(KEYS.ingest_last_poll)
        wait_for(lambda: harness.state.get(KEYS.ingest_last_poll) != polled, "a poll during the outage")

        kafka = localstack.start_kafka(port, engine="noida", data_dir=data_dir)
        harness.publish(during_restart)
        harness.wait_received(2)
        assert ingest.process.poll() is None
        assert [d["uuid"] for _, d in harness.tasks("coincidence", 2)] == [
            before["uuid"], during_restart["uuid"]]
        log = ingest.log()
        assert log.count("observation broker unreachable since") == 1
        assert log.count("observation broker reachable again") == 1
    finally:
        kafka.stop()


def run_cli(harness: Harness, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snews_tasks", *args], env=harness.env,
                          cwd=harness.log_path.parent, capture_output=True, text=True,
                          timeout=DEADLINE_S)


def test_publish_examples_arrive_as_test_observations(kafka_service, harness_factory,
                                                       tmp_path) -> None:
    harness = harness_factory(kafka_service)
    harness.start_ingest()
    live_file = tmp_path / "live.jsonl"
    live_file.write_text(json.dumps(coincidence("IceCube", is_test=False)) + "\n")
    refused = run_cli(harness, "publish", "--file", str(live_file), "--live")
    assert refused.returncode != 0 and "--confirm-live" in refused.stderr

    three = run_cli(harness, "publish", "--example", "three-detector")
    burst = run_cli(harness, "publish", "--example", "burst20", "--format", "pickle")
    assert (three.returncode, burst.returncode) == (0, 0), three.stderr + burst.stderr
    assert sum(line.startswith("sent ") for line in three.stdout.splitlines()) == 3

    harness.wait_received(23)
    documents = [document for _, document in harness.tasks("coincidence", 23)]
    assert all(d["is_test"] is True for d in documents)
    assert all(d["uuid"] in three.stdout for d in documents[:3])
    times = [parse_time_ns(d["neutrino_time_utc"], "t") for d in documents]
    assert [times[1] - times[0], times[2] - times[1]] == [9 * 10**9, 2 * 10**9]
    burst_documents = documents[3:]
    assert sorted(d["detector_name"] for d in burst_documents) == sorted(KNOWN_DETECTORS)
    assert max(times[3:]) - min(times[3:]) <= 5 * 10**9
    assert harness.counter(KEYS.ingest_count("rejected")) == 0  # the pickles passed the restricted decoder


def test_canary_goes_through_the_ingest_and_its_alert_is_recognised(
        kafka_service, harness_factory) -> None:
    harness = harness_factory(kafka_service)
    harness.env["SNEWS_TEST_ALERT_TOPIC"] = f"test-alerts-{uuid.uuid4().hex[:8]}"
    localstack.create_topics(kafka_service.address, [harness.env["SNEWS_TEST_ALERT_TOPIC"]])
    settings = load_settings(environ=harness.env)
    state = redis.Redis.from_url(harness.env["SNEWS_STATE_REDIS_URL"], decode_responses=True)
    harness.start_ingest()

    uuids = send_canary(settings, state)
    harness.wait_received(2)
    pair = [document for _, document in harness.tasks("coincidence", 2)]
    assert [d["uuid"] for d in pair] == uuids
    assert all(d["meta"]["canary"] is True and d["is_test"] is True for d in pair)
    assert json.loads(state.get(canary.SENT_KEY))["uuids"] == uuids
    assert check_canary(settings, state) == 0  # no alert yet: still pending
    assert state.get(canary.LAST_OK_KEY) is None

    writer = Stream(auth=False).open(f"{kafka_service.url}/{settings.test_alert_topic}", "w",
                                     automatic_offload=False)
    with writer:
        writer.write(JSONBlob(content={"alert_id": "other", "observation_uuids": [uuids[0]]}))
        writer.write(JSONBlob(content={"alert_id": "canary",
                                       "observation_uuids": ["someone-else", *uuids]}))
    assert check_canary(settings, state) == 1
    assert state.hlen(canary.PENDING_KEY) == 0
    assert float(state.get(canary.LAST_OK_KEY)) > json.loads(state.get(canary.SENT_KEY))["time"]
