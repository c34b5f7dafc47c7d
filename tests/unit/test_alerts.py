"""The alert schema: what build_alert publishes validates as `Alert` and dumps back unchanged,
and a malformed alert is refused naming its field."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from snews_tasks.core.alerts import Alert
from snews_tasks.core.messages import Message
from snews_tasks.testing.builders import Run, observation, retraction

# SPEC section 4's fields and this service's additions, in the order they are published.
PUBLISHED_ORDER = [
    "alert_id", "revision", "alert_type", "reason", "merged_into", "detector_names",
    "neutrino_times_utc", "p_values", "observation_uuids", "initial_neutrino_time_utc",
    "false_alarm_rate_per_year", "false_alarm_rate_reason", "detectors_online",
    "online_detector_names", "combined_p_value", "combined_significance_sigma", "combined_p_value_left_out",
    "combined_p_value_reason", "localization", "alert_kind", "is_test",
    "is_firedrill", "is_canary", "server_tag", "sent_time_utc", "schema_version",
]


def _alerts_of_every_kind() -> tuple[list[dict], dict[str, Message]]:
    """NEW, UPDATE, RETRACTION, a withdrawal and a merge, with the messages that made them."""
    run = Run()
    sent = {m.uuid: m for m in (observation("Super-K", 0), observation("IceCube", 4, p_val=None),
                                observation("JUNO", 12), observation("Super-K", 3))}
    sk, ic, juno, sk_again = sent.values()
    run.send(sk, ic)  # NEW
    run.send(juno)  # a second NEW, {IC, JUNO}
    run.send(sk_again)  # one window 3..13: UPDATE of the older, merge RETRACTION of the other
    kamland = observation("KamLAND", 14)
    sent[kamland.uuid] = kamland
    run.send(kamland)  # UPDATE
    run.send(retraction("KamLAND", target=kamland.uuid))  # RETRACTION
    run.send(retraction("JUNO", target=juno.uuid), retraction("IceCube", target=ic.uuid))
    return run.alerts, sent


ALERTS, SENT = _alerts_of_every_kind()


def test_the_scenario_covers_every_kind_of_alert() -> None:
    assert {a["alert_type"] for a in ALERTS} == {"NEW", "UPDATE", "RETRACTION"}
    assert any(a["merged_into"] for a in ALERTS)
    assert any(a["false_alarm_rate_per_year"] is None for a in ALERTS)  # the withdrawal
    assert any(None in a["p_values"] for a in ALERTS)


@pytest.mark.parametrize("alert", ALERTS, ids=lambda a: f"{a['alert_id']}r{a['revision']}")
def test_build_alert_output_validates_and_dumps_to_the_same_json(alert: dict) -> None:
    assert list(alert) == PUBLISHED_ORDER
    dumped = Alert.model_validate(alert).model_dump(mode="json")
    assert dumped == alert
    assert json.dumps(dumped) == json.dumps(alert)
    assert Alert.model_validate_json(json.dumps(alert)).model_dump(mode="json") == alert


@pytest.mark.parametrize("alert", ALERTS, ids=lambda a: f"{a['alert_id']}r{a['revision']}")
def test_each_member_list_describes_the_messages_sent(alert: dict) -> None:
    members = [SENT[uuid] for uuid in alert["observation_uuids"]]
    assert alert["detector_names"] == [m.detector_name for m in members]
    assert alert["neutrino_times_utc"] == [m.neutrino_time_utc for m in members]
    assert alert["p_values"] == [m.p_val for m in members]
    assert alert["initial_neutrino_time_utc"] == min(m.neutrino_time_utc for m in members)


VALID = next(a for a in ALERTS if len(a["detector_names"]) == 2)
BAD_FIELDS = [
    ("alert_id", ""),
    ("alert_id", None),
    ("revision", "2"),
    ("revision", True),
    ("revision", 0),
    ("revision", 1.0),
    ("alert_type", "new"),
    ("merged_into", 5),
    ("detector_names", "Super-K"),
    ("detector_names", ["Super-K", 7]),
    ("neutrino_times_utc", ("a", "b")),
    ("p_values", [0.1, "0.2"]),
    ("false_alarm_rate_per_year", -1.0),
    ("false_alarm_rate_per_year", "0.1"),
    ("detectors_online", 2.0),
    ("online_detector_names", "Super-K"),
    ("is_test", "false"),
    ("is_firedrill", 1),
    ("is_canary", None),
    ("server_tag", b"unit"),
    ("schema_version", 1.0),
]


@pytest.mark.parametrize(("field", "value"), BAD_FIELDS)
def test_a_malformed_alert_is_refused_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as caught:
        Alert.model_validate({**VALID, field: value})
    assert caught.value.errors()[0]["loc"][0] == field
    assert str(caught.value).splitlines()[1].startswith(field)


@pytest.mark.parametrize("field", PUBLISHED_ORDER)
def test_every_field_is_required(field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Alert.model_validate({k: v for k, v in VALID.items() if k != field})
    assert [(e["loc"], e["type"]) for e in caught.value.errors()] == [((field,), "missing")]


@pytest.mark.parametrize("field", ["neutrino_times_utc", "p_values", "observation_uuids"])
def test_member_lists_must_have_one_entry_per_detector(field: str) -> None:
    with pytest.raises(ValidationError, match=f"{field} has 1 entries, detector_names 2"):
        Alert.model_validate({**VALID, field: VALID[field][:1]})


def test_fields_the_schema_does_not_know_travel_along() -> None:
    grown = {**VALID, "combined_p_value": 0.004}
    assert Alert.model_validate(grown).model_dump(mode="json") == grown


def test_an_alert_cannot_be_changed_once_built() -> None:
    alert = Alert.model_validate(VALID)
    with pytest.raises(ValidationError, match="frozen"):
        alert.revision = 99  # type: ignore[misc]
