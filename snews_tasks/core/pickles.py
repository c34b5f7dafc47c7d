"""Restricted decoding of the pickled pydantic models that snews-pt 3.0.0 publishes.

snews-pt sends ``Blob(pickle.dumps(model))``. Plain unpickling of network bytes runs
whatever callables the sender names, so this unpickler resolves only the globals a real
snews-pt payload refers to, and maps each to a local stand-in that merely records data:
the real ``snews`` modules are never imported and no code named by the sender runs.
Field values are validated afterwards by ``messages.parse_message``.
"""

from __future__ import annotations

import io
import pickle
import pickletools
from typing import Any, NoReturn

from .errors import MessageError
from .messages import DETECTION_CHANNELS, Tier

_MESSAGES_MODULE = "snews.models.messages"
_DETECTORS_MODULE = "snews.models.detectors"

# snews-data-formats class name -> tier, for the five message models snews-pt sends.
_MODEL_TIERS = {
    "CoincidenceTierMessage": Tier.COINCIDENCE,
    "SignificanceTierMessage": Tier.SIGNIFICANCE,
    "TimingTierMessage": Tier.TIMING,
    "HeartbeatMessage": Tier.HEARTBEAT,
    "RetractionMessage": Tier.RETRACTION,
}


def _reject(problem: str) -> NoReturn:
    raise MessageError("payload", problem)


class _PickledModel:
    """Receives a pydantic model's NEWOBJ + BUILD and keeps only its field values.

    Defining ``__setstate__`` also makes BUILD on the class object itself fail, so a
    payload cannot set attributes on these shared classes.
    """

    tier: Tier

    def __setstate__(self, state: object) -> None:
        if hasattr(self, "fields"):
            _reject(f"pickle sets the state of a {self.tier} model twice")
        if not isinstance(state, dict) or not isinstance(state.get("__dict__"), dict):
            _reject(f"pickled {self.tier} model has no pydantic field dictionary")
        self.fields = state["__dict__"]


class _PickledEnum:
    """Stands in for an enum class: the pickle calls it with a member's value."""

    def __init__(self, name: str, values: frozenset[str]) -> None:
        self._name = name
        self._values = values

    def __call__(self, value: object) -> str:
        if not isinstance(value, str) or value not in self._values:
            _reject(f"{value!r:.60} is not a valid {self._name}")
        return str(value)

    def __setstate__(self, state: object) -> NoReturn:
        _reject(f"pickle tries to modify {self._name}")


_ALLOWED_GLOBALS: dict[tuple[str, str], object] = {
    **{
        (_MESSAGES_MODULE, class_name): type(class_name, (_PickledModel,), {"tier": tier})
        for class_name, tier in _MODEL_TIERS.items()
    },
    (_MESSAGES_MODULE, "Tier"): _PickledEnum("Tier", frozenset(tier.value for tier in Tier)),
    (_DETECTORS_MODULE, "DetectionChannel"): _PickledEnum("DetectionChannel", DETECTION_CHANNELS),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        stand_in = _ALLOWED_GLOBALS.get((module, name))
        if stand_in is None:
            _reject(f"pickle refers to disallowed global '{f'{module}.{name}'[:100]}'")
        return stand_in

    def persistent_load(self, pid: object) -> NoReturn:
        _reject("pickle uses a persistent id, which is not allowed")


_MEMO_OPCODES = frozenset({"PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET"})


def _check_memo_indexes(data: bytes) -> None:
    """Refuse memo indexes no honest pickle of this size uses.

    The C unpickler grows its memo table to the largest index it is given, so a
    15-byte pickle naming index 800 million would claim gigabytes before any
    other check ran. An honest pickle's indexes stay below its opcode count.
    """
    try:
        opcodes = list(pickletools.genops(data))
    except Exception as error:  # truncated or unknown opcodes: malformed either way
        _reject(f"not a valid pickle ({type(error).__name__}: {error})")
    for opcode, arg, _ in opcodes:
        if opcode.name in _MEMO_OPCODES and not (isinstance(arg, int) and 0 <= arg <= len(opcodes)):
            _reject(f"pickle uses memo index {arg!r:.20}, beyond its {len(opcodes)} opcodes")


def decode_pickled_model(data: bytes) -> dict:
    """Turn snews-pt pickle bytes into the model's field dict without trusting them."""
    _check_memo_indexes(data)
    stream = io.BytesIO(data)
    try:
        decoded = _RestrictedUnpickler(stream).load()
    except MessageError:
        raise
    except Exception as error:  # any malformed pickle: truncated, bad opcodes, wrong args
        _reject(f"not a valid pickle ({type(error).__name__}: {error})")
    if stream.read(1):
        _reject("unexpected bytes after the end of the pickle")
    if not isinstance(decoded, _PickledModel):
        _reject(f"pickle holds a {type(decoded).__name__}, not a SNEWS message model")
    if not hasattr(decoded, "fields"):
        _reject(f"pickled {decoded.tier} model carries no fields")
    fields = dict(decoded.fields)
    if fields.setdefault("tier", decoded.tier.value) != decoded.tier:
        _reject(f"pickled {decoded.tier} model carries tier {fields['tier']!r:.60}")
    return fields
