"""The deployed pipeline under faults: Slack refusing, MongoDB gone, the writer killed.

SPEC section 5: notifications retry and are recorded as failed rather than
dropped, a failed one is re-driven by one command, and a coincidence worker
killed mid-task loses nothing and doubles nothing.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from snews_tasks.testing.builders import Run, retraction
from snews_tasks.testing.pipeline import (S, ClockedSlackApi, Pipeline, applied_order,  # noqa: F401
                      assert_matches_reference, live_observation, pipelines, slack,
                      unique_alerts)
from snews_tasks.entrypoints import localstack
from snews_tasks.adapters.redis_keys import KEYS
from snews_tasks.core.messages import Message, Tier

pytestmark = pytest.mark.integration

# Retries that outlast a MongoDB restart: up to 30 waits of at most 2 s each.
PATIENT_RETRIES = {"SNEWS_RETRY_MAX": "30", "SNEWS_RETRY_BACKOFF_S": "0.5",
                   "SNEWS_RETRY_BACKOFF_MAX_S": "2"}
# What the notify worker logs when an attempt to archive an observation fails.
FAILED_STORE = re.compile(r"observation_store \S+: attempt \d+ failed")
# What a worker logs when it cannot close one of its clients at shutdown (snews_tasks.resources).
UNCLOSED = re.compile(r"closing \S+ failed")


def pair(now_ns: int) -> list[Message]:
    """Two detectors 3 s apart: one coincidence, one NEW alert."""
    return [live_observation("IceCube", now_ns - 30 * S),
            live_observation("KM3NeT", now_ns - 27 * S)]


def post_statuses(slack: ClockedSlackApi) -> list[int]:
    """The HTTP status of every chat.postMessage request, in order."""
    return [call.status for call in slack.calls if call.method == "chat.postMessage"]


def test_slack_rate_limit_and_server_error_still_post_once(pipelines, slack) -> None:
    """A 429 (Retry-After: 1) then a 500: retried, honouring Retry-After, posted exactly once."""
    pipeline = pipelines()
    pipeline.start_workers("coincidence", "notify")
    slack.script([(429, {"Retry-After": "1"}), (500, {})])
    pipeline.send(pair(time.time_ns()))

    pipeline.wait_until(lambda: slack.posts, "the Slack post")
    pipeline.drain()

    [alert] = pipeline.alerts()
    assert post_statuses(slack) == [429, 500, 200]
    assert len(slack.posts) == 1
    assert f"alert {alert['alert_id']} rev 1" in slack.posts[0]["text"]
    assert slack.arrivals[1] - slack.arrivals[0] >= 1.0, "Retry-After: 1 was not honoured"
    assert pipeline.archive.failed_notifications.count_documents({}) == 0


def test_slack_down_past_retries_is_listed_then_redriven(pipelines, slack) -> None:
    """Retries exhausted: `failed list` shows the post; `failed retry --all` delivers it."""
    pipeline = pipelines()
    pipeline.start_workers("coincidence", "notify")
    slack.down()
    pipeline.send(pair(time.time_ns()))
    pipeline.wait_until(lambda: pipeline.archive.failed_notifications.count_documents({}),
                        "the failure record")
    pipeline.drain()

    [alert] = pipeline.alerts()
    key = f"{alert['alert_id']}:{alert['revision']}"
    [record] = json.loads(pipeline.cli("failed", "list", "--json").stdout)
    assert (record["id"], record["kind"], record["key"]) == (f"alert_slack:{key}", "alert_slack",
                                                             key)
    assert record["attempts"] == 4  # SNEWS_RETRY_MAX=3: the first attempt and three retries
    assert "service_unavailable" in record["error"]
    assert post_statuses(slack) == [503] * 4 and slack.posts == []

    slack.up()
    pipeline.cli("failed", "retry", "--all")
    pipeline.wait_until(lambda: slack.posts, "the re-driven Slack post")
    pipeline.drain()
    assert len(slack.posts) == 1
    assert f"alert {key.replace(':', ' rev ')}" in slack.posts[0]["text"]
    assert json.loads(pipeline.cli("failed", "list", "--json").stdout) == []
    assert len(pipeline.alerts()) == 1, "the re-drive touched only Slack"
    assert pipeline.archive.alerts.count_documents({}) == 1

    # Every client this run opened (failure log included) closes cleanly on a warm shutdown.
    pipeline.stop_workers()
    for worker in pipeline.workers:
        assert not UNCLOSED.search(worker.log()), worker.tail()


class RestartableMongo:
    """A MongoDB-protocol server on disk: stopped and started again on one port, data kept."""

    def __init__(self, storage: Path) -> None:
        self.storage = storage
        self.service = localstack.start_mongo(storage_path=storage)
        self.url = self.service.url

    def stop(self) -> None:
        self.service.stop()

    def start(self) -> None:
        self.service = localstack.start_mongo(self.service.port, storage_path=self.storage)


@pytest.fixture
def restartable_mongo(tmp_path: Path) -> Iterator[RestartableMongo]:
    """Request it before `pipelines`: workers stop first, as closing a client waits for it."""
    mongo = RestartableMongo(tmp_path / "mongo-data")
    try:
        yield mongo
    finally:
        mongo.stop()


def test_mongodb_outage_mid_stream_stores_everything_once(restartable_mongo, pipelines) -> None:
    """MongoDB stopped while messages flow and restarted: every document archived exactly once."""
    pipeline = pipelines(mongo_url=restartable_mongo.url, settings=PATIENT_RETRIES)
    _, notify = pipeline.start_workers("coincidence", "notify")
    now = time.time_ns()
    before = pair(now)
    pipeline.send(before)
    pipeline.wait_until(lambda: pipeline.archive.alerts.count_documents({}) == 1,
                        "the first alert archived")

    restartable_mongo.stop()
    during = [live_observation("JUNO", now - 25 * S), live_observation("Super-K", now - 12 * S),
              live_observation("KamLAND", now - 5 * S), live_observation("LVD", now - 4 * S)]
    pipeline.send(during)
    pipeline.wait_until(lambda: len(pipeline.alerts()) >= 4,
                        "alerts published while MongoDB is down")
    pipeline.wait_until(lambda: FAILED_STORE.search(notify.log()), "a failed store attempt")
    restartable_mongo.start()
    pipeline.drain()

    sent = {m.uuid for m in before + during}
    archived = [d["uuid"] for d in pipeline.archive.observations.find()]
    assert sorted(archived) == sorted(sent)
    alerts = unique_alerts(pipeline.alerts())
    assert sorted((d["alert_id"], d["revision"]) for d in pipeline.archive.alerts.find()
                  ) == sorted(alerts)
    assert pipeline.state.client.hlen(KEYS.failed) == 0
    assert pipeline.archive.failed_notifications.count_documents({}) == 0


def busy_stream(rng: random.Random, now_ns: int, size: int) -> list[Message]:
    """Random observations of eight detectors over four minutes, with repeats and retractions.

    Close observations of one detector supersede each other, so the final state
    depends on the order the worker applied them in.
    """
    detectors = ["Baksan", "HALO", "IceCube", "JUNO", "KamLAND", "LVD", "SNO+", "Super-K"]
    stream: list[Message] = []
    while len(stream) < size:
        roll = rng.random()
        observed = [m for m in stream if m.tier is Tier.COINCIDENCE]
        if roll < 0.1 and stream:
            stream.append(rng.choice(stream))
        elif roll < 0.15 and observed:
            target = rng.choice(observed)
            stream.append(retraction(target.detector_name, target=target.uuid))
        elif roll < 0.18:
            stream.append(retraction(rng.choice(detectors), latest_n=rng.randint(1, 2)))
        else:
            stream.append(live_observation(rng.choice(detectors),
                                           now_ns - rng.randrange(5 * S, 245 * S),
                                           p_val=round(rng.uniform(0.001, 0.5), 4)))
    return stream


def first_occurrences(stream: list[Message]) -> list[Message]:
    """The stream without its repeats: what a writer applies, in arrival order."""
    return list({m.uuid: m for m in stream}.values())  # a dict keeps first insertion order


def test_killed_coincidence_worker_loses_and_doubles_nothing(pipelines) -> None:
    """SIGKILL of the writer's process group mid-stream, then a restart (SPEC 5: late ack)."""
    pipeline = pipelines(settings={"SNEWS_SLACK_TOKEN": ""})
    writer, _ = pipeline.start_workers("coincidence", "notify")
    stream = busy_stream(random.Random(5), time.time_ns(), 300)
    pipeline.send(stream)

    def killable() -> bool:
        return len(pipeline.processed_uuids()) >= 80 and bool(pipeline.in_flight_payloads())

    in_flight: set[str] = set()
    for _ in range(5):  # the solo writer may acknowledge its message between check and kill
        pipeline.wait_until(killable, "a third of the stream processed, one message in flight")
        writer.kill()
        in_flight = {payload["uuid"] for payload in pipeline.in_flight_payloads()}
        if in_flight:
            break
        (writer,) = pipeline.start_workers("coincidence")
    assert in_flight, "no kill hit a message in flight"
    processed_at_kill = len(pipeline.processed_uuids())
    assert processed_at_kill < len({m.uuid for m in stream}), "the stream was over before the kill"

    pipeline.start_workers("coincidence")
    sent_uuids = {m.uuid for m in stream}
    # The in-flight message comes back once the visibility timeout (15 s) has passed.
    pipeline.wait_until(lambda: pipeline.processed_uuids() == sent_uuids, "every message processed")
    pipeline.drain()

    order = applied_order(pipeline, stream)
    assert [m.uuid for m in order if m.uuid not in in_flight] == [
        m.uuid for m in first_occurrences(stream) if m.uuid not in in_flight], (
        "only the message in flight at the kill may be applied out of order")
    reference = Run()
    reference.send(*order)
    assert_matches_reference(pipeline, reference, sent_uuids)
