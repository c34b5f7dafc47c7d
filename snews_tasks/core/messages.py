"""Observation messages: decoded payloads validated into `Message`, naming the first bad field.

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

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Collection
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from enum import StrEnum

from .errors import MessageError, show
from .json_values import plain_json
from .times import duration_text, format_time_ns, normalise_time, parse_time_ns


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

_MAX_TEXT_CHARS = 256
_MAX_REASON_CHARS = 2000


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


def check_freshness(message: Message, *, now_ns: int, max_age_ns: int, max_future_ns: int) -> None:
    """Reject neutrino times a live server cannot use: future (clock error) or already expired."""
    if message.neutrino_time_ns is None:
        return
    ahead_ns = message.neutrino_time_ns - now_ns
    server_time = f"server time {format_time_ns(now_ns)}"
    if ahead_ns > max_future_ns:
        raise MessageError(
            "neutrino_time_utc",
            f"is {duration_text(ahead_ns)} in the future ({server_time}, "
            f"tolerance {duration_text(max_future_ns)})",
        )
    if -ahead_ns > max_age_ns:
        raise MessageError(
            "neutrino_time_utc",
            f"is older than the cache window of {duration_text(max_age_ns)} "
            f"({duration_text(-ahead_ns)} before {server_time})",
        )


# ---------------------------------------------------------------------------------------
# validation


def parse_message(data: dict, *, detectors: Collection[str]) -> Message:
    """Validate a decoded payload (plain JSON types, see `payloads`) into a Message, naming
    the first bad field."""
    if not isinstance(data, dict):
        raise MessageError("payload", f"must be a JSON object, got {type(data).__name__}")
    data = plain_json(data)
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
            f"unknown detector {show(values['detector_name'])} "
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
            "tier", f"unknown tier {show(value)} (expected one of {', '.join(Tier)})"
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


def _text(value: object, field: str, max_chars: int = _MAX_TEXT_CHARS) -> str:
    if not isinstance(value, str):
        raise MessageError(field, f"must be a string, got {show(value)}")
    if not value.strip():
        raise MessageError(field, "must not be empty")
    if len(value) > max_chars:
        raise MessageError(field, f"is longer than {max_chars} characters")
    return str(value)


def _reason(value: object, field: str) -> str:
    return _text(value, field, _MAX_REASON_CHARS)


def _flag(value: object, field: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise MessageError(field, f"must be true or false, got {show(value)}")


def _integer(value: object, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MessageError(field, f"must be an integer, got {show(value)}")
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
        raise MessageError(field, f"must be a number, got {show(value)}")
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
        raise MessageError(field, f"must be a list, got {show(value)}")
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
            raise MessageError(field, f"item {index} must be an integer, got {show(item)}")
    return tuple(int(item) for item in items)


def _choice(options: Collection[str]) -> Callable[[object, str], str]:
    def check(value: object, field: str) -> str:
        if not isinstance(value, str) or value not in options:
            raise MessageError(
                field, f"must be one of {', '.join(sorted(options))}, got {show(value)}"
            )
        return str(value)

    return check


def _meta(value: object, field: str) -> dict:
    if not isinstance(value, dict):
        raise MessageError(field, f"must be an object, got {show(value)}")
    return value


_TIERS_BY_VALUE = {tier.value: tier for tier in Tier}
_FLAGS = ("is_test", "is_firedrill", "is_pre_sn")

_COMMON_FIELDS: tuple[str, ...] = (
    "id",
    "uuid",
    "detector_name",
    "is_test",
    "is_firedrill",
    "is_pre_sn",
    "sent_time_utc",
    "machine_time_utc",
    "meta",
    "schema_version",
)
_TIER_FIELDS: dict[Tier, tuple[str, ...]] = {
    Tier.COINCIDENCE: ("neutrino_time_utc", "p_val"),
    Tier.SIGNIFICANCE: ("neutrino_time_utc", "p_val", "p_values", "t_bin_width_sec"),
    Tier.TIMING: (
        "neutrino_time_utc",
        "p_val",
        "start_time_utc",
        "timing_series",
        "time_bin_width_ns",
        "background_rate_Hz",
        "detection_channel",
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
    "sent_time_utc": normalise_time,
    "machine_time_utc": normalise_time,
    "meta": _meta,
    "schema_version": _text,
    "neutrino_time_utc": normalise_time,
    "p_val": _probability,
    "p_values": _probabilities,
    "t_bin_width_sec": _non_negative_number,
    "start_time_utc": normalise_time,
    "timing_series": _timing_series,
    "time_bin_width_ns": _positive_integer,
    "background_rate_Hz": _non_negative_number,
    "detection_channel": _choice(DETECTION_CHANNELS),
    "detector_status": _choice(("ON", "OFF")),
    "retract_message_uuid": _text,
    "retract_latest_n": _non_negative_integer,
    "retraction_reason": _reason,
}
