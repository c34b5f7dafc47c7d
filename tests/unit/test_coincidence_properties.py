"""Random streams against a brute-force reference written from the definition (SPEC section 3)."""

from __future__ import annotations

from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from snews_tasks.testing.builders import LIVE, TEST, S, Run, observation, retraction
from snews_tasks.core.engine import brute_force_coincidences

DETECTORS = ("Super-K", "IceCube", "JUNO", "KamLAND", "LVD")
THRESHOLD_NS = 10 * S

half_seconds = st.integers(min_value=0, max_value=120).map(lambda h: h / 2)
new_observation = st.tuples(st.just("obs"), st.sampled_from(DETECTORS), half_seconds,
                            st.sampled_from([0.01, 0.2, None]), st.booleans())
operation = st.one_of(
    new_observation, new_observation, new_observation,
    st.tuples(st.just("dup"), st.integers(min_value=0, max_value=50)),
    st.tuples(st.just("retract"), st.integers(min_value=0, max_value=50)),
    st.tuples(st.just("retract_latest"), st.sampled_from(DETECTORS),
              st.integers(min_value=1, max_value=2), st.booleans()),
)


def play(ops) -> Run:
    run = Run()
    sent = []
    for op in ops:
        if op[0] == "obs":
            _, det, t, p, is_test = op
            m = observation(det, t, p_val=p, is_test=is_test)
        elif op[0] == "dup" and sent:
            m = sent[op[1] % len(sent)]
        elif op[0] == "retract" and sent:
            target = sent[op[1] % len(sent)]
            m = retraction(target.detector_name, target=target.uuid, is_test=target.is_test)
        elif op[0] == "retract_latest":
            _, det, n, is_test = op
            m = retraction(det, latest_n=n, is_test=is_test)
        else:
            continue
        run.send(m)
        if op[0] == "obs":
            sent.append(m)
    return run


def alerts_by_id(alerts: list[dict]) -> dict[str, list[dict]]:
    grouped = defaultdict(list)
    for a in alerts:
        grouped[a["alert_id"]].append(a)
    return grouped


def reconstructed_from_alerts(alerts: list[dict], is_test: bool) -> set[frozenset]:
    """What a consumer that only reads the alert topic believes the coincidences are."""
    latest: dict[str, dict] = {}
    for a in alerts:
        if a["is_test"] == is_test:
            latest[a["alert_id"]] = a
    return {
        frozenset(zip(a["detector_names"], a["neutrino_times_utc"]))
        for a in latest.values()
        if not (a["alert_type"] == "RETRACTION"
                and (a["merged_into"] or len(set(a["detector_names"])) < 2))
    }


@settings(max_examples=300, deadline=None)
@given(st.lists(operation, max_size=40))
def test_random_streams_match_the_brute_force_reference_and_the_alert_stream(ops):
    run = play(ops)
    for namespace, is_test in ((LIVE, False), (TEST, True)):
        assert run.member_sets(namespace) == brute_force_coincidences(
            run.cached(namespace), THRESHOLD_NS)
        state_content = {
            frozenset((m.detector, m.neutrino_time_utc) for m in c.members)
            for c in run.replayer.store.coincidences(namespace)
        }
        assert reconstructed_from_alerts(run.alerts, is_test) == state_content

    for alert_id, history in alerts_by_id(run.alerts).items():
        kinds = [a["alert_type"] for a in history]
        assert kinds[0] == "NEW" and kinds.count("NEW") == 1, kinds
        revisions = [a["revision"] for a in history]
        assert all(b > a for a, b in zip(revisions, revisions[1:])), revisions


@st.composite
def separated_observations(draw):
    """Observations where no detector has two within the threshold: arrival order can't matter."""
    obs = []
    for det in draw(st.lists(st.sampled_from(DETECTORS), min_size=1, max_size=5, unique=True)):
        t = draw(half_seconds)
        for gap in draw(st.lists(st.integers(min_value=21, max_value=60), max_size=3)):
            obs.append((det, t))
            t += gap / 2
        obs.append((det, t))
    return [observation(d, t) for d, t in obs]


@settings(max_examples=200, deadline=None)
@given(separated_observations(), st.randoms(use_true_random=False))
def test_coincidences_do_not_depend_on_arrival_order(messages, rng):
    shuffled = list(messages)
    rng.shuffle(shuffled)
    first, second = Run(), Run()
    first.send(*messages)
    second.send(*shuffled)
    assert first.member_sets() == second.member_sets()
    assert first.member_sets() == brute_force_coincidences(first.cached(), THRESHOLD_NS)
    assert len(first.cached()) == len(messages)
