"""The coincidence engine: SPEC section 3 as pure functions over a read-only view.

The engine performs no I/O. Adapters (the in-memory replay store, the Redis
store) answer the few range reads of `StateView`, and commit the returned
`Changes` atomically. A step only reads the observations and coincidences
within a few thresholds of what changed, so its cost does not depend on the
size of the cache.

Why the locality bound holds: a window starts at an observation time s and
covers [s, s + T]. A change at time c alters the content of windows starting
in [c - T, c] and can only alter the maximality of windows starting in
(c, c + T] (a window at c may swallow them, or stop swallowing them). Deciding
whether a window starting at s is maximal needs the observations in
[s - T, s + T]. So for changed times in [lo, hi], every sublist that can
change starts in [lo - T, hi + T], and reading [lo - 2T, hi + 2T] is enough.
A coincidence that stops being maximal is withdrawn into the sublist that now
holds what is left of it; that one may start up to T earlier still, so the
step compares the sublists starting in [lo - 2T, hi + T] and reads
[lo - 3T, hi + 2T].
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Protocol

from .messages import Message, MessageError, Tier

LIVE = "live"
TEST = "test"
NEW = "NEW"
UPDATE = "UPDATE"
RETRACTION = "RETRACTION"


def namespace_of(is_test: bool) -> str:
    """Test and real observations never mix: each has its own cache."""
    return TEST if is_test else LIVE


@dataclass(frozen=True, slots=True)
class Observation:
    """A cached CoincidenceTier observation: just what coincidences and alerts need."""

    uuid: str
    detector: str
    t_ns: int
    neutrino_time_utc: str
    p_val: float | None
    seq: int
    is_firedrill: bool = False
    is_canary: bool = False

    @property
    def content(self) -> tuple[str, int, float | None]:
        """What a reader of an alert sees; a supersede that keeps it sends nothing."""
        return (self.detector, self.t_ns, self.p_val)

    def to_dict(self) -> dict:
        return {
            "uuid": self.uuid,
            "detector": self.detector,
            "t_ns": self.t_ns,
            "neutrino_time_utc": self.neutrino_time_utc,
            "p_val": self.p_val,
            "seq": self.seq,
            "is_firedrill": self.is_firedrill,
            "is_canary": self.is_canary,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Observation:
        return cls(**data)


def _order(obs: Observation) -> tuple[int, str, str]:
    return (obs.t_ns, obs.detector, obs.uuid)


#: What a localization depends on: each member's detector and neutrino time, in time order.
MembersKey = tuple[tuple[int, str], ...]


def members_key(times_and_detectors: Iterable[tuple[int, str]]) -> MembersKey:
    """The key of a member set for localization; a p-value change keeps it."""
    return tuple(sorted(times_and_detectors))


@dataclass(frozen=True, slots=True)
class Coincidence:
    """A sublist with two or more detectors, under a stable id.

    `localization` is the alert's localization summary, once the localize task's result was
    attached; it is carried to later revisions while the members' detectors and times stay
    the same, and dropped when they change (the new members are localized anew).
    """

    alert_id: str
    namespace: str
    revision: int
    members: tuple[Observation, ...]
    created: int  # creation order: the older id survives a merge
    localization: dict | None = field(default=None, hash=False)

    @property
    def start_ns(self) -> int:
        return self.members[0].t_ns

    @property
    def uuids(self) -> frozenset[str]:
        return frozenset(m.uuid for m in self.members)

    @property
    def content(self) -> frozenset[tuple[str, int, float | None]]:
        return frozenset(m.content for m in self.members)

    @property
    def key(self) -> MembersKey:
        return members_key((m.t_ns, m.detector) for m in self.members)

    def with_members(self, members: tuple[Observation, ...], *, revision: int = 0) -> Coincidence:
        """This coincidence with other members (and a revision, if given): its localization
        only while the key holds."""
        same = members_key((m.t_ns, m.detector) for m in members) == self.key
        return replace(
            self,
            members=members,
            revision=revision or self.revision,
            localization=self.localization if same else None,
        )

    def to_dict(self) -> dict:
        return {
            "alert_id": self.alert_id,
            "namespace": self.namespace,
            "revision": self.revision,
            "members": [m.to_dict() for m in self.members],
            "created": self.created,
            "localization": self.localization,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Coincidence:
        members = tuple(Observation.from_dict(m) for m in data["members"])
        return cls(
            data["alert_id"],
            data["namespace"],
            data["revision"],
            members,
            data["created"],
            data.get("localization"),
        )


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """One alert to send: the coincidence as it stands after the change."""

    alert_type: str
    coincidence: Coincidence
    reason: str
    merged_into: str | None = None


class Outcome(StrEnum):
    """What a step did with its message."""

    ADDED = "added"
    SUPERSEDED = "superseded"
    DUPLICATE = "duplicate"
    RETRACTED = "retracted"
    MATCHED_NOTHING = "retraction matched nothing"
    EXPIRED = "expired"
    LOADED = "loaded"  # a store's state read back, not a message
    LOCALIZED = "localized"
    LOCALIZATION_DROPPED = "localization dropped: the members have changed since"


@dataclass
class Changes:
    """Everything a step changes; adapters commit it all or nothing."""

    outcome: Outcome
    count: int = 0  # observations superseded, retracted or expired
    processed: list[tuple[str, int]] = field(default_factory=list)  # (uuid, keep until ns)
    added: list[Observation] = field(default_factory=list)
    removed: list[Observation] = field(default_factory=list)
    put_coincidences: list[Coincidence] = field(default_factory=list)
    removed_coincidences: list[Coincidence] = field(default_factory=list)
    events: list[AlertEvent] = field(default_factory=list)

    def describe(self) -> str:
        """The outcome as the archive and the logs show it, e.g. "superseded 2"."""
        return f"{self.outcome} {self.count}" if self.outcome in _COUNTED else str(self.outcome)

    def extend(self, other: Changes) -> None:
        self.added += other.added
        self.removed += other.removed
        self.put_coincidences += other.put_coincidences
        self.removed_coincidences += other.removed_coincidences
        self.events += other.events


_COUNTED = frozenset({Outcome.SUPERSEDED, Outcome.RETRACTED, Outcome.EXPIRED})


class StateView(Protocol):
    """The reads a step needs. Ranges are inclusive, in integer nanoseconds."""

    def is_processed(self, uuid: str) -> bool: ...

    def observations_between(self, namespace: str, lo_ns: int, hi_ns: int) -> list[Observation]: ...

    def observation(self, namespace: str, uuid: str) -> Observation | None: ...

    def latest_of_detector(self, namespace: str, detector: str, n: int) -> list[Observation]: ...

    def oldest_observations(
        self, namespace: str, before_ns: int, limit: int
    ) -> list[Observation]: ...

    def coincidences_starting_between(
        self, namespace: str, lo_ns: int, hi_ns: int
    ) -> list[Coincidence]: ...


NewId = Callable[[], str]


def maximal_windows(
    observations: Sequence[Observation], threshold_ns: int, start_lo: int, start_hi: int
) -> list[tuple[Observation, ...]]:
    """The sublists of SPEC section 3 whose initial time lies in [start_lo, start_hi].

    `observations` must be sorted by time and hold every observation in
    [start_lo - T, start_hi + T]. Windows are index ranges of the sorted list;
    the window of a start time is maximal exactly when it reaches further than
    the window of the previous distinct start time.
    """
    times = [o.t_ns for o in observations]
    result: list[tuple[Observation, ...]] = []
    previous_end = -1
    i = 0
    while i < len(times):
        start = times[i]
        end = bisect.bisect_right(times, start + threshold_ns)
        if end > previous_end and start_lo <= start <= start_hi:
            result.append(tuple(observations[i:end]))
        previous_end = end
        i = bisect.bisect_right(times, start, i)
    return result


def is_coincidence(members: Iterable[Observation]) -> bool:
    return len({m.detector for m in members}) >= 2


def brute_force_coincidences(
    observations: Iterable[Observation], threshold_ns: int
) -> set[frozenset[str]]:
    """The definition, literally, in O(n^2): reference for tests and replays."""
    obs = list(observations)
    windows = {
        frozenset(p.uuid for p in obs if o.t_ns <= p.t_ns <= o.t_ns + threshold_ns) for o in obs
    }
    by_uuid = {o.uuid: o for o in obs}
    return {
        w
        for w in windows
        if not any(w < other for other in windows) and is_coincidence(by_uuid[u] for u in w)
    }


class CoincidenceEngine:
    """Turns one message into state changes and alert events."""

    def __init__(self, threshold_ns: int, lifetime_ns: int) -> None:
        if threshold_ns <= 0 or lifetime_ns <= 0:
            raise ValueError("threshold and lifetime must be positive")
        self.threshold_ns = threshold_ns
        self.lifetime_ns = lifetime_ns

    # -- entry points -------------------------------------------------------------------------

    def observe(self, view: StateView, message: Message, *, seq: int, new_id: NewId) -> Changes:
        """A CoincidenceTier observation enters the cache, superseding its detector's near ones."""
        if message.tier is not Tier.COINCIDENCE or message.neutrino_time_ns is None:
            raise ValueError("observe() takes CoincidenceTier messages with a neutrino time")
        if view.is_processed(message.uuid):
            return Changes(Outcome.DUPLICATE)
        namespace = namespace_of(message.is_test)
        obs = Observation(
            uuid=message.uuid,
            detector=message.detector_name,
            t_ns=message.neutrino_time_ns,
            neutrino_time_utc=message.neutrino_time_utc or "",
            p_val=message.p_val,
            seq=seq,
            is_firedrill=message.is_firedrill,
            # Only test messages may be canaries: a real alert can never be muted by its meta.
            is_canary=message.is_test and bool((message.meta or {}).get("canary")),
        )
        T = self.threshold_ns
        superseded = [
            o
            for o in view.observations_between(namespace, obs.t_ns - T, obs.t_ns + T)
            if o.detector == obs.detector
        ]
        changes = self._recompute(
            view,
            namespace,
            removed=superseded,
            added=[obs],
            seq=seq,
            new_id=new_id,
            retracted=frozenset(),
            silent=False,
        )
        if superseded:
            changes.outcome, changes.count = Outcome.SUPERSEDED, len(superseded)
        else:
            changes.outcome = Outcome.ADDED
        changes.processed.append((obs.uuid, obs.t_ns + self.lifetime_ns))
        return changes

    def retract(
        self, view: StateView, message: Message, *, seq: int, new_id: NewId, now_ns: int
    ) -> Changes:
        """Remove the named observations of the retracting detector, in its own namespace."""
        if message.tier is not Tier.RETRACTION:
            raise ValueError("retract() takes Retraction messages")
        if view.is_processed(message.uuid):
            return Changes(Outcome.DUPLICATE)
        namespace = namespace_of(message.is_test)
        if message.retract_message_uuid is not None:
            target = view.observation(namespace, message.retract_message_uuid)
            if target is not None and target.detector != message.detector_name:
                raise MessageError(
                    "retract_message_uuid",
                    f"observation {target.uuid} belongs to {target.detector}, "
                    f"not {message.detector_name}; a detector retracts only its own",
                )
            targets = [target] if target is not None else []
        else:
            targets = view.latest_of_detector(
                namespace, message.detector_name, message.retract_latest_n
            )
        changes = Changes(Outcome.RETRACTED if targets else Outcome.MATCHED_NOTHING, len(targets))
        self._remove(
            changes,
            view,
            namespace,
            targets,
            seq=seq,
            new_id=new_id,
            retracted=frozenset(o.uuid for o in targets),
            silent=False,
        )
        changes.processed.append((message.uuid, now_ns + self.lifetime_ns))
        return changes

    def expire(
        self, view: StateView, namespace: str, *, now_ns: int, new_id: NewId, limit: int = 1000
    ) -> Changes:
        """Drop observations older than the cache lifetime.

        Expiry is housekeeping, not news: coincidences re-form without alerts
        (they are a day old by then), keeping their ids and revisions.
        """
        expired = view.oldest_observations(namespace, now_ns - self.lifetime_ns, limit)
        changes = Changes(Outcome.EXPIRED, len(expired))
        self._remove(
            changes,
            view,
            namespace,
            expired,
            seq=0,
            new_id=new_id,
            retracted=frozenset(),
            silent=True,
        )
        return changes

    def attach_localization(
        self,
        view: StateView,
        namespace: str,
        *,
        alert_id: str,
        key: MembersKey,
        localization: dict,
        reason: str,
    ) -> Changes:
        """The localize task's result for the members `key` of coincidence `alert_id`: its next
        revision (an UPDATE) carries it, unless the members have changed since or the
        coincidence has a localization already (then a newer revision is localized, or was)."""
        start = key[0][0] if key else 0
        current = next(
            (
                c
                for c in view.coincidences_starting_between(namespace, start, start)
                if c.alert_id == alert_id
            ),
            None,
        )
        if current is None or current.key != key or current.localization is not None:
            return Changes(Outcome.LOCALIZATION_DROPPED)
        c = replace(current, revision=current.revision + 1, localization=localization)
        return Changes(
            Outcome.LOCALIZED, put_coincidences=[c], events=[AlertEvent(UPDATE, c, reason)]
        )

    # -- the rules ----------------------------------------------------------------------------

    def _remove(
        self,
        changes: Changes,
        view: StateView,
        namespace: str,
        removed: Iterable[Observation],
        *,
        seq: int,
        new_id: NewId,
        retracted: frozenset[str],
        silent: bool,
    ) -> None:
        """Take observations out of the cache, one neighbourhood at a time."""
        for region in self._regions(removed):
            changes.extend(
                self._recompute(
                    view,
                    namespace,
                    removed=region,
                    added=[],
                    seq=seq,
                    new_id=new_id,
                    retracted=retracted,
                    silent=silent,
                )
            )

    def _regions(self, observations: Iterable[Observation]) -> list[list[Observation]]:
        """Group changes whose neighbourhoods overlap, so far-apart ones are read separately."""
        regions: list[list[Observation]] = []
        for obs in sorted(observations, key=_order):
            if regions and obs.t_ns - regions[-1][-1].t_ns <= 4 * self.threshold_ns:
                regions[-1].append(obs)
            else:
                regions.append([obs])
        return regions

    def _recompute(
        self,
        view: StateView,
        namespace: str,
        *,
        removed: list[Observation],
        added: list[Observation],
        seq: int,
        new_id: NewId,
        retracted: frozenset[str],
        silent: bool,
    ) -> Changes:
        T = self.threshold_ns
        changed = [o.t_ns for o in removed + added]
        lo, hi = min(changed), max(changed)
        removed_uuids = {o.uuid for o in removed}
        nearby = [
            o
            for o in view.observations_between(namespace, lo - 3 * T, hi + 2 * T)
            if o.uuid not in removed_uuids
        ]
        cache = sorted(nearby + added, key=_order)
        new_sublists = [
            w for w in maximal_windows(cache, T, lo - 2 * T, hi + T) if is_coincidence(w)
        ]
        old = sorted(
            view.coincidences_starting_between(namespace, lo - 2 * T, hi + T),
            key=lambda c: c.created,
        )

        # A superseding observation stands in for what it replaced when matching identities.
        replacement = {o.uuid: a.uuid for a in added for o in removed if o.detector == a.detector}
        cached = {o.uuid: o for o in cache}

        def mapped(c: Coincidence) -> frozenset[str]:
            return frozenset(replacement.get(u, u) for u in c.uuids)

        old_keys = {c.alert_id: mapped(c) for c in old}
        new_keys = [frozenset(o.uuid for o in w) for w in new_sublists]
        match: dict[int, Coincidence] = {}  # index of new sublist -> old coincidence

        # Unchanged coincidences first, then each old one (oldest first: it keeps its id in a
        # merge) takes the new sublist it shares most members with (the bigger part of a split).
        unmatched_old = []
        by_key = {k: i for i, k in enumerate(new_keys)}
        for c in old:
            i = by_key.get(old_keys[c.alert_id])
            if i is not None and i not in match:
                match[i] = c
            else:
                unmatched_old.append(c)
        still_unmatched = []
        for c in unmatched_old:
            best, best_overlap = None, 0
            for i, k in enumerate(new_keys):
                overlap = len(k & old_keys[c.alert_id])
                if i not in match and overlap > best_overlap:
                    best, best_overlap = i, overlap
            if best is None:
                still_unmatched.append(c)
            else:
                match[best] = c

        changes = Changes(Outcome.ADDED, removed=list(removed), added=list(added))
        for i, members in enumerate(new_sublists):
            previous = match.get(i)
            if previous is None:
                c = Coincidence(new_id(), namespace, 1, members, seq * 1024 + i)
                changes.put_coincidences.append(c)
                if not silent:
                    changes.events.append(AlertEvent(NEW, c, "coincidence formed"))
                continue
            if previous.uuids == new_keys[i] and previous.members == members:
                continue
            content_changed = previous.content != frozenset(m.content for m in members)
            if silent or not content_changed:
                changes.put_coincidences.append(previous.with_members(members))
                continue
            c = previous.with_members(members, revision=previous.revision + 1)
            changes.put_coincidences.append(c)
            lost = previous.uuids - new_keys[i]
            if lost & retracted:
                changes.events.append(AlertEvent(RETRACTION, c, "a member was retracted"))
            else:
                changes.events.append(AlertEvent(UPDATE, c, _update_reason(previous, members)))

        for c in still_unmatched:
            changes.removed_coincidences.append(c)
            if silent:
                continue
            survivors = tuple(sorted((cached[u] for u in c.uuids if u in cached), key=_order))
            withdrawn = c.with_members(survivors, revision=c.revision + 1)
            merged_into = next(
                (
                    match[i].alert_id
                    for i, k in enumerate(new_keys)
                    if i in match and k & old_keys[c.alert_id]
                ),
                None,
            )
            if merged_into is not None:
                reason = f"merged into {merged_into}"
            elif c.uuids & retracted:
                reason = "a member was retracted; fewer than two detectors remain"
            else:
                reason = "a member was superseded; fewer than two detectors remain"
            changes.events.append(AlertEvent(RETRACTION, withdrawn, reason, merged_into))
        return changes


def _update_reason(previous: Coincidence, members: tuple[Observation, ...]) -> str:
    before = {m.detector for m in previous.members}
    after = {m.detector for m in members}
    gained = sorted(after - before)
    lost = sorted(before - after)
    parts = []
    if gained:
        parts.append("gained " + ", ".join(gained))
    if lost:
        parts.append("lost " + ", ".join(lost))
    if not parts:
        parts.append("a member was superseded with new content")
    return "; ".join(parts)
