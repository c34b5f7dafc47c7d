import json
import pickle
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hop.models import Blob, JSONBlob
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from snews_tasks.testing.payloads import (
    DETECTORS,
    NANOS,
    coincidence_model,
    published_blobs,
    recent_time_utc,
    tier_models,
)

from snews_tasks.core.messages import (
    DETECTION_CHANNELS,
    Message,
    MessageError,
    Tier,
    check_freshness,
    parse_message,
)
from snews_tasks.core.payloads import decode_payload
from snews_tasks.core.times import format_time_ns, parse_time_ns

LIMIT = 65536
NOON_NS = int(datetime(2026, 11, 21, 12, 30, tzinfo=UTC).timestamp()) * 10**9
HOUR_NS = 3600 * 10**9
DELETE = object()

COINCIDENCE = {
    "tier": "CoincidenceTier",
    "uuid": "3f0c1a52-0d55-4c0e-9d38-7c6a1e2b9a10",
    "detector_name": "Super-K",
    "neutrino_time_utc": "2026-11-21T12:30:00.123456789Z",
    "p_val": 0.01,
}
BASES = {
    Tier.COINCIDENCE: COINCIDENCE,
    Tier.HEARTBEAT: {**COINCIDENCE, "tier": "Heartbeat", "neutrino_time_utc": DELETE, "p_val": DELETE,
                     "detector_status": "ON"},
    Tier.RETRACTION: {**COINCIDENCE, "tier": "Retraction", "neutrino_time_utc": DELETE, "p_val": DELETE,
                      "retract_latest_n": 1},
    Tier.SIGNIFICANCE: {**COINCIDENCE, "tier": "SignificanceTier", "p_values": [0.5, 0.01],
                        "t_bin_width_sec": 0.25},
    Tier.TIMING: {**COINCIDENCE, "tier": "TimingTier", "start_time_utc": "2026-11-21T12:29:59Z",
                  "timing_series": [0, 15, 210]},
}


def _message_data(base: Tier, /, **changes: object) -> dict:
    data = {**BASES[base], **changes}
    return {key: value for key, value in data.items() if value is not DELETE}


def _wire(message: Blob | JSONBlob) -> bytes:
    """The Kafka record value hop writes for a message (what the ingest reads)."""
    return message.serialize()["content"]


def _parse(data: object) -> Message:
    return parse_message(decode_payload(data, max_bytes=LIMIT), detectors=DETECTORS)


# --- real snews-pt / snews-data-formats payloads ----------------------------------------

EXPECTED_TIER_FIELDS = {
    Tier.COINCIDENCE: {"p_val": 0.07},
    Tier.SIGNIFICANCE: {"p_values": (0.5, 0.01), "t_bin_width_sec": 0.25},
    Tier.TIMING: {"timing_series": (0, 15, 210), "background_rate_Hz": 3.5,
                  "detection_channel": "Electron Antineutrino"},
    Tier.HEARTBEAT: {"detector_status": "ON"},
    Tier.RETRACTION: {"retract_latest_n": 1, "retraction_reason": "noise burst"},
}


@pytest.mark.parametrize("tier", list(Tier))
def test_every_tier_parses_alike_from_dict_json_and_pickle(tier: Tier) -> None:
    model = tier_models()[tier]
    from_pickle = _parse(_wire(Blob(pickle.dumps(model))))
    assert _parse(model.model_dump()) == from_pickle
    assert _parse(model.model_dump_json().encode()) == from_pickle
    assert _parse(model.model_dump_json()) == from_pickle
    assert _parse(_wire(JSONBlob(model.model_dump(mode="json")))) == from_pickle
    assert _parse(_wire(JSONBlob(model.model_dump_json()))) == from_pickle  # JSON in a JSON string
    assert (from_pickle.tier, from_pickle.uuid, from_pickle.detector_name) == (tier, model.uuid, "Super-K")
    assert from_pickle.meta == {"run": 7}
    assert from_pickle.machine_time_utc == model.machine_time_utc
    for name, expected in EXPECTED_TIER_FIELDS[tier].items():
        assert getattr(from_pickle, name) == expected, name


@pytest.mark.parametrize("tier", list(Tier))
def test_to_dict_is_json_safe_and_parses_back_to_the_same_message(tier: Tier) -> None:
    message = _parse(pickle.dumps(tier_models()[tier]))
    as_dict = message.to_dict()
    assert json.loads(json.dumps(as_dict, allow_nan=False)) == as_dict
    assert as_dict["tier"] == tier.value
    assert parse_message(as_dict, detectors=DETECTORS) == message


@pytest.mark.parametrize("tier", [Tier.COINCIDENCE, Tier.TIMING])
def test_neutrino_time_keeps_every_nanosecond(tier: Tier) -> None:
    model = tier_models()[tier]
    for message in (_parse(pickle.dumps(model)), _parse(model.model_dump_json())):
        assert message.neutrino_time_utc == model.neutrino_time_utc
        assert message.neutrino_time_ns % 10**9 == int(NANOS)
        assert format_time_ns(message.neutrino_time_ns) == model.neutrino_time_utc
        whole_seconds = datetime.fromisoformat(model.neutrino_time_utc[:19]).replace(tzinfo=UTC)
        assert message.neutrino_time_ns // 10**9 == int(whole_seconds.timestamp())


def test_blobs_written_by_the_snews_pt_publisher_parse() -> None:
    neutrino_time = recent_time_utc()
    blobs = published_blobs(
        {"detector_name": "IceCube", "neutrino_time_utc": neutrino_time, "p_val": 0.3, "is_test": "True"}
    )
    messages = [_parse(_wire(blob)) for blob in blobs]
    assert [(m.tier, m.detector_name, m.neutrino_time_utc, m.is_test) for m in messages] == [
        (Tier.COINCIDENCE, "IceCube", neutrino_time, True)
    ]
    assert messages[0].sent_time_utc is not None


# --- accepted variations -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"), [("True", True), ("false", False), (True, True), (None, False)]
)
def test_flags_accept_booleans_and_their_spelled_out_strings(text: object, expected: bool) -> None:
    message = parse_message(_message_data(Tier.COINCIDENCE, is_test=text), detectors=DETECTORS)
    assert message.is_test is expected


def test_fields_foreign_to_the_tier_are_kept_in_meta() -> None:
    data = _message_data(
        Tier.HEARTBEAT, meta={"run": 7}, shift="night", neutrino_time_utc="2026-11-21T12:30:00Z"
    )
    message = parse_message(data, detectors=DETECTORS)
    assert message.neutrino_time_utc is None
    assert message.meta == {"run": 7, "shift": "night", "neutrino_time_utc": "2026-11-21T12:30:00Z"}
    assert parse_message(message.to_dict(), detectors=DETECTORS) == message


def test_times_are_normalised_to_nine_digits_and_utc() -> None:
    data = _message_data(Tier.COINCIDENCE, neutrino_time_utc="2026-11-21 14:30:00.5+02:00")
    message = parse_message(data, detectors=DETECTORS)
    assert message.neutrino_time_utc == "2026-11-21T12:30:00.500000000Z"
    assert message.neutrino_time_ns == NOON_NS + 500_000_000


# --- rejected messages -----------------------------------------------------------------------

NOT_ISO = "must be an ISO 8601 time string"
BAD_MESSAGES = [
    (Tier.COINCIDENCE, {"tier": DELETE}, "tier", "missing"),
    (Tier.COINCIDENCE, {"tier": "Bogus"}, "tier", "unknown tier 'Bogus'"),
    (Tier.COINCIDENCE, {"tier": ["CoincidenceTier"]}, "tier", "unknown tier"),
    (Tier.COINCIDENCE, {"uuid": DELETE}, "uuid", "missing"),
    (Tier.COINCIDENCE, {"uuid": " "}, "uuid", "must not be empty"),
    (Tier.COINCIDENCE, {"uuid": 123}, "uuid", "must be a string, got 123"),
    (Tier.COINCIDENCE, {"uuid": "u" * 257}, "uuid", "longer than 256 characters"),
    (Tier.COINCIDENCE, {"detector_name": "Foo"}, "detector_name", "unknown detector 'Foo'"),
    (Tier.COINCIDENCE, {"detector_name": None}, "detector_name", "missing"),
    (Tier.COINCIDENCE, {"neutrino_time_utc": DELETE}, "neutrino_time_utc", "missing"),
    (Tier.COINCIDENCE, {"neutrino_time_utc": "yesterday"}, "neutrino_time_utc", "not an ISO 8601 time"),
    (Tier.COINCIDENCE, {"neutrino_time_utc": 1795000000}, "neutrino_time_utc", NOT_ISO),
    (Tier.COINCIDENCE, {"neutrino_time_utc": "2026-02-30T12:00Z"}, "neutrino_time_utc", "not an ISO"),
    (Tier.COINCIDENCE, {"neutrino_time_utc": "2026-02-30T12:00:00"}, "neutrino_time_utc", "not a valid"),
    (Tier.COINCIDENCE, {"p_val": 1.5}, "p_val", "must be between 0 and 1, got 1.5"),
    (Tier.COINCIDENCE, {"p_val": -0.1}, "p_val", "must be >= 0, got -0.1"),
    (Tier.COINCIDENCE, {"p_val": True}, "p_val", "must be a number, got True"),
    (Tier.COINCIDENCE, {"p_val": "0.5"}, "p_val", "must be a number, got '0.5'"),
    (Tier.COINCIDENCE, {"p_val": float("nan")}, "p_val", "must be a finite number"),
    (Tier.COINCIDENCE, {"p_val": float("inf")}, "p_val", "must be a finite number"),
    (Tier.COINCIDENCE, {"is_test": "maybe"}, "is_test", "must be true or false, got 'maybe'"),
    (Tier.COINCIDENCE, {"is_firedrill": 1}, "is_firedrill", "must be true or false, got 1"),
    (Tier.COINCIDENCE, {"sent_time_utc": "soon"}, "sent_time_utc", "not an ISO 8601 time"),
    (Tier.COINCIDENCE, {"meta": ["run", 7]}, "meta", "must be an object"),
    (Tier.COINCIDENCE, {"meta": {"tags": {"a"}}}, "meta", "unsupported type set (at meta.tags)"),
    (Tier.COINCIDENCE, {"meta": {"rate": [1.0, float("nan")]}}, "meta", "got nan (at meta.rate[1])"),
    (Tier.COINCIDENCE, {"meta": {"run": 1}, "run": 2}, "run", "given both at the top level and in meta"),
    (Tier.COINCIDENCE, {"meta": {1: "one"}}, "meta", "non-string key 1"),
    (Tier.COINCIDENCE, {"p_val": 2**64}, "p_val", "outside the 64-bit range"),
    (Tier.HEARTBEAT, {"detector_status": DELETE}, "detector_status", "missing"),
    (Tier.HEARTBEAT, {"detector_status": "on"}, "detector_status", "must be one of OFF, ON, got 'on'"),
    (Tier.RETRACTION, {"retract_latest_n": DELETE}, "retract_message_uuid", "retract_latest_n > 0"),
    (Tier.RETRACTION, {"retract_latest_n": 0}, "retract_message_uuid", "retract_latest_n > 0"),
    (Tier.RETRACTION, {"retract_message_uuid": "abc"}, "retract_message_uuid", "cannot be combined"),
    (Tier.RETRACTION, {"retract_latest_n": -1}, "retract_latest_n", "must be >= 0, got -1"),
    (Tier.RETRACTION, {"retract_latest_n": "2"}, "retract_latest_n", "must be an integer, got '2'"),
    (Tier.RETRACTION, {"retraction_reason": 5}, "retraction_reason", "must be a string"),
    (Tier.SIGNIFICANCE, {"p_values": DELETE}, "p_values", "missing"),
    (Tier.SIGNIFICANCE, {"p_values": [0.1, 2]}, "p_values", "item 1 must be between 0 and 1, got 2"),
    (Tier.SIGNIFICANCE, {"p_values": "0.1"}, "p_values", "must be a list"),
    (Tier.SIGNIFICANCE, {"t_bin_width_sec": -1}, "t_bin_width_sec", "must be >= 0"),
    (Tier.SIGNIFICANCE, {"t_bin_width_sec": DELETE}, "t_bin_width_sec", "missing"),
    (Tier.TIMING, {"timing_series": []}, "timing_series", "must not be empty"),
    (Tier.TIMING, {"timing_series": [1, 1.5]}, "timing_series", "item 1 must be an integer, got 1.5"),
    (Tier.TIMING, {"timing_series": DELETE}, "timing_series", "missing"),
    (Tier.TIMING, {"start_time_utc": DELETE}, "start_time_utc", "missing"),
    (Tier.TIMING, {"time_bin_width_ns": 0}, "time_bin_width_ns", "must be > 0"),
    (Tier.TIMING, {"background_rate_Hz": -2}, "background_rate_Hz", "must be >= 0"),
    (Tier.TIMING, {"detection_channel": "Muon"}, "detection_channel", "must be one of"),
]


@pytest.mark.parametrize(("tier", "changes", "field", "problem"), BAD_MESSAGES)
def test_bad_messages_name_the_field_and_the_problem(
    tier: Tier, changes: dict, field: str, problem: str
) -> None:
    with pytest.raises(MessageError) as caught:
        parse_message(_message_data(tier, **changes), detectors=DETECTORS)
    assert caught.value.field == field
    assert problem in caught.value.problem
    assert str(caught.value) == f"{field}: {caught.value.problem}"


def test_a_non_object_message_is_rejected() -> None:
    with pytest.raises(MessageError, match="^payload: must be a JSON object, got list$"):
        parse_message([COINCIDENCE], detectors=DETECTORS)


# --- rejected payloads -------------------------------------------------------------------------


def _nested_json(levels: int) -> bytes:
    """A top-level object whose meta value is a chain of lists, `levels` deep in total."""
    return b'{"meta":' + b"[" * (levels - 1) + b"]" * (levels - 1) + b"}"


def _shared_reference_pickle() -> bytes:
    """A small pickle that expands to megabytes: one list referenced many times."""
    shared = ["x" * 1000]
    return pickle.dumps(coincidence_model(meta={"copies": [shared] * 500}))


def _twice(value: object) -> bytes:
    """`value` as JSON text inside a JSON string: what hop writes for `JSONBlob(text)`."""
    return json.dumps(json.dumps(value)).encode()


IN_STRING = "(in the JSON text the payload's string holds)"
BAD_PAYLOADS = [
    (b" " * (LIMIT + 1), "payload", f"is {LIMIT + 1} bytes, over the limit of {LIMIT}"),
    ({"meta": {"text": "x" * LIMIT}}, "payload", f"over the limit of {LIMIT} bytes as JSON"),
    (b'{"detector_name": "Super-\xff"}', "payload", "not valid UTF-8 (byte 0xff at offset 25)"),
    ("{\"detector_name\": \"\ud800\"}", "payload", "not valid Unicode text"),
    (b"[1, 2]", "payload", "must be a JSON object, got list"),
    (b'"CoincidenceTier"', "payload", f"is not valid JSON: Expecting value: line 1 column 1 (char 0) {IN_STRING}"),
    (_twice(json.dumps(COINCIDENCE)), "payload", "must be a JSON object, got a string holding JSON text of type str"),
    (_twice([COINCIDENCE]), "payload", "must be a JSON object, got a string holding JSON text of type list"),
    (_twice(12345), "payload", "must be a JSON object, got a string holding JSON text of type int"),
    (json.dumps('{"uuid": "a", "uuid": "b"}').encode(), "payload", f"JSON object has the key 'uuid' twice {IN_STRING}"),
    (json.dumps('{"p_val": NaN}').encode(), "payload", f"NaN is not a valid JSON number {IN_STRING}"),
    (json.dumps("{not json").encode(), "payload", f"is not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1) {IN_STRING}"),
    (b'"{\\"uuid\\": \\"\\ud800\\"}"', "payload", f"is not valid Unicode text (surrogates not allowed) {IN_STRING}"),
    (json.dumps("[" * 5000 + "]" * 5000).encode(), "payload", f"nested deeper than 32 levels {IN_STRING}"),
    (_twice({"meta": json.loads(_nested_json(33))["meta"]}), "meta", "nested deeper than 32 levels"),
    (_twice({**COINCIDENCE, "meta": {"text": "x" * LIMIT}}), "payload", f"bytes, over the limit of {LIMIT}"),
    (json.dumps('{"p_val": 1e400}').encode(), "p_val", "must be a finite number, got inf"),
    (_wire(JSONBlob([COINCIDENCE])), "payload", "must be a JSON object, got list"),
    (12345, "payload", "must be a JSON object, got int"),
    (b"{not json", "payload", "not valid JSON"),
    (b'{"p_val": NaN}', "payload", "NaN is not a valid JSON number"),
    (b'{"p_val": -Infinity}', "payload", "-Infinity is not a valid JSON number"),
    (b'{"p_val": 1e400}', "p_val", "must be a finite number, got inf"),
    (b'{"p_val": ' + b"9" * 5000 + b"}", "payload", "not valid JSON"),
    (b'{"uuid": "a", "uuid": "b"}', "payload", "JSON object has the key 'uuid' twice"),
    (_nested_json(33), "meta", "nested deeper than 32 levels"),
    (b'{"meta":' + b"[" * 5000 + b"]" * 5000 + b"}", "payload", "nested deeper than 32 levels"),
    ({"meta": {"when": datetime(2026, 1, 1)}}, "meta", "unsupported type datetime (at meta.when)"),
    ({"": 2**63}, '""', "is an integer outside the 64-bit range"),
    ({"": {"x": 2**63}}, '""', 'outside the 64-bit range (at "".x)'),
    (_shared_reference_pickle(), "payload", f"over the limit of {LIMIT} bytes as JSON"),
    (pickle.dumps([COINCIDENCE]), "payload", "holds a list, not a SNEWS message model"),
]


@pytest.mark.parametrize(("payload", "field", "problem"), BAD_PAYLOADS)
def test_bad_payloads_name_the_problem(payload: object, field: str, problem: str) -> None:
    with pytest.raises(MessageError) as caught:
        decode_payload(payload, max_bytes=LIMIT)
    assert caught.value.field == field
    assert problem in caught.value.problem


def test_limits_accept_payloads_just_inside_them() -> None:
    assert "meta" in decode_payload(_nested_json(32), max_bytes=LIMIT)
    assert len(_shared_reference_pickle()) < 4000  # the expansion test above is about sharing
    compact = json.dumps(COINCIDENCE, separators=(",", ":")).encode()
    assert decode_payload(compact, max_bytes=len(compact)) == COINCIDENCE
    assert decode_payload(COINCIDENCE, max_bytes=len(compact)) == COINCIDENCE
    with pytest.raises(MessageError, match="over the limit"):
        decode_payload(COINCIDENCE, max_bytes=len(compact) - 1)
    twice = json.dumps(compact.decode()).encode()
    assert decode_payload(twice, max_bytes=len(twice)) == COINCIDENCE
    with pytest.raises(MessageError, match=f"^payload: is {len(twice)} bytes, over the limit"):
        decode_payload(twice, max_bytes=len(twice) - 1)


def test_a_json_string_holding_an_object_s_json_text_is_decoded_once() -> None:
    """snews-pt's connection test writes JSONBlob(model.model_dump_json()): hop encodes the text
    as a JSON string, so the object arrives JSON-encoded twice."""
    text = json.dumps(COINCIDENCE)
    for payload in (_wire(JSONBlob(text)), json.dumps(text), _twice(COINCIDENCE)):
        assert decode_payload(payload, max_bytes=LIMIT) == COINCIDENCE
        assert _parse(payload) == _parse(text.encode())


# --- freshness ---------------------------------------------------------------------------------


def _coincidence_at(t_ns: int) -> Message:
    data = _message_data(Tier.COINCIDENCE, neutrino_time_utc=format_time_ns(t_ns))
    return parse_message(data, detectors=DETECTORS)


def test_freshness_rejects_future_and_expired_neutrino_times() -> None:
    limits = {"now_ns": NOON_NS, "max_age_ns": 24 * HOUR_NS, "max_future_ns": 60 * 10**9}
    with pytest.raises(MessageError, match=r"^neutrino_time_utc: is 3\.2 h in the future"):
        check_freshness(_coincidence_at(NOON_NS + 32 * HOUR_NS // 10), **limits)
    expired = r"^neutrino_time_utc: is older than the cache window of 24 h \(25 h before server time"
    with pytest.raises(MessageError, match=expired):
        check_freshness(_coincidence_at(NOON_NS - 25 * HOUR_NS), **limits)
    check_freshness(_coincidence_at(NOON_NS + 60 * 10**9), **limits)
    check_freshness(_coincidence_at(NOON_NS - 24 * HOUR_NS), **limits)
    heartbeat = parse_message(_message_data(Tier.HEARTBEAT), detectors=DETECTORS)
    check_freshness(heartbeat, now_ns=0, max_age_ns=0, max_future_ns=0)


# --- times ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-21T12:30:00Z", NOON_NS),
        ("2026-11-21T12:30:00.123456789Z", NOON_NS + 123456789),
        ("2026-11-21T12:30:00.1Z", NOON_NS + 100_000_000),
        ("2026-11-21 12:30:00.000001", NOON_NS + 1000),
        ("2026-11-21T14:30:00.000000001+02:00", NOON_NS + 1),
        ("2026-11-21T07:00:00-05:30", NOON_NS),
        ("1969-12-31T23:59:59.999999999Z", -1),
    ],
)
def test_parse_time_ns_is_exact(text: str, expected: int) -> None:
    assert parse_time_ns(text, "t") == expected


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-21T12:30:00.1234567891Z",
        "2026-13-01T00:00:00Z",
        "2026-11-21T24:00:00Z",
        "2026-11-21T12:30:00+24:00",
        "2026-11-21",
        "2026-11-21T12:30:00Zjunk",
        "\uff12026-11-21T12:30:00Z",
        "0001-01-01T00:00:00+01:00",
        "",
        None,
        1.5,
    ],
)
def test_parse_time_ns_names_the_field_for_bad_times(text: object) -> None:
    with pytest.raises(MessageError) as caught:
        parse_time_ns(text, "sent_time_utc")
    assert caught.value.field == "sent_time_utc"


FIRST_NS = parse_time_ns("0001-01-01T00:00:00Z", "t")
LAST_NS = parse_time_ns("9999-12-31T23:59:59.999999999Z", "t")


@given(st.integers(min_value=FIRST_NS, max_value=LAST_NS))
def test_format_then_parse_is_the_identity(t_ns: int) -> None:
    text = format_time_ns(t_ns)
    assert len(text) == 30 and text.endswith("Z")
    assert parse_time_ns(text, "t") == t_ns


@given(
    st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1)),
    st.text(alphabet="0123456789", max_size=9),
    st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59),
)
def test_parse_agrees_with_datetime_for_any_offset_and_precision(
    moment: datetime, digits: str, offset_minutes: int
) -> None:
    sign = "-" if offset_minutes < 0 else "+"
    hours, minutes = divmod(abs(offset_minutes), 60)
    text = f"{moment:%Y-%m-%dT%H:%M:%S}{'.' + digits if digits else ''}{sign}{hours:02d}:{minutes:02d}"
    aware = moment.replace(microsecond=0, tzinfo=timezone(timedelta(minutes=offset_minutes)))
    expected_seconds = (aware - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(seconds=1)
    assert parse_time_ns(text, "t") == expected_seconds * 10**9 + int(digits.ljust(9, "0"))


# --- round trips -------------------------------------------------------------------------------

# Any text but blank and lone surrogates (a payload cannot carry them through UTF-8).
texts = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=256).filter(
    str.strip
)
times_ns = st.integers(
    parse_time_ns("1900-01-01T00:00:00Z", "t"), parse_time_ns("2200-01-01T00:00:00Z", "t")
)
flags = st.one_of(st.none(), st.booleans(), st.sampled_from(["True", "false", "FALSE", "tRuE"]))
probabilities = st.floats(min_value=0, max_value=1)
json_leaves = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1),
                        st.floats(allow_nan=False, allow_infinity=False), texts)
# Keys as the archive can store them (BSON keys cannot hold NUL: such a message is refused).
keys = texts.filter(lambda key: "\x00" not in key)
json_values = st.recursive(json_leaves, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=3)), max_leaves=8)


@st.composite
def iso_times(draw: st.DrawFn) -> str:
    """A time in one of the forms a detector may send: any precision, offset or none."""
    t_ns = draw(times_ns)
    offset_min = draw(st.sampled_from([0, 120, -330]))
    local = datetime(1970, 1, 1) + timedelta(seconds=t_ns // 10**9 + offset_min * 60)
    digits = f"{t_ns % 10**9:09d}"[: draw(st.integers(0, 9))]
    zone = draw(st.sampled_from(["Z", ""])) if offset_min == 0 else (
        f"{'+' if offset_min > 0 else '-'}{abs(offset_min) // 60:02d}:{abs(offset_min) % 60:02d}")
    return f"{local:%Y-%m-%dT%H:%M:%S}{'.' + digits if digits else ''}{zone}"


def optional(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(st.none(), strategy)


TIER_FIELDS = {
    Tier.COINCIDENCE: {"neutrino_time_utc": iso_times(), "p_val": optional(probabilities)},
    Tier.SIGNIFICANCE: {"neutrino_time_utc": optional(iso_times()),
                        "p_val": optional(probabilities),
                        "p_values": st.lists(probabilities, max_size=5),
                        "t_bin_width_sec": st.floats(min_value=0, allow_infinity=False)},
    Tier.TIMING: {"neutrino_time_utc": iso_times(), "p_val": optional(probabilities),
                  "start_time_utc": iso_times(),
                  "timing_series": st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1,
                                            max_size=5),
                  "time_bin_width_ns": optional(st.integers(1, 2**63 - 1)),
                  "background_rate_Hz": optional(st.floats(min_value=0, allow_infinity=False)),
                  "detection_channel": optional(st.sampled_from(sorted(DETECTION_CHANNELS)))},
    Tier.HEARTBEAT: {"detector_status": st.sampled_from(["ON", "OFF"])},
    Tier.RETRACTION: {"retraction_reason": optional(texts)},
}
RETRACTION_TARGETS = st.one_of(
    st.builds(lambda uuid: {"retract_message_uuid": uuid}, texts),
    st.builds(lambda n: {"retract_latest_n": n}, st.integers(1, 2**63 - 1)),
)


@st.composite
def valid_messages(draw: st.DrawFn) -> tuple[dict, dict]:
    """A valid payload of any tier, and the fields it sent that belong to no tier."""
    tier = draw(st.sampled_from(list(Tier)))
    extra = draw(st.dictionaries(keys.map(lambda key: f"x-{key}"), json_values, max_size=3))
    meta = st.dictionaries(keys.map(lambda key: f"m-{key}"), json_values, max_size=3)
    data = {
        "tier": tier.value, "uuid": draw(texts), "detector_name": draw(st.sampled_from(DETECTORS)),
        "id": draw(optional(texts)), "is_test": draw(flags), "is_firedrill": draw(flags),
        "is_pre_sn": draw(flags), "sent_time_utc": draw(optional(iso_times())),
        "machine_time_utc": draw(optional(iso_times())), "schema_version": draw(optional(texts)),
        "meta": draw(optional(meta)),
        **{name: draw(strategy) for name, strategy in TIER_FIELDS[tier].items()},
        **(draw(RETRACTION_TARGETS) if tier is Tier.RETRACTION else {}),
        **extra,
    }
    return data, extra


# The order to_dict writes (archives and replay output keep it): common fields, then the tier's.
WRITTEN_ORDER = [
    "tier", "id", "uuid", "detector_name", "is_test", "is_firedrill", "is_pre_sn", "sent_time_utc",
    "machine_time_utc", "meta", "schema_version", "neutrino_time_utc", "p_val", "p_values",
    "t_bin_width_sec", "start_time_utc", "timing_series", "time_bin_width_ns", "background_rate_Hz",
    "detection_channel", "detector_status", "retract_message_uuid", "retract_latest_n",
    "retraction_reason",
]


@settings(max_examples=150, deadline=None)
@given(valid_messages())
def test_every_valid_message_survives_to_dict_and_json(sent: tuple[dict, dict]) -> None:
    data, extra = sent
    message = parse_message(data, detectors=DETECTORS)
    # The writer's path: decode_payload's copy, validated without a second copy.
    assert parse_message(decode_payload(data, max_bytes=LIMIT), detectors=DETECTORS,
                         decoded=True) == message
    as_dict = message.to_dict()
    defaults = {"is_test", "is_firedrill", "is_pre_sn"} | (
        {"retract_latest_n"} if message.tier is Tier.RETRACTION else set())
    sent_fields = {key for key, value in data.items() if value is not None and key not in extra}
    assert set(as_dict) == sent_fields | defaults | ({"meta"} if extra else set())
    assert list(as_dict) == [key for key in WRITTEN_ORDER if key in as_dict]
    again = parse_message(json.loads(json.dumps(as_dict, allow_nan=False)), detectors=DETECTORS)
    assert again == message and hash(again) == hash(message)
    assert again.to_dict() == as_dict
    if data["meta"] is not None or extra:  # what meta held, then what belongs to no tier
        assert list((message.meta or {}).items()) == [*(data["meta"] or {}).items(), *extra.items()]
    if data.get("neutrino_time_utc") is not None:
        assert message.neutrino_time_ns == parse_time_ns(data["neutrino_time_utc"], "t")
        assert parse_time_ns(message.neutrino_time_utc, "t") == message.neutrino_time_ns
    attributes = {name: getattr(message, name) for name in as_dict}
    assert Message(**attributes, neutrino_time_ns=message.neutrino_time_ns) == message


def test_messages_built_from_attributes_keep_their_neutrino_time_consistent() -> None:
    built = parse_message(COINCIDENCE, detectors=DETECTORS)
    attributes = {name: getattr(built, name) for name in built.to_dict()}
    with pytest.raises(ValidationError, match="neutrino_time_ns: is "):
        Message(**attributes, neutrino_time_ns=built.neutrino_time_ns + 1)
    # In a payload it is just a field foreign to the tier, kept in meta as sent.
    from_payload = parse_message({**COINCIDENCE, "neutrino_time_ns": 5}, detectors=DETECTORS)
    assert from_payload.meta == {"neutrino_time_ns": 5}
    assert from_payload.neutrino_time_ns == built.neutrino_time_ns


def test_messages_are_frozen_and_hash_without_their_meta() -> None:
    first = parse_message({**COINCIDENCE, "meta": {"run": 1}}, detectors=DETECTORS)
    second = parse_message({**COINCIDENCE, "meta": {"run": 2}}, detectors=DETECTORS)
    assert first != second and hash(first) == hash(second)
    with pytest.raises(ValueError, match="frozen"):
        first.p_val = 0.5  # type: ignore[misc]
