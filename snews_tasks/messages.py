"""Observation messages: decoding network payloads and validating them into `Message`.

Follows the snews-data-formats schema 0.2 that snews-pt 3.0.0 publishes, with these
choices where the schema is loose or this service needs more:

* Times are kept as integer nanoseconds (a float loses nanoseconds) and normalised to
  ``YYYY-MM-DDTHH:MM:SS.fffffffffZ``.
* Fields that do not belong to the message's tier (including unknown ones) are moved
  into ``meta`` under their own names, so nothing a detector sent is lost and each tier
  only carries its own fields.
* ``SignificanceTier`` does not require ``neutrino_time_utc``: the schema model has no
  such field, so a real snews-pt significance message never carries it.
* Flags also accept the strings "true"/"false" (any case): snews-pt examples send "True".
"""

import copy
import json
import math
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from datetime import datetime, timedelta
from enum import Enum, StrEnum
from typing import NoReturn

from hop.models import Blob, JSONBlob


class Tier(StrEnum):
    COINCIDENCE = "CoincidenceTier"
    SIGNIFICANCE = "SignificanceTier"
    TIMING = "TimingTier"
    HEARTBEAT = "Heartbeat"
    RETRACTION = "Retraction"


# Values of snews.models.detectors.DetectionChannel (timing tier).
DETECTION_CHANNELS = frozenset(
    {"Electron Neutrino", "Electron Antineutrino", "Neutral Current", "Other"}
)

_MAX_NESTING = 32
_MIN_INT64, _MAX_INT64 = -(2**63), 2**63 - 1
_MAX_TEXT_CHARS = 256
_MAX_REASON_CHARS = 2000

_EPOCH = datetime(1970, 1, 1)
_NS_PER_S = 10**9
_MIN_TIME_NS = (datetime.min - _EPOCH) // timedelta(seconds=1) * _NS_PER_S
_MAX_TIME_NS = ((datetime.max - _EPOCH) // timedelta(seconds=1) + 1) * _NS_PER_S - 1
_ISO_TIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})?",
    re.ASCII,
)


class MessageError(ValueError):
    """A rejected payload or message; `field` says where, `problem` says what is wrong."""

    def __init__(self, field: str | None, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(problem if field is None else f"{field}: {problem}")


@dataclass(frozen=True, slots=True)
class Message:
    """A validated observation; times are also kept as exact integer ns for comparisons."""

    tier: Tier
    uuid: str
    detector_name: str
    is_test: bool
    is_firedrill: bool
    is_pre_sn: bool
    id: str | None = None
    neutrino_time_ns: int | None = None
    neutrino_time_utc: str | None = None
    p_val: float | None = None
    sent_time_utc: str | None = None
    machine_time_utc: str | None = None
    meta: dict | None = dataclass_field(default=None, hash=False)  # dicts are unhashable
    detector_status: str | None = None
    retract_message_uuid: str | None = None
    retract_latest_n: int = 0
    retraction_reason: str | None = None
    p_values: tuple[float, ...] | None = None
    t_bin_width_sec: float | None = None
    timing_series: tuple[int, ...] | None = None
    start_time_utc: str | None = None
    time_bin_width_ns: int | None = None
    schema_version: str | None = None
    background_rate_Hz: float | None = None  # SNEWS spelling, so to_dict needs no renaming
    detection_channel: str | None = None

    def to_dict(self) -> dict:
        """JSON-safe dict with SNEWS field names; `parse_message` turns it back into `self`."""
        result: dict = {"tier": self.tier.value}
        for name in _COMMON_FIELDS + _TIER_FIELDS[self.tier]:
            value = getattr(self, name)
            if isinstance(value, tuple):
                result[name] = list(value)
            elif value is not None:
                result[name] = copy.deepcopy(value)
        return result


# ---------------------------------------------------------------------------------------
# times


def parse_time_ns(value: str, field: str) -> int:
    """Parse an ISO 8601 time into exact integer ns since the epoch (no offset means UTC)."""
    if not isinstance(value, str):
        raise MessageError(field, f"must be an ISO 8601 time string, got {_show(value)}")
    match = _ISO_TIME.fullmatch(value)
    if match is None:
        raise MessageError(
            field, f"is not an ISO 8601 time like 2026-01-31T12:30:00.123456789Z: {_show(value)}"
        )
    year, month, day, hour, minute, second = (int(part) for part in match.groups()[:6])
    fraction, zone = match.group(7) or "", match.group(8) or "Z"
    try:
        moment = datetime(year, month, day, hour, minute, second)
    except ValueError as error:
        raise MessageError(field, f"is not a valid time ({error}): {_show(value)}") from None
    offset_s = 0
    if zone != "Z":
        zone_hours, zone_minutes = int(zone[1:3]), int(zone[4:6])
        if zone_hours > 23 or zone_minutes > 59:
            raise MessageError(field, f"has an invalid UTC offset {zone}: {_show(value)}")
        offset_s = (zone_hours * 3600 + zone_minutes * 60) * (1 if zone[0] == "+" else -1)
    seconds = (moment - _EPOCH) // timedelta(seconds=1) - offset_s
    t_ns = seconds * _NS_PER_S + int(fraction.ljust(9, "0"))
    if not _MIN_TIME_NS <= t_ns <= _MAX_TIME_NS:
        raise MessageError(field, f"is outside the years 1 to 9999 in UTC: {_show(value)}")
    return t_ns


def format_time_ns(t_ns: int) -> str:
    """Inverse of parse_time_ns: always 9 fractional digits and 'Z', so text sorts like time."""
    seconds, nanos = divmod(t_ns, _NS_PER_S)
    return f"{(_EPOCH + timedelta(seconds=seconds)).isoformat()}.{nanos:09d}Z"


def check_freshness(message: Message, *, now_ns: int, max_age_ns: int, max_future_ns: int) -> None:
    """Reject neutrino times a live server cannot use: future (clock error) or already expired."""
    if message.neutrino_time_ns is None:
        return
    ahead_ns = message.neutrino_time_ns - now_ns
    server_time = f"server time {format_time_ns(now_ns)}"
    if ahead_ns > max_future_ns:
        raise MessageError(
            "neutrino_time_utc",
            f"is {_duration(ahead_ns)} in the future ({server_time}, "
            f"tolerance {_duration(max_future_ns)})",
        )
    if -ahead_ns > max_age_ns:
        raise MessageError(
            "neutrino_time_utc",
            f"is older than the cache window of {_duration(max_age_ns)} "
            f"({_duration(-ahead_ns)} before {server_time})",
        )


def _duration(ns: int) -> str:
    seconds = ns / _NS_PER_S
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 7200:
        return f"{seconds / 60:.3g} min"
    return f"{seconds / 3600:.3g} h"


# ---------------------------------------------------------------------------------------
# payloads


def decode_payload(payload: object, *, max_bytes: int) -> dict:
    """Turn whatever the Kafka consumer delivered into a plain JSON-type dict.

    Pickles go to the restricted decoder, never to pickle.loads.
    """
    if isinstance(payload, Blob | JSONBlob):
        payload = payload.content
    if isinstance(payload, str):
        try:
            payload = payload.encode("utf-8")
        except UnicodeEncodeError as error:
            raise MessageError("payload", f"is not valid Unicode text ({error.reason})") from None
    if isinstance(payload, bytes | bytearray | memoryview):
        raw = bytes(payload)
        if len(raw) > max_bytes:
            raise MessageError("payload", f"is {len(raw)} bytes, over the limit of {max_bytes}")
        if raw.startswith(b"\x80"):
            from snews_tasks.pickle_decoder import decode_pickled_model  # it imports this module

            payload = decode_pickled_model(raw)
        else:
            payload = _load_json_text(raw)
    if not isinstance(payload, dict):
        raise MessageError("payload", f"must be a JSON object, got {type(payload).__name__}")
    return _JsonCopier(max_bytes).copy(payload)


def _load_json_text(raw: bytes) -> object:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise MessageError(
            "payload", f"is not valid UTF-8 (byte 0x{raw[error.start]:02x} at offset {error.start})"
        ) from None
    try:
        return json.loads(
            text, parse_constant=_reject_json_constant, object_pairs_hook=_unique_keys
        )
    except MessageError:
        raise
    except ValueError as error:  # also integers too long to convert, which are not JSONDecodeError
        raise MessageError("payload", f"is not valid JSON: {error}") from None
    except RecursionError:
        raise MessageError("payload", f"JSON is nested deeper than {_MAX_NESTING} levels") from None


def _reject_json_constant(name: str) -> NoReturn:
    raise MessageError("payload", f"{name} is not a valid JSON number")


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """Refuse duplicate keys: json would silently keep the last, hiding what was sent."""
    result: dict = {}
    for key, value in pairs:
        if key in result:
            raise MessageError("payload", f"JSON object has the key {key!r} twice")
        result[key] = value
    return result


class _JsonCopier:
    """Copies decoded data into plain JSON types, checking nesting and metering JSON size.

    Metering while walking bounds the work: a pickle can reference one object many times,
    so its expanded form can be vastly larger than its bytes.
    """

    def __init__(self, max_bytes: int | None) -> None:
        self._max_bytes = max_bytes
        self._size = 0

    def copy(self, value: object, path: tuple[str, ...] = ()) -> object:
        if isinstance(value, Enum):  # model_dump() leaves the schema's enums in place
            value = value.value
        if value is None or isinstance(value, bool):
            self._add(5 if value is False else 4)
            return value
        if isinstance(value, str):
            self._add(self._text_size(value, path))
            return str(value)
        if isinstance(value, int):
            if not _MIN_INT64 <= value <= _MAX_INT64:
                self._fail(path, "is an integer outside the 64-bit range")
            self._add(len(str(value)))
            return int(value)
        if isinstance(value, float):
            if not math.isfinite(value):
                self._fail(path, f"must be a finite number, got {value}")
            self._add(len(repr(value)))
            return float(value)
        if isinstance(value, dict | list | tuple):
            if len(path) >= _MAX_NESTING:
                self._fail(path, f"is nested deeper than {_MAX_NESTING} levels")
            self._add(2 + max(len(value) - 1, 0))  # brackets and commas
            if isinstance(value, dict):
                return {
                    self._key(key, path): self.copy(item, (*path, key))
                    for key, item in value.items()
                }
            return [self.copy(item, (*path, f"[{index}]")) for index, item in enumerate(value)]
        self._fail(path, f"has a value of unsupported type {type(value).__name__}")

    def _key(self, key: object, path: tuple[str, ...]) -> str:
        if not isinstance(key, str):
            self._fail(path, f"has a non-string key {_show(key)}")
        self._add(self._text_size(key, path) + 1)
        return str(key)

    def _text_size(self, text: str, path: tuple[str, ...]) -> int:
        try:
            return len(json.dumps(text, ensure_ascii=False).encode("utf-8"))
        except UnicodeEncodeError:  # a pickle can carry lone surrogates; UTF-8 (and MongoDB) cannot
            self._fail(path, "has text that is not valid Unicode")

    def _add(self, size: int) -> None:
        self._size += size
        if self._max_bytes is not None and self._size > self._max_bytes:
            raise MessageError("payload", f"is over the limit of {self._max_bytes} bytes as JSON")

    @staticmethod
    def _fail(path: tuple[str, ...], problem: str) -> NoReturn:
        if not path:
            raise MessageError("payload", problem)
        head = path[0] or '""'  # an empty key is still named
        where = "".join(part if part.startswith("[") else f".{part}" for part in path[1:])
        raise MessageError(head, f"{problem} (at {head}{where})" if where else problem)


# ---------------------------------------------------------------------------------------
# validation


def parse_message(data: dict, *, detectors: Collection[str]) -> Message:
    """Validate a decoded payload into a Message, naming the first bad field."""
    if not isinstance(data, dict):
        raise MessageError("payload", f"must be a JSON object, got {type(data).__name__}")
    data = _JsonCopier(None).copy(data)
    tier = _tier(data.get("tier"))
    own_fields = _COMMON_FIELDS + _TIER_FIELDS[tier]
    values = {}
    for name in own_fields:
        raw = data.get(name)
        if raw is None:
            if name in _REQUIRED_FIELDS[tier]:
                raise MessageError(name, "missing")
            continue
        values[name] = _CONVERTERS[name](raw, name)
    for flag in _FLAGS:
        values.setdefault(flag, False)
    values["meta"] = _merge_extra_fields(data, values.get("meta"), own_fields)
    if values["detector_name"] not in detectors:
        raise MessageError(
            "detector_name",
            f"unknown detector {_show(values['detector_name'])} "
            f"(not in the configured list of {len(detectors)} detectors)",
        )
    if tier is Tier.RETRACTION:
        _check_retraction_target(values)
    if "neutrino_time_utc" in values:
        values["neutrino_time_ns"] = parse_time_ns(values["neutrino_time_utc"], "neutrino_time_utc")
    return Message(tier=tier, **values)


def _tier(value: object) -> Tier:
    if value is None:
        raise MessageError("tier", "missing")
    if not isinstance(value, str) or value not in _TIERS_BY_VALUE:
        raise MessageError(
            "tier", f"unknown tier {_show(value)} (expected one of {', '.join(Tier)})"
        )
    return _TIERS_BY_VALUE[value]


def _merge_extra_fields(data: dict, meta: dict | None, own_fields: tuple[str, ...]) -> dict | None:
    extra = {key: value for key, value in data.items() if key != "tier" and key not in own_fields}
    if not extra:
        return meta
    clashes = sorted(extra.keys() & (meta or {}).keys())
    if clashes:
        raise MessageError(clashes[0], "is given both at the top level and in meta")
    return {**(meta or {}), **extra}


def _check_retraction_target(values: dict) -> None:
    by_uuid = "retract_message_uuid" in values
    by_count = values.get("retract_latest_n", 0) > 0
    if by_uuid and by_count:
        raise MessageError("retract_message_uuid", "cannot be combined with retract_latest_n > 0")
    if not by_uuid and not by_count:
        raise MessageError(
            "retract_message_uuid", "missing: a retraction needs it or retract_latest_n > 0"
        )


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _text(value: object, field: str, max_chars: int = _MAX_TEXT_CHARS) -> str:
    if not isinstance(value, str):
        raise MessageError(field, f"must be a string, got {_show(value)}")
    if not value.strip():
        raise MessageError(field, "must not be empty")
    if len(value) > max_chars:
        raise MessageError(field, f"is longer than {max_chars} characters")
    return str(value)


def _reason(value: object, field: str) -> str:
    return _text(value, field, _MAX_REASON_CHARS)


def _time_text(value: object, field: str) -> str:
    return format_time_ns(parse_time_ns(value, field))


def _flag(value: object, field: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise MessageError(field, f"must be true or false, got {_show(value)}")


def _integer(value: object, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MessageError(field, f"must be an integer, got {_show(value)}")
    return int(value)


def _non_negative_integer(value: object, field: str) -> int:
    number = _integer(value, field)
    if number < 0:
        raise MessageError(field, f"must be >= 0, got {number}")
    return number


def _positive_integer(value: object, field: str) -> int:
    number = _integer(value, field)
    if number <= 0:
        raise MessageError(field, f"must be > 0, got {number}")
    return number


def _non_negative_number(value: object, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MessageError(field, f"must be a number, got {_show(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise MessageError(field, f"must be a finite number, got {value}")
    if number < 0:
        raise MessageError(field, f"must be >= 0, got {value}")
    return number


def _probability(value: object, field: str) -> float:
    number = _non_negative_number(value, field)
    if number > 1:
        raise MessageError(field, f"must be between 0 and 1, got {value}")
    return number


def _sequence(value: object, field: str) -> list | tuple:
    if not isinstance(value, list | tuple):
        raise MessageError(field, f"must be a list, got {_show(value)}")
    return value


def _probabilities(value: object, field: str) -> tuple[float, ...]:
    probabilities = []
    for index, item in enumerate(_sequence(value, field)):
        try:
            probabilities.append(_probability(item, field))
        except MessageError as error:
            raise MessageError(field, f"item {index} {error.problem}") from None
    return tuple(probabilities)


def _timing_series(value: object, field: str) -> tuple[int, ...]:
    items = _sequence(value, field)
    if not items:
        raise MessageError(field, "must not be empty")
    for index, item in enumerate(items):
        if isinstance(item, bool) or not isinstance(item, int):
            raise MessageError(field, f"item {index} must be an integer, got {_show(item)}")
    return tuple(int(item) for item in items)


def _choice(options: Collection[str]) -> Callable[[object, str], str]:
    def check(value: object, field: str) -> str:
        if not isinstance(value, str) or value not in options:
            raise MessageError(
                field, f"must be one of {', '.join(sorted(options))}, got {_show(value)}"
            )
        return str(value)

    return check


def _meta(value: object, field: str) -> dict:
    if not isinstance(value, dict):
        raise MessageError(field, f"must be an object, got {_show(value)}")
    return value


_TIERS_BY_VALUE = {tier.value: tier for tier in Tier}
_FLAGS = ("is_test", "is_firedrill", "is_pre_sn")

_COMMON_FIELDS: tuple[str, ...] = (
    "id", "uuid", "detector_name", "is_test", "is_firedrill", "is_pre_sn",
    "sent_time_utc", "machine_time_utc", "meta", "schema_version",
)
_TIER_FIELDS: dict[Tier, tuple[str, ...]] = {
    Tier.COINCIDENCE: ("neutrino_time_utc", "p_val"),
    Tier.SIGNIFICANCE: ("neutrino_time_utc", "p_val", "p_values", "t_bin_width_sec"),
    Tier.TIMING: (
        "neutrino_time_utc", "p_val", "start_time_utc", "timing_series", "time_bin_width_ns",
        "background_rate_Hz", "detection_channel",
    ),
    Tier.HEARTBEAT: ("detector_status",),
    Tier.RETRACTION: ("retract_message_uuid", "retract_latest_n", "retraction_reason"),
}
_REQUIRED_FIELDS: dict[Tier, frozenset[str]] = {
    tier: frozenset({"uuid", "detector_name"} | tier_required)
    for tier, tier_required in {
        Tier.COINCIDENCE: {"neutrino_time_utc"},
        Tier.SIGNIFICANCE: {"p_values", "t_bin_width_sec"},
        Tier.TIMING: {"neutrino_time_utc", "start_time_utc", "timing_series"},
        Tier.HEARTBEAT: {"detector_status"},
        Tier.RETRACTION: set(),
    }.items()
}
_CONVERTERS: dict[str, Callable[[object, str], object]] = {
    "id": _text,
    "uuid": _text,
    "detector_name": _text,
    "is_test": _flag,
    "is_firedrill": _flag,
    "is_pre_sn": _flag,
    "sent_time_utc": _time_text,
    "machine_time_utc": _time_text,
    "meta": _meta,
    "schema_version": _text,
    "neutrino_time_utc": _time_text,
    "p_val": _probability,
    "p_values": _probabilities,
    "t_bin_width_sec": _non_negative_number,
    "start_time_utc": _time_text,
    "timing_series": _timing_series,
    "time_bin_width_ns": _positive_integer,
    "background_rate_Hz": _non_negative_number,
    "detection_channel": _choice(DETECTION_CHANNELS),
    "detector_status": _choice(("ON", "OFF")),
    "retract_message_uuid": _text,
    "retract_latest_n": _non_negative_integer,
    "retraction_reason": _reason,
}
