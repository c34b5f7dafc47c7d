"""Hostile input through the coincidence writer (real Redis) and the real ingest (real Kafka).

SPEC 2: bad input is rejected with a reason naming the field, recorded with its
raw payload, never crashes a worker and never blocks the messages behind it.
Malicious pickles must not run: a canary file they try to create must never
appear.
"""

from __future__ import annotations

import base64

import json
import os
import pickle
import subprocess
import time
import uuid as uuidlib
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import confluent_kafka
import pytest
import redis
from hop.io import Stream
from hop.models import Blob, JSONBlob
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from snews.models.messages import CoincidenceTierMessage

from snews_tasks.testing import builders as h
from snews_tasks.testing.builders import Reduces
from snews_tasks.testing.pipeline import pipelines, slack, start_ingest  # noqa: F401  (fixtures)
from snews_tasks.entrypoints import localstack
from snews_tasks.core.engine import LIVE
from snews_tasks.adapters.redis_keys import KEYS
from snews_tasks.core.messages import Tier
from snews_tasks.core.times import format_time_ns, parse_time_ns
from snews_tasks.core.processing import Processor
from snews_tasks.settings import KNOWN_DETECTORS
from snews_tasks.core.routing import TaskName
from snews_tasks.testing.services import writer_service
from snews_tasks.tasks.writer import CoincidenceService

pytestmark = pytest.mark.integration

S = 1_000_000_000
SETTINGS = h.settings()
LIMIT = SETTINGS.max_payload_bytes
LIFETIME_NS = round(SETTINGS.cache_lifetime_s * S)
MAX_SKEW_NS = round(SETTINGS.max_future_skew_s * S)
EARLIEST_NS = parse_time_ns("0001-01-01T00:00:00Z", "earliest")
LATEST_NS = parse_time_ns("9999-12-31T23:59:59.999999999Z", "latest")
REJECT_TASK = TaskName.STORE_REJECT
ALERT_TASK = "snews.kafka.publish_alert"
EXAMPLES = 150
#: Hostile inputs drawn before the first valid observation and again before the second.
HOSTILE_PER_GAP = (1, 8)
STRING_FIELDS = ("uuid", "detector_name", "id", "schema_version")
TIME_FIELDS = ("neutrino_time_utc", "sent_time_utc", "machine_time_utc")
FLAG_FIELDS = ("is_test", "is_firedrill", "is_pre_sn")
REQUIRED_FIELDS = ("tier", "uuid", "detector_name", "neutrino_time_utc")

#: One hostile input: (category, payload, the fields its reason may name; empty: any field).
Hostile = tuple[str, object, frozenset[str]]


def malicious_pickles(canary: Path) -> list[bytes]:
    """Pickles that create `canary` if anything unpickles them the ordinary way."""
    touch = f"touch {canary}"
    opener = f"open({str(canary)!r}, 'w')"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # snews-data-formats via numpy
        in_meta = CoincidenceTierMessage(detector_name="Super-K",
                                         neutrino_time_utc=format_time_ns(time.time_ns()),
                                         meta={"calibration": [Reduces(os.system, (touch,))]})
    attacks = [Reduces(os.system, (touch,)),
               Reduces(subprocess.Popen, (["touch", str(canary)],)),
               Reduces(eval, (opener,)), Reduces(exec, (opener,)),
               Reduces(open, (str(canary), "w")), in_meta]
    return [pickle.dumps(attack, protocol=protocol) for attack in attacks for protocol in (2, 5)]


def coincidence_dict(detector: str, t_ns: int, **fields: object) -> dict:
    return {"tier": "CoincidenceTier", "uuid": str(uuidlib.uuid4()), "detector_name": detector,
            "neutrino_time_utc": format_time_ns(t_ns), "p_val": 0.01, **fields}


def _nested(depth: int, leaf: object = 0) -> object:
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)
wrong_for_text = st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(),
                           st.lists(json_scalars, max_size=3),
                           st.dictionaries(st.text(max_size=5), json_scalars, max_size=2))
wrong_for_flag = st.one_of(st.integers(), st.floats(allow_nan=False),
                           st.text().filter(lambda s: s.lower() not in ("true", "false")),
                           st.lists(json_scalars, max_size=3))
wrong_for_p_val = st.one_of(st.text(), st.booleans(), st.lists(json_scalars, max_size=3),
                            st.dictionaries(st.text(max_size=5), json_scalars, max_size=2))
wrong_for_meta = st.one_of(st.text(), st.integers(), st.booleans(),
                           st.lists(json_scalars, max_size=3))
WRONG_TYPES = {**dict.fromkeys(STRING_FIELDS + TIME_FIELDS, wrong_for_text),
               **dict.fromkeys(FLAG_FIELDS, wrong_for_flag),
               "p_val": wrong_for_p_val, "meta": wrong_for_meta}


def hostile_inputs(canary: Path, now_ns: int) -> st.SearchStrategy[Hostile]:
    """Each kind of bad input, tagged with its category and the field its reason must name."""
    def valid(**fields: object) -> dict:
        return coincidence_dict("Super-K", now_ns - 60 * S, **fields)

    def as_json_bytes(document: dict) -> bytes:
        return json.dumps(document, allow_nan=True).encode()

    def tagged(category: str, *fields: str) -> Callable[[object], Hostile]:
        return lambda payload: (category, payload, frozenset(fields))

    def with_field(category: str, build: Callable[[str, object], object]
                   ) -> Callable[[tuple[str, object]], Hostile]:
        """For (field, value) draws: the payload `build` makes, blamed on that field."""
        return lambda drawn: (category, build(*drawn), frozenset({drawn[0]}))

    pickles = st.sampled_from(malicious_pickles(canary)).map(tagged("malicious pickle", "payload"))
    oversized = st.integers(LIMIT + 1, 4 * LIMIT).flatmap(lambda size: st.sampled_from([
        valid(meta={"blob": "x" * size}),
        as_json_bytes(valid(meta={"blob": "x" * size})),
        json.dumps(valid(meta={"blob": "x" * size})),
        b"\x80\x04" + b"\x00" * size,  # a "pickle" over the limit is refused before decoding
    ])).map(tagged("oversized", "payload"))
    deep = st.one_of(
        st.integers(33, 400).map(lambda depth: valid(meta=_nested(depth))).map(
            tagged("deep nesting", "meta")),
        st.integers(33, 200_000).map(  # deep enough for RecursionError, or over the size limit
            lambda depth: b'{"tier": "CoincidenceTier", "meta": ' + b"[" * depth
            + b"]" * depth + b"}").map(tagged("deep nesting", "meta", "payload")),
    )
    invalid_unicode = st.one_of(
        st.binary(min_size=1).filter(_not_utf8).filter(lambda b: not b.startswith(b"\x80")).map(
            tagged("invalid UTF-8", "payload")),
        st.sampled_from(["\ud800", "\udcff", "\udfff"]).map(  # text that UTF-8 cannot encode
            lambda surrogate: json.dumps(valid(), ensure_ascii=False).replace("Super-K", surrogate)
        ).map(tagged("invalid UTF-8", "payload")),
        st.tuples(st.sampled_from(["detector_name", "uuid", "id"]), st.just("\ud83d")).map(
            with_field("invalid UTF-8", lambda name, text: valid(**{name: text}))),
        st.just(as_json_bytes(valid()).replace(b"Super-K", b"\\udc80")).map(
            tagged("invalid UTF-8", "detector_name")),
    )
    bad_p_values = st.one_of(
        st.floats().filter(lambda p: not 0 <= p <= 1).map(lambda p: valid(p_val=p)).map(
            tagged("bad p-value", "p_val")),
        st.sampled_from([float("nan"), float("inf"), float("-inf")]).map(
            lambda p: as_json_bytes(valid(p_val=p))).map(tagged("bad p-value", "payload")),
        st.floats(max_value=-1e-300, allow_infinity=False).map(
            lambda p: as_json_bytes(valid(p_val=p))).map(tagged("bad p-value", "p_val")),
    )
    unknown_tier = st.one_of(
        st.text().filter(lambda t: t not in set(Tier)).map(lambda t: valid(tier=t)),
        st.sampled_from([Tier.HEARTBEAT, Tier.SIGNIFICANCE, Tier.TIMING]).map(
            lambda tier: _other_tier(tier, now_ns)),  # valid, but not for the coincidence queue
    ).map(tagged("unknown tier", "tier"))
    unknown_detector = st.one_of(
        st.text(max_size=300).filter(lambda d: d not in KNOWN_DETECTORS),
        st.sampled_from(["Kamiokande", "super-k", "IceCube ", "SNO", "DROP TABLE"]),
    ).map(lambda name: valid(detector_name=name)).map(
        tagged("unknown detector", "detector_name"))
    bad_times = st.one_of(
        st.integers(EARLIEST_NS, now_ns - LIFETIME_NS - S).map(format_time_ns),
        st.integers(now_ns + MAX_SKEW_NS + S, LATEST_NS).map(format_time_ns),
        st.sampled_from(["9999-99-99", "yesterday", "2026-02-30T00:00:00Z",
                         "2026-11-21T12:30:00+25:00", ""]),
    ).map(lambda t: valid(neutrino_time_utc=t)).map(
        tagged("time out of range", "neutrino_time_utc"))
    missing = st.tuples(st.sampled_from(REQUIRED_FIELDS), st.none()).map(
        with_field("missing field",
                   lambda name, _: {k: v for k, v in valid().items() if k != name}))
    wrong_type = st.sampled_from(sorted(WRONG_TYPES)).flatmap(
        lambda name: st.tuples(st.just(name), WRONG_TYPES[name])).map(
        with_field("wrong type", lambda name, value: valid(**{name: value})))
    bad_retractions = st.sampled_from([
        ("retract_latest_n", {"retract_latest_n": -1}),
        ("retract_latest_n", {"retract_latest_n": "all"}),
        ("retract_latest_n", {"retract_latest_n": 2**70}),
        ("retract_message_uuid", {}),
        ("retract_message_uuid", {"retract_message_uuid": "u", "retract_latest_n": 1}),
    ]).map(with_field("wrong type", lambda _, fields: {
        "tier": "Retraction", "uuid": str(uuidlib.uuid4()), "detector_name": "Super-K",
        **fields}))
    random_json = st.one_of(
        json_values.map(lambda v: json.dumps(v).encode()),
        json_values.map(json.dumps),
        st.dictionaries(st.text(max_size=8), json_values, max_size=5),
        st.binary(max_size=200),
    ).map(tagged("random JSON or bytes"))
    return st.one_of(pickles, oversized, deep, invalid_unicode, bad_p_values, unknown_tier,
                     unknown_detector, bad_times, missing, wrong_type, bad_retractions,
                     random_json)


CATEGORIES = {"malicious pickle", "oversized", "deep nesting", "invalid UTF-8", "bad p-value",
              "unknown tier", "unknown detector", "time out of range", "missing field",
              "wrong type", "random JSON or bytes"}


def _not_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def _other_tier(tier: Tier, now_ns: int) -> dict:
    """A valid message of a tier that belongs on the storage queue, not the coincidence one."""
    t = format_time_ns(now_ns - 60 * S)
    fields = {Tier.HEARTBEAT: {"detector_status": "ON"},
              Tier.SIGNIFICANCE: {"p_values": [0.5, 0.01], "t_bin_width_sec": 1},
              Tier.TIMING: {"neutrino_time_utc": t, "start_time_utc": t,
                            "timing_series": [0, 15]}}[tier]
    return {"tier": tier.value, "uuid": str(uuidlib.uuid4()), "detector_name": "JUNO", **fields}


def valid_payload(representation: str, detector: str, t_ns: int) -> tuple[object, str]:
    """One valid observation as a dict, JSON bytes, JSON text or snews-pt's pickle; and its uuid."""
    if representation == "pickle":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            model = CoincidenceTierMessage(detector_name=detector,
                                           neutrino_time_utc=format_time_ns(t_ns), p_val=0.02)
        return pickle.dumps(model), str(model.uuid)
    document = coincidence_dict(detector, t_ns)
    payload = {"dict": document, "bytes": json.dumps(document).encode(),
               "text": json.dumps(document)}[representation]
    return payload, document["uuid"]




def test_hostile_inputs_are_rejected_and_recorded_and_never_block_valid_ones(
        redis_url: str, tmp_path: Path, record_property: Callable[[str, object], None],
        capsys: pytest.CaptureFixture[str]) -> None:
    canary = tmp_path / "pwned"
    sent = h.Sent()
    writer = writer_service(redis.Redis.from_url(redis_url, decode_responses=True), sent,
                            Processor(SETTINGS))
    tried: Counter[str] = Counter()
    representations = st.sampled_from(["dict", "bytes", "text", "pickle"])
    now_ns = time.time_ns()  # one clock for the run: generation must not depend on the time
    hostile = hostile_inputs(canary, now_ns)

    @settings(max_examples=EXAMPLES, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.filter_too_much])
    @given(st.data())
    def hostile_then_valid(data: st.DataObject) -> None:
        writer.state.client.flushdb()
        gap = st.lists(hostile, min_size=HOSTILE_PER_GAP[0], max_size=HOSTILE_PER_GAP[1])
        before = data.draw(gap, label="before the first valid one")
        between = data.draw(gap, label="between the valid ones")
        first, first_uuid = valid_payload(data.draw(representations), "IceCube", now_ns - 60 * S)
        second, second_uuid = valid_payload(data.draw(representations), "JUNO", now_ns - 59 * S)

        for category, payload, fields in before:
            assert_rejected(writer, sent, payload, fields, now_ns)
            tried[category] += 1
        assert not writer.handle(first, now_ns=now_ns).startswith("rejected")
        for category, payload, fields in between:
            assert_rejected(writer, sent, payload, fields, now_ns)
            tried[category] += 1
        sent.clear()
        assert not writer.handle(second, now_ns=now_ns).startswith("rejected")

        [alert] = [document for task, document in sent if task == ALERT_TASK]
        assert alert["alert_type"] == "NEW"
        assert set(alert["observation_uuids"]) == {first_uuid, second_uuid}
        assert {o.uuid for o in writer.state.observations(LIVE)} == {first_uuid, second_uuid}
        assert not canary.exists()

    hostile_then_valid()
    total = sum(tried.values())
    assert set(tried) == CATEGORIES, f"categories never generated: {CATEGORIES - set(tried)}"
    assert total >= 2 * HOSTILE_PER_GAP[0] * EXAMPLES
    assert not canary.exists()
    record_property("hostile_inputs_tried", total)
    with capsys.disabled():  # shown with or without -s
        print(f"\nhostile inputs tried through CoincidenceService.handle: {total} "
              f"({', '.join(f'{c} {n}' for c, n in sorted(tried.items()))})")


def assert_rejected(writer: CoincidenceService, sent: h.Sent, payload: object,
                    fields: frozenset[str], now_ns: int) -> None:
    """Rejected, no exception, one reject record naming the field, nothing else handed on."""
    sent.clear()
    cached = writer.state.observations(LIVE)
    outcome = writer.handle(payload, now_ns=now_ns)
    assert outcome.startswith("rejected: "), (outcome, payload)
    [(task, reject)] = sent
    assert task == REJECT_TASK
    assert isinstance(reject["field"], str) and reject["field"], reject
    assert not fields or reject["field"] in fields, (reject["reason"], fields)
    assert reject["reason"].startswith(f"{reject['field']}: ")
    assert outcome == f"rejected: {reject['reason']}"
    reject["raw"].encode("utf-8")  # archivable: MongoDB stores only valid UTF-8
    assert writer.state.observations(LIVE) == cached
    assert writer.outbox.pending() == {}


# -- the same through the real ingest ------------------------------------------------------------

def test_hostile_kafka_messages_are_archived_as_rejects_and_the_burst_behind_them_alerts(
        pipelines, kafka_service: localstack.Service, tmp_path: Path) -> None:
    canary = tmp_path / "pwned"
    topic = f"observations-{uuidlib.uuid4().hex[:8]}"
    localstack.create_topics(kafka_service.address, [topic])
    pipeline = pipelines(settings={"SNEWS_OBSERVATION_TOPIC": topic})
    pipeline.start_workers("coincidence", "notify")
    ingest = start_ingest(pipeline)

    garbage = b"\x00\x01garbage\xff\xfe"
    nan_p_value = json.dumps(coincidence_dict("JUNO", time.time_ns(), p_val=float("nan"))).encode()
    producer = confluent_kafka.Producer({"bootstrap.servers": kafka_service.address})
    for raw in (garbage, nan_p_value):  # no hop headers: what a plain Kafka client sends
        producer.produce(topic, raw)
    assert producer.flush(10) == 0
    attack = malicious_pickles(canary)[0]  # os.system
    oversized = coincidence_dict("LVD", time.time_ns(), is_test=True, meta={"blob": "x" * LIMIT})
    command = {"command": "failed retry --all"}
    with Stream(auth=False).open(f"{kafka_service.url}/{topic}", "w",
                                 automatic_offload=False) as writer:
        writer.write(Blob(content=attack))  # how snews-pt wraps its pickles
        writer.write(JSONBlob(content=oversized))
        writer.write(JSONBlob(content=command))
    published = pipeline.cli("publish", "--example", "three-detector")
    assert published.stdout.count("sent ") == 3

    hostile_count = 5
    pipeline.wait_until(lambda: pipeline.archive.rejected.count_documents({}) == hostile_count
                        and len(pipeline.alerts(pipeline.test_alert_topic)) == 2,
                        "five archived rejects and two test alerts")
    pipeline.drain()

    rejects = {d["reason"]: d for d in pipeline.archive.rejected.find({}, {"_id": False})}
    # problem in the reason -> (field named, what the archived raw payload holds as text;
    # None: not UTF-8, so kept as base64 and labelled so)
    by_problem = {
        "is not valid UTF-8": ("payload", None),
        "NaN is not a valid JSON number": ("payload", nan_p_value.decode()),
        "disallowed global 'posix.system'": ("payload", None),
        f"over the limit of {LIMIT}": ("payload", oversized["uuid"]),
        "tier: missing": ("tier", "failed retry --all"),
    }
    for problem, (field, raw_part) in by_problem.items():
        [reject] = [d for reason, d in rejects.items() if problem in reason]
        assert reject["field"] == field
        if raw_part is None:
            assert reject["raw_encoding"] == "base64"
            assert base64.b64decode(reject["raw"], validate=True)
        else:
            assert reject["raw_encoding"] == "utf-8"
            assert raw_part in reject["raw"], reject["raw"][:80]
    assert not canary.exists()

    alerts = pipeline.alerts(pipeline.test_alert_topic)
    assert sorted(a["alert_type"] for a in alerts) == ["NEW", "NEW"]
    assert pipeline.alerts() == []  # the example is test traffic
    assert ingest.process.poll() is None, ingest.tail()
    counters = pipeline.state.client
    assert int(counters.get(KEYS.ingest_count("rejected"))) == hostile_count
    assert int(counters.get(KEYS.ingest_count("received"))) == hostile_count + 3
