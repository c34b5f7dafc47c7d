"""Every rule of SPEC section 3 and the alert events of section 4, through the replay path."""

from __future__ import annotations

import itertools

import pytest

from snews_tasks.testing.builders import LIVE, S, TEST, Run, heartbeat, observation, retraction, utc
from snews_tasks.core.alerts import false_alarm_rate_per_year
from snews_tasks.core.engine import Observation, maximal_windows
from snews_tasks.core.messages import MessageError


def types(alerts: list[dict]) -> list[str]:
    return [a["alert_type"] for a in alerts]


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_three_detector_example_gives_two_coincidences_in_any_order(order):
    msgs = [observation("Super-K", 0), observation("IceCube", 9), observation("JUNO", 11)]
    run = Run()
    run.send(*(msgs[i] for i in order))
    a, b, c = (m.uuid for m in msgs)
    assert run.member_sets() == {frozenset({a, b}), frozenset({b, c})}
    assert types(run.alerts) == ["NEW", "NEW"]
    assert {frozenset(x["observation_uuids"]) for x in run.alerts} == run.member_sets()


def test_earlier_message_arriving_later_becomes_the_initial_message():
    run = Run()
    run.send(observation("IceCube", 9), observation("JUNO", 11))
    (first,) = run.alerts
    (update,) = run.send(observation("Super-K", 5))
    assert update["alert_type"] == "UPDATE"
    assert update["alert_id"] == first["alert_id"] and update["revision"] == first["revision"] + 1
    assert update["detector_names"] == ["Super-K", "IceCube", "JUNO"]
    assert update["initial_neutrino_time_utc"] == update["neutrino_times_utc"][0]
    assert update["initial_neutrino_time_utc"] == utc(5)


def test_a_lone_message_waits_without_an_alert():
    run = Run()
    assert run.send(observation("Super-K", 0)) == []
    assert run.member_sets() == set()
    assert len(run.cached()) == 1


def test_equal_times_are_coincident():
    run = Run()
    alerts = run.send(observation("Super-K", 0), observation("IceCube", 0))
    assert types(alerts) == ["NEW"]


def test_a_gap_of_exactly_the_threshold_is_coincident():
    run = Run()
    assert types(run.send(observation("Super-K", 0), observation("IceCube", 10))) == ["NEW"]


def test_a_gap_of_threshold_plus_one_ms_is_not():
    run = Run()
    assert run.send(observation("Super-K", 0), observation("IceCube", 10.001)) == []


def test_a_gap_of_threshold_plus_one_ns_is_not():
    run = Run()
    assert run.send(observation("Super-K", 0), observation("IceCube", 10, ns=1)) == []


def test_the_same_uuid_twice_changes_nothing():
    run = Run()
    first = observation("Super-K", 0)
    run.send(first, observation("IceCube", 3))
    before = run.member_sets()
    assert run.send(first) == []
    assert run.member_sets() == before and len(run.cached()) == 2


def test_supersede_with_new_content_updates_and_identical_content_is_silent():
    run = Run()
    run.send(observation("Super-K", 0, p_val=0.1))
    (new,) = run.send(observation("IceCube", 4))
    (update,) = run.send(observation("Super-K", 1, p_val=0.1))
    assert update["alert_type"] == "UPDATE" and update["alert_id"] == new["alert_id"]
    assert update["revision"] == 2
    same = observation("Super-K", 1, p_val=0.1)
    assert run.send(same) == []
    assert same.uuid in {m.uuid for m in run.cached()}
    assert len(run.cached()) == 2
    (p_update,) = run.send(observation("Super-K", 1, p_val=0.05))
    assert p_update["revision"] == 3 and p_update["p_values"][0] == 0.05


def test_one_detector_farther_apart_than_the_threshold_keeps_separate_observations():
    run = Run()
    run.send(observation("Super-K", 0), observation("Super-K", 10.5))
    assert len(run.cached()) == 2


def test_a_supersede_removes_every_observation_of_the_detector_within_the_threshold():
    run = Run()
    run.send(observation("Super-K", 0), observation("Super-K", 15))
    run.send(observation("Super-K", 8))
    assert [m.t_ns for m in run.cached()] == [run.cached()[0].t_ns]
    assert len(run.cached()) == 1


def test_an_observation_can_belong_to_several_sublists():
    run = Run()
    run.send(observation("Super-K", 0), observation("IceCube", 8), observation("JUNO", 16))
    middle = [m for m in run.cached() if m.detector == "IceCube"][0].uuid
    assert all(middle in s for s in run.member_sets()) and len(run.member_sets()) == 2


def test_retraction_by_uuid_removes_the_member_and_then_withdraws():
    run = Run()
    a, b, c = observation("Super-K", 0), observation("IceCube", 2), observation("JUNO", 4)
    run.send(a, b, c)
    (alert,) = run.send(retraction("JUNO", target=c.uuid))
    assert alert["alert_type"] == "RETRACTION"
    assert alert["detector_names"] == ["Super-K", "IceCube"]
    (withdrawn,) = run.send(retraction("IceCube", target=b.uuid))
    assert withdrawn["alert_type"] == "RETRACTION" and withdrawn["detector_names"] == ["Super-K"]
    assert withdrawn["false_alarm_rate_per_year"] is None
    assert run.member_sets() == set()


def test_retraction_by_latest_n_removes_the_most_recently_received():
    run = Run()
    late = observation("Super-K", 100)
    early = observation("Super-K", 0)
    run.send(late, early, observation("IceCube", 1), observation("IceCube", 101))
    run.send(retraction("Super-K", latest_n=1))  # `early` arrived last
    assert {m.uuid for m in run.cached() if m.detector == "Super-K"} == {late.uuid}
    assert len(run.member_sets()) == 1


def test_a_retraction_that_matches_nothing_changes_nothing():
    run = Run()
    run.send(observation("Super-K", 0), observation("IceCube", 1))
    before = run.member_sets()
    assert run.send(retraction("Super-K", target="no-such-uuid")) == []
    assert run.send(retraction("JUNO", latest_n=3)) == []
    assert run.member_sets() == before


def test_a_retraction_acts_only_in_its_own_namespace():
    run = Run()
    real = observation("Super-K", 0)
    run.send(real, observation("IceCube", 1))
    assert run.send(retraction("Super-K", target=real.uuid, is_test=True)) == []
    assert run.send(retraction("Super-K", latest_n=1, is_test=True)) == []
    assert len(run.member_sets()) == 1


def test_a_detector_cannot_retract_another_detectors_observation():
    run = Run()
    victim = observation("Super-K", 0)
    run.send(victim, observation("IceCube", 1))
    with pytest.raises(MessageError, match="retract_message_uuid"):
        run.send(retraction("IceCube", target=victim.uuid))
    assert len(run.member_sets()) == 1


def test_test_and_live_observations_never_mix():
    run = Run()
    assert run.send(observation("Super-K", 0), observation("IceCube", 1, is_test=True)) == []
    (alert,) = run.send(observation("JUNO", 2, is_test=True))
    assert alert["is_test"] is True and alert["detector_names"] == ["IceCube", "JUNO"]
    assert run.member_sets(LIVE) == set() and len(run.member_sets(TEST)) == 1


def test_observations_expire_after_the_cache_lifetime_without_alerts():
    run = Run(cache_lifetime_s=3600)
    run.send(observation("Super-K", 0), observation("IceCube", 1))
    assert len(run.member_sets()) == 1
    assert run.send(observation("JUNO", 3601.5)) == []
    assert run.member_sets() == set()
    assert [m.detector for m in run.cached()] == ["JUNO"]


def test_expiry_reforms_the_rest_of_a_coincidence_under_its_id():
    run = Run(cache_lifetime_s=3600)
    run.send(observation("Super-K", 0), observation("IceCube", 1), observation("JUNO", 2))
    (alert,) = [a for a in run.alerts if a["alert_type"] == "UPDATE"]
    run.send(observation("KamLAND", 3600.5))
    (c,) = run.replayer.store.coincidences(LIVE)
    assert c.alert_id == alert["alert_id"]
    assert [m.detector for m in c.members] == ["IceCube", "JUNO"]


def test_two_coincidences_merging_keep_the_older_id_and_withdraw_the_other():
    run = Run()
    run.send(observation("Super-K", 0), observation("IceCube", 4))
    (older,) = run.alerts
    (younger,) = run.send(observation("JUNO", 12))
    assert younger["alert_type"] == "NEW"
    alerts = run.send(observation("Super-K", 3))  # supersedes Super-K@0: one window 3..13
    by_type = {a["alert_type"]: a for a in alerts}
    assert set(by_type) == {"UPDATE", "RETRACTION"}
    assert by_type["UPDATE"]["alert_id"] == older["alert_id"]
    assert by_type["UPDATE"]["detector_names"] == ["Super-K", "IceCube", "JUNO"]
    assert by_type["RETRACTION"]["alert_id"] == younger["alert_id"]
    assert by_type["RETRACTION"]["merged_into"] == older["alert_id"]


def test_a_split_keeps_the_id_on_the_part_with_most_members_in_common():
    run = Run()
    run.send(observation("Super-K", 0), observation("IceCube", 2), observation("JUNO", 4),
             observation("KamLAND", 9))
    (c,) = run.replayer.store.coincidences(LIVE)
    alerts = run.send(observation("KamLAND", 13))  # KamLAND moves: {SK, IC, JUNO} + {JUNO, KL}
    by_type = {a["alert_type"]: a for a in alerts}
    assert set(by_type) == {"UPDATE", "NEW"}
    assert by_type["UPDATE"]["alert_id"] == c.alert_id
    assert by_type["UPDATE"]["detector_names"] == ["Super-K", "IceCube", "JUNO"]
    assert by_type["NEW"]["detector_names"] == ["JUNO", "KamLAND"]


def test_a_supersede_that_moves_a_member_out_withdraws_a_pair():
    run = Run()
    run.send(observation("Super-K", 0), observation("IceCube", 8))
    (alert,) = run.send(observation("IceCube", 15))
    assert alert["alert_type"] == "RETRACTION" and alert["detector_names"] == ["Super-K"]
    assert run.member_sets() == set()


def test_alert_carries_the_spec_fields_and_the_false_alarm_rate():
    run = Run()
    run.send(heartbeat("KamLAND", 0), heartbeat("LVD", 0, status="OFF"))
    (alert,) = run.send(observation("Super-K", 0, p_val=0.02), observation("IceCube", 1, p_val=None))
    for key in ("alert_id", "revision", "alert_type", "detector_names", "neutrino_times_utc",
                "p_values", "observation_uuids", "initial_neutrino_time_utc",
                "false_alarm_rate_per_year", "detectors_online", "is_test", "is_firedrill",
                "server_tag", "sent_time_utc", "schema_version"):
        assert key in alert
    assert alert["p_values"] == [0.02, None]
    assert alert["detectors_online"] == 3  # KamLAND's heartbeat plus the two members
    assert alert["false_alarm_rate_per_year"] == pytest.approx(
        false_alarm_rate_per_year(3, 2, 1.0, 10.0))
    assert alert["server_tag"] == "unit" and alert["revision"] == 1


def test_false_alarm_rate_follows_the_documented_model():
    week, year = 7 * 86400, 365.25 * 86400
    f = 1 / week
    assert false_alarm_rate_per_year(2, 2, 1.0, 10.0) == pytest.approx(1 * 2 * f * f * 10 * year)
    assert false_alarm_rate_per_year(20, 3, 2.0, 5.0) == pytest.approx(
        1140 * 3 * (2 * f) ** 3 * 25 * year)
    with pytest.raises(ValueError):
        false_alarm_rate_per_year(1, 2, 1.0, 10.0)


def test_maximal_windows_drop_proper_subsets_and_duplicate_starts():
    points = (("A", 0), ("B", 0), ("C", 5), ("D", 10), ("E", 12))
    obs = [Observation(f"u{i}", d, s * S, "", None, i) for i, (d, s) in enumerate(points)]
    windows = maximal_windows(obs, 10 * S, -(2**62), 2**62)
    assert [[o.detector for o in w] for w in windows] == [["A", "B", "C", "D"], ["C", "D", "E"]]


def test_a_coincidence_swallowed_by_an_earlier_one_names_it_when_withdrawn():
    # Y = {SK@0, IC@5, JUNO@8} and X = {IC@5, JUNO@8, KL@12}; retracting KL leaves X inside Y,
    # whose start lies more than T before the retracted time.
    run = Run()
    kamland = observation("KamLAND", 12)
    run.send(observation("Super-K", 0), observation("IceCube", 5), observation("JUNO", 8),
             kamland)
    ids = {tuple(c_dets): c.alert_id for c, c_dets in
           zip(run.replayer.store.coincidences(LIVE), run.detector_sets())}
    (alert,) = run.send(retraction("KamLAND", target=kamland.uuid))
    assert alert["alert_type"] == "RETRACTION"
    assert alert["alert_id"] == ids[("IceCube", "JUNO", "KamLAND")]
    assert alert["merged_into"] == ids[("Super-K", "IceCube", "JUNO")]
