"""GCN SNEWS2 notices: valid against GCN's own schema files, with the alert's facts mapped."""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snews_tasks.testing.gcn_schema import SCHEMA_DIR, schema_errors
from snews_tasks.core.gcn import (
    AlertFieldError,
    alert_notice,
    gcn_notice,
    notice_file_name,
    wants_notice,
)

DETECTORS = (
    "Baksan", "Borexino", "DS-20K", "DUNE", "HALO", "HALO-1kT", "Hyper-K", "IceCube", "JUNO",
    "KM3NeT", "KamLAND", "LVD", "LZ", "MicroBooNe", "NOvA", "PandaX-4T", "SBND", "SNO+",
    "Super-K", "XENONnT",
)  # fmt: skip
UNCONFIGURED = "Retired-Detector"  # a member the configuration no longer lists
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
NOW_NS = (datetime.now(UTC) - EPOCH) // timedelta(microseconds=1) * 1000
SECONDS_PER_YEAR = 365.25 * 24 * 3600
# The form the core DateTime schema's description gives (it has no format or pattern).
GCN_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")


def iso_ns(t_ns: int) -> str:
    seconds, nanos = divmod(t_ns, 10**9)
    return f"{(EPOCH + timedelta(seconds=seconds)):%Y-%m-%dT%H:%M:%S}.{nanos:09d}Z"


def gcn_time_ns(value: str) -> int:
    assert GCN_TIME.fullmatch(value), value
    return (datetime.fromisoformat(value) - EPOCH) // timedelta(microseconds=1) * 1000


def alert_time_ns(value: str) -> int:
    """Inverse of iso_ns (the alert's 9-digit form)."""
    return gcn_time_ns(value[:19] + ".000000Z") + int(value[20:29])


@st.composite
def project_alerts(draw: st.DrawFn) -> dict[str, Any]:
    """Alerts as the engine builds them, of every type, including withdrawn ones."""
    alert_type = draw(st.sampled_from(["NEW", "UPDATE", "RETRACTION"]))
    pool = [*DETECTORS, UNCONFIGURED]
    low = 0 if alert_type == "RETRACTION" else 2
    names = draw(st.lists(st.sampled_from(pool), min_size=low, max_size=7, unique=True))
    start = NOW_NS - draw(st.integers(0, 48 * 3600 * 10**9))
    offsets = sorted(draw(st.lists(st.integers(0, 10 * 10**9), min_size=len(names),
                                   max_size=len(names))))  # fmt: skip
    times = [iso_ns(start + dt) for dt in offsets]
    p_value = st.none() | st.floats(0, 1)
    # rates far below any real one would make `far` a subnormal float in Hz and lose digits
    rates = st.just(0.0) | st.floats(1e-290, 1e6)
    far = st.none() if len(names) < 2 else st.none() | rates
    uuids = st.uuids().map(str)
    return {
        "alert_id": draw(uuids | st.integers(0, 10**6).map("C{:06d}".format)),
        "revision": draw(st.integers(1, 10**4)),
        "alert_type": alert_type,
        "reason": draw(st.none() | st.text(max_size=20)),
        "merged_into": draw(st.none() | uuids),
        "detector_names": names,
        "neutrino_times_utc": times,
        "p_values": draw(st.lists(p_value, min_size=len(names), max_size=len(names))),
        "observation_uuids": draw(st.lists(uuids, min_size=len(names), max_size=len(names))),
        "initial_neutrino_time_utc": times[0] if times else None,
        "false_alarm_rate_per_year": draw(far),
        "false_alarm_rate_reason": draw(st.text(max_size=30)),
        "detectors_online": draw(st.integers(0, len(DETECTORS))),
        "is_test": draw(st.booleans()),
        "is_firedrill": draw(st.booleans()),
        "is_canary": draw(st.booleans()),
        "server_tag": draw(st.text(min_size=1, max_size=12)),
        "sent_time_utc": iso_ns(NOW_NS + draw(st.integers(0, 10**9))),
        "schema_version": "1.0",
        **draw(st.fixed_dictionaries({}, optional={
            "combined_p_value": st.floats(0, 1),
            "combined_significance_sigma": st.floats(-10, 40),
            "localization": st.fixed_dictionaries({
                "skymap": st.just("map.fits"), "ra_deg": st.floats(0, 360),
                "dec_deg": st.floats(-90, 90), "area_50_deg2": st.floats(0, 41253),
                "area_90_deg2": st.floats(0, 41253), "detectors": st.just(names),
            }),
        })),
    }  # fmt: skip


def sample_alert() -> dict[str, Any]:
    t0 = NOW_NS - 60 * 10**9
    return {
        "alert_id": "C000042", "revision": 3, "alert_type": "UPDATE", "reason": None,
        "merged_into": None, "detector_names": ["Super-K", "IceCube", "KamLAND"],
        "neutrino_times_utc": [iso_ns(t0), iso_ns(t0 + 1_234_567_891), iso_ns(t0 + 4 * 10**9)],
        "p_values": [0.01, None, 0.2], "observation_uuids": ["u1", "u2", "u3"],
        "initial_neutrino_time_utc": iso_ns(t0), "false_alarm_rate_per_year": 3.2e-3,
        "false_alarm_rate_reason": "3-fold", "detectors_online": 6, "is_test": False,
        "is_firedrill": False, "is_canary": False, "server_tag": "test-server",
        "sent_time_utc": iso_ns(NOW_NS), "schema_version": "1.0",
    }  # fmt: skip


def test_the_harness_accepts_every_example_shipped_with_the_schema() -> None:
    examples = sorted((SCHEMA_DIR / "snews2").glob("*.example.json"))
    assert len(examples) == 3
    for path in examples:
        assert schema_errors(json.loads(path.read_text())) == [], path.name


def _set(path: list[str], value: Any) -> Callable[[dict[str, Any]], None]:
    def breaker(notice: dict[str, Any]) -> None:
        target = notice
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return breaker


@pytest.mark.parametrize(
    "breaker",
    [
        _set(["alert_tense"], "live"),
        _set(["alert_type"], "NEW"),
        _set(["messenger"], "neutrino"),
        _set(["record_number"], "3"),
        _set(["far"], "3e-10"),
        _set(["detector_status", "Super-K"], "ON"),
        _set(["event_times_utc"], ["2026-01-01T00:00:00.000000Z", 5]),
        _set(["tier_data", "p_values"], [0.01, -0.5, 0.2]),
        _set(["tier_data"], []),
        lambda notice: notice.pop("detector_status"),
        lambda notice: notice.pop("snews2_tier"),
    ],
)
def test_the_harness_rejects_a_broken_notice(breaker: Callable[[dict[str, Any]], None]) -> None:
    notice = gcn_notice(sample_alert(), detectors=DETECTORS, online=["JUNO"])
    assert schema_errors(notice) == []
    broken = copy.deepcopy(notice)
    breaker(broken)
    assert schema_errors(broken) != []


@settings(max_examples=150, deadline=None)
@given(
    alert=project_alerts(),
    online=st.sets(st.sampled_from(DETECTORS)),
    skymap_url=st.none() | st.just("https://snews2.example/skymaps/x.fits"),
)
def test_every_alert_gives_a_valid_notice_with_its_facts_mapped(
    alert: dict[str, Any], online: set[str], skymap_url: str | None
) -> None:
    notice = gcn_notice(alert, detectors=DETECTORS, online=online, skymap_url=skymap_url)
    assert schema_errors(notice) == []
    json.dumps(notice, allow_nan=False)  # plain JSON, as Kafka and GCN carry it

    expected_type = {"NEW": "initial", "UPDATE": "update", "RETRACTION": "retraction"}
    assert notice["alert_type"] == expected_type[alert["alert_type"]]
    assert notice["record_number"] == alert["revision"]
    assert notice["id"] == alert["alert_id"]
    assert (notice["mission"], notice["messenger"]) == ("SNEWS", "Neutrino")
    assert notice["snews2_tier"] == "CoincidenceTier"
    assert notice["snews_schema_version"] == alert["schema_version"]
    not_live = alert["is_test"] or alert["is_firedrill"] or alert["is_canary"]
    assert notice["alert_tense"] == ("test" if not_live else "current")

    rate = alert["false_alarm_rate_per_year"]
    if rate is None:
        assert "far" not in notice
    else:
        assert math.isclose(notice["far"] * SECONDS_PER_YEAR, rate, rel_tol=1e-12, abs_tol=0)
    assert notice.get("healpix_url") == skymap_url

    members = alert["detector_names"]
    status = notice["detector_status"]
    assert set(DETECTORS) <= set(status)
    assert {d for d, s in status.items() if s == "triggered"} == set(members)
    assert {d for d, s in status.items() if s == "on"} == online - set(members)
    assert set(status) == set(DETECTORS) | set(members)

    sent_ns = alert_time_ns(alert["sent_time_utc"])
    assert 0 <= sent_ns - gcn_time_ns(notice["alert_datetime"]) < 1000
    assert len(notice["event_times_utc"]) == len(members)
    for given_time, notice_time in zip(alert["neutrino_times_utc"], notice["event_times_utc"]):
        # cut to the microsecond
        assert 0 <= alert_time_ns(given_time) - gcn_time_ns(notice_time) < 1000
    if members:
        assert notice["trigger_time"] == notice["event_times_utc"][0]
        assert notice["tier_data"]["neutrino_time_utc"] == notice["trigger_time"]
    else:
        assert "trigger_time" not in notice

    tier = notice["tier_data"]
    assert tier["detector_names"] == members
    assert tier["p_value_reported"] == [p is not None for p in alert["p_values"]]
    assert tier["p_values"] == [1.0 if p is None else p for p in alert["p_values"]]
    for key in ("combined_p_value", "combined_significance_sigma"):
        assert tier.get(key) == alert.get(key)
    if "localization" in alert:
        summary = {k: alert["localization"][k] for k in ("ra_deg", "dec_deg", "area_50_deg2",
                                                           "area_90_deg2")}  # fmt: skip
        assert tier["localization"] == summary

    assert notice_file_name(alert) == f"{alert['alert_id']}-{alert['revision']}.json"


def test_shorter_alert_times_are_padded_to_microseconds() -> None:
    day = iso_ns(NOW_NS)[:10]
    alert = sample_alert() | {"sent_time_utc": f"{day}T12:30:05Z"}
    alert["neutrino_times_utc"][1] = f"{day}T12:30:04.5Z"
    notice = gcn_notice(alert, detectors=DETECTORS, online=[])
    assert notice["alert_datetime"] == f"{day}T12:30:05.000000Z"
    assert notice["event_times_utc"][1] == f"{day}T12:30:04.500000Z"


def test_a_time_at_the_end_of_a_day_is_cut_not_rounded_into_the_next() -> None:
    day = iso_ns(NOW_NS)[:10]
    alert = sample_alert() | {"sent_time_utc": f"{day}T23:59:59.999999999Z"}
    assert gcn_notice(alert, detectors=DETECTORS, online=[])["alert_datetime"] == (
        f"{day}T23:59:59.999999Z"
    )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"alert_type": "COINC_MSG"}, "alert_type"),
        ({"revision": 0}, "revision"),
        ({"revision": True}, "revision"),
        ({"alert_id": ""}, "alert_id"),
        ({"p_values": [0.01, None, 1.5]}, "p_values[2]"),
        ({"p_values": [0.01, None, math.nan]}, "p_values[2]"),
        ({"p_values": [0.01, None]}, "detector_names"),
        ({"neutrino_times_utc": ["yesterday", "now", "later"]}, "neutrino_times_utc[0]"),
        ({"detector_names": "Super-K"}, "detector_names"),
        ({"false_alarm_rate_per_year": -1.0}, "false_alarm_rate_per_year"),
        ({"false_alarm_rate_per_year": "often"}, "false_alarm_rate_per_year"),
        ({"sent_time_utc": "2026-02-30T00:00:00Z"}, "sent_time_utc"),
        ({"is_test": "no"}, "is_test"),
        ({"combined_p_value": 2.0}, "combined_p_value"),
        ({"localization": {"ra_deg": "north"}}, "localization.ra_deg"),
    ],
)
def test_a_malformed_alert_is_refused_naming_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(AlertFieldError) as caught:
        gcn_notice(sample_alert() | change, detectors=DETECTORS, online=[])
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


def test_a_missing_field_is_named() -> None:
    alert = sample_alert()
    del alert["is_canary"]
    with pytest.raises(AlertFieldError, match=r"^is_canary: is missing$"):
        gcn_notice(alert, detectors=DETECTORS, online=[])


@pytest.mark.parametrize("argument", ["detectors", "online"])
def test_a_lone_string_is_not_taken_for_a_list_of_detectors(argument: str) -> None:
    arguments: dict[str, Any] = {"detectors": DETECTORS, "online": [], argument: "Super-K"}
    with pytest.raises(AlertFieldError, match=f"^{argument}: "):
        gcn_notice(sample_alert(), **arguments)


@pytest.mark.parametrize("alert_id", ["../etc/passwd", "a/b", ".hidden", "", "C 1", "C\x00"])
def test_an_alert_id_that_is_no_plain_file_name_gets_no_file_name(alert_id: str) -> None:
    with pytest.raises(AlertFieldError, match="^alert_id: "):
        notice_file_name(sample_alert() | {"alert_id": alert_id})


def test_the_task_notice_takes_online_detectors_and_sky_map_from_the_alert() -> None:
    alert = {**sample_alert(), "online_detector_names": ["IceCube", "JUNO", "KamLAND", "Super-K"],
             "localization": {"skymap_url": "https://snews.example/skymaps/C000042-3.fits"}}
    notice = alert_notice(alert, detectors=DETECTORS)
    assert schema_errors(notice) == []
    assert notice["healpix_url"] == "https://snews.example/skymaps/C000042-3.fits"
    assert {d for d, s in notice["detector_status"].items() if s == "on"} == {"JUNO"}
    older = alert_notice(sample_alert(), detectors=DETECTORS)  # before online_detector_names
    assert "on" not in older["detector_status"].values() and "healpix_url" not in older


@pytest.mark.parametrize(("fields", "wanted"), [
    ({}, True), ({"is_firedrill": True}, True), ({"is_test": True}, False),
    ({"is_canary": True, "is_test": True}, False), ({"alert_kind": "significance"}, False),
])
def test_live_and_fire_drill_coincidences_get_notices(fields: dict, wanted: bool) -> None:
    assert wants_notice({**sample_alert(), **fields}) is wanted
