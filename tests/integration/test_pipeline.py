"""The deployed pipeline end to end: real Celery workers from workers/, real servers.

Messages enter the coincidence queue as the ingest puts them there; alerts are
read back from the Kafka alert topic with hop-client, the archive with pymongo,
Slack posts from a Slack Web API stand-in over HTTP.
"""

from __future__ import annotations

import random
import time

import pytest

from snews_tasks.testing.builders import Run
from snews_tasks.testing.pipeline import (S, assert_matches_reference, live_observation,  # noqa: F401  (fixtures)
                      pipelines, slack)
from snews_tasks.core.messages import Message

pytestmark = pytest.mark.integration


def test_three_detectors_make_two_alerts_everywhere(pipelines, slack) -> None:
    """SPEC 3/4: t, t+9 s, t+11 s from three detectors are two coincidences, each alerted once."""
    pipeline = pipelines()
    pipeline.start_workers("coincidence", "notify")
    t = time.time_ns() - 60 * S
    first, second, third = (live_observation("IceCube", t),
                            live_observation("JUNO", t + 9 * S),
                            live_observation("Super-K", t + 11 * S))
    pipeline.send([first, second, third])

    def delivered() -> bool:
        archived = pipeline.archive
        return (len(slack.posts) >= 2 and archived.alerts.count_documents({}) >= 2
                and archived.observations.count_documents({}) >= 3)

    pipeline.wait_until(delivered, "two Slack posts, two archived alerts, three observations")
    pipeline.drain()

    alerts = pipeline.alerts()
    assert sorted((a["alert_type"], a["revision"], frozenset(a["observation_uuids"]))
                  for a in alerts) == sorted([
        ("NEW", 1, frozenset({first.uuid, second.uuid})),
        ("NEW", 1, frozenset({second.uuid, third.uuid})),
    ])
    assert len({a["alert_id"] for a in alerts}) == 2
    # Concurrent notify processes publish the two alerts in either order.
    assert sorted(a["detector_names"] for a in alerts) == [["IceCube", "JUNO"],
                                                           ["JUNO", "Super-K"]]
    assert pipeline.alerts(pipeline.test_alert_topic) == []

    posted = sorted(post["text"] for post in slack.posts)
    assert len(posted) == 2
    for alert in alerts:
        assert sum(f"alert {alert['alert_id']} rev 1" in text for text in posted) == 1

    archived = pipeline.archive
    assert sorted(d["uuid"] for d in archived.observations.find()) == sorted(
        m.uuid for m in (first, second, third))
    assert sorted((d["alert_id"], d["revision"]) for d in archived.alerts.find()) == sorted(
        (a["alert_id"], a["revision"]) for a in alerts)
    assert archived.rejected.count_documents({}) == 0
    assert archived.failed_notifications.count_documents({}) == 0


def order_free_stream(rng: random.Random, now_ns: int) -> list[Message]:
    """Observations whose final state cannot depend on arrival order, shuffled, with repeats.

    One detector's observations lie more than T = 10 s apart (11 s slots, under
    0.5 s of jitter), so none supersedes another; without retractions the cache
    ends up holding every observation whatever the order.
    """
    detectors = ["Baksan", "Borexino", "DUNE", "HALO", "Hyper-K", "IceCube", "JUNO", "KM3NeT",
                 "KamLAND", "LVD", "SNO+", "Super-K"]
    first_slot_ns = now_ns - 240 * S
    observations = [
        live_observation(detector, first_slot_ns + slot * 11 * S + rng.randrange(S // 2),
                         p_val=round(rng.uniform(0.001, 0.5), 4))
        for detector in detectors for slot in rng.sample(range(21), 9)
    ]
    stream = observations + rng.sample(observations, 25)
    rng.shuffle(stream)
    return stream


def test_a_second_coincidence_worker_stands_by_and_the_state_is_one_writers(pipelines) -> None:
    """SPEC 5: only one coincidence worker writes at a time. A second one (a standby, or one
    started by mistake) waits for the writer lease and changes nothing in the outcome."""
    pipeline = pipelines(settings={"SNEWS_SLACK_TOKEN": ""})
    first, second, _ = pipeline.start_workers("coincidence", "coincidence", "notify",
                                              hostnames=["writer-a@%h", "writer-b@%h", None])
    stream = order_free_stream(random.Random(6), time.time_ns())
    pipeline.send(stream)
    sent_uuids = {m.uuid for m in stream}
    pipeline.wait_until(lambda: len(pipeline.processed_uuids()) == len(sent_uuids),
                        "every message processed")
    pipeline.drain()

    writing = [w for w in (first, second) if "Task snews.coincidence.process[" in w.log()]
    assert len(writing) == 1, "exactly one of the two coincidence workers writes"
    [standby] = [w for w in (first, second) if w not in writing]
    assert "writer lease taken" in writing[0].log()
    assert "Started consuming from coincidence" not in standby.log()
    in_send_order = Run()
    in_send_order.send(*stream)
    assert {c.uuids for c in pipeline.coincidences()} == in_send_order.member_sets()

    # Every observation stays cached, stamped with the arrival counter of the commit that
    # added it: one serial writer numbers them 1..n, and its alerts follow from that order.
    cached = sorted(pipeline.cached(), key=lambda o: o.seq)
    assert [o.seq for o in cached] == list(range(1, len(sent_uuids) + 1)), (
        "the commits of the two workers do not form one serial order")
    by_uuid = {m.uuid: m for m in stream}
    in_commit_order = Run()
    in_commit_order.send(*(by_uuid[o.uuid] for o in cached))
    assert_matches_reference(pipeline, in_commit_order, sent_uuids)
