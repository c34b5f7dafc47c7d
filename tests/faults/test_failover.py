"""Failover in seconds: the writer frozen or killed, and the Redis primary killed, mid-stream.

Two coincidence workers run, as docker-compose.yml runs them; one holds the writer lease and
writes, the other stands by. A supervisor (this test, as docker-compose's restart policy does)
starts again any that exits. Coincident pairs arrive every 0.25 s. The delay measured for
each pair runs from the moment its completing observation was sent to the moment its alert
was published on the alert topic (the record's creation time): what a telescope waits.

* Writer: the lease holder is frozen (SIGSTOP, as a paused VM or a long stall) for 0.6 s and
  then SIGKILLed, or SIGKILLed at once, ten times each. The standby must take over and every
  pair be alerted within 2 s, as one coincidence (one NEW alert id); a frozen writer that
  wakes commits nothing (its lease was taken over; the commit script fences it). A writer
  killed between the broker's acknowledgement of an alert and its record of the hand-on
  leaves that alert to its successor, which publishes it again: identical, so consumers,
  keying on (alert_id, revision), drop the repeat; the figures count such repeats.
* Redis: the broker and the state live on a Sentinel group (a primary and a replica with
  AOF fsynced on every write, three sentinels). The primary is SIGKILLed mid-stream; the
  replica is promoted, and alerts resume within a few seconds of the promotion, with
  nothing lost (the ingest sends again what it had sent just before the failover).

`FIGURES` lines (`pytest -s`) give the delays; bench/RESULTS.md and docs/reliability.md
record them.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import confluent_kafka
import pytest
import redis

from snews_tasks.adapters.lease import lease_holder
from snews_tasks.core.messages import Message
from snews_tasks.entrypoints import localstack
from snews_tasks.entrypoints.process_groups import signal_group
from snews_tasks.settings import KNOWN_DETECTORS
from snews_tasks.testing.pipeline import (S, ClockedSlackApi, Pipeline, Worker,
                                          live_observation, pipelines, slack,  # noqa: F401
                                          start_ingest, unique_alerts)
from snews_tasks.testing.sentinel import MASTER_NAME, SentinelGroup, start_sentinel_group

pytestmark = [pytest.mark.faults, pytest.mark.serial]  # its delays need a quiet machine

PAIR_EVERY_S = 0.25
FAULTS_OF_EACH_KIND = 10
#: Pause after the standby is up (a restarted worker takes a few seconds to start) before the
#: next fault, so every fault meets a leader and a ready standby, as a deployment has them.
SETTLE_S = 1.0
FREEZE_S = 0.6
MAX_DELAY_S = 2.0
WRITERS = ("writer-a@%h", "writer-b@%h")


@dataclass
class Pairs:
    """Coincident pairs, far apart in neutrino time so each is its own coincidence."""

    send: Callable[[list[Message]], None]
    base_ns: int = field(default_factory=lambda: time.time_ns() - 6 * 3600 * S)
    sent_at: dict[str, float] = field(default_factory=dict)  # completing uuid -> send time
    messages: list[Message] = field(default_factory=list)
    rng: random.Random = field(default_factory=lambda: random.Random(17))

    def send_one(self) -> None:
        index = len(self.sent_at)
        first, second = self.rng.sample(KNOWN_DETECTORS, 2)
        t_ns = self.base_ns + index * 30 * S
        pair = [live_observation(first, t_ns), live_observation(second, t_ns + S)]
        self.send(pair[:1])
        self.send(pair[1:])
        self.sent_at[pair[1].uuid] = time.time()
        self.messages += pair

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(PAIR_EVERY_S):
            self.send_one()

    def delays(self, alerts: list[tuple[float, dict]]) -> dict[str, float]:
        """Completing uuid -> seconds from its send to its pair's first alert."""
        first_alert: dict[str, float] = {}
        for published, alert in alerts:
            for uuid in alert.get("observation_uuids") or ():
                if uuid in self.sent_at:
                    first_alert[uuid] = min(first_alert.get(uuid, published), published)
        return {uuid: first_alert[uuid] - sent for uuid, sent in self.sent_at.items()
                if uuid in first_alert}


class Supervisor:
    """Starts again, with the same name, any coincidence worker that exits."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.by_name = dict(zip(WRITERS, pipeline.start_workers(
            "coincidence", "coincidence", hostnames=list(WRITERS)), strict=True))
        self.restarts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="supervisor")
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.1):
            for name, worker in list(self.by_name.items()):
                if worker.process.poll() is not None:
                    [self.by_name[name]] = self.pipeline.start_workers(
                        "coincidence", hostnames=[name])
                    self.restarts += 1

    def standby_ready(self) -> bool:
        """Both workers run, and the one without the lease has finished starting."""
        leader = self.leader()
        return leader is not None and all(
            w.process.poll() is None and ("ready." in w.log() or w is leader)
            for w in self.by_name.values())

    def leader(self) -> Worker | None:
        holder = lease_holder(self.pipeline.state.client)
        if holder is None:
            return None
        host = holder.name.split("@", 1)[1]
        return next((w for name, w in self.by_name.items()
                     if name.replace("%h", host) == holder.name), None)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def summary(delays: list[float]) -> str:
    ordered = sorted(delays)
    return (f"p50 {statistics.median(ordered) * 1000:.0f} ms, "
            f"p99 {ordered[int(0.99 * (len(ordered) - 1))] * 1000:.0f} ms, "
            f"max {ordered[-1] * 1000:.0f} ms over {len(ordered)} pairs")


def observation_topic(pipeline_settings: dict[str, str],
                      kafka_service: localstack.Service) -> dict[str, str]:
    """A fresh observation topic for the ingest to read, named in the workers' settings."""
    topic = f"observations-{time.time_ns()}"
    localstack.create_topics(kafka_service.address, [topic])
    return {**pipeline_settings, "SNEWS_OBSERVATION_TOPIC": topic}


def test_writer_frozen_or_killed_mid_burst_is_replaced_within_two_seconds(
        pipelines: Callable[..., Pipeline], kafka_service: localstack.Service) -> None:
    pipeline = pipelines(settings=observation_topic({"SNEWS_SLACK_TOKEN": ""}, kafka_service))
    pipeline.start_workers("notify")
    supervisor = Supervisor(pipeline)
    pipeline.wait_until(lambda: supervisor.leader() is not None, "a writer with the lease")
    start_ingest(pipeline)
    pairs = Pairs(publisher(kafka_service.address, pipeline.env["SNEWS_OBSERVATION_TOPIC"]))
    stop = threading.Event()
    feeder = threading.Thread(target=pairs.run, args=(stop,), daemon=True, name="pairs")
    faults: list[tuple[str, float]] = []
    try:
        feeder.start()
        for kind in ["freeze", "kill"] * FAULTS_OF_EACH_KIND:
            pipeline.wait_until(supervisor.standby_ready, "a writer and a ready standby")
            time.sleep(SETTLE_S)
            leader = supervisor.leader()
            assert leader is not None, "nobody writes between faults"
            faults.append((kind, time.time()))
            if kind == "freeze":
                signal_group(leader.process.pid, signal.SIGSTOP)
                time.sleep(FREEZE_S)
            signal_group(leader.process.pid, signal.SIGKILL)
            leader.process.wait()  # dead before the next look for a ready standby
        time.sleep(2 * SETTLE_S)
    finally:
        stop.set()
        feeder.join()
    pipeline.wait_until(lambda: len(pairs.delays(pipeline.alert_times())) == len(pairs.sent_at),
                        "every pair alerted", timeout_s=60)
    pipeline.drain()
    supervisor.stop()

    alerts = pipeline.alert_times()
    delays = pairs.delays(alerts)
    unique = unique_alerts(alert for _, alert in alerts)  # repeats must be identical
    news = [alert for alert in unique.values() if alert["alert_type"] == "NEW"]
    print(f"\nFIGURES writer failover: {FAULTS_OF_EACH_KIND} freezes ({FREEZE_S} s, then "
          f"SIGKILL) and {FAULTS_OF_EACH_KIND} kills of the lease holder, a pair every "
          f"{PAIR_EVERY_S} s: {summary(list(delays.values()))}; {supervisor.restarts} writer "
          f"restarts; {len(alerts) - len(unique)} alert(s) published again by a successor")
    assert len(delays) == len(pairs.sent_at), "a pair was never alerted"
    assert len(news) == len(pairs.sent_at), "a pair made no coincidence, or two"
    assert max(delays.values()) <= MAX_DELAY_S, summary(list(delays.values()))
    assert supervisor.restarts >= 2 * FAULTS_OF_EACH_KIND
    logs = "".join(w.log() for w in pipeline.workers)
    assert logs.count("writer lease taken") >= 2 * FAULTS_OF_EACH_KIND
    assert {m.uuid for m in pairs.messages} <= pipeline.processed_uuids()


@pytest.fixture
def sentinel_group(tmp_path: Path) -> Iterator[SentinelGroup]:
    group = start_sentinel_group(tmp_path / "redis")
    try:
        yield group
    finally:
        group.stop()


def test_redis_primary_killed_mid_stream_fails_over_and_loses_nothing(
        sentinel_group: SentinelGroup, kafka_service: localstack.Service,
        mongo_service: localstack.Service, slack: ClockedSlackApi, tmp_path: Path) -> None:
    pipeline = Pipeline(kafka=kafka_service, mongo_url=mongo_service.url,
                        broker_url=sentinel_group.url(0), state_redis_url=sentinel_group.url(1),
                        work_dir=tmp_path / "pipeline", slack_base_url=slack.base_url,
                        settings=observation_topic({"SNEWS_REDIS_SENTINEL_MASTER": MASTER_NAME},
                                                   kafka_service))
    try:
        pipeline.start_workers("notify")
        supervisor = Supervisor(pipeline)
        pipeline.wait_until(lambda: supervisor.leader() is not None, "a writer with the lease")
        ingest = start_ingest(pipeline)
        publish = publisher(kafka_service.address, pipeline.env["SNEWS_OBSERVATION_TOPIC"])
        pairs = Pairs(publish)
        stop = threading.Event()
        feeder = threading.Thread(target=pairs.run, args=(stop,), daemon=True, name="pairs")
        feeder.start()
        try:
            time.sleep(5.0)
            old_primary = sentinel_group.primary_port()
            killed_at = time.time()
            sentinel_group.redis[old_primary].process.kill()
            promoted_at = wait_for_promotion(sentinel_group, old_primary)
            time.sleep(10.0)
        finally:
            stop.set()
            feeder.join()
        sentinel_group.redis[old_primary].stop()
        sentinel_group.restart(old_primary)  # back as a replica of the promoted one
        pipeline.wait_until(
            lambda: len(pairs.delays(pipeline.alert_times())) == len(pairs.sent_at),
            "every pair alerted after the failover", timeout_s=90)
        pipeline.drain()
        supervisor.stop()
        assert ingest.process.poll() is None, ingest.tail()

        alerts = pipeline.alert_times()
        delays = pairs.delays(alerts)
        resumed = min((published for published, _ in alerts if published > killed_at),
                      default=None)
        during = [d for uuid, d in delays.items() if pairs.sent_at[uuid] >= killed_at - 1]
        print(f"\nFIGURES Redis primary SIGKILLed: replica promoted {promoted_at - killed_at:.2f} s "
              f"after the kill; first alert after the kill at {resumed - killed_at:.2f} s "
              f"({resumed - promoted_at:.2f} s after the promotion); pairs sent from 1 s before "
              f"the kill: {summary(during)}; all pairs: {summary(list(delays.values()))}")
        assert len(delays) == len(pairs.sent_at), "a pair was lost in the failover"
        news = [alert for _, alert in alerts if alert["alert_type"] == "NEW"]
        assert len({a["alert_id"] for a in news}) == len(pairs.sent_at)
        assert resumed is not None and resumed - promoted_at <= 5.0
    finally:
        pipeline.close()


def publisher(bootstrap: str, topic: str) -> Callable[[list[Message]], None]:
    """JSON observations to the observation topic, acknowledged by the broker one by one."""
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})

    def send(messages: list[Message]) -> None:
        for message in messages:
            producer.produce(topic, json.dumps(message.to_dict()).encode(),
                             headers={"_format": b"json"})
        producer.flush(10)

    return send


def wait_for_promotion(group: SentinelGroup, old_primary: int) -> float:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(RuntimeError, redis.RedisError):
            if group.primary_port() != old_primary:
                return time.time()
        time.sleep(0.05)
    raise AssertionError("no replica was promoted within 30 s")

