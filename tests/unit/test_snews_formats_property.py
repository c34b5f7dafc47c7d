"""Every message the collaboration's own client can produce is accepted, unless SPEC section 2
refuses it, and then it is refused for the reason this service gives for that rule.

The messages come from snews-data-formats itself, tier by tier: from its JSON schemas
(hypothesis-jsonschema) and from its pydantic models (values drawn from the fields' types),
kept when the models accept them, as snews-pt only sends what they accept. Each is sent the
three ways a detector's message reaches the ingest: the models' JSON as an object, that JSON
inside a JSON string (snews-pt's ``JSONBlob(model.model_dump_json())``) and the pickle of
snews-pt's Publisher; then parsed as the ingest parses it and, for the coincidence tier,
checked for freshness as the coincidence writer does. `expected_rejections` says what SPEC
section 2 refuses in what arrived.

Where the models and SPEC disagree, SPEC wins (and `expected_rejections` says so where it
applies such a rule); the models accept, among others:

* any detector name (SPEC: an unknown detector is refused);
* test messages with any neutrino time, and non-test ones up to 48 h old (SPEC: a neutrino
  time in the future or older than the cache window, 24 h by default, is refused in live mode);
* times numpy reads that are no ISO 8601 UTC time, such as "NaT" or the year 10000;
* an infinite ``t_bin_width_sec`` or ``background_rate_Hz``, and non-finite numbers or
  integers beyond 64 bits in ``meta`` (SPEC: wrong types; JSON cannot carry them, and pydantic
  writes infinity as null, so over JSON a required one arrives missing).

Where SPEC is silent, this service's own rules stand: blank text, and text over 256
characters (2000 for a retraction reason), is refused.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import math
import pickle
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any

import bson
import pytest
from hop.models import Blob, JSONBlob
from hypothesis import HealthCheck, event, given, reject, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema
from pydantic import BaseModel, ValidationError
from snews.models.messages import (
    CoincidenceTierMessage,
    HeartbeatMessage,
    RetractionMessage,
    SignificanceTierMessage,
    TimingTierMessage,
)

from snews_tasks.core.alert_localization import timing_estimate
from snews_tasks.core.messages import Message, MessageError, Tier, check_freshness, parse_message
from snews_tasks.core.payloads import decode_payload
from snews_tasks.core.significance_tier import binned_of
from snews_tasks.core.times import NS_PER_S, format_time_ns, parse_time_ns
from snews_tasks.testing.builders import settings as unit_settings

# numpy warns on every time with a "Z", which snews-data-formats parses all the time.
pytestmark = pytest.mark.filterwarnings(
    "ignore:parsing timezone aware datetimes:DeprecationWarning"
)

SETTINGS = unit_settings()
MODELS: dict[Tier, type[BaseModel]] = {
    Tier.COINCIDENCE: CoincidenceTierMessage,
    Tier.SIGNIFICANCE: SignificanceTierMessage,
    Tier.TIMING: TimingTierMessage,
    Tier.HEARTBEAT: HeartbeatMessage,
    Tier.RETRACTION: RetractionMessage,
}
PROPERTY = settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    database=None,
)

# --- what SPEC section 2 refuses, in this service's words -------------------------------------

TIME_FIELDS = ("sent_time_utc", "machine_time_utc", "neutrino_time_utc", "start_time_utc")
TEXT_LIMITS = {
    "id": 256,
    "uuid": 256,
    "detector_name": 256,
    "schema_version": 256,
    "retract_message_uuid": 256,
    "retraction_reason": 2000,
}
# ISO 8601 in UTC, up to nanoseconds; a calendar date from year 1 to 9999.
UTC_TIME = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(\.\d{1,9})?Z")
NOT_A_TIME = "not an ISO 8601 time|is not a valid time|outside the years 1 to 9999"


def is_utc_time(text: str) -> bool:
    match = UTC_TIME.fullmatch(text)
    if match is None:
        return False
    try:
        datetime(*(int(part) for part in match.groups()[:6]))
    except ValueError:
        return False
    return True


def bad_numbers(value: object) -> str | None:
    """What the payload check says of the first number JSON or MongoDB cannot hold."""
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        return "is an integer outside the 64-bit range"
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list | tuple):
        return next((found for item in value if (found := bad_numbers(item))), None)
    return None


def bad_text(value: str, limit: int) -> str | None:
    if not value.strip():
        return "must not be empty"
    return f"is longer than {limit} characters" if len(value) > limit else None


def expected_rejections(tier: Tier, sent: Mapping[str, Any], now_ns: int) -> dict[str, str]:
    """The fields SPEC section 2 refuses in `sent`, each with a regex of its reason; empty when
    it allows the message. Rules are checked in stages as the ingest does: the payload, the
    fields, the detector, the freshness; only the first stage that refuses anything counts."""
    payload = {name: problem for name, value in sent.items() if (problem := bad_numbers(value))}
    if payload:
        return payload
    fields: dict[str, str | None] = {
        name: bad_text(sent[name], limit)
        for name, limit in TEXT_LIMITS.items()
        if sent.get(name) is not None
    }
    fields |= {
        name: None if is_utc_time(sent[name]) else NOT_A_TIME
        for name in TIME_FIELDS
        if sent.get(name) is not None
    }
    # A field the models require arrives as null only when JSON could not carry its value.
    fields |= {
        name: "missing"
        for name, field in MODELS[tier].model_fields.items()
        if field.is_required() and sent.get(name) is None
    }
    refused = {name: problem for name, problem in fields.items() if problem is not None}
    if refused:
        return refused
    if sent["detector_name"] not in SETTINGS.detectors:  # SPEC, not the models
        return {"detector_name": "unknown detector"}
    if tier is Tier.COINCIDENCE:  # SPEC's live-mode window, not the models' 48 h
        ahead_ns = parse_time_ns(sent["neutrino_time_utc"], "neutrino_time_utc") - now_ns
        if ahead_ns > SETTINGS.max_future_skew_s * NS_PER_S:
            return {"neutrino_time_utc": "in the future"}
        if -ahead_ns > SETTINGS.cache_lifetime_s * NS_PER_S:
            return {"neutrino_time_utc": "older than the cache window"}
    return {}


# --- the ingest, and what the client sends --------------------------------------------------


def received(payload: bytes, tier: Tier, now_ns: int) -> Message:
    """Parsed as the ingest parses a payload; a coincidence also checked for freshness as the
    writer checks it (the other tiers are archived whatever their time)."""
    data = decode_payload(payload, max_bytes=SETTINGS.max_payload_bytes)
    message = parse_message(data, detectors=SETTINGS.detectors)
    if tier is Tier.COINCIDENCE:
        check_freshness(
            message,
            now_ns=now_ns,
            max_age_ns=round(SETTINGS.cache_lifetime_s * NS_PER_S),
            max_future_ns=round(SETTINGS.max_future_skew_s * NS_PER_S),
        )
    return message


def wire(message: Blob | JSONBlob) -> bytes:
    """The Kafka record value hop writes for a message (what the ingest reads)."""
    content = message.serialize()["content"]
    assert isinstance(content, bytes)
    return content


def sent_forms(model: BaseModel) -> dict[str, tuple[bytes, dict[str, Any]]]:
    """Each way the client's message reaches the ingest: its bytes, and the values they carry."""
    as_json = model.model_dump_json()
    return {
        "JSON object": (as_json.encode(), json.loads(as_json)),
        "JSON string holding JSON": (wire(JSONBlob(as_json)), json.loads(as_json)),
        "pickle": (wire(Blob(pickle.dumps(model))), model.model_dump()),
    }


def as_received(name: str, value: object) -> object:
    """A sent value as the message keeps it: lists as tuples, enums as values, absent flags
    as false."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, list) and name != "meta":
        return tuple(value)
    if value is None and name in ("is_test", "is_firedrill", "is_pre_sn"):
        return False
    return value


def check_every_way_it_is_sent(tier: Tier, model: BaseModel) -> None:
    """Accepted, keeping every value, exactly when SPEC section 2 allows what arrives;
    otherwise refused naming a field it refuses, for that field's reason."""
    now_ns = time.time_ns()
    accepted: dict[str, Message] = {}
    for form, (payload, sent) in sent_forms(model).items():
        expected = expected_rejections(tier, sent, now_ns)
        try:
            message = received(payload, tier, now_ns)
        except MessageError as error:
            event(f"refused: {error.field}")
            assert expected, f"{form}: SPEC allows {sent}, but it was refused: {error}"
            assert error.field in expected, f"{form}: {error} (expected {expected})"
            assert re.search(expected[error.field], error.problem), f"{form}: {error}"
            continue
        event("accepted")
        assert not expected, f"{form}: accepted {sent}, which SPEC refuses: {expected}"
        for name, value in sent.items():
            assert getattr(message, name) == as_received(name, value), (form, name)
        accepted[form] = message
    if "JSON object" in accepted:
        assert accepted["JSON string holding JSON"] == accepted["JSON object"]


# --- messages from snews-data-formats -------------------------------------------------------

probabilities = st.floats(min_value=0, max_value=1)
json_leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20))
# Keys without NUL: one with it is refused (its own test, at the end), for the archive's sake.
keys = st.text(st.characters(exclude_characters="\x00"), max_size=10)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=3)),
    max_leaves=8,
)
metas = st.dictionaries(keys, json_values, max_size=4)
YEAR_S = 365.25 * 86400


@st.composite
def clock_times(draw: st.DrawFn, *, friendly: bool) -> str:
    """A time as a detector may write it, around the clock of the test run; a friendly one lies
    in the past 48 h (the models take no other non-test neutrino time), else it may be years
    away, or one numpy reads that is no UTC time."""
    if friendly:
        offset_s: float | str = draw(st.floats(-47 * 3600, -1))
    else:
        offset_s = draw(
            st.one_of(
                st.floats(-50 * 3600, 2 * 3600),
                st.floats(-100 * YEAR_S, 100 * YEAR_S),
                st.sampled_from(["NaT", "10000-01-01T00:00:00", "0000-06-15T12:00:00Z"]),
            )
        )
    if isinstance(offset_s, str):
        return offset_s
    moment = datetime.now(UTC) + timedelta(seconds=offset_s)
    digits = draw(st.integers(0, 9))
    fraction = f".{draw(st.integers(0, 10**digits - 1)):0{digits}d}" if digits else ""
    separator = draw(st.sampled_from(["T", " "]))
    zone = draw(st.sampled_from(["Z", "", "+00:00"]))
    return f"{moment:%Y-%m-%d}{separator}{moment:%H:%M:%S}{fraction}{zone}"


#: Values the models and SPEC take, in place of what the schema or a field's type gives, most
#: of which one or the other refuses (a p-value above 1, a status "x", an unknown detector).
FRIENDLY: dict[str, st.SearchStrategy[Any]] = {
    "id": st.none(),  # the models make one up
    "uuid": st.uuids().map(str),
    "detector_name": st.sampled_from(SETTINGS.detectors),
    "schema_version": st.just("0.2"),
    "detector_status": st.sampled_from(["ON", "OFF"]),
    "p_val": st.one_of(st.none(), probabilities),
    "p_values": st.lists(probabilities, max_size=12),
    "timing_series": st.lists(st.integers(0, 10 * NS_PER_S), min_size=1, max_size=30),
    "meta": st.one_of(st.none(), metas),
}


def adjusted(
    draw: st.DrawFn, values: dict[str, Any], model_class: type[BaseModel], *, friendly: bool
) -> dict[str, Any]:
    """Times from the clock (drawn text is none); FRIENDLY values for the fields given, in
    about half of the messages for all of them, in the others for some."""
    friendly = friendly or draw(st.booleans())
    for name, field in model_class.model_fields.items():
        if name in TIME_FIELDS:
            if values.get(name) is not None or (name not in values and field.is_required()):
                values[name] = draw(clock_times(friendly=friendly))
        elif name in values and name in FRIENDLY and (friendly or draw(st.booleans())):
            values[name] = draw(FRIENDLY[name])
    return values


def accepted_by_the_models(model_class: type[BaseModel], values: dict[str, Any]) -> BaseModel:
    try:
        return model_class(**values)
    except ValidationError:
        reject()


@functools.cache
def schema_properties(model_class: type[BaseModel]) -> dict[str, tuple[st.SearchStrategy, bool]]:
    """Each property's strategy from the installed schema file, and whether it is required.

    hypothesis-jsonschema 0.23.1 cannot draw objects with Hypothesis 6.170 (it calls a private
    Hypothesis API that has changed), so the message object is built here property by property,
    and `meta`, an object of any JSON values, comes from `metas`.
    """
    schema_file = (
        importlib.resources.files("snews") / "schema" / f"{model_class.__name__}.schema.json"
    )
    schema = json.loads(schema_file.read_text())
    required = set(schema["required"])
    return {
        name: (from_schema({**sub_schema, "$defs": schema.get("$defs", {})}), name in required)
        for name, sub_schema in schema["properties"].items()
        if name != "meta"
    }


@st.composite
def from_the_schema(draw: st.DrawFn, tier: Tier) -> BaseModel:
    """A message valid against the tier's JSON schema, adjusted (`adjusted`) and accepted by
    the models; the timing tier's schema lacks `start_time_utc`, which its model requires."""
    model_class = MODELS[tier]
    values = {
        name: draw(strategy)
        for name, (strategy, required) in schema_properties(model_class).items()
        if required or draw(st.booleans())
    }
    if draw(st.booleans()):
        values["meta"] = draw(metas)
    return accepted_by_the_models(model_class, adjusted(draw, values, model_class, friendly=False))


@st.composite
def from_the_model(draw: st.DrawFn, tier: Tier, *, friendly: bool = False) -> BaseModel:
    """A message built from values of its model's field types, adjusted and accepted."""
    model_class = MODELS[tier]
    values = {
        name: draw(st.from_type(field.annotation))
        for name, field in model_class.model_fields.items()
        if field.is_required() or draw(st.booleans())
    }
    return accepted_by_the_models(
        model_class, adjusted(draw, values, model_class, friendly=friendly)
    )


@pytest.mark.parametrize("tier", list(Tier))
@PROPERTY
@given(data=st.data())
def test_messages_valid_against_the_json_schema(tier: Tier, data: st.DataObject) -> None:
    check_every_way_it_is_sent(tier, data.draw(from_the_schema(tier)))


@pytest.mark.parametrize("tier", list(Tier))
@PROPERTY
@given(data=st.data())
def test_messages_the_models_build(tier: Tier, data: st.DataObject) -> None:
    check_every_way_it_is_sent(tier, data.draw(from_the_model(tier)))


# --- significance- and timing-tier fields read back from the archive ------------------------


def archived(message: Message) -> dict[str, Any]:
    """The document as the storage task gets it (Celery's JSON) and MongoDB gives it back."""
    document = {**message.to_dict(), "received_time_utc": format_time_ns(time.time_ns())}
    return bson.decode(bson.encode(json.loads(json.dumps(document, allow_nan=False))))


@pytest.mark.parametrize("tier", [Tier.SIGNIFICANCE, Tier.TIMING])
@PROPERTY
@given(data=st.data())
def test_tier_fields_read_back_from_the_archive_as_sent(tier: Tier, data: st.DataObject) -> None:
    """The archive's readers (significance combination, timing-tier onset) get from a stored
    message the values and types the detector sent; times are stored in the one text form the
    archive's range queries compare."""
    # meta is left out: a key with a NUL character cannot be archived (the test below).
    model = data.draw(from_the_model(tier, friendly=True)).model_copy(update={"meta": None})
    sent = json.loads(model.model_dump_json())
    try:
        message = received(model.model_dump_json().encode(), tier, time.time_ns())
    except MessageError:
        reject()
    stored = archived(message)
    if tier is Tier.SIGNIFICANCE:
        assert type(stored["p_values"]) is list and stored["p_values"] == sent["p_values"]
        assert all(type(p) is float for p in stored["p_values"])
        assert type(stored["t_bin_width_sec"]) is float
        assert stored["t_bin_width_sec"] == sent["t_bin_width_sec"]
        bins = binned_of(stored)
        assert bins == binned_of(sent)
        if not isinstance(bins, str):  # else why it cannot be combined (no anchor, no bins)
            assert bins.p_values == sent["p_values"]
            assert bins.bin_width_ns == round(sent["t_bin_width_sec"] * NS_PER_S)
    else:
        assert type(stored["timing_series"]) is list
        assert stored["timing_series"] == sent["timing_series"]
        assert all(type(n) is not bool and isinstance(n, int) for n in stored["timing_series"])
        for name in ("time_bin_width_ns", "background_rate_Hz", "detection_channel"):
            assert stored.get(name) == sent[name], name
        assert timing_estimate(stored) == timing_estimate(sent)
    assert stored["is_test"] is bool(sent["is_test"])
    for name in TIME_FIELDS:
        if stored.get(name) is not None:
            assert stored[name] == format_time_ns(parse_time_ns(stored[name], name)) == sent[name]


def test_a_key_with_a_nul_character_is_refused_before_it_could_block_the_archive() -> None:
    """MongoDB refuses a key with a NUL character (BSON keys are NUL-terminated), and one such
    message would fail its whole storage batch: it is rejected at the door instead."""
    model = CoincidenceTierMessage(
        detector_name="JUNO",
        neutrino_time_utc=format_time_ns(time.time_ns() - NS_PER_S),
        meta={"run\x00": 7},
    )
    with pytest.raises(bson.errors.InvalidDocument):
        bson.encode({"run\x00": 7})
    with pytest.raises(MessageError) as refused:
        received(model.model_dump_json().encode(), Tier.COINCIDENCE, time.time_ns())
    assert refused.value.field == "meta"
    assert "has a key with a NUL character" in str(refused.value)
