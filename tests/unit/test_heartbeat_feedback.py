"""Heartbeat feedback rule: generated streams, each checked against an independent computation.

Every time is built from the clock at test time; the expected allowed gaps, event times
and summary figures are computed here with numpy, not taken from the code under test.
"""

from __future__ import annotations

import io
import json
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime

import numpy as np
import pytest
from PIL import Image

from snews_tasks.core.heartbeat_feedback import (
    FeedbackEvent,
    FeedbackRule,
    Heartbeat,
    HeartbeatError,
    HeartbeatFeedback,
    daily_summary,
    replay_heartbeats,
)
from snews_tasks.core.heartbeat_plot import timeline_png

NS = 10**9
HOUR = 3600 * NS
DAY = 24 * HOUR

Action = tuple[str, object]  # ("beat", Heartbeat) or ("check", now_ns)


def iso(t_ns: int) -> str:
    seconds, nanos = divmod(t_ns, NS)
    return f"{datetime.fromtimestamp(seconds, UTC):%Y-%m-%dT%H:%M:%S}.{nanos:09d}Z"


def sent_times(
    rng: np.random.Generator, start_ns: int, interval_s: float, end_ns: int
) -> list[int]:
    """Beats every `interval_s` with jitter uniform within ±10 %, from `start_ns` to `end_ns`."""
    count = int((end_ns - start_ns) / (interval_s * 0.9 * NS)) + 2
    steps = (interval_s * NS * rng.uniform(0.9, 1.1, count)).astype(np.int64)
    times = start_ns + np.cumsum(steps)
    return [int(t) for t in times[times < end_ns]]


def heartbeats(
    rng: np.random.Generator,
    detector: str,
    times: Iterable[int],
    statuses: Sequence[str] | None = None,
    untimed: float = 0.0,
) -> list[Heartbeat]:
    """Heartbeats with latency 0..10 s (exponential, mean 1.5 s), delivered in order (one
    Kafka partition per detector); some without receive time."""
    out = []
    arrived = 0
    for i, sent in enumerate(times):
        arrived = max(arrived, sent + int(min(rng.exponential(1.5), 10.0) * NS))
        received = None if rng.random() < untimed else arrived
        out.append(Heartbeat(detector, sent, received, statuses[i] if statuses else "ON"))
    return out


def record(heartbeat: Heartbeat) -> dict[str, object]:
    message: dict[str, object] = {
        "tier": "Heartbeat",
        "detector_name": heartbeat.detector,
        "detector_status": heartbeat.status,
        "sent_time_utc": iso(heartbeat.sent_ns),
    }
    if heartbeat.received_ns is not None:
        message["received_time_utc"] = iso(heartbeat.received_ns)
    return message


def arrival_order(*streams: list[Heartbeat]) -> list[Heartbeat]:
    return sorted((hb for s in streams for hb in s), key=lambda hb: hb.received_ns or hb.sent_ns)


def live_actions(beats: list[Heartbeat], checks: Iterable[int]) -> list[Action]:
    """What a live checker sees: each heartbeat when it arrives, checks at the wall clock."""
    actions: list[tuple[int, int, Action]] = [
        (hb.received_ns or hb.sent_ns, 0, ("beat", hb)) for hb in beats
    ]
    actions += [(t, 1, ("check", t)) for t in checks]
    return [action for _, _, action in sorted(actions, key=lambda a: (a[0], a[1]))]


def run(actions: Iterable[Action], feedback: HeartbeatFeedback | None = None) -> list[dict]:
    feedback = feedback or HeartbeatFeedback()
    events: list[FeedbackEvent] = []
    for kind, value in actions:
        if kind == "beat":
            assert isinstance(value, Heartbeat)
            events += feedback.observe(value).events
        else:
            assert isinstance(value, int)
            events += feedback.check(value)
    return [event.to_dict() for event in events]


def expected_allowed_ns(times: Sequence[int], gaps_ending_at: Sequence[int] = ()) -> float:
    """The rule, computed independently: mean + 3 sigma, 1.25 mean, 60 s; the last 24 h,
    leaving out the intervals of reported gaps (given by the beat that ended each)."""
    t = np.array(times, dtype=np.int64)
    recent = t[t >= t[-1] - DAY]
    counted = ~np.isin(recent[1:], np.array(gaps_ending_at, dtype=np.int64))
    intervals = np.diff(recent)[counted].astype(float)
    mean = intervals.mean()
    return max(mean + 3 * intervals.std(ddof=1), 1.25 * mean, 60.0 * NS)


def check_times(
    rng: np.random.Generator, start_ns: int, end_ns: int, longest_s: float = 45
) -> list[int]:
    """A checker with an irregular period of 5 s to `longest_s`."""
    count = int((end_ns - start_ns) / (5 * NS)) + 1
    steps = (rng.uniform(5, longest_s, count) * NS).astype(np.int64)
    times = start_ns + np.cumsum(steps)
    return [int(t) for t in times[times < end_ns]]


@pytest.fixture
def base() -> int:
    return time.time_ns()


def test_regular_detectors_raise_nothing_offline_or_live(base: int) -> None:
    rng = np.random.default_rng(1)
    intervals = [10.0, 3600.0, *np.exp(rng.uniform(np.log(10), np.log(3600), 4))]
    end = base + 3 * DAY
    streams = [
        heartbeats(rng, f"D{i}", sent_times(rng, base, interval, end))
        for i, interval in enumerate(intervals)
    ]
    beats = arrival_order(*streams)
    rejects: list[tuple[int, str]] = []

    offline = list(
        replay_heartbeats(
            (record(hb) for hb in beats), on_reject=lambda n, why: rejects.append((n, why))
        )
    )
    feedback = HeartbeatFeedback()
    live = run(live_actions(beats, check_times(rng, base, end)), feedback)

    assert offline == [] and rejects == [] and live == []
    states = feedback.detector_states(end)
    assert all(states[f"D{i}"]["watched"] for i in range(len(intervals)))  # judged, not skipped


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_gap_raises_one_missed_at_first_check_past_allowed_gap_then_one_back(
    base: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    interval = float(np.exp(rng.uniform(np.log(10), np.log(3600))))
    before = sent_times(rng, base, interval, base + 2 * DAY)
    allowed = expected_allowed_ns(before)
    back = before[-1] + int(allowed * rng.uniform(1.5, 4))
    after = sent_times(rng, back, interval, back + 6 * HOUR)
    beats = heartbeats(rng, "A", [*before, back, *after])
    checks = check_times(rng, base, after[-1])

    events = run(live_actions(beats, checks))

    first_check_past = next(t for t in checks if t - before[-1] > allowed)
    assert [e["event"] for e in events] == ["missed", "back"]
    missed, returned = events
    assert missed["time_utc"] == iso(first_check_past)
    assert missed["last_heartbeat_utc"] == iso(before[-1])
    assert missed["allowed_gap_s"] == pytest.approx(allowed / NS, rel=1e-9)
    assert returned["time_utc"] == iso(back)
    assert returned["gap_s"] == pytest.approx((back - before[-1]) / NS, abs=1e-9)


def test_gap_no_check_saw_is_missed_then_back_at_the_returning_heartbeat(base: int) -> None:
    rng = np.random.default_rng(6)
    before = sent_times(rng, base, 30, base + DAY)
    back = before[-1] + int(expected_allowed_ns(before) * 3)
    stream = heartbeats(rng, "A", [*before, back, *sent_times(rng, back, 30, back + HOUR)])

    events = list(replay_heartbeats(record(hb) for hb in stream))

    assert [(e["event"], e["time_utc"]) for e in events] == [
        ("missed", iso(back)),
        ("back", iso(back)),
    ]
    assert events[0]["gap_s"] == events[1]["gap_s"] == pytest.approx((back - before[-1]) / NS)


def test_offline_missed_is_raised_by_the_first_record_past_the_allowed_gap(base: int) -> None:
    rng = np.random.default_rng(7)
    quiet_before = sent_times(rng, base, 600, base + DAY)
    allowed = expected_allowed_ns(quiet_before)
    back = quiet_before[-1] + int(allowed * 2.5)
    quiet = heartbeats(rng, "Quiet", [*quiet_before, back])
    clock = heartbeats(rng, "Clock", sent_times(rng, base, 10, back + 60 * NS))
    stream = arrival_order(quiet, clock)

    events = list(replay_heartbeats(record(hb) for hb in stream))

    raised_by = next(hb for hb in stream if hb.sent_ns - quiet_before[-1] > allowed)
    assert [(e["detector_name"], e["event"], e["time_utc"]) for e in events] == [
        ("Quiet", "missed", iso(raised_by.sent_ns)),
        ("Quiet", "back", iso(back)),
    ]


def test_fewer_than_five_beats_in_a_day_raise_nothing(base: int) -> None:
    rng = np.random.default_rng(8)
    sparse = [base + int(t) for t in np.cumsum(rng.uniform(6.5, 7.5, 16) * HOUR)]
    sparse.append(sparse[-1] + 3 * DAY)  # a long silence, then one beat
    newcomer = [base + i * 10 * NS for i in range(4)]
    beats = heartbeats(rng, "Sparse", sparse) + heartbeats(rng, "New", newcomer)
    checks = list(range(base, sparse[-1] + DAY, HOUR))
    feedback = HeartbeatFeedback()

    assert run(live_actions(beats, checks), feedback) == []
    states = feedback.detector_states(sparse[-1])
    assert states["Sparse"]["watched"] is False and states["New"]["watched"] is False
    assert states["Sparse"]["last_heartbeat_utc"] == iso(sparse[-1])  # seen, not judged


def test_out_of_order_and_duplicate_heartbeats_are_ignored_and_change_nothing(base: int) -> None:
    rng = np.random.default_rng(9)
    clean = heartbeats(rng, "A", sent_times(rng, base, 60, base + DAY))
    noisy: list[tuple[Heartbeat, bool]] = []  # (heartbeat, stale)
    for i, hb in enumerate(clean):
        noisy.append((hb, False))
        if i > 10 and rng.random() < 0.2:  # a redelivery of this beat or of an older one
            older = clean[int(rng.integers(0, i + 1))]
            noisy.append((Heartbeat("A", older.sent_ns, hb.sent_ns + NS, "OFF"), True))
    reference, tested = HeartbeatFeedback(), HeartbeatFeedback()
    for hb in clean:
        reference.observe(hb)

    observed = [(tested.observe(hb), stale) for hb, stale in noisy]

    assert sum(stale for _, stale in noisy) > 100
    for result, stale in observed:
        if stale:
            assert result.events == [] and result.ignored is not None
            assert "sent_time_utc" in result.ignored and "latest heartbeat" in result.ignored
        else:
            assert result.ignored is None
    now = clean[-1].sent_ns + 10 * NS
    assert tested.detector_states(now) == reference.detector_states(now)
    assert tested.to_dict() == reference.to_dict()
    assert tested.detector_states(now)["A"]["allowed_gap_s"] == pytest.approx(
        expected_allowed_ns([hb.sent_ns for hb in clean]) / NS, rel=1e-9
    )


def test_rhythm_change_costs_four_reported_gaps_then_is_learned(base: int) -> None:
    rng = np.random.default_rng(10)
    fast = sent_times(rng, base, 10, base + 6 * HOUR)
    slow = sent_times(rng, fast[-1], 120, fast[-1] + 6 * HOUR)
    beats = heartbeats(rng, "A", [*fast, *slow])

    events = list(replay_heartbeats(record(hb) for hb in beats))

    assert [e["event"] for e in events] == ["missed", "back"] * 4
    assert [e["time_utc"] for e in events[1::2]] == [iso(t) for t in slow[:4]]


@pytest.mark.parametrize("seed", [11, 12])
def test_state_round_trip_through_json_gives_the_same_events(base: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    end = base + 40 * HOUR  # longer than the window: old beats leave the history
    a = sent_times(rng, base, 10, base + 6 * HOUR)
    a_back = a[-1] + 5 * 60 * NS
    b = sent_times(rng, base, 300, base + 30 * HOUR)
    b_back = b[-1] + 2 * HOUR
    fast = sent_times(rng, base + HOUR, 10, base + 3 * HOUR)  # then D changes its rhythm
    beats = arrival_order(
        heartbeats(rng, "A", [*a, a_back, *sent_times(rng, a_back, 10, a_back + 2 * HOUR)]),
        heartbeats(rng, "B", [*b, b_back, *sent_times(rng, b_back, 300, end)]),
        heartbeats(rng, "C", sent_times(rng, base, 3600, end)),
        heartbeats(rng, "D", [*fast, *sent_times(rng, fast[-1], 150, end)]),
    )
    actions = live_actions(beats, check_times(rng, base, end + 3 * HOUR, longest_s=120))
    whole = run(actions)
    assert {e["detector_name"] for e in whole} == {"A", "B", "C", "D"}  # state to carry over

    splits = sorted(int(i) for i in rng.integers(1, len(actions), 6))
    feedback = HeartbeatFeedback()
    pieces: list[dict] = []
    for begin, stop in zip([0, *splits], [*splits, len(actions)], strict=True):
        pieces += run(actions[begin:stop], feedback)
        feedback = HeartbeatFeedback.from_dict(json.loads(json.dumps(feedback.to_dict())))

    assert pieces == whole


def test_daily_summary_agrees_with_independent_computation(base: int) -> None:
    rng = np.random.default_rng(14)
    start, end = base + DAY, base + 2 * DAY
    first = sent_times(rng, base, 300, start + 9 * HOUR)
    gap_start = first[-1]
    gap_allowed = expected_allowed_ns(first)
    gap_end = gap_start + int(gap_allowed * 4)
    second = sent_times(rng, gap_end, 300, end - HOUR)
    times = [*first, gap_end, *second]
    tail_allowed = expected_allowed_ns(times, gaps_ending_at=[gap_end])
    runs = np.cumsum(rng.random(len(times)) < 0.05) % 2  # ON and OFF in runs
    statuses = ["OFF" if r else "ON" for r in runs]
    beats = heartbeats(rng, "A", times, statuses, untimed=0.1)
    duplicate = Heartbeat("A", times[-5], times[-1] + NS, "ON")
    other = heartbeats(rng, "B", sent_times(rng, base, 60, end))

    summary = daily_summary([*beats, duplicate, *other], "A", start, end)

    sent = np.array(times, dtype=np.int64)
    window = (sent >= start) & (sent < end)
    latency = np.array(
        [
            (hb.received_ns - hb.sent_ns) / NS
            for hb in beats
            if hb.received_ns is not None and start <= hb.sent_ns
        ]
    )
    assert summary["beats"] == int(window.sum())
    assert summary["beats_on"] == int(sum(s == "ON" for s, w in zip(statuses, window) if w))
    assert summary["ignored"] == 1
    assert summary["latency_s"]["count"] == latency.size
    assert summary["latency_s"]["mean"] == pytest.approx(latency.mean(), rel=1e-9)
    assert summary["latency_s"]["median"] == pytest.approx(np.median(latency), rel=1e-9)
    assert summary["latency_s"]["max"] == pytest.approx(latency.max(), rel=1e-9)
    closed, still_open = summary["gaps"]
    assert closed["start_utc"] == iso(gap_start) and closed["end_utc"] == iso(gap_end)
    assert still_open["start_utc"] == iso(second[-1]) and still_open["end_utc"] is None
    assert still_open["length_s"] == pytest.approx((end - second[-1]) / NS)

    # status over time on a fine grid: a beat's status holds until the next beat,
    # except past the overdue point of a gap; before any beat it is unknown
    grid = start + (np.arange(1_000_000) + 0.5) * ((end - start) / 1_000_000)
    index = np.searchsorted(sent.astype(float), grid, side="right") - 1
    on = np.array([s == "ON" for s in statuses])[index]
    silent = ((grid > gap_start + gap_allowed) & (grid < gap_end)) | (
        grid > second[-1] + tail_allowed
    )
    assert summary["on_fraction"] == pytest.approx(np.mean(on & ~silent), abs=5e-5)
    assert summary["off_fraction"] == pytest.approx(np.mean(~on & ~silent), abs=5e-5)
    assert summary["silent_fraction"] == pytest.approx(np.mean(silent), abs=5e-5)


def test_bad_records_are_reported_by_field_and_never_raise(base: int) -> None:
    good = record(Heartbeat("A", base, base + NS, "ON"))  # the template of the bad ones
    bad: list[tuple[object, str]] = [
        ("not a mapping", "record"),
        ({**good, "tier": "CoincidenceTier"}, "tier"),
        ({k: v for k, v in good.items() if k != "sent_time_utc"}, "sent_time_utc"),
        ({**good, "sent_time_utc": "yesterday"}, "sent_time_utc"),
        ({**good, "sent_time_utc": "2026-02-30T00:00:00Z"}, "sent_time_utc"),
        ({**good, "detector_status": "MAYBE"}, "detector_status"),
        ({**good, "detector_name": ""}, "detector_name"),
        ({**good, "detector_name": "Nobody"}, "detector_name"),
        ({**good, "sent_time_utc": iso(base + HOUR)}, "sent_time_utc"),  # after receipt
        ({**good, "received_time_utc": 5}, "received_time_utc"),
    ]
    goods = [
        record(Heartbeat("A", base + i * NS, base + i * NS + 1, "ON")) for i in range(len(bad))
    ]
    records = [item for pair in zip(goods, [r for r, _ in bad], strict=True) for item in pair]
    rejects: list[tuple[int, str]] = []

    events = list(
        replay_heartbeats(
            records, detectors={"A"}, on_reject=lambda n, why: rejects.append((n, why))
        )
    )

    assert events == []
    assert [n for n, _ in rejects] == [2 * i + 2 for i in range(len(bad))]
    for (_, why), (_, field) in zip(rejects, bad, strict=True):
        assert why.startswith(f"{field}: "), why


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda t: Heartbeat("A", t, None, "on"), "status"),
        (lambda t: Heartbeat("", t, None, "ON"), "detector"),
        (lambda t: Heartbeat("A", float(t), None, "ON"), "sent_ns"),  # type: ignore[arg-type]
        (lambda t: FeedbackRule(min_gap_s=-1), "min_gap_s"),
        (lambda t: FeedbackRule(min_beats=1), "min_beats"),
        (lambda t: HeartbeatFeedback.from_dict({"version": 1, "detectors": []}), "state.detectors"),
        (lambda t: HeartbeatFeedback.from_dict({"version": 2, "detectors": {}}), "state.version"),
        (
            lambda t: HeartbeatFeedback.from_dict(
                {"version": 1, "detectors": {"A": {"first_ns": t, "intervals_ns": [0]}}}
            ),
            "state.detectors.A.uncounted",
        ),
        (
            lambda t: HeartbeatFeedback.from_dict(
                {
                    "version": 1,
                    "detectors": {
                        "A": {
                            "first_ns": t,
                            "intervals_ns": [NS, -NS],
                            "uncounted": [],
                            "last_status": "ON",
                        }
                    },
                }
            ),
            "state.detectors.A.intervals_ns[1]",
        ),
    ],
)
def test_bad_values_raise_an_error_naming_the_field(
    make: Callable[[int], object], field: str, base: int
) -> None:
    with pytest.raises(HeartbeatError) as raised:
        make(base)
    assert raised.value.field == field and str(raised.value).startswith(f"{field}: ")


def test_timeline_png_is_a_valid_png(base: int) -> None:
    rng = np.random.default_rng(15)
    times = sent_times(rng, base, 60, base + 20 * HOUR)
    statuses = ["OFF" if 300 < i < 400 else "ON" for i in range(len(times))]
    beats = heartbeats(rng, "A", [*times, times[-1] + 2 * HOUR], [*statuses, "ON"], untimed=0.1)
    feedback = HeartbeatFeedback()
    events = [event for hb in beats for event in feedback.observe(hb).events]
    assert [e.event for e in events] == ["missed", "back"]  # a period to shade

    for drawn in (beats, []):
        png = timeline_png(drawn, "A", base, base + DAY, events)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
        width, height = struct.unpack(">II", png[16:24])
        assert width > 400 and height > 200
        with Image.open(io.BytesIO(png)) as image:
            image.load()  # decodes every row: a truncated or corrupt file fails here
            assert image.size == (width, height)
