"""Fuzzing the decoder and validator: every input is either a valid message or a MessageError.

No other exception may escape (it would fail the task instead of recording a
reject), and nothing in a payload may run code.
"""

from __future__ import annotations

import io
import json
import math
import pickle
import pickletools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snews_tasks.testing.builders import observation, settings as unit_settings
from snews_tasks.testing.payloads import coincidence_model
from snews_tasks.core.json_values import plain_json
from snews_tasks.core.messages import Message, MessageError
from snews_tasks.core import processing
from snews_tasks.core.processing import Processor
from snews_tasks.core.replay import Replayer, replay_lines

PROCESSOR = Processor(unit_settings())
VALID = observation("Super-K", 0).to_dict()
# The models accept only neutrino times within 48 h of the clock: built from it, never fixed.
REAL_PICKLE = pickle.dumps(coincidence_model())
FIELDS = sorted(VALID) + ["retract_message_uuid", "retract_latest_n", "detector_status",
                          "p_values", "t_bin_width_sec", "timing_series", "start_time_utc"]

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40), st.sampled_from(["CoincidenceTier", "Heartbeat", "Retraction", "NOvA",
                                           "2026-11-21T12:30:00Z", "9999-99-99", "-1e999"]))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=20)


def outcome(payload: object) -> str:
    """Parse and check freshness like the worker; anything but a MessageError fails the test."""
    try:
        message = PROCESSOR.parse(payload)
    except MessageError as error:
        assert error.field or error.problem  # the reason names what is wrong
        return "rejected"
    assert isinstance(message, Message)
    return "accepted"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_random_bytes(data):
    outcome(data)


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_random_json_documents(value):
    outcome(json.dumps(value, allow_nan=True).encode())
    if isinstance(value, dict):
        outcome(value)


@settings(max_examples=300, deadline=None)
@given(st.one_of(json_values, st.builds(lambda field, value: {**VALID, field: value},
                                        st.sampled_from(FIELDS), json_values)))
def test_json_text_in_a_json_string_is_decoded_exactly_once(value):
    """An object JSON-encoded twice (snews-pt's JSONBlob(model.model_dump_json())) reads as it
    does once; any other value in the string, or a third encoding, is refused."""
    try:
        once = json.dumps(value, allow_nan=False)
    except ValueError:  # NaN or an infinity: refused where the JSON text is read, at any level
        once = json.dumps(value, allow_nan=True)
        assert outcome(json.dumps(once).encode()) == outcome(once.encode()) == "rejected"
        return
    twice = json.dumps(once).encode()
    if isinstance(value, dict):
        assert parsed_or_reason(twice) == parsed_or_reason(once.encode())
    else:
        assert outcome(twice) == "rejected"
    assert outcome(json.dumps(twice.decode()).encode()) == "rejected"


def parsed_or_reason(payload: bytes) -> Message | str:
    try:
        return PROCESSOR.parse(payload)
    except MessageError as error:
        return str(error)


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(FIELDS), json_values)
def test_a_valid_message_with_one_field_replaced(field, value):
    outcome({**VALID, field: value})


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(FIELDS))
def test_a_valid_message_with_one_field_missing(field):
    payload = {k: v for k, v in VALID.items() if k != field}
    result = outcome(payload)
    if field in ("uuid", "detector_name", "neutrino_time_utc", "tier"):
        assert result == "rejected"


@settings(max_examples=100, deadline=None)
@given(st.floats(allow_nan=True, allow_infinity=True).filter(lambda p: not 0 <= p <= 1))
def test_p_values_outside_the_unit_interval_are_rejected(p):
    assert outcome({**VALID, "p_val": p}) == "rejected"
    assert outcome(json.dumps({**VALID, "p_val": p}, allow_nan=True)) == "rejected"


def test_deep_nesting_oversize_and_invalid_utf8_are_rejected():
    deep = {**VALID, "meta": json.loads("[" * 500 + "]" * 500)}
    assert outcome(deep) == "rejected"
    assert outcome(b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}") == "rejected"
    assert outcome({**VALID, "meta": {"blob": "x" * 200_000}}) == "rejected"
    assert outcome(json.dumps(VALID).encode().replace(b"Super-K", b"Super-\xff")) == "rejected"
    assert outcome({**VALID, "detector_name": "Kamiokande-III"}) == "rejected"
    assert outcome({**VALID, "tier": "GossipTier"}) == "rejected"
    assert not math.isnan(PROCESSOR.parse(VALID).p_val)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=200))
def test_mutated_real_pickles_never_run_anything_nor_escape(noise):
    real = REAL_PICKLE
    cut = len(noise) % len(real)
    outcome(real[:cut] + noise + real[cut:])
    outcome(b"\x80\x04" + noise)


def test_every_opcode_that_imports_is_refused_outside_the_allow_list(tmp_path):
    canary = tmp_path / "ran"
    attacks = [
        f"cos\nsystem\n(S'touch {canary}'\ntR.".encode(),
        f"cposix\nsystem\n(S'touch {canary}'\ntR.".encode(),
        f"c__builtin__\neval\n(S'open(\"{canary}\",\"w\")'\ntR.".encode(),
        b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00\x8c\x08builtins\x8c\x04exec\x93.",
    ]
    for attack in attacks:
        pickletools.dis(attack, out=open(tmp_path / "dis.txt", "w"))  # they are valid pickles
        assert outcome(attack) == "rejected"
    assert not canary.exists()


def test_a_decoder_bug_is_a_reject_everywhere_the_processor_parses(monkeypatch):
    """A message that trips a bug in the decoder is rejected, naming the error, by the parse
    the ingest, the writer and replay share: replay goes on to the next line as the worker
    would, instead of crashing on it."""
    def buggy(data, **_):
        if data.get("detector_name") == "JUNO":
            raise KeyError("a bug")
        return real(data, **_)

    real = processing.parse_message
    monkeypatch.setattr(processing, "parse_message", buggy)
    bad, good = observation("JUNO", 0), observation("IceCube", 1)
    with pytest.raises(MessageError, match="internal error while decoding: KeyError"):
        PROCESSOR.parse(json.dumps(bad.to_dict()).encode())
    err = io.StringIO()
    report = replay_lines([json.dumps(bad.to_dict()), json.dumps(good.to_dict())],
                          Replayer(PROCESSOR), out=io.StringIO(), err=err)
    assert (report.lines, report.rejected) == (2, 1)
    assert err.getvalue().startswith("line 1: rejected: ") and "a bug" in err.getvalue()


@settings(max_examples=300, deadline=None)
@given(st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1),
              st.floats(allow_nan=False, allow_infinity=False),
              st.text(st.characters(exclude_categories=["Cs"]))),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(st.characters(
                                exclude_categories=["Cs"], exclude_characters="\x00")),
                                inner, max_size=4)),
    max_leaves=12))
def test_the_size_limit_is_the_compact_json_size_exactly(value: object) -> None:
    """The metering's shortcut for plain ASCII text must count what JSON writes."""
    size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())
    assert plain_json(value, size) == value
    with pytest.raises(MessageError, match="over the limit"):
        plain_json(value, size - 1)
