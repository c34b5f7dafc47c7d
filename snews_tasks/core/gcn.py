"""GCN notices: each alert revision as a notice of GCN's SNEWS2 coincidence schema.

The schema is ``gcn/notices/snews2/coincidence.schema.json`` of nasa-gcn/gcn-schema
(JSON Schema draft 2020-12, with the ``core/`` Alert, Event, Reporter, DateTime and
Statistics schemas); copies with their commits are in ``tests/data/gcn-schema/``.

The mapping (SPEC section 7, issue 14)
--------------------------------------
* ``alert_type``: NEW → ``initial``, UPDATE → ``update``, RETRACTION → ``retraction``;
  ``record_number`` is the revision and ``id`` the alert id, so (``id``,
  ``record_number``) identifies a notice as (alert_id, revision) identifies an alert.
* ``alert_tense``: ``current`` for live alerts; ``test`` for test, firedrill and canary
  alerts (none of them claims a real burst).
* ``mission`` SNEWS, ``messenger`` Neutrino, ``snews2_tier`` CoincidenceTier,
  ``snews_schema_version`` the alert's ``schema_version``.
* ``trigger_time`` is the initial neutrino time and ``alert_datetime`` the alert's sent
  time. A withdrawn coincidence with no member left has no trigger time: it is omitted
  (the schema does not require it).
* ``far`` is in Hz: the per-year rate over a year of 365.25 days of 86400 s, the year
  the alert's own rate is computed with. Without a rate (withdrawn coincidence), no ``far``.
* ``detector_status``: every configured detector, ``triggered`` for members, ``on`` for
  detectors online (heartbeats), ``off`` otherwise. A member that is not (or no longer)
  configured is listed too, as ``triggered``: a notice never hides a member.
* ``event_times_utc`` and ``tier_data.p_values`` are in member order (time order), and
  ``tier_data.detector_names`` names the member of each position: ``detector_status``
  is an object, so without it a reader could not tell whose time is whose.
* A member without a p-value: the schema's p-values are numbers >= 0 (no null), and
  dropping the entry would shift every later p-value onto the wrong detector. The entry
  is 1.0, the value that claims no significance at all, and
  ``tier_data.p_value_reported`` (booleans, member order) says which were reported.
* ``healpix_url`` when a sky map URL is given. Later alert fields, when present, go into
  ``tier_data`` (free-form in the schema): ``combined_p_value``,
  ``combined_significance_sigma`` and ``localization`` (its numeric summary).
* The schema's ``tier_data.false_alarm_prob`` is left out: the alert has a false-alarm
  *rate*, and no probability is computed; the rate is ``far``.

Times
-----
The core DateTime schema gives ``trigger_time`` (and so each ``event_times_utc`` item)
only ``"type": "string"``: no ``format`` and no ``pattern``; its description shows
``YYYY-MM-DDTHH:MM:SS.ssssssZ``. Every notice time is exactly that: UTC, microseconds,
``Z``. Alert times carry up to nanoseconds; the extra digits are cut, not rounded, so a
time never moves into the next second (or day) and member order is kept (error < 1 µs,
far below any detector's timing error).
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

SCHEMA_URL: Final = "https://gcn.nasa.gov/schema/main/gcn/notices/snews2/coincidence.schema.json"
SECONDS_PER_YEAR: Final = 365.25 * 86400
ALERT_TYPES: Final = {"NEW": "initial", "UPDATE": "update", "RETRACTION": "retraction"}
LOCALIZATION_SUMMARY: Final = ("ra_deg", "dec_deg", "area_50_deg2", "area_90_deg2")

_ALERT_TIME = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?Z")
_FILE_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class AlertFieldError(ValueError):
    """An alert (or argument) field that cannot be mapped, with the field's name."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def utc_microseconds(value: object, field: str) -> str:
    """An alert time (``...SS[.f…]Z``, up to 9 digits) as ``YYYY-MM-DDTHH:MM:SS.ffffff``.

    The digits past the microsecond are cut (never rounded up into the next second).
    """
    match = _ALERT_TIME.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise AlertFieldError(
            field, f"must be a UTC time like 2026-01-31T12:30:00.123456789Z, got {value!r}"
        )
    whole, fraction = match.group(1), match.group(2) or ""
    try:
        datetime.fromisoformat(whole)
    except ValueError as error:
        raise AlertFieldError(field, f"is not a valid time ({error}): {value!r}") from None
    return f"{whole}.{fraction[:6].ljust(6, '0')}"


def _field(alert: Mapping[str, Any], field: str) -> Any:
    if field not in alert:
        raise AlertFieldError(field, "is missing")
    return alert[field]


def _typed(alert: Mapping[str, Any], field: str, kind: type, optional: bool = False) -> Any:
    value = _field(alert, field)
    if value is None and optional:
        return None
    # bool is an int subclass: a flag must not pass for a count, nor a count for a flag
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        allowed = f"{kind.__name__} or null" if optional else kind.__name__
        raise AlertFieldError(field, f"must be {allowed}, got {value!r}")
    return value


def _number(
    value: object, field: str, low: float | None = None, high: float | None = None
) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise AlertFieldError(field, f"must be a finite number, got {value!r}")
    if low is not None and value < low:
        raise AlertFieldError(field, f"must be at least {low}, got {value!r}")
    if high is not None and value > high:
        raise AlertFieldError(field, f"must be at most {high}, got {value!r}")
    return float(value)


def _strings(value: object, field: str) -> tuple[str, ...]:
    """Names as a tuple; a lone string is refused (it would read as one name per letter)."""
    if (
        not isinstance(value, Collection)
        or isinstance(value, str | bytes | Mapping)
        or not all(isinstance(v, str) for v in value)
    ):
        raise AlertFieldError(field, f"must be a list of strings, got {value!r}")
    return tuple(value)


def _mapping(alert: object) -> Mapping[str, Any]:
    if not isinstance(alert, Mapping):
        raise AlertFieldError("alert", f"must be a mapping, got {type(alert).__name__}")
    return alert


@dataclass(frozen=True)
class AlertView:
    """The alert fields the protocol mappings read, checked once (types, formats, lengths)."""

    alert_id: str
    revision: int
    alert_type: str
    detector_names: tuple[str, ...]
    neutrino_times_utc: tuple[str, ...]
    p_values: tuple[float | None, ...]
    initial_neutrino_time_utc: str | None
    false_alarm_rate_per_year: float | None
    false_alarm_rate_reason: str
    is_test: bool
    is_firedrill: bool
    is_canary: bool
    server_tag: str
    sent_time_utc: str
    schema_version: str

    @classmethod
    def of(cls, alert: Mapping[str, Any]) -> AlertView:
        alert = _mapping(alert)
        alert_type = _typed(alert, "alert_type", str)
        if alert_type not in ALERT_TYPES:
            raise AlertFieldError(
                "alert_type", f"must be one of {sorted(ALERT_TYPES)}, got {alert_type!r}"
            )
        names = _strings(_field(alert, "detector_names"), "detector_names")
        times = _strings(_field(alert, "neutrino_times_utc"), "neutrino_times_utc")
        for i, time in enumerate(times):
            utc_microseconds(time, f"neutrino_times_utc[{i}]")
        p_values = tuple(
            None if p is None else _number(p, f"p_values[{i}]", 0.0, 1.0)
            for i, p in enumerate(_typed(alert, "p_values", list))
        )
        if not len(names) == len(times) == len(p_values):
            raise AlertFieldError(
                "detector_names",
                f"{len(names)} members but {len(times)} neutrino_times_utc and "
                f"{len(p_values)} p_values: each member needs one of each",
            )
        initial = _typed(alert, "initial_neutrino_time_utc", str, optional=True)
        if initial is not None:
            utc_microseconds(initial, "initial_neutrino_time_utc")
        far = _field(alert, "false_alarm_rate_per_year")
        sent = _typed(alert, "sent_time_utc", str)
        utc_microseconds(sent, "sent_time_utc")
        return cls(
            alert_id=_alert_id(alert),
            revision=_revision(alert),
            alert_type=alert_type,
            detector_names=names,
            neutrino_times_utc=times,
            p_values=p_values,
            initial_neutrino_time_utc=initial,
            false_alarm_rate_per_year=(
                None if far is None else _number(far, "false_alarm_rate_per_year", 0.0)
            ),
            false_alarm_rate_reason=_typed(alert, "false_alarm_rate_reason", str),
            is_test=_typed(alert, "is_test", bool),
            is_firedrill=_typed(alert, "is_firedrill", bool),
            is_canary=_typed(alert, "is_canary", bool),
            server_tag=_typed(alert, "server_tag", str),
            sent_time_utc=sent,
            schema_version=_typed(alert, "schema_version", str),
        )


def _alert_id(alert: Mapping[str, Any]) -> str:
    alert_id: str = _typed(alert, "alert_id", str)
    if not alert_id:
        raise AlertFieldError("alert_id", "must not be empty")
    return alert_id


def _revision(alert: Mapping[str, Any]) -> int:
    revision: int = _typed(alert, "revision", int)
    if revision < 1:
        raise AlertFieldError("revision", f"must be at least 1, got {revision}")
    return revision


def _gcn_time(value: str, field: str) -> str:
    return utc_microseconds(value, field) + "Z"


def _tier_extras(alert: Mapping[str, Any]) -> dict[str, Any]:
    """The optional later fields (significance, localization) that the alert carries."""
    extras: dict[str, Any] = {}
    if alert.get("combined_p_value") is not None:
        extras["combined_p_value"] = _number(
            alert["combined_p_value"], "combined_p_value", 0.0, 1.0
        )
    if alert.get("combined_significance_sigma") is not None:
        extras["combined_significance_sigma"] = _number(
            alert["combined_significance_sigma"], "combined_significance_sigma"
        )
    localization = alert.get("localization")
    if localization is not None:
        if not isinstance(localization, Mapping):
            raise AlertFieldError("localization", f"must be a mapping, got {localization!r}")
        extras["localization"] = {
            key: _number(localization[key], f"localization.{key}")
            for key in LOCALIZATION_SUMMARY
            if localization.get(key) is not None
        }
    return extras


def gcn_notice(
    alert: Mapping[str, Any],
    *,
    detectors: Sequence[str],
    online: Collection[str],
    skymap_url: str | None = None,
) -> dict[str, Any]:
    """The SNEWS2 coincidence notice of one alert revision (the mapping is above).

    ``detectors`` are the configured detectors (their order is the notice's order),
    ``online`` those with a recent ON heartbeat. Raises AlertFieldError naming the field.
    """
    view = AlertView.of(alert)
    up = frozenset(_strings(online, "online"))
    status = {name: "on" if name in up else "off" for name in _strings(detectors, "detectors")}
    status.update((name, "triggered") for name in view.detector_names)
    if skymap_url is not None and (not isinstance(skymap_url, str) or not skymap_url):
        raise AlertFieldError("skymap_url", f"must be a non-empty string, got {skymap_url!r}")

    notice: dict[str, Any] = {
        "$schema": SCHEMA_URL,
        "alert_datetime": _gcn_time(view.sent_time_utc, "sent_time_utc"),
        "alert_tense": (
            "test" if view.is_test or view.is_firedrill or view.is_canary else "current"
        ),
        "alert_type": ALERT_TYPES[view.alert_type],
        "id": view.alert_id,
        "mission": "SNEWS",
        "messenger": "Neutrino",
        "record_number": view.revision,
    }
    tier_data: dict[str, Any] = {}
    if view.initial_neutrino_time_utc is not None:
        notice["trigger_time"] = tier_data["neutrino_time_utc"] = _gcn_time(
            view.initial_neutrino_time_utc, "initial_neutrino_time_utc"
        )
    if view.false_alarm_rate_per_year is not None:
        notice["far"] = view.false_alarm_rate_per_year / SECONDS_PER_YEAR
    if skymap_url is not None:
        notice["healpix_url"] = skymap_url
    tier_data.update(
        detector_names=list(view.detector_names),
        p_values=[1.0 if p is None else p for p in view.p_values],
        p_value_reported=[p is not None for p in view.p_values],
        **_tier_extras(alert),
    )
    notice.update(
        snews_schema_version=view.schema_version,
        snews2_tier="CoincidenceTier",
        detector_status=status,
        event_times_utc=[
            _gcn_time(t, f"neutrino_times_utc[{i}]") for i, t in enumerate(view.neutrino_times_utc)
        ],
        tier_data=tier_data,
    )
    return notice


def alert_notice(alert: Mapping[str, Any], *, detectors: Sequence[str]) -> dict[str, Any]:
    """The notice of an alert revision as the server built it: the detectors online are those
    it counted (``online_detector_names``; an alert from before that field: its members
    only), the sky map its localization's FITS URL."""
    alert = _mapping(alert)
    localization = alert.get("localization")
    skymap_url = localization.get("skymap_url") if isinstance(localization, Mapping) else None
    return gcn_notice(
        alert,
        detectors=detectors,
        online=alert.get("online_detector_names") or (),
        skymap_url=skymap_url,
    )


def wants_notice(alert: Mapping[str, Any]) -> bool:
    """Live and fire-drill coincidence revisions become notices; test and canary alerts (the
    canary's every few minutes) and significance-tier alerts (no coincidence schema) do not."""
    return (
        alert.get("alert_kind", "coincidence") == "coincidence"
        and alert.get("is_test") is not True
        and alert.get("is_canary") is not True
    )


def notice_file_name(alert: Mapping[str, Any]) -> str:
    """``<alert_id>-<revision>.json``; refuses ids that are not one plain file-name part."""
    alert = _mapping(alert)
    alert_id = _alert_id(alert)
    if not _FILE_SAFE_ID.fullmatch(alert_id):
        raise AlertFieldError(
            "alert_id",
            "must be letters, digits, '.', '_' or '-', starting with a letter or digit, "
            f"to name a file, got {alert_id!r}",
        )
    return f"{alert_id}-{_revision(alert)}.json"
