"""The coincidence state in Redis, read through the writer's in-memory copy.

Redis holds the state of record. The serial writer keeps a copy of it in
process memory (a `MemoryStore`, time-bucketed like replay's), tagged with the
Redis version it reflects, so a step reads nothing over the network. Its
writes are applied to the copy at once and recorded as Redis commands; the
commit is one Lua script that runs them only if the version is still the one
the copy was loaded at, and bumps it. A second writer (an operator starting
two coincidence workers) makes the loser's commit refuse; it reloads its copy
from Redis and recomputes, so the state equals that of one serial writer. A
commit whose outcome is unknown (the connection dropped) also drops the copy.

Layout (P = key prefix, N = namespace live|test):
  P:version            bumped by every commit (the optimistic lock)
  P:seq                arrival counter (retract_latest_n, creation order)
  P:processed          zset uuid -> keep-until (s): duplicates change nothing
  P:N:obs              hash uuid -> observation JSON
  P:N:coinc            hash id -> coincidence JSON
  P:outbox             hash key -> delivery JSON, until every delivery task has finished
  P:outbox:sent        zset key -> when its deliveries were handed to the queues (s)
  P:outbox:wait:KEY    set of the delivery tasks of KEY that have not finished yet
  P:outbox:retry       hash "KEY|task" -> until when (s) that task waits for its retry
  P:receipt:ID         a task sent with receipt ID has started (expires after a day)
  P:detectors          hash detector -> last heartbeat JSON
"""

from __future__ import annotations

import json
import time
import uuid as uuidlib
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

import redis

from .coincidence import LIVE, TEST, Changes, Coincidence, Observation
from .memory_store import MemoryStore

NS_PER_S = 1_000_000_000
DEFAULT_BUCKET_NS = 10 * NS_PER_S
RECEIPT_TTL_S = 86_400
#: Message headers of tasks whose start is recorded (see tasks/receipts.py).
RECEIPT_HEADER = "snews_receipt"
OUTBOX_HEADER = "snews_outbox"
#: An ingest task not started this long after its send, with its queue empty, was lost.
RESEND_AFTER_S = 10.0
#: A delivery not finished this long after its hand-on, with its queue empty and no retry
#: due, was lost (on its way, or with its worker); longer than one attempt may take.
DELIVERY_RESEND_AFTER_S = 30.0
#: How long past its due time a retry may take to start before it counts as lost.
RETRY_GRACE_S = 30.0
R = TypeVar("R")

#: KEYS[1] is the version; each further key is the first argument of one command, whose name
#: and other arguments come from ARGV after the expected version: name, count, arguments.
COMMIT_SCRIPT = """
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] then return false end
local a = 2
for k = 2, #KEYS do
  local name, n = ARGV[a], tonumber(ARGV[a + 1])
  redis.call(name, KEYS[k], unpack(ARGV, a + 2, a + 1 + n))
  a = a + 2 + n
end
return redis.call('INCR', KEYS[1])
"""
#: One delivery task has finished: KEYS = wait set, sent zset, outbox, retries;
#: ARGV = task, entry key.
DELIVERY_DONE_SCRIPT = """
redis.call('SREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[2] .. '|' .. ARGV[1])
if redis.call('SCARD', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[2])
  redis.call('HDEL', KEYS[3], ARGV[2])
end
return 1
"""
#: Lua's unpack takes a few thousand values at most: longer writes are split.
MAX_ARGS_PER_COMMAND = 1000


def _score(t_ns: int) -> float:
    return t_ns / NS_PER_S


class StateConflict(RuntimeError):
    """Another writer kept winning the race; the caller's task retries later."""


class WriteView:
    """The `StateView` a step runs on: reads from the copy, writes applied to it at once and
    recorded as the commands the commit sends."""

    def __init__(self, copy: MemoryStore, prefix: str, seq: int,
                 heartbeats: Callable[[], dict[str, dict]]) -> None:
        self.copy = copy
        self.prefix = prefix
        self.seq = seq
        self.heartbeats = heartbeats
        self.commands: list[tuple[str, str, list]] = []
        self.outbox: dict[str, str] = {}

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    # -- StateView ------------------------------------------------------------------------------

    def is_processed(self, uuid: str) -> bool:
        return self.copy.is_processed(uuid)

    def observations_between(self, namespace: str, lo_ns: int, hi_ns: int) -> list[Observation]:
        return self.copy.observations_between(namespace, lo_ns, hi_ns)

    def observation(self, namespace: str, uuid: str) -> Observation | None:
        return self.copy.observation(namespace, uuid)

    def latest_of_detector(self, namespace: str, detector: str, n: int) -> list[Observation]:
        return self.copy.latest_of_detector(namespace, detector, n)

    def oldest_observations(self, namespace: str, before_ns: int, limit: int) -> list[Observation]:
        return self.copy.oldest_observations(namespace, before_ns, limit)

    def coincidences_starting_between(
        self, namespace: str, lo_ns: int, hi_ns: int
    ) -> list[Coincidence]:
        return self.copy.coincidences_starting_between(namespace, lo_ns, hi_ns)

    # -- what a step needs besides the cache ----------------------------------------------------

    def next_seq(self) -> int:
        """The arrival number for the message being applied; it is taken only when `stage` is
        given it, so a duplicate, which changes nothing, takes none."""
        return self.seq + 1

    @staticmethod
    def new_id() -> str:
        return str(uuidlib.uuid4())

    # -- staging ----------------------------------------------------------------------------------

    def stage(self, namespace: str, changes: Changes, *, seq: int | None = None) -> None:
        self.copy.apply(namespace, changes)
        if seq is not None:
            self.seq = seq
            self._command("SET", self.key("seq"), seq)
        obs_key, coinc_key = self.key(namespace, "obs"), self.key(namespace, "coinc")
        self._command("ZADD", self.key("processed"),
                      *(v for u, keep in changes.processed for v in (_score(keep), u)))
        self._command("HDEL", obs_key, *(o.uuid for o in changes.removed))
        self._command("HSET", obs_key,
                      *(v for o in changes.added for v in (o.uuid, json.dumps(o.to_dict()))))
        put = {c.alert_id for c in changes.put_coincidences}
        self._command("HDEL", coinc_key,
                      *(c.alert_id for c in changes.removed_coincidences if c.alert_id not in put))
        self._command("HSET", coinc_key, *(v for c in changes.put_coincidences
                                           for v in (c.alert_id, json.dumps(c.to_dict()))))

    def stage_outbox(self, key: str, entry: dict) -> None:
        """`order` keeps delivery in commit order: alerts of one id go out by revision."""
        order = [time.time(), len(self.outbox)]
        self.outbox[key] = json.dumps({**entry, "staged_at": order[0], "order": order})
        self._command("HSET", self.key("outbox"), key, self.outbox[key])

    def forget_processed(self, before_ns: int) -> None:
        self.copy.forget_processed(before_ns)
        self._command("ZREMRANGEBYSCORE", self.key("processed"), "-inf", _score(before_ns))

    def has_observations_before(self, namespace: str, before_ns: int) -> bool:
        return bool(self.copy.oldest_observations(namespace, before_ns, 1))

    def _command(self, name: str, key: str, *args: object) -> None:
        if not args:
            return
        pairs = name in ("HSET", "ZADD")  # field-value pairs must not be split
        step = MAX_ARGS_PER_COMMAND - (MAX_ARGS_PER_COMMAND % 2 if pairs else 0)
        for i in range(0, len(args), step):
            self.commands.append((name, key, list(args[i:i + step])))


class RedisStore:
    """Owns the client and the writer's copy; every state change is one `transact` call."""

    def __init__(self, client: redis.Redis, prefix: str = "snews", *,
                 bucket_ns: int = DEFAULT_BUCKET_NS) -> None:
        self.client = client
        self.prefix = prefix
        self.bucket_ns = bucket_ns
        self._copy: MemoryStore | None = None
        self._version = ""
        self._seq = 0
        self._commit = client.register_script(COMMIT_SCRIPT)
        self._delivery_done = client.register_script(DELIVERY_DONE_SCRIPT)

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def transact(self, step: Callable[[WriteView], R], *, attempts: int = 100) -> R:
        """Run `step` on the copy and commit what it staged, all or nothing."""
        for _ in range(attempts):
            if self._copy is None:
                self._copy = self._load()
            copy = self._copy
            view = WriteView(copy, self.prefix, self._seq, self.heartbeats)
            try:
                result = step(view)
            finally:
                if view.commands:
                    self._copy = None  # holds writes not committed yet
            if not view.commands:
                return result
            keys = [self.key("version")] + [key for _, key, _ in view.commands]
            args: list[object] = [self._version]
            for name, _, rest in view.commands:
                args += [name, len(rest), *rest]
            version = self._commit(keys=keys, args=args)
            if version is None:
                continue  # another writer committed: reload and recompute
            self._copy, self._version, self._seq = copy, str(version), view.seq
            return result
        raise StateConflict(f"state changed under {attempts} attempts in a row")

    def _load(self) -> MemoryStore:
        """One consistent snapshot (MULTI/EXEC) of the state into a fresh copy."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.get(self.key("version"))
            pipe.get(self.key("seq"))
            pipe.zrange(self.key("processed"), 0, -1, withscores=True)
            for namespace in (LIVE, TEST):
                pipe.hvals(self.key(namespace, "obs"))
                pipe.hvals(self.key(namespace, "coinc"))
            version, seq, processed, *hashes = pipe.execute()
        copy = MemoryStore(self.bucket_ns)
        copy.apply(LIVE, Changes("loaded", processed=[(u, round(s * NS_PER_S))
                                                      for u, s in processed]))
        for namespace, (observations, coincidences) in zip(
                (LIVE, TEST), zip(hashes[::2], hashes[1::2], strict=True), strict=True):
            copy.apply(namespace, Changes(
                "loaded", added=[Observation.from_dict(json.loads(r)) for r in observations],
                put_coincidences=[Coincidence.from_dict(json.loads(r)) for r in coincidences]))
        self._version, self._seq = version or "", int(seq or 0)
        return copy

    def heartbeats(self) -> dict[str, dict]:
        return {d: json.loads(v) for d, v in self.client.hgetall(self.key("detectors")).items()}

    # -- outbox -----------------------------------------------------------------------------------

    def outbox(self, *, older_than_s: float = 0.0) -> dict[str, dict]:
        """Entries not yet handed on; a sweep passes an age so it leaves fresh ones to their task."""
        cutoff = time.time() - older_than_s
        entries = {k: json.loads(v) for k, v in self.client.hgetall(self.key("outbox")).items()}
        sent = set(self.client.zrange(self.key("outbox", "sent"), 0, -1))
        return dict(sorted(((k, e) for k, e in entries.items()
                            if k not in sent and e["staged_at"] <= cutoff),
                           key=lambda item: item[1]["order"]))

    def handing_on(self, deliveries: Mapping[str, Iterable[str]]) -> None:
        """Record, before the tasks are sent, which tasks each entry waits for: a task may start
        before the send returns, and its start must find its name to remove."""
        now = time.time()
        with self.client.pipeline(transaction=True) as pipe:
            for key, tasks in deliveries.items():
                wait = self.key("outbox", "wait", key)
                pipe.delete(wait)
                tasks = list(tasks)
                if tasks:
                    pipe.sadd(wait, *tasks)
                    pipe.zadd(self.key("outbox", "sent"), {key: now})
                else:
                    pipe.hdel(self.key("outbox"), key)
            pipe.execute()

    def not_handed_on(self, keys: Iterable[str]) -> None:
        """Undo `handing_on` when the sends failed: the entries wait to be handed on again."""
        keys = list(keys)
        with self.client.pipeline(transaction=True) as pipe:
            pipe.zrem(self.key("outbox", "sent"), *keys)
            pipe.delete(*(self.key("outbox", "wait", key) for key in keys))
            pipe.execute()

    def deliveries_done(self, entry_keys: Iterable[str], task: str) -> None:
        """A delivery task has finished: delivered, or its failure recorded for an operator.
        An entry goes when its last one has."""
        with self.client.pipeline(transaction=False) as pipe:
            for key in entry_keys:
                self._delivery_done(keys=[self.key("outbox", "wait", key),
                                          self.key("outbox", "sent"), self.key("outbox"),
                                          self.key("outbox", "retry")],
                                    args=[task, key], client=pipe)
            pipe.execute()

    def deliveries_retrying(self, entry_keys: Iterable[str], task: str, due_s: float) -> None:
        """The task retries in `due_s`: meanwhile its queue is empty and it is not lost."""
        until = time.time() + due_s + RETRY_GRACE_S
        mapping = {f"{key}|{task}": until for key in entry_keys}
        if mapping:
            self.client.hset(self.key("outbox", "retry"), mapping=mapping)

    def unfinished(self, *, older_than_s: float) -> dict[str, tuple[dict, list[str]]]:
        """Entries handed on long ago whose delivery tasks have not finished and wait for no
        retry: each with the names of those tasks."""
        keys = self.client.zrangebyscore(self.key("outbox", "sent"), "-inf",
                                         time.time() - older_than_s)
        if not keys:
            return {}
        with self.client.pipeline(transaction=False) as pipe:
            pipe.hmget(self.key("outbox"), keys)
            pipe.hgetall(self.key("outbox", "retry"))
            for key in keys:
                pipe.smembers(self.key("outbox", "wait", key))
            raws, retries, *waits = pipe.execute()
        now = time.time()
        found = {}
        for key, raw, wait in zip(keys, raws, waits, strict=True):
            tasks = sorted(t for t in wait if float(retries.get(f"{key}|{t}", 0)) <= now)
            if raw and tasks:
                found[key] = (json.loads(raw), tasks)
        return found

    # -- receipts ---------------------------------------------------------------------------------

    def mark_received(self, receipt: str) -> None:
        self.client.set(self.key("receipt", receipt), "1", ex=RECEIPT_TTL_S)

    def received(self, receipts: list[str]) -> list[bool]:
        if not receipts:
            return []
        return [v is not None for v in self.client.mget([self.key("receipt", r)
                                                         for r in receipts])]

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

    # -- inspection -------------------------------------------------------------------------------

    def coincidences(self, namespace: str) -> list[Coincidence]:
        raws = self.client.hvals(self.key(namespace, "coinc"))
        found = [Coincidence.from_dict(json.loads(r)) for r in raws]
        return sorted(found, key=lambda c: (c.start_ns, c.alert_id))

    def observations(self, namespace: str) -> list[Observation]:
        raws = self.client.hvals(self.key(namespace, "obs"))
        return sorted((Observation.from_dict(json.loads(r)) for r in raws),
                      key=lambda o: (o.t_ns, o.detector))
