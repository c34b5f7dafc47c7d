"""The writer lease and the fenced commit against a real Redis."""

from __future__ import annotations

import time

import pytest
import redis

from snews_tasks.adapters.lease import WriterLease, lease_holder, new_token, writers
from snews_tasks.adapters.redis_keys import KEYS
from snews_tasks.adapters.state import WriterFenced
from snews_tasks.core.processing import Processor
from snews_tasks.testing import builders as h
from snews_tasks.testing.services import writer_service

pytestmark = pytest.mark.integration
NOW = h.T0 + 3600 * h.S


def client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True)


def test_one_holder_at_a_time_and_a_standby_takes_over_once_it_expires(redis_url: str) -> None:
    a = WriterLease(client(redis_url), new_token("writer-a@host"), ttl_ms=300)
    b = WriterLease(client(redis_url), new_token("writer-b@host"), ttl_ms=300)
    assert a.acquire() and not b.acquire()
    for _ in range(5):  # renewed well within its time to live, it stays a's
        time.sleep(0.1)
        assert a.renew() and not b.acquire()
    holder = lease_holder(a.client)
    assert holder is not None and holder.name == "writer-a@host" and 0 < holder.ttl_ms <= 300
    time.sleep(0.4)  # a stops renewing (frozen): the lease expires
    assert b.acquire()
    assert not a.renew(), "a woken holder must find the lease taken"
    b.release()
    assert lease_holder(b.client) is None


def test_a_writer_whose_lease_was_taken_over_commits_nothing(redis_url: str) -> None:
    lease_a = WriterLease(client(redis_url), new_token("writer-a@host"), ttl_ms=300)
    lease_b = WriterLease(client(redis_url), new_token("writer-b@host"), ttl_ms=10_000)
    assert lease_a.acquire()
    sent_a, sent_b = h.Sent(), h.Sent()
    processor = Processor(h.settings())
    a = writer_service(client(redis_url), sent_a, processor, lease_token=lease_a.token)
    b = writer_service(client(redis_url), sent_b, processor, lease_token=lease_b.token)
    assert a.handle(h.observation("Super-K", 0).to_dict(), now_ns=NOW) == "added"
    with pytest.raises(WriterFenced):  # b holds no lease
        b.handle(h.observation("IceCube", 1).to_dict(), now_ns=NOW)
    time.sleep(0.4)
    assert lease_b.acquire()  # a froze past its time to live; b takes over
    icecube = h.observation("IceCube", 1)
    with pytest.raises(WriterFenced):  # a wakes: its commit is refused
        a.handle(icecube.to_dict(), now_ns=NOW)
    assert icecube.uuid not in {o.uuid for o in a.state.observations(h.LIVE)}
    assert b.handle(icecube.to_dict(), now_ns=NOW) == "added"
    assert [len(c.members) for c in b.state.coincidences(h.LIVE)] == [2]
    assert any(task == "snews.slack.post_alert" for task, _ in sent_b)  # b's alert went out


def test_each_commit_sets_a_fresh_version(redis_url: str) -> None:
    """A counter could repeat after a failover lost a commit; a token never does."""
    svc = writer_service(client(redis_url), h.Sent(), Processor(h.settings()))
    versions = []
    for seconds in range(3):
        svc.handle(h.observation("Super-K", seconds * 30).to_dict(), now_ns=NOW)
        versions.append(svc.state.client.get(KEYS.version))
    assert len(set(versions)) == 3 and all(len(v) == 32 for v in versions)


def test_workers_announce_their_role_and_stale_ones_are_forgotten(redis_url: str) -> None:
    lease = WriterLease(client(redis_url), new_token("writer-a@host"))
    lease.client.hset(KEYS.writers, "gone|host|0", '{"role": "standby", "seen": 0}')
    lease.announce("standby")
    assert set(writers(lease.client)) == {lease.token}
    assert lease.client.hexists(KEYS.writers, "gone|host|0") == 0
