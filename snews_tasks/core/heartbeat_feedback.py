"""Heartbeat feedback: which detectors have gone quiet, judged by each one's own rhythm.

One incremental rule serves the live checker (heartbeats arrive; a periodic `check` at
the wall clock) and the offline `snews-tasks heartbeats --dry-run` (`replay_heartbeats`,
whose clock is each heartbeat's sent time), so both report the same gaps.

The rule (issue 16, SPEC section 9)
-----------------------------------
Every time is a heartbeat's ``sent_time_utc``; each detector is judged only by its own beats.

* **History**: a detector's accepted heartbeats sent within 24 h (``window_s``) of its
  latest one. It ends at the latest heartbeat, not at the clock, so a silence does not
  erase the history the silence is judged by.
* **Watched**: a detector is watched while its history holds at least 5 heartbeats
  (``min_beats``). A detector seen for the first time, or beating fewer than 5 times in
  24 h, is not judged and raises nothing.
* **Allowed gap**: over the intervals between consecutive heartbeats of the history,
  leaving out reported gaps: mean m and sample standard deviation s (0 for a single
  interval); ``allowed = max(m + 3 s, 1.25 m, 60 s)``.

  - ``1.25 m`` (``min_gap_factor``): with jitter within ±10 % no interval exceeds 1.1 of
    the true mean, and even if a detector's first 4 intervals all came out 10 % short,
    1.25 of their mean is still 1.125 of the true one; m + 3 s alone collapses when a few
    early intervals happen to agree.
  - ``60 s`` (``min_gap_s``): the live checker compares the wall clock with the last
    heartbeat's *sent* time, so the silence it measures includes the delivery latency
    (seconds through the Kafka broker, more under load) and the checker's own period.
    Below a minute a lost beat cannot be told from a late one; for a 10 s detector a
    minute is 6 beats.
* **missed**: when ``check(now)`` finds a watched detector's latest heartbeat more than
  its allowed gap before ``now``, it raises one ``missed`` event at ``now``; later checks
  raise nothing more for that gap.
* **back**: the detector's next heartbeat raises one ``back`` event at its own sent time,
  with the gap (its sent time minus the previous one's). A heartbeat that closes a gap
  longer than allowed which no check caught (a stream in which no other detector moved
  the clock past it, or a checker that was down) first raises ``missed`` at its own sent
  time, then ``back``: every gap is reported, once.
* **Reported gaps stay out of the statistics**, so one outage does not blunt the rule
  for a day. When a detector's last 4 (``min_beats - 1``) intervals were all reported
  gaps it has changed its rhythm: its history restarts at the first of them and those
  intervals count (a change from 10 s to 2 min beats costs 4 missed/back pairs).
* The ON/OFF status does not enter the rule: a detector that is OFF still beats.

What callers validate first
---------------------------
`Heartbeat` checks its own types and that the status is ``ON`` or ``OFF``. The caller
rejects unknown detectors (each would get a history of its own) and sent times beyond
its tolerance ahead of its clock: the rule keeps each detector's latest sent time, so one
heartbeat stamped a day ahead would make the detector's genuine heartbeats look old for
a day. `heartbeat_from_record` does all of this for message dicts. The rule itself
ignores, and says why, any heartbeat not sent after its detector's latest one
(duplicates, out-of-order redeliveries), so neither can distort the intervals.
"""

from __future__ import annotations

import itertools
import logging
import math
import statistics
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from .errors import MessageError
from .times import NS_PER_S, format_time_ns, parse_time_ns

STATUSES = ("ON", "OFF")
HEARTBEAT_TIER = "Heartbeat"
STATE_VERSION = 1

EventKind = Literal["missed", "back"]
Reject = Callable[[int, str], None]

_log = logging.getLogger(__name__)


class HeartbeatError(MessageError):
    """Input the feedback cannot use; the message names the field and the problem."""

    field: str

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(field, problem)


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """One heartbeat; times are integer ns since the epoch, `received_ns` None if unknown."""

    detector: str
    sent_ns: int
    received_ns: int | None
    status: str

    def __post_init__(self) -> None:
        if not isinstance(self.detector, str) or not self.detector:
            raise HeartbeatError("detector", f"must be a non-empty string, got {self.detector!r}")
        _require_ns(self.sent_ns, "sent_ns")
        if self.received_ns is not None:
            _require_ns(self.received_ns, "received_ns")
        if self.status not in STATUSES:
            raise HeartbeatError("status", f"must be 'ON' or 'OFF', got {self.status!r}")


@dataclass(frozen=True, slots=True)
class FeedbackRule:
    """The rule's parameters; the module docstring says why these defaults."""

    window_s: float = 86400.0
    min_beats: int = 5
    sigmas: float = 3.0
    min_gap_factor: float = 1.25
    min_gap_s: float = 60.0

    def __post_init__(self) -> None:
        for field in ("window_s", "sigmas", "min_gap_factor", "min_gap_s"):
            value = getattr(self, field)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise HeartbeatError(field, f"must be a finite number >= 0, got {value!r}")
        if self.window_s <= 0:
            raise HeartbeatError("window_s", f"must be > 0, got {self.window_s!r}")
        if not isinstance(self.min_beats, int) or self.min_beats < 2:
            raise HeartbeatError("min_beats", f"must be an integer >= 2, got {self.min_beats!r}")


@dataclass(frozen=True, slots=True)
class FeedbackEvent:
    """A raised event; `gap_ns` is the silence so far (missed) or the whole gap (back)."""

    detector_name: str
    event: EventKind
    time_ns: int
    last_heartbeat_ns: int
    allowed_gap_ns: int
    mean_interval_ns: float
    sigma_interval_ns: float
    gap_ns: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "detector_name": self.detector_name,
            "event": self.event,
            "time_utc": format_time_ns(self.time_ns),
            "last_heartbeat_utc": format_time_ns(self.last_heartbeat_ns),
            "overdue_since_utc": format_time_ns(self.last_heartbeat_ns + self.allowed_gap_ns),
            "allowed_gap_s": self.allowed_gap_ns / NS_PER_S,
            "gap_s": self.gap_ns / NS_PER_S,
            "mean_interval_s": self.mean_interval_ns / NS_PER_S,
            "sigma_interval_s": self.sigma_interval_ns / NS_PER_S,
        }


def event_from_dict(data: Mapping[str, Any]) -> FeedbackEvent:
    """`FeedbackEvent.to_dict` read back (an archived event), or `HeartbeatError`."""
    try:
        kind = data["event"]
        if kind not in ("missed", "back"):
            raise HeartbeatError("event", f"must be 'missed' or 'back', got {kind!r}")
        return FeedbackEvent(
            detector_name=str(data["detector_name"]),
            event=kind,
            time_ns=_parse_utc(data["time_utc"], "time_utc"),
            last_heartbeat_ns=_parse_utc(data["last_heartbeat_utc"], "last_heartbeat_utc"),
            allowed_gap_ns=round(float(data["allowed_gap_s"]) * NS_PER_S),
            mean_interval_ns=float(data["mean_interval_s"]) * NS_PER_S,
            sigma_interval_ns=float(data["sigma_interval_s"]) * NS_PER_S,
            gap_ns=round(float(data["gap_s"]) * NS_PER_S),
        )
    except HeartbeatError:
        raise
    except (KeyError, TypeError, ValueError) as error:
        raise HeartbeatError("event", f"is not a feedback event: {error!r}") from None


class Observed(NamedTuple):
    """What one heartbeat did: the events it raised, or why the rule ignored it."""

    events: list[FeedbackEvent]
    ignored: str | None = None


class _Stats(NamedTuple):
    mean_ns: float
    sigma_ns: float
    allowed_ns: int


class _Missed(NamedTuple):
    """An open gap, with the statistics it was judged by."""

    raised_ns: int
    stats: _Stats


class _Track:
    """One detector's history with exact running sums over the intervals that count."""

    __slots__ = ("beats", "cached", "count", "intervals", "last_status", "missed", "sum", "sum_sq")

    def __init__(self, first_ns: int, status: str) -> None:
        self.beats: deque[int] = deque([first_ns])
        self.intervals: deque[tuple[int, bool]] = deque()  # (length, counts); beats[i]..[i+1]
        self.last_status = status
        self.missed: _Missed | None = None
        self.count = self.sum = self.sum_sq = 0
        self.cached: tuple[FeedbackRule, _Stats | None] | None = None  # checks outnumber beats

    @property
    def last_ns(self) -> int:
        return self.beats[-1]

    def stats(self, rule: FeedbackRule) -> _Stats | None:
        """The allowed gap, or None while the detector is not watched."""
        if self.cached is None or self.cached[0] is not rule:
            self.cached = (rule, self._stats(rule))
        return self.cached[1]

    def _stats(self, rule: FeedbackRule) -> _Stats | None:
        if len(self.beats) < rule.min_beats or self.count == 0:
            return None
        n = self.count
        mean = self.sum / n
        sigma = math.sqrt((n * self.sum_sq - self.sum**2) / (n * (n - 1))) if n > 1 else 0.0
        allowed = max(
            mean + rule.sigmas * sigma, rule.min_gap_factor * mean, rule.min_gap_s * NS_PER_S
        )
        return _Stats(mean, sigma, math.ceil(allowed))

    def append(self, sent_ns: int, status: str, counts: bool, rule: FeedbackRule) -> None:
        length = sent_ns - self.beats[-1]
        self._add_interval(length, counts, +1)
        self.intervals.append((length, counts))
        self.beats.append(sent_ns)
        self.last_status = status
        oldest = sent_ns - round(rule.window_s * NS_PER_S)
        while self.beats[0] < oldest:
            self.beats.popleft()
            self._add_interval(*self.intervals.popleft(), -1)
        run = rule.min_beats - 1
        latest = itertools.islice(reversed(self.intervals), run)
        if len(self.intervals) >= run and not any(counts for _, counts in latest):
            self._relearn(run)

    def _relearn(self, run: int) -> None:
        """The last intervals were all reported gaps: the rhythm changed, learn it afresh."""
        kept = list(self.intervals)[-run:]
        self.beats = deque(list(self.beats)[-run - 1 :])
        self.intervals = deque((length, True) for length, _ in kept)
        self._recount()

    def _recount(self) -> None:
        self.count = self.sum = self.sum_sq = 0
        for length, counts in self.intervals:
            self._add_interval(length, counts, +1)

    def _add_interval(self, length: int, counts: bool, sign: int) -> None:
        self.cached = None
        if counts:
            self.count += sign
            self.sum += sign * length
            self.sum_sq += sign * length * length

    def to_dict(self) -> dict[str, Any]:
        return {
            "first_ns": self.beats[0],
            "intervals_ns": [length for length, _ in self.intervals],
            "uncounted": [i for i, (_, counts) in enumerate(self.intervals) if not counts],
            "last_status": self.last_status,
            "missed": None if self.missed is None else [self.missed[0], *self.missed[1]],
        }

    @classmethod
    def from_dict(cls, data: object, where: str) -> _Track:
        data = _mapping(data, where)
        first = _require_ns(data.get("first_ns"), f"{where}.first_ns")
        lengths = _list(data.get("intervals_ns"), f"{where}.intervals_ns")
        uncounted = set(_list(data.get("uncounted"), f"{where}.uncounted"))
        status = data.get("last_status")
        if status not in STATUSES:
            raise HeartbeatError(f"{where}.last_status", f"must be 'ON' or 'OFF', got {status!r}")
        track = cls(first, status)
        for i, length in enumerate(lengths):
            if not isinstance(length, int) or isinstance(length, bool) or length <= 0:
                raise HeartbeatError(f"{where}.intervals_ns[{i}]", f"must be > 0, got {length!r}")
            track.intervals.append((length, i not in uncounted))
            track.beats.append(track.beats[-1] + length)
        track._recount()
        missed = data.get("missed")
        if missed is not None:
            values = _list(missed, f"{where}.missed")
            if len(values) != 4 or not all(isinstance(v, int | float) for v in values):
                raise HeartbeatError(f"{where}.missed", f"must be 4 numbers, got {missed!r}")
            raised, mean, sigma, allowed = values
            track.missed = _Missed(int(raised), _Stats(float(mean), float(sigma), int(allowed)))
        return track


class HeartbeatFeedback:
    """The rule's state over all detectors: feed heartbeats in arrival order, check at a clock."""

    def __init__(self, rule: FeedbackRule | None = None) -> None:
        self.rule = rule or FeedbackRule()
        self._tracks: dict[str, _Track] = {}

    def observe(self, heartbeat: Heartbeat) -> Observed:
        """Take one validated heartbeat; a gap it closes is judged at its own sent time."""
        track = self._tracks.get(heartbeat.detector)
        if track is None:
            self._tracks[heartbeat.detector] = _Track(heartbeat.sent_ns, heartbeat.status)
            return Observed([])
        if heartbeat.sent_ns <= track.last_ns:
            return Observed([], _not_newer(heartbeat, track.last_ns))
        events = self._check_one(heartbeat.detector, track, heartbeat.sent_ns)
        closes_gap = track.missed is not None
        if closes_gap:
            events.append(self._event("back", heartbeat.detector, track, heartbeat.sent_ns))
            track.missed = None
        track.append(heartbeat.sent_ns, heartbeat.status, not closes_gap, self.rule)
        return Observed(events)

    def check(self, now_ns: int) -> list[FeedbackEvent]:
        """Raise `missed` for each watched detector silent for longer than allowed at `now_ns`."""
        events: list[FeedbackEvent] = []
        for detector in sorted(self._tracks):
            events += self._check_one(detector, self._tracks[detector], now_ns)
        return events

    def detector_states(self, now_ns: int) -> dict[str, dict[str, Any]]:
        """Per detector, what the rule knows at `now_ns` (for `status` and the console)."""
        states = {}
        for detector in sorted(self._tracks):
            track = self._tracks[detector]
            stats = track.missed.stats if track.missed else track.stats(self.rule)
            states[detector] = {
                "watched": stats is not None,
                "beats_in_window": len(track.beats),
                "last_heartbeat_utc": format_time_ns(track.last_ns),
                "last_status": track.last_status,
                "silent_s": (now_ns - track.last_ns) / NS_PER_S,
                "mean_interval_s": stats.mean_ns / NS_PER_S if stats else None,
                "allowed_gap_s": stats.allowed_ns / NS_PER_S if stats else None,
                "missed_since_utc": format_time_ns(track.missed.raised_ns)
                if track.missed
                else None,
            }
        return states

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe state (times as integer ns), for Redis between the checker's runs."""
        return {
            "version": STATE_VERSION,
            "detectors": {name: track.to_dict() for name, track in self._tracks.items()},
        }

    @classmethod
    def from_dict(cls, data: object, rule: FeedbackRule | None = None) -> HeartbeatFeedback:
        data = _mapping(data, "state")
        if data.get("version") != STATE_VERSION:
            raise HeartbeatError(
                "state.version", f"must be {STATE_VERSION}, got {data.get('version')!r}"
            )
        feedback = cls(rule)
        for name, track in _mapping(data.get("detectors"), "state.detectors").items():
            feedback._tracks[name] = _Track.from_dict(track, f"state.detectors.{name}")
        return feedback

    def _check_one(self, detector: str, track: _Track, now_ns: int) -> list[FeedbackEvent]:
        if track.missed is not None:
            return []
        stats = track.stats(self.rule)
        if stats is None or now_ns - track.last_ns <= stats.allowed_ns:
            return []
        track.missed = _Missed(now_ns, stats)
        return [self._event("missed", detector, track, now_ns)]

    @staticmethod
    def _event(kind: EventKind, detector: str, track: _Track, now_ns: int) -> FeedbackEvent:
        assert track.missed is not None  # both kinds are raised with the gap open
        stats = track.missed.stats
        return FeedbackEvent(
            detector_name=detector,
            event=kind,
            time_ns=now_ns,
            last_heartbeat_ns=track.last_ns,
            allowed_gap_ns=stats.allowed_ns,
            mean_interval_ns=stats.mean_ns,
            sigma_interval_ns=stats.sigma_ns,
            gap_ns=now_ns - track.last_ns,
        )


# ---------------------------------------------------------------------------------------
# offline stream


def heartbeat_from_record(
    record: object, *, detectors: Collection[str] | None = None, max_future_skew_s: float = 60.0
) -> Heartbeat:
    """A heartbeat message dict as a `Heartbeat`, or `HeartbeatError` naming the bad field.

    `received_ns` comes from ``received_time_utc`` (set by the ingest) only:
    ``machine_time_utc`` is when the detector saw its data, which says nothing of delivery.
    A sent time more than `max_future_skew_s` after the received time is refused.
    """
    if not isinstance(record, Mapping):
        raise HeartbeatError("record", f"must be a JSON object, got {type(record).__name__}")
    tier = record.get("tier", HEARTBEAT_TIER)
    if tier != HEARTBEAT_TIER:
        raise HeartbeatError("tier", f"is not a heartbeat: {tier!r}")
    detector = record.get("detector_name")
    if not isinstance(detector, str) or not detector:
        raise HeartbeatError("detector_name", f"must be a non-empty string, got {detector!r}")
    if detectors is not None and detector not in detectors:
        raise HeartbeatError("detector_name", f"is not a known detector: {detector!r}")
    status = record.get("detector_status")
    if status not in STATUSES:
        raise HeartbeatError("detector_status", f"must be 'ON' or 'OFF', got {status!r}")
    sent = _parse_utc(record.get("sent_time_utc"), "sent_time_utc")
    received_text = record.get("received_time_utc")
    received = None if received_text is None else _parse_utc(received_text, "received_time_utc")
    if received is not None and sent - received > max_future_skew_s * NS_PER_S:
        raise HeartbeatError(
            "sent_time_utc",
            f"is {(sent - received) / NS_PER_S:g} s after received_time_utc "
            f"(tolerance {max_future_skew_s:g} s)",
        )
    return Heartbeat(detector, sent, received, status)


def replay_heartbeats(
    records: Iterable[object],
    *,
    rule: FeedbackRule | None = None,
    detectors: Collection[str] | None = None,
    max_future_skew_s: float = 60.0,
    on_reject: Reject | None = None,
) -> Iterator[dict[str, Any]]:
    """The events a heartbeat stream raises, as JSON-safe dicts, on the stream's own clock.

    Each valid heartbeat first moves the clock to its sent time (`check`), then is observed.
    A record that is not a usable heartbeat, or that the rule ignores, is passed to
    `on_reject` as (1-based position, reason) and skipped; without `on_reject` it is logged.
    """
    reject = on_reject or _log_reject
    feedback = HeartbeatFeedback(rule)
    for position, record in enumerate(records, start=1):
        try:
            heartbeat = heartbeat_from_record(
                record, detectors=detectors, max_future_skew_s=max_future_skew_s
            )
        except HeartbeatError as error:
            reject(position, str(error))
            continue
        events = feedback.check(heartbeat.sent_ns)
        observed = feedback.observe(heartbeat)
        if observed.ignored:
            reject(position, observed.ignored)
        for event in events + observed.events:
            yield event.to_dict()


def replay_events(
    heartbeats: Iterable[Heartbeat], end_ns: int, *, rule: FeedbackRule | None = None
) -> list[FeedbackEvent]:
    """The events the live rule raises over heartbeats in arrival order, checked last at
    `end_ns` (the timeline picture shades the gaps they describe)."""
    feedback = HeartbeatFeedback(rule)
    events: list[FeedbackEvent] = []
    for heartbeat in heartbeats:
        if heartbeat.sent_ns < end_ns:
            events += feedback.observe(heartbeat).events
    return events + feedback.check(end_ns)


def usable_heartbeats(
    records: Iterable[object], *, detectors: Collection[str] | None = None
) -> list[Heartbeat]:
    """The records that are heartbeats the rule can use (archived ones passed validation
    already; anything else is skipped, as `replay_heartbeats` skips it)."""
    usable = []
    for record in records:
        try:
            usable.append(heartbeat_from_record(record, detectors=detectors))
        except HeartbeatError:
            continue
    return usable


def _log_reject(position: int, reason: str) -> None:
    _log.warning("heartbeat record %d skipped: %s", position, reason)


# ---------------------------------------------------------------------------------------
# daily summary


def daily_summary(
    heartbeats: Iterable[Heartbeat],
    detector: str,
    start_ns: int,
    end_ns: int,
    *,
    rule: FeedbackRule | None = None,
) -> dict[str, Any]:
    """One detector's beats, gaps, latency and status over [start_ns, end_ns).

    `heartbeats` come in arrival order, as the rule saw them, and should reach back one
    window before `start_ns` so that gaps early in the period are judged with the history
    the live rule had. Gaps are the rule's missed periods that overlap the period; one
    still open at `end_ns` has ``end_utc`` None. A heartbeat's status holds until the next
    heartbeat, except after a missed gap became overdue: that time, and any before the
    first heartbeat, counts as ``silent``.
    """
    if end_ns <= start_ns:
        raise HeartbeatError("end_ns", f"must be after start_ns ({start_ns}), got {end_ns}")
    feedback = HeartbeatFeedback(rule)
    accepted: list[Heartbeat] = []
    ignored = 0
    missed: list[FeedbackEvent] = []
    ends: dict[int, int] = {}  # last heartbeat before a gap -> heartbeat that ended it
    for heartbeat in heartbeats:
        if heartbeat.detector != detector or heartbeat.sent_ns >= end_ns:
            continue
        observed = feedback.observe(heartbeat)
        if observed.ignored:
            if heartbeat.sent_ns >= start_ns:
                ignored += 1
            continue
        accepted.append(heartbeat)
        for event in observed.events:
            if event.event == "missed":
                missed.append(event)
            else:
                ends[event.last_heartbeat_ns] = event.time_ns
    missed += [e for e in feedback.check(end_ns) if e.detector_name == detector]

    gaps = [e for e in missed if ends.get(e.last_heartbeat_ns, end_ns) > start_ns]
    overdue = {e.last_heartbeat_ns: e.last_heartbeat_ns + e.allowed_gap_ns for e in missed}
    in_period = [hb for hb in accepted if hb.sent_ns >= start_ns]
    latencies = [hb.received_ns - hb.sent_ns for hb in in_period if hb.received_ns is not None]
    held = {status: 0 for status in STATUSES}
    for heartbeat, after in zip(accepted, [*accepted[1:], None], strict=True):
        until = min(
            end_ns, after.sent_ns if after else end_ns, overdue.get(heartbeat.sent_ns, end_ns)
        )
        held[heartbeat.status] += max(0, until - max(start_ns, heartbeat.sent_ns))
    period = end_ns - start_ns
    return {
        "detector_name": detector,
        "start_utc": format_time_ns(start_ns),
        "end_utc": format_time_ns(end_ns),
        "beats": len(in_period),
        "beats_on": sum(hb.status == "ON" for hb in in_period),
        "ignored": ignored,
        "last_heartbeat_utc": format_time_ns(accepted[-1].sent_ns) if accepted else None,
        "gaps": [_gap(event, ends.get(event.last_heartbeat_ns), end_ns) for event in gaps],
        "latency_s": _latency(latencies),
        "on_fraction": held["ON"] / period,
        "off_fraction": held["OFF"] / period,
        "silent_fraction": 1 - (held["ON"] + held["OFF"]) / period,
    }


def _gap(missed: FeedbackEvent, end: int | None, period_end_ns: int) -> dict[str, Any]:
    return {
        "start_utc": format_time_ns(missed.last_heartbeat_ns),
        "overdue_utc": format_time_ns(missed.last_heartbeat_ns + missed.allowed_gap_ns),
        "end_utc": None if end is None else format_time_ns(end),
        "length_s": ((end or period_end_ns) - missed.last_heartbeat_ns) / NS_PER_S,
    }


def _latency(latencies_ns: list[int]) -> dict[str, Any]:
    seconds = [ns / NS_PER_S for ns in latencies_ns]
    return {
        "count": len(seconds),
        "mean": statistics.fmean(seconds) if seconds else None,
        "median": statistics.median(seconds) if seconds else None,
        "max": max(seconds, default=None),
    }


# ---------------------------------------------------------------------------------------
# helpers


def _parse_utc(value: object, field: str) -> int:
    """The project's one time parser, its error as this module's (same field, same problem)."""
    try:
        return parse_time_ns(value, field)
    except MessageError as error:
        raise HeartbeatError(field, error.problem) from None


def _require_ns(value: object, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise HeartbeatError(field, f"must be integer ns since the epoch, got {value!r}")
    return value


def _mapping(value: object, field: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise HeartbeatError(field, f"must be an object, got {type(value).__name__}")
    return value


def _list(value: object, field: str) -> list[Any]:
    if not isinstance(value, list):
        raise HeartbeatError(field, f"must be a list, got {type(value).__name__}")
    return value


def _not_newer(heartbeat: Heartbeat, latest_ns: int) -> str:
    same = "the same as" if heartbeat.sent_ns == latest_ns else "before"
    return (
        f"sent_time_utc {format_time_ns(heartbeat.sent_ns)} is {same} {heartbeat.detector}'s "
        f"latest heartbeat ({format_time_ns(latest_ns)}); ignored"
    )
