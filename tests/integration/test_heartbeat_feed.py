"""The feedback check on a real Redis: one check at a time, nothing lost between its commit
and its sends, and a lost state re-learned from the stream."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from snews_tasks.adapters.heartbeat_feed import HeartbeatFeed
from snews_tasks.core.routing import TaskName
from snews_tasks.core.times import NS_PER_S
from snews_tasks.entrypoints.status import feedback_states
from snews_tasks.settings import Settings, load_settings
from snews_tasks.tasks.feedback import check_heartbeats
from snews_tasks.testing.heartbeats import beats

pytestmark = pytest.mark.integration


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url, decode_responses=True) as connection:
        yield connection


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return load_settings("test", environ={"SNEWS_STATE_REDIS_URL": redis_url})


def quiet_superk(client: redis.Redis) -> None:
    """Super-K beat every minute and stopped 3 min ago."""
    feed = HeartbeatFeed(client)
    for heartbeat in beats("Super-K", time.time_ns() - 12 * 60 * NS_PER_S, 60, 10):
        feed.append(heartbeat)


def test_a_second_check_while_one_runs_does_nothing(client: redis.Redis, settings: Settings):
    quiet_superk(client)
    running = HeartbeatFeed(client).lock()
    assert running.acquire()
    sent: list[tuple[str, dict]] = []
    assert check_heartbeats(settings, client, lambda t, d, h: sent.append((t, d))) is None
    assert sent == [] and client.get("snews:feedback:state") is None
    # A check whose lock expired and was taken by another commits nothing.
    feed = HeartbeatFeed(client)
    client.set("snews:feedback:lock", "another check")
    assert not feed.commit(running, {"version": 1, "detectors": {}}, "0-0", {"e": {}})
    assert client.get("snews:feedback:state") is None and feed.pending() == {}


def test_events_wait_until_their_deliveries_are_sent(client: redis.Redis, settings: Settings):
    quiet_superk(client)

    def broker_down(task: str, document: dict, headers: dict) -> None:
        raise ConnectionError("Celery broker down")

    with pytest.raises(ConnectionError):
        check_heartbeats(settings, client, broker_down)
    [pending] = HeartbeatFeed(client).pending().values()
    assert (pending["detector_name"], pending["event"]) == ("Super-K", "missed")

    sent: list[tuple[str, dict]] = []
    outcome = check_heartbeats(settings, client, lambda t, d, h: sent.append((t, d)))
    assert outcome == {"heartbeats": 0, "events": 0, "handed_on": 1}  # nothing raised twice
    assert [task for task, _ in sent] == [
        TaskName.STORE_HEARTBEAT_EVENT,
        TaskName.POST_SLACK_OPERATIONS,
        TaskName.SEND_MAIL,
    ]
    assert sent[2][1]["to"] == ["super-k-shifters@example.org"]
    assert HeartbeatFeed(client).pending() == {}


def test_a_lost_state_is_relearned_from_the_stream(client: redis.Redis, settings: Settings):
    quiet_superk(client)
    check_heartbeats(settings, client, lambda *_: None)
    before = feedback_states(client, time.time_ns())["Super-K"]
    assert before["watched"] and before["missed_since_utc"] is not None
    client.delete("snews:feedback:state")
    check_heartbeats(settings, client, lambda *_: None)
    after = feedback_states(client, time.time_ns())["Super-K"]
    assert after["watched"] and after["beats_in_window"] == 10
    assert after["mean_interval_s"] == pytest.approx(60)
