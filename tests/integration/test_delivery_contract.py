"""The writer's outbox empties on every exit path of a notification task, with real Celery
workers (workers/notify), a real Redis and the real slack_sdk against the local Slack API.

An outbox entry waits for each of its delivery tasks to finish. `DeliveryTask` reports for
every task on every exit: delivered, skipped (Slack not configured), already done (a
redelivery), retried, failed for good (recorded). A worker killed mid-delivery reports
nothing; its entry stays, and the sweep's resend finishes it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable

import pytest
import redis

from snews_tasks.adapters.outbox import OUTBOX_HEADER, Outbox
from snews_tasks.adapters.redis_keys import KEYS
from snews_tasks.core.processing import Processor
from snews_tasks.core.routing import TaskName
from snews_tasks.entrypoints.process_groups import signal_group
from snews_tasks.settings import load_settings
from snews_tasks.testing import builders as h
from snews_tasks.testing.pipeline import ClockedSlackApi, Pipeline, pipelines, slack  # noqa: F401
from snews_tasks.testing.services import writer_service

pytestmark = pytest.mark.integration


def an_alert() -> dict:
    return {"alert_id": str(uuid.uuid4()), "revision": 1, "alert_type": "NEW",
            "detector_names": ["JUNO", "KamLAND"], "neutrino_times_utc": [h.utc(0), h.utc(2)],
            "p_values": [0.01, None], "observation_uuids": ["u1", "u2"],
            "initial_neutrino_time_utc": h.utc(0), "false_alarm_rate_per_year": 0.5,
            "false_alarm_rate_reason": "2-fold", "detectors_online": 5, "is_test": False,
            "is_firedrill": False, "server_tag": "test", "sent_time_utc": h.utc(3),
            "schema_version": "1.0"}


class Writer:
    """Stands in for the coincidence writer: stages an entry, records what it waits for and
    sends the delivery task with the entry's key, as the writer does after a commit."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.client = redis.Redis.from_url(pipeline.state_redis_url, decode_responses=True)
        self.outbox = Outbox(self.client)

    def hand_on(self, alert: dict, task: TaskName = TaskName.POST_SLACK) -> str:
        key = f"alert:{alert['alert_id']}:{alert['revision']}:{uuid.uuid4().hex[:6]}"
        self.client.hset(KEYS.outbox, key, json.dumps(
            {"kind": "alert", "document": alert, "staged_at": time.time(),
             "order": [time.time(), 0]}))
        self.outbox.handing_on({key: [task]})
        self.pipeline.send_task(task, alert, {OUTBOX_HEADER: [key]})
        return key

    def entries(self) -> int:
        return int(self.client.hlen(KEYS.outbox))

    def wait_empty(self, what: str) -> None:
        self.pipeline.wait_until(lambda: self.entries() == 0, f"outbox empty after {what}",
                                 timeout_s=30)


@pytest.fixture
def notify(pipelines: Callable[..., Pipeline]) -> tuple[Pipeline, Writer]:
    pipeline = pipelines()
    pipeline.start_workers("notify")
    return pipeline, Writer(pipeline)


def test_delivered_duplicate_retried_and_failed_deliveries_all_finish_their_entry(
        notify: tuple[Pipeline, Writer], slack: ClockedSlackApi) -> None:
    pipeline, writer = notify
    alert = an_alert()

    writer.hand_on(alert)
    writer.wait_empty("a delivery")
    assert len(slack.posts) == 1

    writer.hand_on(alert)  # a redelivery: the Slack task finds it posted and skips it
    writer.wait_empty("a delivery already done")
    assert len(slack.posts) == 1

    slack.script([(429, {"Retry-After": "0"}), (500, {})])
    retried = an_alert()
    writer.hand_on(retried)
    writer.wait_empty("two retries and a delivery")
    assert [c.status for c in slack.calls[-3:]] == [429, 500, 200]

    slack.script([("ok_false", "channel_not_found")])  # permanent: no retry
    refused = an_alert()
    writer.hand_on(refused)
    writer.wait_empty("a failure recorded")
    [record] = json.loads(pipeline.cli("failed", "list", "--json").stdout)
    assert record["id"] == f"alert_slack:{refused['alert_id']}:1"
    assert "channel_not_found" in record["error"]


def test_a_skipped_delivery_finishes_its_entry(pipelines: Callable[..., Pipeline],
                                               slack: ClockedSlackApi) -> None:
    """Slack not configured: the task skips, and says so to the outbox (it used not to)."""
    pipeline = pipelines(settings={"SNEWS_SLACK_TOKEN": ""})
    pipeline.start_workers("notify")
    writer = Writer(pipeline)
    writer.hand_on(an_alert())
    writer.wait_empty("a skipped delivery")
    assert slack.calls == []


def test_a_worker_killed_mid_delivery_leaves_its_entry_for_the_sweep(
        notify: tuple[Pipeline, Writer], slack: ClockedSlackApi) -> None:
    pipeline, writer = notify
    slack.hold()
    alert = an_alert()
    writer.hand_on(alert)
    pipeline.wait_until(lambda: slack.held == 1, "the post in flight")
    [worker] = pipeline.workers
    signal_group(worker.process.pid, 9)
    worker.process.wait()
    slack.release()
    time.sleep(1.0)
    assert writer.entries() == 1  # nothing told the outbox the delivery finished

    pipeline.start_workers("notify")
    sent: list[tuple[str, object, dict]] = []

    def send(task: str, argument: object, headers: dict) -> None:
        sent.append((task, argument, headers))
        pipeline.send_task(task, argument, headers)

    sweep = writer_service(writer.client, send, Processor(load_settings("test", environ={})))
    assert sweep.resend_unfinished(older_than_s=0) == 1
    assert [task for task, _, _ in sent] == [TaskName.POST_SLACK]
    writer.wait_empty("the sweep's resend")
    assert 1 <= len(slack.posts) <= 2  # at least once: the killed post may have landed too
