"""The coincidence state in Redis, read through the writer's in-memory copy.

Redis holds the state of record (keys: `redis_keys`). The serial writer keeps a
copy of it in process memory (a `MemoryStore`, time-bucketed like replay's),
tagged with the Redis version it reflects, so a step reads nothing over the
network. Its writes are applied to the copy at once and recorded as Redis
commands; the commit is one Lua script that runs them only if the version is
still the one the copy was loaded at, and bumps it. A second writer (an operator
starting two coincidence workers) makes the loser's commit refuse; it reloads
its copy from Redis and recomputes, so the state equals that of one serial
writer. A commit whose outcome is unknown (the connection dropped) also drops
the copy. The outbox entries a step stages are part of the same commit
(`outbox` hands them on afterwards).
"""

from __future__ import annotations

import json
import time
import uuid as uuidlib
from collections.abc import Callable
from typing import TypeVar

import redis

from ..core.engine import LIVE, TEST, Changes, Coincidence, Observation, Outcome
from ..core.memory_store import MemoryStore
from ..core.times import NS_PER_S
from .redis_clients import confirm_replicated, sentinel_pool
from .redis_keys import KEYS, Keys

DEFAULT_BUCKET_NS = 10 * NS_PER_S
R = TypeVar("R")

#: KEYS[1] is the version and KEYS[2] the writer lease; ARGV[1] the version the copy reflects,
#: ARGV[2] the committing writer's lease token ('' where no lease is used), ARGV[3] the new
#: version. Each further key is the first argument of one command, whose name and other
#: arguments follow in ARGV: name, count, arguments. A writer whose lease was taken over is
#: fenced; a copy that is no longer current is refused. The version is a fresh token, not a
#: counter: a failover that loses a commit can then never hand the same version to two states.
COMMIT_SCRIPT = """
if ARGV[2] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[2] then return 'fenced' end
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] then return false end
local a = 4
for k = 3, #KEYS do
  local name, n = ARGV[a], tonumber(ARGV[a + 1])
  redis.call(name, KEYS[k], unpack(ARGV, a + 2, a + 1 + n))
  a = a + 2 + n
end
redis.call('SET', KEYS[1], ARGV[3])
return ARGV[3]
"""
FENCED = "fenced"
#: How long a commit waits for a replica to have it (on one network: well under a millisecond).
REPLICA_WAIT_MS = 50
#: Lua's unpack takes a few thousand values at most: longer writes are split.
MAX_ARGS_PER_COMMAND = 1000


def _score(t_ns: int) -> float:
    return t_ns / NS_PER_S


class StateConflict(RuntimeError):
    """Another writer kept winning the race; the caller's task retries later."""


class WriterFenced(RuntimeError):
    """This writer's lease was taken over: it must commit nothing more, and stop."""


class WriteView:
    """The `StateView` a step runs on: reads from the copy, writes applied to it at once and
    recorded as the commands the commit sends."""

    def __init__(
        self, copy: MemoryStore, keys: Keys, seq: int, heartbeats: Callable[[], dict[str, dict]]
    ) -> None:
        self.copy = copy
        self.keys = keys
        self.seq = seq
        self.heartbeats = heartbeats
        self.commands: list[tuple[str, str, list]] = []
        self.outbox: dict[str, str] = {}

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
            self._command("SET", self.keys.seq, seq)
        obs_key, coinc_key = self.keys.observations(namespace), self.keys.coincidences(namespace)
        self._command(
            "ZADD",
            self.keys.processed,
            *(v for u, keep in changes.processed for v in (_score(keep), u)),
        )
        self._command("HDEL", obs_key, *(o.uuid for o in changes.removed))
        self._command(
            "HSET", obs_key, *(v for o in changes.added for v in (o.uuid, json.dumps(o.to_dict())))
        )
        put = {c.alert_id for c in changes.put_coincidences}
        self._command(
            "HDEL",
            coinc_key,
            *(c.alert_id for c in changes.removed_coincidences if c.alert_id not in put),
        )
        self._command(
            "HSET",
            coinc_key,
            *(v for c in changes.put_coincidences for v in (c.alert_id, json.dumps(c.to_dict()))),
        )

    def stage_outbox(self, key: str, entry: dict) -> None:
        """`order` keeps delivery in commit order: alerts of one id go out by revision."""
        order = [time.time(), len(self.outbox)]
        self.outbox[key] = json.dumps({**entry, "staged_at": order[0], "order": order})
        self._command("HSET", self.keys.outbox, key, self.outbox[key])

    def forget_processed(self, before_ns: int) -> None:
        self.copy.forget_processed(before_ns)
        self._command("ZREMRANGEBYSCORE", self.keys.processed, "-inf", _score(before_ns))

    def has_observations_before(self, namespace: str, before_ns: int) -> bool:
        return bool(self.copy.oldest_observations(namespace, before_ns, 1))

    def _command(self, name: str, key: str, *args: object) -> None:
        if not args:
            return
        pairs = name in ("HSET", "ZADD")  # field-value pairs must not be split
        step = MAX_ARGS_PER_COMMAND - (MAX_ARGS_PER_COMMAND % 2 if pairs else 0)
        for i in range(0, len(args), step):
            self.commands.append((name, key, list(args[i : i + step])))


class RedisState:
    """Owns the writer's copy; every state change is one `transact` call. The client must
    decode responses."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        heartbeats: Callable[[], dict[str, dict]],
        keys: Keys = KEYS,
        bucket_ns: int = DEFAULT_BUCKET_NS,
        lease_token: str = "",
    ) -> None:
        self.client = client
        self.keys = keys
        self.lease_token = lease_token  # the writer's lease; "" where no lease is used
        self.heartbeats = heartbeats
        self.bucket_ns = bucket_ns
        self._copy: MemoryStore | None = None
        self._version = ""
        self._seq = 0
        self._commit = client.register_script(COMMIT_SCRIPT)

    def transact(self, step: Callable[[WriteView], R], *, attempts: int = 100) -> R:
        """Run `step` on the copy and commit what it staged, all or nothing."""
        for _ in range(attempts):
            if self._copy is None:
                self._copy = self._load()
            copy = self._copy
            view = WriteView(copy, self.keys, self._seq, self.heartbeats)
            try:
                result = step(view)
            finally:
                if view.commands:
                    self._copy = None  # holds writes not committed yet
            if not view.commands:
                return result
            version = self._commit_commands(view)
            if version is None:
                continue  # another writer committed: reload and recompute
            self._copy, self._version, self._seq = copy, version, view.seq
            return result
        raise StateConflict(f"state changed under {attempts} attempts in a row")

    def _commit_commands(self, view: WriteView) -> str | None:
        """The new version, or None when the copy was not current; raises when fenced."""
        keys = [self.keys.version, self.keys.writer_lease]
        keys += [key for _, key, _ in view.commands]
        args: list[str | int | float] = [self._version, self.lease_token, uuidlib.uuid4().hex]
        for name, _, rest in view.commands:
            args += [name, len(rest), *rest]
        if sentinel_pool(self.client) is None:
            result = self._commit(keys=keys, args=args)
        else:  # the commit counts once a replica has it, or this server is still the primary
            with self.client.pipeline(transaction=False) as pipe:
                self._commit(keys=keys, args=args, client=pipe)
                pipe.wait(1, REPLICA_WAIT_MS)
                pipe.info("server")
                result, acked, server = pipe.execute()
            if result not in (None, FENCED):
                confirm_replicated(self.client, int(acked), server["run_id"])
        if result == FENCED:
            self._copy = None
            raise WriterFenced(f"the writer lease is no longer {self.lease_token!r}")
        return None if result is None else str(result)

    def _load(self) -> MemoryStore:
        """One consistent snapshot (MULTI/EXEC) of the state into a fresh copy."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.get(self.keys.version)
            pipe.get(self.keys.seq)
            pipe.zrange(self.keys.processed, 0, -1, withscores=True)
            for namespace in (LIVE, TEST):
                pipe.hvals(self.keys.observations(namespace))
                pipe.hvals(self.keys.coincidences(namespace))
            version, seq, processed, *hashes = pipe.execute()
        copy = MemoryStore(self.bucket_ns)
        copy.apply(
            LIVE,
            Changes(Outcome.LOADED, processed=[(u, round(s * NS_PER_S)) for u, s in processed]),
        )
        for namespace, (observations, coincidences) in zip(
            (LIVE, TEST), zip(hashes[::2], hashes[1::2], strict=True), strict=True
        ):
            copy.apply(
                namespace,
                Changes(
                    Outcome.LOADED,
                    added=[Observation.from_dict(json.loads(r)) for r in observations],
                    put_coincidences=[Coincidence.from_dict(json.loads(r)) for r in coincidences],
                ),
            )
        self._version, self._seq = version or "", int(seq or 0)
        return copy

    # -- inspection -------------------------------------------------------------------------------

    def coincidences(self, namespace: str) -> list[Coincidence]:
        raws = self.client.hvals(self.keys.coincidences(namespace))
        found = [Coincidence.from_dict(json.loads(r)) for r in raws]
        return sorted(found, key=lambda c: (c.start_ns, c.alert_id))

    def observations(self, namespace: str) -> list[Observation]:
        raws = self.client.hvals(self.keys.observations(namespace))
        return sorted(
            (Observation.from_dict(json.loads(r)) for r in raws), key=lambda o: (o.t_ns, o.detector)
        )
