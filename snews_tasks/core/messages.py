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

`Message` is one pydantic model for all five tiers, with the tier-specific fields optional,
rather than a union of one model per tier: the engine, the stores and the tests treat every
observation as one type (``isinstance``, ``message.neutrino_time_ns is None`` on a heartbeat,
builders calling ``Message(tier=...)``), which a union would split. What differs per tier,
which fields it carries and which it requires, is a table read by one wrap validator, which
also files foreign fields under meta. Field types are pydantic-core's strict types and
constraints wherever they say what the rule says; Python runs only for flags, times, the
not-blank check and the rules across fields. `parse_message` turns the first pydantic error
into a `MessageError`.
"""

from __future__ import annotations

from collections.abc import Collection
from enum import StrEnum
from typing import Annotated, Any, Final, Literal, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PlainValidator,
    Strict,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

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
DetectionChannel = Literal["Electron Neutrino", "Electron Antineutrino", "Neutral Current", "Other"]
DetectorStatus = Literal["ON", "OFF"]
DETECTION_CHANNELS = frozenset(get_args(DetectionChannel))

_MAX_TEXT_CHARS = 256
_MAX_REASON_CHARS = 2000
_NOT_BLANK = r"\S"  # with the python-re engine, \s is exactly what str.strip() removes


def _flag(value: object) -> object:
    """ "true"/"false" in any case become booleans; anything else is left to the strict check."""
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value


def _time(value: object, info: ValidationInfo) -> str:
    return normalise_time(value, info.field_name or "time")


Text = Annotated[
    str, StringConstraints(strict=True, max_length=_MAX_TEXT_CHARS, pattern=_NOT_BLANK)
]
Reason = Annotated[
    str, StringConstraints(strict=True, max_length=_MAX_REASON_CHARS, pattern=_NOT_BLANK)
]
Flag = Annotated[bool, Strict(), BeforeValidator(_flag)]
Time = Annotated[str, PlainValidator(_time)]
Probability = Annotated[float, Strict(), Field(ge=0, le=1, allow_inf_nan=False)]
NonNegativeNumber = Annotated[float, Strict(), Field(ge=0, allow_inf_nan=False)]
NonNegativeInt = Annotated[int, Strict(), Field(ge=0)]
PositiveInt = Annotated[int, Strict(), Field(gt=0)]
JsonObject = Annotated[dict[str, Any], Strict()]


class _Missing:
    """Stands for a required field the payload lacks: every field type refuses it, so pydantic
    reports it in field order among the other errors (requirements differ per tier, so the
    fields themselves cannot be declared required)."""

    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Final = _Missing()


class Message(BaseModel):
    """A validated observation; times are also kept as exact integer ns for comparisons.

    Fields are declared in the order they are checked and written: common fields, then
    each tier's own in its order; pydantic reports errors in that order, so the first one
    names the first bad field.
    """

    model_config = ConfigDict(frozen=True, regex_engine="python-re")

    tier: Tier
    id: Text | None = None
    uuid: Text
    detector_name: Text
    is_test: Flag = False
    is_firedrill: Flag = False
    is_pre_sn: Flag = False
    sent_time_utc: Time | None = None
    machine_time_utc: Time | None = None
    meta: JsonObject | None = None
    schema_version: Text | None = None
    neutrino_time_utc: Time | None = None
    neutrino_time_ns: int | None = Field(default=None, validate_default=True, exclude=True)
    p_val: Probability | None = None
    p_values: tuple[Probability, ...] | None = None
    t_bin_width_sec: NonNegativeNumber | None = None
    start_time_utc: Time | None = None
    timing_series: Annotated[tuple[Annotated[int, Strict()], ...], Field(min_length=1)] | None = (
        None
    )
    time_bin_width_ns: PositiveInt | None = None
    background_rate_Hz: NonNegativeNumber | None = None  # SNEWS spelling: to_dict needs no renaming
    detection_channel: DetectionChannel | None = None
    detector_status: DetectorStatus | None = None
    retract_message_uuid: Text | None = None
    retract_latest_n: NonNegativeInt = 0
    retraction_reason: Reason | None = None

    def __hash__(self) -> int:
        """Every field but meta, which is a dict and so unhashable."""
        return hash(tuple(value for name, value in self.__dict__.items() if name != "meta"))

    def to_dict(self) -> dict:
        """JSON-safe dict with SNEWS field names; `parse_message` turns it back into `self`."""
        return self.model_dump(mode="json", include=_WRITTEN_FIELDS[self.tier], exclude_none=True)

    @field_validator("neutrino_time_ns", mode="plain")
    @classmethod
    def _derive_neutrino_time_ns(cls, _: object, info: ValidationInfo) -> int | None:
        text = info.data.get("neutrino_time_utc")
        return None if text is None else parse_time_ns(text, "neutrino_time_utc")

    @model_validator(mode="wrap")
    @classmethod
    def _from_payload(
        cls, data: object, handler: ModelWrapValidatorHandler[Message], info: ValidationInfo
    ) -> Message:
        """The tier's own fields go to pydantic, the others into meta; then the rules across
        fields, in the order they have always been checked.

        A context (``parse_message`` gives the detectors) marks a payload. Without one the data
        are attribute values, as ``Message(...)`` in the engine's and tests' builders: there
        ``neutrino_time_ns`` may come along, and must agree with ``neutrino_time_utc``, which
        it is derived from; in a payload it is a foreign field like any other.
        """
        if isinstance(data, Message):
            return handler(data)
        if not isinstance(data, dict):
            raise MessageError("payload", f"must be a JSON object, got {type(data).__name__}")
        if not (info.context or {}).get("decoded"):  # decode_payload's output is a fresh copy
            data = plain_json(data)
            assert isinstance(data, dict)
        given_ns = data.pop("neutrino_time_ns", None) if info.context is None else None
        tier = _tier(data.get("tier"))
        values, clash = _split_fields(data, tier)
        message = handler(values)
        if clash is not None:
            raise MessageError(clash, "is given both at the top level and in meta")
        _check_detector(message, (info.context or {}).get("detectors"))
        if tier is Tier.RETRACTION:
            _check_retraction_target(message)
        if given_ns is not None and given_ns != message.neutrino_time_ns:
            raise MessageError(
                "neutrino_time_ns",
                f"is {given_ns}, but neutrino_time_utc {message.neutrino_time_utc} "
                f"is {message.neutrino_time_ns}",
            )
        return message


def parse_message(data: object, *, detectors: Collection[str], decoded: bool = False) -> Message:
    """Validate a payload's data into a Message, naming the first bad field. `decoded` says
    the data are what `payloads.decode_payload` returned, already plain JSON types in a copy
    of their own, so they are not copied again (the writer's hot path)."""
    try:
        return Message.model_validate(data, context={"detectors": detectors, "decoded": decoded})
    except ValidationError as error:
        raise _first_problem(error) from None


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
# the payload's shape and the rules across fields


def _tier(value: object) -> Tier:
    if value is None:
        raise MessageError("tier", "missing")
    if not isinstance(value, str) or value not in _TIERS_BY_VALUE:
        raise MessageError(
            "tier", f"unknown tier {show(value)} (expected one of {', '.join(Tier)})"
        )
    return _TIERS_BY_VALUE[value]


def _split_fields(data: dict, tier: Tier) -> tuple[dict[str, object], str | None]:
    """The tier's own fields (an absent required one as `_MISSING`), with every other field
    filed under meta; and the first name given both at the top level and in meta."""
    own_fields = _TIER_FIELDS[tier]
    values: dict[str, object] = {"tier": tier}
    for name in own_fields:
        value = data.get(name)
        if value is not None:
            values[name] = value
        elif name in _REQUIRED_FIELDS[tier]:
            values[name] = _MISSING
    extra = {key: value for key, value in data.items() if key != "tier" and key not in own_fields}
    meta = values.get("meta")
    if not extra or not (meta is None or isinstance(meta, dict)):
        return values, None  # a meta that is not an object is refused by its field type
    values["meta"] = {**(meta or {}), **extra}
    return values, min(extra.keys() & (meta or {}).keys(), default=None)


def _check_detector(message: Message, detectors: Collection[str] | None) -> None:
    if detectors is not None and message.detector_name not in detectors:
        raise MessageError(
            "detector_name",
            f"unknown detector {show(message.detector_name)} "
            f"(not in the configured list of {len(detectors)} detectors)",
        )


def _check_retraction_target(message: Message) -> None:
    by_uuid = message.retract_message_uuid is not None
    by_count = message.retract_latest_n > 0
    if by_uuid and by_count:
        raise MessageError("retract_message_uuid", "cannot be combined with retract_latest_n > 0")
    if not by_uuid and not by_count:
        raise MessageError(
            "retract_message_uuid", "missing: a retraction needs it or retract_latest_n > 0"
        )


# ---------------------------------------------------------------------------------------
# pydantic's errors in this service's words


def _first_problem(error: ValidationError) -> MessageError:
    """The first error as a MessageError; a MessageError raised by a validator comes as is."""
    first = error.errors(include_url=False)[0]
    cause = first.get("ctx", {}).get("error")
    if isinstance(cause, MessageError) and first["input"] is not _MISSING:
        return cause
    field, *item = first["loc"]
    problem = "missing" if first["input"] is _MISSING else _problem(str(field), first)
    return MessageError(str(field), f"item {item[0]} {problem}" if item else problem)


def _problem(field: str, error: ErrorDetails) -> str:
    value, ctx = error["input"], error.get("ctx", {})
    match error["type"]:
        case "string_type":
            return f"must be a string, got {show(value)}"
        case "string_too_long" if value.strip():  # blank text is empty, however long
            return f"is longer than {ctx['max_length']} characters"
        case "string_pattern_mismatch" | "string_too_long" | "too_short":
            return "must not be empty"
        case "bool_type":
            return f"must be true or false, got {show(value)}"
        case "int_type":
            return f"must be an integer, got {show(value)}"
        case "float_type":
            return f"must be a number, got {show(value)}"
        case "finite_number":
            return f"must be a finite number, got {value}"
        case "greater_than_equal":
            return f"must be >= {ctx['ge']:g}, got {value}"
        case "greater_than":
            return f"must be > {ctx['gt']:g}, got {value}"
        case "less_than_equal":  # only probabilities have an upper bound
            return f"must be between 0 and {ctx['le']:g}, got {value}"
        case "tuple_type":
            return f"must be a list, got {show(value)}"
        case "dict_type":
            return f"must be an object, got {show(value)}"
        case "literal_error":
            options = ", ".join(sorted(_CHOICES[field]))
            return f"must be one of {options}, got {show(value)}"
    return str(error["msg"])


_TIERS_BY_VALUE = {tier.value: tier for tier in Tier}
_CHOICES: dict[str, tuple[str, ...]] = {
    "detection_channel": get_args(DetectionChannel),
    "detector_status": get_args(DetectorStatus),
}

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
    tier: _COMMON_FIELDS + tier_fields
    for tier, tier_fields in {
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
    }.items()
}
_WRITTEN_FIELDS = {tier: {"tier", *fields} for tier, fields in _TIER_FIELDS.items()}
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
