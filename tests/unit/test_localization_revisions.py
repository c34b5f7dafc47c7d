"""How a localization becomes an alert revision, and which revisions are localized.

Driven through the replay harness with a stand-in localizer (no sky maps here: the maps are
tests/unit/test_localization.py's), so the rules are those of the writer: the result is the
coincidence's next revision while its members are those localized, and is dropped otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from snews_tasks.core.engine import LIVE
from snews_tasks.core.messages import Tier
from snews_tasks.core.localization_request import (
    attach_payload,
    parse_attach_payload,
    reason_of,
    request_of,
)
from snews_tasks.core.processing import Processor
from snews_tasks.core.replay import Replayer
from snews_tasks.core.routing import TaskName, deliveries, needs_localization
from snews_tasks.core.times import format_time_ns
from snews_tasks.testing.builders import T0, message, observation, retraction, settings


def summary(detectors: Sequence[str], **fields: Any) -> dict[str, Any]:
    return {"skymap": "x-1.fits", "ra_deg": 10.0, "dec_deg": -20.0, "area_50_deg2": 100.0,
            "area_90_deg2": 400.0, "detectors": list(detectors), "refused": None, **fields}


class Localizer:
    """Answers every request at once with a summary; remembers what it was asked."""

    def __init__(self) -> None:
        self.asked: list[dict] = []
        self.timing_seen: list[list[str]] = []

    def __call__(self, alert: dict, timing: Sequence[Mapping[str, Any]]) -> dict:
        self.asked.append(alert)
        self.timing_seen.append([m["uuid"] for m in timing])
        request = request_of(alert)
        return attach_payload(request, summary(request.detectors))


def replayer(localizer: Localizer | None = None) -> Replayer:
    return Replayer(Processor(settings()), localizer)


def feed(run: Replayer, *messages) -> list[dict]:
    return [alert for m in messages for alert in run.feed(m)]


def shape(alerts: list[dict]) -> list[tuple[str, int, bool]]:
    return [(a["alert_type"], a["revision"], a["localization"] is not None) for a in alerts]


def test_the_localized_revision_follows_each_change_of_members() -> None:
    localizer = Localizer()
    run = replayer(localizer)
    a, b, c = observation("IceCube", 0), observation("Super-K", 0.01), observation("JUNO", 0.02)
    first = feed(run, a, b)
    assert shape(first) == [("NEW", 1, False), ("UPDATE", 2, True)]
    assert first[1]["reason"] == reason_of(first[1]["localization"])
    assert first[1]["reason"].startswith("localization added: 2 detectors")
    grown = feed(run, c)
    assert shape(grown) == [("UPDATE", 3, False), ("UPDATE", 4, True)]
    assert grown[1]["localization"]["detectors"] == ["IceCube", "Super-K", "JUNO"]
    assert [alert["revision"] for alert in localizer.asked] == [1, 3]


def test_a_p_value_change_keeps_the_map_and_asks_for_none() -> None:
    localizer = Localizer()
    run = replayer(localizer)
    a, b = observation("IceCube", 0), observation("Super-K", 0.01)
    feed(run, a, b)
    corrected = observation("Super-K", 0.01, p_val=0.2)
    [update] = feed(run, corrected)
    assert (update["alert_type"], update["revision"]) == ("UPDATE", 3)
    assert update["localization"] == summary(["IceCube", "Super-K"])
    assert len(localizer.asked) == 1
    moved = observation("Super-K", 0.5)
    assert shape(feed(run, moved)) == [("UPDATE", 4, False), ("UPDATE", 5, True)]


def test_a_retraction_leaving_one_detector_has_no_localization() -> None:
    localizer = Localizer()
    run = replayer(localizer)
    a, b = observation("IceCube", 0), observation("Super-K", 0.01)
    feed(run, a, b)
    [withdrawn] = feed(run, retraction("Super-K", target=b.uuid))
    assert (withdrawn["alert_type"], withdrawn["detector_names"]) == ("RETRACTION", ["IceCube"])
    assert withdrawn["localization"] is None
    assert len(localizer.asked) == 1


def test_a_result_for_changed_members_or_a_second_result_is_dropped() -> None:
    run = replayer()
    a, b, c = observation("IceCube", 0), observation("Super-K", 0.01), observation("JUNO", 0.02)
    [new] = feed(run, a, b)
    stale = attach_payload(request_of(new), summary(["IceCube", "Super-K"]))
    [grown] = feed(run, c)
    fresh = attach_payload(request_of(grown), summary(["IceCube", "Super-K", "JUNO"]))
    processor = run.processor

    def attach(payload: dict) -> tuple[str, list[dict]]:
        outcome = processor.attach_localization(run.store, payload, now_ns=run.clock_ns,
                                                heartbeat_online=[])
        run.store.apply(outcome.namespace, outcome.changes)
        return outcome.changes.describe(), outcome.alerts

    assert attach(stale) == ("localization dropped: the members have changed since", [])
    described, [localized] = attach(fresh)
    assert (described, localized["revision"]) == ("localized", 3)
    assert attach(fresh)[1] == []  # a redelivered result changes nothing
    [coincidence] = run.store.coincidences(LIVE)
    assert coincidence.localization == summary(["IceCube", "Super-K", "JUNO"])


def test_replay_hands_the_stream_s_timing_tier_messages_to_the_localizer() -> None:
    localizer = Localizer()
    run = replayer(localizer)
    timing = message(Tier.TIMING, "IceCube", neutrino_time_ns=T0,
                     neutrino_time_utc=format_time_ns(T0), start_time_utc=format_time_ns(T0),
                     timing_series=(0, 1000, 2000))
    assert run.feed(timing) == []
    feed(run, observation("IceCube", 0), observation("Super-K", 0.01))
    assert localizer.timing_seen == [[timing.uuid]]


@pytest.mark.parametrize("payload, field", [
    ("nonsense", "must be an object"),
    ({"alert_id": "", "is_test": False, "key": [[1, "A"]], "localization": {}}, "alert_id"),
    ({"alert_id": "a", "is_test": 0, "key": [[1, "A"]], "localization": {}}, "is_test"),
    ({"alert_id": "a", "is_test": False, "key": [["1", "A"]], "localization": {}}, "key"),
    ({"alert_id": "a", "is_test": False, "key": [], "localization": {}}, "key"),
    ({"alert_id": "a", "is_test": False, "key": [[1, "A"]], "localization": []}, "localization"),
])
def test_a_malformed_result_is_refused_naming_the_field(payload: object, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        parse_attach_payload(payload)


def alert(**fields: Any) -> dict[str, Any]:
    return {"detector_names": ["IceCube", "JUNO"], "localization": None, "merged_into": None,
            "is_canary": False, **fields}


@pytest.mark.parametrize("fields, wanted", [
    ({}, True),
    ({"localization": summary(["IceCube", "JUNO"])}, False),  # localized, or carried over
    ({"detector_names": ["IceCube"]}, False),  # a withdrawn coincidence's last detector
    ({"merged_into": "other"}, False),
    ({"is_canary": True}, False),
])
def test_which_alert_revisions_are_localized(fields: dict, wanted: bool) -> None:
    assert needs_localization(alert(**fields)) is wanted
    assert (TaskName.LOCALIZE in deliveries("alert", alert(**fields))) is wanted


def test_every_alert_is_stored_and_published_canaries_skip_slack_and_tests_gcn() -> None:
    assert deliveries("alert", alert()) == [TaskName.STORE_ALERT, TaskName.PUBLISH_ALERT,
                                            TaskName.POST_SLACK, TaskName.LOCALIZE,
                                            TaskName.PUBLISH_NOTICE]
    assert deliveries("alert", alert(is_firedrill=True))[-1] is TaskName.PUBLISH_NOTICE
    assert deliveries("alert", alert(is_test=True)) == [TaskName.STORE_ALERT,
                                                        TaskName.PUBLISH_ALERT,
                                                        TaskName.POST_SLACK, TaskName.LOCALIZE]
    assert deliveries("alert", alert(is_canary=True, is_test=True)) == [TaskName.STORE_ALERT,
                                                                        TaskName.PUBLISH_ALERT]
    assert deliveries("observation", {}) == [TaskName.STORE_OBSERVATIONS]
