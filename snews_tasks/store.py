"""The coincidence state in Redis: time indexes, atomic commits, the outbox.

Every state change runs through `RedisStore.transact`: it WATCHes one version
key, reads what the engine asks for, and commits the engine's `Changes`, the
outbox entries and a version bump in one MULTI/EXEC. A second writer (an
operator starting two coincidence workers) makes the loser's EXEC fail; it
re-reads and recomputes, so the state equals that of one serial writer.

Layout (P = key prefix, N = namespace live|test):
  P:version                 bumped by every commit (the optimistic lock)
  P:seq                     arrival counter (retract_latest_n, creation order)
  P:processed               zset uuid -> keep-until (s): duplicates change nothing
  P:N:obs / P:N:obs:t       hash uuid -> observation JSON / zset uuid -> neutrino time (s)
  P:N:det:D                 zset uuid -> seq, one per detector
  P:N:coinc / P:N:coinc:t   hash id -> coincidence JSON / zset id -> initial time (s)
  P:outbox                  hash key -> delivery JSON, removed once handed to the queues
  P:detectors               hash detector -> last heartbeat JSON
Scores are float seconds, precise to about a microsecond, so range reads are
widened by a millisecond and filtered again on the exact integer nanoseconds.
"""

from __future__ import annotations

import json
import time
import uuid as uuidlib
from collections.abc import Callable, Iterable
from typing import TypeVar

import redis

from .coincidence import Changes, Coincidence, Observation

NS_PER_S = 1_000_000_000
SLACK_NS = 1_000_000
R = TypeVar("R")


def _score(t_ns: int) -> float:
    return t_ns / NS_PER_S


class StateConflict(RuntimeError):
    """Another writer kept winning the race; the caller's task retries later."""


class RedisView:
    """A `StateView` reading through a WATCHed pipeline, staging writes for the commit."""

    def __init__(self, pipe: redis.client.Pipeline, prefix: str) -> None:
        self.pipe = pipe
        self.prefix = prefix
        self.commits: list[tuple[str, Changes]] = []
        self.outbox: dict[str, str] = {}
        self._seq: int | None = None

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    # -- StateView ------------------------------------------------------------------------------

    def is_processed(self, uuid: str) -> bool:
        return self.pipe.zscore(self.key("processed"), uuid) is not None

    def observations_between(self, namespace: str, lo_ns: int, hi_ns: int) -> list[Observation]:
        uuids = self.pipe.zrangebyscore(self.key(namespace, "obs:t"),
                                        _score(lo_ns - SLACK_NS), _score(hi_ns + SLACK_NS))
        return [o for o in self._observations(namespace, uuids) if lo_ns <= o.t_ns <= hi_ns]

    def observation(self, namespace: str, uuid: str) -> Observation | None:
        found = self._observations(namespace, [uuid])
        return found[0] if found else None

    def latest_of_detector(self, namespace: str, detector: str, n: int) -> list[Observation]:
        uuids = self.pipe.zrevrange(self.key(namespace, "det", detector), 0, n - 1)
        return self._observations(namespace, uuids)

    def oldest_observations(self, namespace: str, before_ns: int, limit: int) -> list[Observation]:
        uuids = self.pipe.zrangebyscore(self.key(namespace, "obs:t"), "-inf",
                                        _score(before_ns + SLACK_NS), start=0, num=limit)
        return [o for o in self._observations(namespace, uuids) if o.t_ns < before_ns]

    def coincidences_starting_between(
        self, namespace: str, lo_ns: int, hi_ns: int
    ) -> list[Coincidence]:
        ids = self.pipe.zrangebyscore(self.key(namespace, "coinc:t"),
                                      _score(lo_ns - SLACK_NS), _score(hi_ns + SLACK_NS))
        if not ids:
            return []
        found = [Coincidence.from_dict(json.loads(raw))
                 for raw in self.pipe.hmget(self.key(namespace, "coinc"), ids) if raw]
        return [c for c in found if lo_ns <= c.start_ns <= hi_ns]

    # -- what a step needs besides the cache ----------------------------------------------------

    def next_seq(self) -> int:
        if self._seq is None:
            self._seq = int(self.pipe.get(self.key("seq")) or 0)
        self._seq += 1
        return self._seq

    @staticmethod
    def new_id() -> str:
        return str(uuidlib.uuid4())

    def heartbeats(self) -> dict[str, dict]:
        return {d: json.loads(v) for d, v in self.pipe.hgetall(self.key("detectors")).items()}

    # -- staging ----------------------------------------------------------------------------------

    def stage(self, namespace: str, changes: Changes) -> None:
        self.commits.append((namespace, changes))

    def stage_outbox(self, key: str, entry: dict) -> None:
        """`order` keeps delivery in commit order: alerts of one id go out by revision."""
        order = [time.time(), len(self.outbox)]
        self.outbox[key] = json.dumps({**entry, "staged_at": order[0], "order": order})

    def _observations(self, namespace: str, uuids: Iterable[str]) -> list[Observation]:
        uuids = list(uuids)
        if not uuids:
            return []
        raws = self.pipe.hmget(self.key(namespace, "obs"), uuids)
        return [Observation.from_dict(json.loads(raw)) for raw in raws if raw]

    def write(self) -> None:
        """Queue every staged write on the pipeline, which is in MULTI mode by now."""
        pipe = self.pipe
        for namespace, changes in self.commits:
            obs_key, time_key = self.key(namespace, "obs"), self.key(namespace, "obs:t")
            for u, keep_until in changes.processed:
                pipe.zadd(self.key("processed"), {u: _score(keep_until)})
            for o in changes.removed:
                pipe.hdel(obs_key, o.uuid)
                pipe.zrem(time_key, o.uuid)
                pipe.zrem(self.key(namespace, "det", o.detector), o.uuid)
            for o in changes.added:
                pipe.hset(obs_key, o.uuid, json.dumps(o.to_dict()))
                pipe.zadd(time_key, {o.uuid: _score(o.t_ns)})
                pipe.zadd(self.key(namespace, "det", o.detector), {o.uuid: o.seq})
            coinc_key, start_key = self.key(namespace, "coinc"), self.key(namespace, "coinc:t")
            for c in changes.removed_coincidences:
                pipe.hdel(coinc_key, c.alert_id)
                pipe.zrem(start_key, c.alert_id)
            for c in changes.put_coincidences:
                pipe.hset(coinc_key, c.alert_id, json.dumps(c.to_dict()))
                pipe.zadd(start_key, {c.alert_id: _score(c.start_ns)})
        if self._seq is not None:
            pipe.set(self.key("seq"), self._seq)
        if self.outbox:
            pipe.hset(self.key("outbox"), mapping=self.outbox)
        pipe.incr(self.key("version"))


class RedisStore:
    """Owns the client; every state change is one `transact` call."""

    def __init__(self, client: redis.Redis, prefix: str = "snews") -> None:
        self.client = client
        self.prefix = prefix

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def transact(self, step: Callable[[RedisView], R], *, attempts: int = 100) -> R:
        """Run `step` on a consistent view and commit what it staged, all or nothing."""
        for _ in range(attempts):
            with self.client.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(self.key("version"))
                    view = RedisView(pipe, self.prefix)
                    result = step(view)
                    if not view.commits and not view.outbox:
                        pipe.unwatch()
                        return result
                    pipe.multi()
                    view.write()
                    pipe.execute()
                    return result
                except redis.WatchError:
                    continue
        raise StateConflict(f"state changed under {attempts} attempts in a row")

    # -- outbox -----------------------------------------------------------------------------------

    def outbox(self, *, older_than_s: float = 0.0) -> dict[str, dict]:
        """Entries not yet handed on; a sweep passes an age so it leaves fresh ones to their task."""
        cutoff = time.time() - older_than_s
        entries = {k: json.loads(v) for k, v in self.client.hgetall(self.key("outbox")).items()}
        return dict(sorted(((k, e) for k, e in entries.items() if e["staged_at"] <= cutoff),
                           key=lambda item: item[1]["order"]))

    def outbox_done(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        if keys:
            self.client.hdel(self.key("outbox"), *keys)

    # -- detector status ------------------------------------------------------------------------

    def record_heartbeat(self, detector: str, status: str, seen_ns: int) -> None:
        """Keep only the newest heartbeat: redeliveries and reordering never roll it back."""
        key = self.key("detectors")
        with self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(key)
                    current = pipe.hget(key, detector)
                    if current and json.loads(current)["seen_ns"] >= seen_ns:
                        pipe.unwatch()
                        return
                    pipe.multi()
                    pipe.hset(key, detector, json.dumps({"status": status, "seen_ns": seen_ns}))
                    pipe.execute()
                    return
                except redis.WatchError:
                    continue

    def has_observations_before(self, namespace: str, before_ns: int) -> bool:
        """One read outside any transaction, so a writer skips expiry when nothing is due; it
        may say yes for an observation up to a millisecond later, never no for an earlier one."""
        return bool(self.client.zrangebyscore(self.key(namespace, "obs:t"), "-inf",
                                              _score(before_ns + SLACK_NS), start=0, num=1))

    def forget_processed(self, before_ns: int) -> int:
        return self.client.zremrangebyscore(self.key("processed"), "-inf", _score(before_ns))

    # -- inspection -------------------------------------------------------------------------------

    def coincidences(self, namespace: str) -> list[Coincidence]:
        raws = self.client.hvals(self.key(namespace, "coinc"))
        found = [Coincidence.from_dict(json.loads(r)) for r in raws]
        return sorted(found, key=lambda c: (c.start_ns, c.alert_id))

    def observations(self, namespace: str) -> list[Observation]:
        raws = self.client.hvals(self.key(namespace, "obs"))
        return sorted((Observation.from_dict(json.loads(r)) for r in raws),
                      key=lambda o: (o.t_ns, o.detector))
