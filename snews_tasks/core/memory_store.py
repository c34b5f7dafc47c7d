"""The coincidence state in process memory: offline replay and unit tests.

It answers the same reads as the Redis store, from time buckets one threshold
wide, so a step's cost stays flat however many observations are cached.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from itertools import count

from .engine import Changes, Coincidence, Observation


class MemoryStore:
    """A `StateView` with an `apply` that commits `Changes` in place."""

    def __init__(self, bucket_ns: int) -> None:
        self.bucket_ns = bucket_ns
        self._obs: dict[str, dict[str, Observation]] = defaultdict(dict)
        self._obs_buckets: dict[str, dict[int, dict[str, Observation]]] = defaultdict(
            lambda: defaultdict(dict)
        )
        self._by_detector: dict[tuple[str, str], dict[str, Observation]] = defaultdict(dict)
        self._by_age: dict[str, list[tuple[int, str]]] = defaultdict(list)
        self._coincidences: dict[str, dict[str, Coincidence]] = defaultdict(dict)
        self._coincidence_buckets: dict[str, dict[int, dict[str, Coincidence]]] = defaultdict(
            lambda: defaultdict(dict)
        )
        self._processed: dict[str, int] = {}
        self._processed_by_age: list[tuple[int, str]] = []
        self._seq = count(1)
        self._ids = count(1)

    # -- counters -------------------------------------------------------------------------------

    def next_seq(self) -> int:
        return next(self._seq)

    def new_id(self) -> str:
        return f"C{next(self._ids):06d}"

    # -- StateView ------------------------------------------------------------------------------

    def is_processed(self, uuid: str) -> bool:
        return uuid in self._processed

    def observations_between(self, namespace: str, lo_ns: int, hi_ns: int) -> list[Observation]:
        buckets = self._obs_buckets[namespace]
        return [
            o
            for b in range(lo_ns // self.bucket_ns, hi_ns // self.bucket_ns + 1)
            if b in buckets
            for o in buckets[b].values()
            if lo_ns <= o.t_ns <= hi_ns
        ]

    def observation(self, namespace: str, uuid: str) -> Observation | None:
        return self._obs[namespace].get(uuid)

    def latest_of_detector(self, namespace: str, detector: str, n: int) -> list[Observation]:
        mine = self._by_detector[(namespace, detector)].values()
        return sorted(mine, key=lambda o: o.seq, reverse=True)[:n]

    def oldest_observations(self, namespace: str, before_ns: int, limit: int) -> list[Observation]:
        heap, live = self._by_age[namespace], self._obs[namespace]
        found: list[Observation] = []
        while heap and len(found) < limit and heap[0][0] < before_ns:
            _, uuid = heapq.heappop(heap)
            if uuid in live:
                found.append(live[uuid])
        for o in found:  # the view stays read-only: `apply` does the removal
            heapq.heappush(heap, (o.t_ns, o.uuid))
        return found

    def coincidences_starting_between(
        self, namespace: str, lo_ns: int, hi_ns: int
    ) -> list[Coincidence]:
        buckets = self._coincidence_buckets[namespace]
        return [
            c
            for b in range(lo_ns // self.bucket_ns, hi_ns // self.bucket_ns + 1)
            if b in buckets
            for c in buckets[b].values()
            if lo_ns <= c.start_ns <= hi_ns
        ]

    # -- commit ---------------------------------------------------------------------------------

    def apply(self, namespace: str, changes: Changes) -> None:
        for uuid, keep_until in changes.processed:
            self._processed[uuid] = keep_until
            heapq.heappush(self._processed_by_age, (keep_until, uuid))
        for o in changes.removed:
            self._obs[namespace].pop(o.uuid, None)
            self._pop_bucket(self._obs_buckets[namespace], o.t_ns, o.uuid)
            self._by_detector[(namespace, o.detector)].pop(o.uuid, None)
        for o in changes.added:
            self._obs[namespace][o.uuid] = o
            self._obs_buckets[namespace][o.t_ns // self.bucket_ns][o.uuid] = o
            self._by_detector[(namespace, o.detector)][o.uuid] = o
            heapq.heappush(self._by_age[namespace], (o.t_ns, o.uuid))
        for c in changes.removed_coincidences + changes.put_coincidences:
            old = self._coincidences[namespace].pop(c.alert_id, None)
            if old is not None:
                self._pop_bucket(self._coincidence_buckets[namespace], old.start_ns, c.alert_id)
        for c in changes.put_coincidences:
            self._coincidences[namespace][c.alert_id] = c
            self._coincidence_buckets[namespace][c.start_ns // self.bucket_ns][c.alert_id] = c

    def forget_processed(self, before_ns: int) -> None:
        """Duplicate detection need not outlive the cache: older messages are rejected as stale."""
        heap = self._processed_by_age
        while heap and heap[0][0] < before_ns:
            keep_until, uuid = heapq.heappop(heap)
            if self._processed.get(uuid) == keep_until:
                del self._processed[uuid]

    def _pop_bucket(self, buckets: dict[int, dict], t_ns: int, key: str) -> None:
        b = t_ns // self.bucket_ns
        bucket = buckets.get(b)
        if bucket is not None:
            bucket.pop(key, None)
            if not bucket:
                del buckets[b]

    # -- inspection -----------------------------------------------------------------------------

    def observations(self, namespace: str) -> list[Observation]:
        return list(self._obs[namespace].values())

    def coincidences(self, namespace: str) -> list[Coincidence]:
        return sorted(
            self._coincidences[namespace].values(), key=lambda c: (c.start_ns, c.alert_id)
        )

    def namespaces(self) -> list[str]:
        return sorted(set(self._obs) | set(self._coincidences))
