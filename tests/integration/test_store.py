"""The Redis-backed writer against real Redis: same answers as replay, atomic, safe with two writers."""

from __future__ import annotations

import json
import random
import threading

import pytest
import redis

from snews_tasks.testing import builders as h
from snews_tasks.core.engine import LIVE, brute_force_coincidences
from snews_tasks.core.processing import Processor
from snews_tasks.adapters.outbox import Outbox
from snews_tasks.adapters.redis_keys import KEYS
from snews_tasks.tasks.writer import CoincidenceService
from snews_tasks.testing.services import writer_service

pytestmark = pytest.mark.integration
DETECTORS = ("Super-K", "IceCube", "JUNO", "KamLAND", "LVD", "Borexino")


def random_stream(seed: int, n: int) -> list:
    """Bursts, supersedes, duplicates and retractions over a few minutes."""
    rng = random.Random(seed)
    sent, stream = [], []
    for _ in range(n):
        roll = rng.random()
        if roll < 0.08 and sent:
            stream.append(rng.choice(sent))
        elif roll < 0.14 and sent:
            target = rng.choice(sent)
            stream.append(h.retraction(target.detector_name, target=target.uuid))
        else:
            m = h.observation(rng.choice(DETECTORS), rng.randrange(0, 600) / 2,
                              p_val=rng.choice([0.01, 0.3, None]))
            sent.append(m)
            stream.append(m)
    return stream


def service(url: str) -> tuple[CoincidenceService, h.Sent]:
    sent = h.Sent()
    client = redis.Redis.from_url(url, decode_responses=True)
    return writer_service(client, sent, Processor(h.settings())), sent


def resend(svc: CoincidenceService, older_than_s: float, queue_is_empty: bool) -> int:
    """The sweep's resend, with every queue seen empty or not."""
    svc.queue_is_empty = lambda task: queue_is_empty
    return svc.resend_unfinished(older_than_s=older_than_s)


NOW = h.T0 + 3600 * h.S


def test_redis_writer_matches_replay_and_brute_force(redis_url):
    stream = random_stream(7, 300)
    svc, sent = service(redis_url)
    for m in stream:
        svc.handle(m.to_dict(), now_ns=NOW)
    run = h.Run()
    for m in stream:
        run.send(m)

    redis_sets = {frozenset(m.uuid for m in c.members) for c in svc.state.coincidences(LIVE)}
    assert redis_sets == run.member_sets()
    assert redis_sets == brute_force_coincidences(svc.state.observations(LIVE), 10 * h.S)
    alerts = [doc for task, doc in sent if task == "snews.kafka.publish_alert"]
    assert [(a["alert_type"], a["detector_names"]) for a in alerts] == \
        [(a["alert_type"], a["detector_names"]) for a in run.alerts]
    stored = {doc["uuid"] for task, doc in sent if task == "snews.storage.store_observations"}
    assert stored == {m.uuid for m in stream}
    assert svc.outbox.pending() == {}


def test_a_redelivered_message_changes_nothing_and_sends_nothing(redis_url):
    svc, sent = service(redis_url)
    a, b = h.observation("Super-K", 0), h.observation("IceCube", 1)
    svc.handle(a.to_dict(), now_ns=NOW)
    svc.handle(b.to_dict(), now_ns=NOW)
    before, n_sent = svc.state.coincidences(LIVE), len(sent)
    assert svc.handle(b.to_dict(), now_ns=NOW) == "duplicate"
    assert svc.state.coincidences(LIVE) == before and len(sent) == n_sent


def test_bad_input_is_rejected_recorded_and_does_not_block_the_next(redis_url):
    svc, sent = service(redis_url)
    outcome = svc.handle({"tier": "CoincidenceTier", "detector_name": "Super-K",
                          "uuid": "x", "neutrino_time_utc": h.utc(0), "p_val": 7},
                         now_ns=NOW)
    assert outcome.startswith("rejected: p_val")
    (task, reject), = sent
    assert task == "snews.storage.store_reject" and reject["field"] == "p_val"
    assert '"p_val": 7' in reject["raw"]
    assert svc.handle(h.observation("Super-K", 0).to_dict(), now_ns=NOW) == "added"


def test_a_crash_between_commit_and_dispatch_is_delivered_by_the_sweep(redis_url):
    svc, sent = service(redis_url)
    svc.handle(h.observation("Super-K", 0).to_dict(), now_ns=NOW)

    def broker_gone(task: str, argument: object, headers: dict) -> None:
        raise ConnectionError("broker gone")

    svc.send = broker_gone
    with pytest.raises(ConnectionError):
        svc.handle(h.observation("IceCube", 1).to_dict(), now_ns=NOW)
    assert len(svc.state.coincidences(LIVE)) == 1  # committed
    pending = svc.outbox.pending()
    assert any(k.startswith("alert:") for k in pending)
    svc.send = sent
    assert svc.dispatch() == len(pending)
    assert [d["alert_type"] for t, d in sent if t == "snews.kafka.publish_alert"] == ["NEW"]
    assert len([t for t, d in sent if t == "snews.storage.store_observations"]) == 2
    assert svc.outbox.pending() == {}


def test_two_writers_at_once_leave_the_state_of_one(redis_url, new_redis_url):
    stream = random_stream(11, 240)
    serial, serial_sent = service(new_redis_url())
    for m in stream:
        serial.handle(m.to_dict(), now_ns=NOW)

    first, sent_a = service(redis_url)
    second, sent_b = service(redis_url)
    errors: list[BaseException] = []

    def work(svc: CoincidenceService, messages: list) -> None:
        try:
            for m in messages:
                svc.handle(m.to_dict(), now_ns=NOW)
        except BaseException as error:  # surfaced by the assertion below
            errors.append(error)

    # Both writers see every message, in the same order, as two workers sharing one queue
    # would if a message were redelivered to the second while the first still ran it.
    threads = [threading.Thread(target=work, args=(svc, stream)) for svc in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    shared = {frozenset(m.uuid for m in c.members) for c in first.state.coincidences(LIVE)}
    assert shared == {frozenset(m.uuid for m in c.members)
                      for c in serial.state.coincidences(LIVE)}
    # Delivery is at-least-once (both writers may hand on the same outbox entry); after the
    # consumers' deduplication by (alert_id, revision) each coincidence had one NEW.
    def deduplicated(sent: h.Sent) -> dict:
        return {(d["alert_id"], d["revision"]): d for t, d in sent
                if t == "snews.kafka.publish_alert"}

    shared_alerts = deduplicated(sent_a + sent_b)
    news = [a for a in shared_alerts.values() if a["alert_type"] == "NEW"]
    assert len(news) == len({a["alert_id"] for a in news})
    assert len(news) == sum(a["alert_type"] == "NEW" for a in deduplicated(serial_sent).values())


def test_an_internal_error_records_the_message_and_the_next_one_goes_through(redis_url):
    svc, sent = service(redis_url)
    real_step = svc.processor.step

    def broken_step(*args, **kwargs):
        raise KeyError("a bug")

    svc.processor.step = broken_step
    victim = h.observation("Super-K", 0)
    with pytest.raises(KeyError):
        svc.handle(victim.to_dict(), now_ns=NOW)
    (task, reject), = sent
    assert task == "snews.storage.store_reject" and "internal error" in reject["reason"]
    assert victim.uuid in reject["raw"]
    svc.processor.step = real_step
    assert svc.handle(h.observation("IceCube", 1).to_dict(), now_ns=NOW) == "added"


def test_canary_alerts_skip_slack_but_a_real_message_cannot_claim_to_be_a_canary(redis_url):
    svc, sent = service(redis_url)
    for is_test in (True, False):
        for det, t in (("Super-K", 0), ("IceCube", 1)):
            m = {**h.observation(det, t, is_test=is_test).to_dict(), "meta": {"canary": True}}
            svc.handle(m, now_ns=NOW)
    kafka = [d for t, d in sent if t == "snews.kafka.publish_alert"]
    slack = [d for t, d in sent if t == "snews.slack.post_alert"]
    assert [(a["is_test"], a["is_canary"]) for a in kafka] == [(True, True), (False, False)]
    assert [a["is_test"] for a in slack] == [False]


@pytest.mark.parametrize("broker_has_it", [True, False])
def test_an_alert_the_writer_published_itself_skips_the_kafka_task(redis_url, broker_has_it):
    svc, sent = service(redis_url)
    published: list[dict] = []

    def publish_now(alerts: list[dict]) -> list[bool]:
        published.extend(alerts)
        return [broker_has_it] * len(alerts)

    svc.publish_now = publish_now
    svc.handle(h.observation("Super-K", 0).to_dict(), now_ns=NOW)
    svc.handle(h.observation("IceCube", 1).to_dict(), now_ns=NOW)
    [alert] = published
    tasks = [t for t, d in sent if d.get("alert_id") == alert["alert_id"]]
    expected = {"snews.storage.store_alert", "snews.slack.post_alert",
                "snews.localization.localize", "snews.gcn.publish_notice"}
    assert set(tasks) == expected | (set() if broker_has_it else {"snews.kafka.publish_alert"})
    assert svc.outbox.pending() == {}


def test_deliveries_that_never_finish_are_sent_again_until_they_do(redis_url):
    """An entry stays in the outbox until each delivery task has finished; one lost on its way
    (a Redis crash as kombu moves it) or with its worker is sent again, unless its queue still
    holds work or it waits for a retry."""
    svc, sent = service(redis_url)
    svc.handle(h.observation("Super-K", 0).to_dict(), now_ns=NOW)
    svc.handle(h.observation("IceCube", 1).to_dict(), now_ns=NOW)
    [alert] = [d for t, d in sent if t == "snews.kafka.publish_alert"]
    key = f"alert:{alert['alert_id']}:1"
    first = list(sent)
    sent.clear()

    assert resend(svc, 0, False) == 0
    assert resend(svc, 3600, True) == 0
    assert sent == []
    assert resend(svc, 0, True) == 7
    def by_task(item: tuple[str, dict]) -> tuple[str, str]:
        return str(item[0]), repr(item[1])

    assert sorted(sent, key=by_task) == sorted(first, key=by_task)  # 2 observations, 5 alerts

    sent.clear()
    svc.outbox.deliveries_retrying([key], "snews.slack.post_alert", due_s=60)
    assert resend(svc, 0, True) == 6
    assert "snews.slack.post_alert" not in {task for task, _ in sent}

    sent.clear()
    for task, document in first:
        entry = key if "alert_id" in document else f"observation:{document['uuid']}"
        svc.outbox.deliveries_done([entry], task)
    assert resend(svc, 0, True) == 0
    assert sent == [] and svc.outbox.client.hlen(KEYS.outbox) == 0
    assert not svc.outbox.client.exists(KEYS.outbox_wait(key))
    assert not svc.outbox.client.exists(KEYS.outbox_retry)


def test_a_batch_hand_on_records_each_entrys_own_tasks(redis_url):
    """One hand-on of many entries: each waits for its own tasks (a repeated hand-on replaces
    what it waited for), an entry with no task is done at once, and none is pending."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    outbox = Outbox(client)
    entries = {f"observation:{i}": [f"task-{i}", "snews.storage.archive"] for i in range(300)}
    entries["reject:none"] = []
    for key in [*entries, "observation:left"]:
        client.hset(KEYS.outbox, key, json.dumps(
            {"kind": "observation", "document": {}, "staged_at": 0.0, "order": [0.0, 0]}))
    client.sadd(KEYS.outbox_wait("observation:7"), "task-from-an-earlier-hand-on")

    outbox.handing_on(entries)

    for key, tasks in entries.items():
        assert client.smembers(KEYS.outbox_wait(key)) == set(tasks), key
    assert not client.hexists(KEYS.outbox, "reject:none")
    assert set(client.zrange(KEYS.outbox_sent, 0, -1)) == set(entries) - {"reject:none"}
    assert list(outbox.pending()) == ["observation:left"]
    outbox.handing_on({})  # nothing to hand on sends nothing
    assert list(outbox.pending()) == ["observation:left"]
