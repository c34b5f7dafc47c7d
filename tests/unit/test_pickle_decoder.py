import builtins
import os
import pickle
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from snews_tasks.testing.builders import Reduces
from snews_tasks.testing.payloads import coincidence_model, published_blobs, recent_time_utc, tier_models
from snews.models.messages import Tier as SnewsTier

from snews_tasks.core.messages import MessageError, Tier
from snews_tasks.core.pickles import decode_pickled_model


def _text(text: str) -> bytes:
    data = text.encode()
    return pickle.SHORT_BINUNICODE + bytes([len(data)]) + data


def _global(module: str, name: str) -> bytes:
    return _text(module) + _text(name) + pickle.STACK_GLOBAL


MESSAGES = "snews.models.messages"


def _crafted(body: bytes) -> bytes:
    return pickle.PROTO + b"\x04" + body + pickle.STOP


def _rejection(data: bytes) -> MessageError:
    with pytest.raises(MessageError) as caught:
        decode_pickled_model(data)
    assert caught.value.field == "payload"
    return caught.value


@pytest.mark.parametrize("tier", list(Tier))
@pytest.mark.parametrize("protocol", [pickle.DEFAULT_PROTOCOL, pickle.HIGHEST_PROTOCOL])
def test_real_payloads_of_every_tier_decode_to_their_fields(tier: Tier, protocol: int) -> None:
    model = tier_models()[tier]
    assert decode_pickled_model(pickle.dumps(model, protocol=protocol)) == model.model_dump(mode="json")


def test_what_the_publisher_sends_decodes() -> None:
    neutrino_time = recent_time_utc()
    blobs = published_blobs({"detector_name": "JUNO", "neutrino_time_utc": neutrino_time, "p_val": 0.2})
    fields = [decode_pickled_model(blob.content) for blob in blobs]
    assert [(f["tier"], f["detector_name"], f["neutrino_time_utc"]) for f in fields] == [
        ("CoincidenceTier", "JUNO", neutrino_time)
    ]
    assert fields[0]["sent_time_utc"].endswith("Z")


@pytest.mark.parametrize(
    ("attack", "disallowed"),
    [
        (lambda target: Reduces(os.system, (f"touch {target}",)), "posix.system"),
        (lambda target: Reduces(open, (str(target), "w")), "io.open"),
        (lambda target: Reduces(subprocess.Popen, (["touch", str(target)],)), "subprocess.Popen"),
        (lambda target: Reduces(builtins.eval, (f"open({str(target)!r}, 'w')",)), "builtins.eval"),
        (lambda target: Reduces(builtins.exec, (f"open({str(target)!r}, 'w')",)), "builtins.exec"),
        (lambda target: Reduces(getattr, (Path, "touch")), "builtins.getattr"),
    ],
    ids=["os.system", "open", "Popen", "eval", "exec", "getattr"],
)
def test_code_execution_is_refused_before_anything_runs(
    tmp_path: Path, attack: Callable[[Path], Reduces], disallowed: str
) -> None:
    target = tmp_path / "pwned"
    error = _rejection(pickle.dumps(attack(target)))
    assert str(error) == f"payload: pickle refers to disallowed global '{disallowed}'"
    assert not target.exists()


def test_disallowed_global_nested_in_meta_of_a_real_model_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "from-meta"
    model = coincidence_model(meta={"calibration": [Reduces(os.system, (f"touch {target}",))]})
    assert "disallowed global 'posix.system'" in str(_rejection(pickle.dumps(model)))
    assert not target.exists()


def test_build_cannot_modify_the_shared_stand_ins() -> None:
    set_tier = pickle.NONE + pickle.EMPTY_DICT + _text("tier") + _text("Heartbeat") + pickle.SETITEM
    _rejection(_crafted(_global(MESSAGES, "CoincidenceTierMessage") + set_tier
                        + pickle.TUPLE2 + pickle.BUILD))
    assert "tries to modify Tier" in str(
        _rejection(_crafted(_global(MESSAGES, "Tier") + set_tier + pickle.TUPLE2 + pickle.BUILD))
    )
    model = tier_models()[Tier.COINCIDENCE]
    assert decode_pickled_model(pickle.dumps(model))["tier"] == "CoincidenceTier"


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (_crafted(_text("id") + pickle.BINPERSID), "persistent id"),
        (_crafted(_global(MESSAGES, "Tier") + _text("Bogus") + pickle.TUPLE1 + pickle.REDUCE),
         "'Bogus' is not a valid Tier"),
        (_crafted(_global(MESSAGES, "HeartbeatMessage") + pickle.EMPTY_TUPLE + pickle.NEWOBJ),
         "pickled Heartbeat model carries no fields"),
        (_crafted(_global(MESSAGES, "HeartbeatMessage") + _text("x") + pickle.TUPLE1
                  + pickle.NEWOBJ), "not a valid pickle"),
        (_crafted(_global(MESSAGES, "HeartbeatMessage") + pickle.EMPTY_TUPLE + pickle.NEWOBJ
                  + pickle.EMPTY_DICT + pickle.BUILD), "has no pydantic field dictionary"),
        (_crafted(_global(MESSAGES, "MessageBase")),
         "disallowed global 'snews.models.messages.MessageBase'"),
        (pickle.dumps({"tier": "CoincidenceTier"}), "holds a dict, not a SNEWS message model"),
        (pickle.dumps(tier_models()[Tier.HEARTBEAT])[:-3], "not a valid pickle"),
        (pickle.dumps(tier_models()[Tier.HEARTBEAT]) + b"junk", "unexpected bytes after the end"),
    ],
    ids=["persistent-id", "unknown-enum-value", "no-state", "newobj-args", "state-without-dict",
         "unlisted-class", "plain-dict", "truncated", "trailing-bytes"],
)
def test_malformed_pickles_are_refused(data: bytes, problem: str) -> None:
    assert problem in str(_rejection(data))


def test_model_class_and_tier_field_must_agree() -> None:
    model = tier_models()[Tier.COINCIDENCE]
    model.__dict__["tier"] = SnewsTier.HEART_BEAT  # bypasses validation, as a forger could
    assert "pickled CoincidenceTier model carries tier 'Heartbeat'" in str(_rejection(pickle.dumps(model)))


def test_a_huge_memo_index_is_refused_before_any_memory_is_claimed():
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(MessageError, match="memo index"):
        decode_pickled_model(b"\x80\x04\x8c\x04uuidr\x00\x00\x00\x30.")
    with pytest.raises(MessageError):  # the fuzzer's original find: malformed and huge
        decode_pickled_model(b"\x80\x04\x8c\x04uuidr\x8c$91\x00.")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB
