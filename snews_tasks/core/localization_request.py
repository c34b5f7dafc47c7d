"""What travels between the writer and the localize task, without the sky-map stack.

The writer imports this (it must start fast and never load astropy or matplotlib); the
localize task and replay add the computation (`core.alert_localization`).

* `request_of(alert)`: an alert revision's members, their key (the engine's `members_key`)
  and the names of its files, "<alert_id>-<revision>.fits" (the HEALPix map) and ".png" (its
  picture), named after the revision localized.
* `attach_payload` / `parse_attach_payload`: the localize task's result as the argument of
  the writer's attach task, and the writer's check of it.
* `reason_of`: the reason of the UPDATE that carries a localization.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .documents import require_revision, require_str
from .engine import MembersKey, members_key
from .times import parse_time_ns


@dataclass(frozen=True)
class LocalizationRequest:
    """One alert revision's members, as the localize task receives them."""

    alert_id: str
    revision: int
    is_test: bool
    detectors: tuple[str, ...]
    times_ns: tuple[int, ...]

    @property
    def key(self) -> MembersKey:
        return members_key(zip(self.times_ns, self.detectors, strict=True))

    @property
    def skymap(self) -> str:
        """The FITS file's name; the picture's ends in .png instead."""
        return f"{self.alert_id}-{self.revision}.fits"

    @property
    def picture(self) -> str:
        return f"{self.alert_id}-{self.revision}.png"


def request_of(alert: Mapping[str, Any]) -> LocalizationRequest:
    """The request of an alert document; a ValueError names the field that is wrong."""
    names = alert.get("detector_names")
    times = alert.get("neutrino_times_utc")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"alert: field 'detector_names' must be a list of names, got {names!r}")
    if not isinstance(times, list) or len(times) != len(names):
        raise ValueError(
            f"alert: field 'neutrino_times_utc' must be a list as long as 'detector_names', "
            f"got {times!r}"
        )
    is_test = alert.get("is_test")
    if not isinstance(is_test, bool):
        raise ValueError(f"alert: field 'is_test' must be true or false, got {is_test!r}")
    return LocalizationRequest(
        alert_id=require_str(alert, "alert_id", "alert"),
        revision=require_revision(alert),
        is_test=is_test,
        detectors=tuple(names),
        times_ns=tuple(parse_time_ns(t, "neutrino_times_utc") for t in times),
    )


def reason_of(localization: Mapping[str, Any]) -> str:
    """The reason of the UPDATE that carries the localization."""
    if localization.get("refused"):
        return f"localization refused: {localization['refused']}"
    detectors: Sequence[str] = localization.get("detectors") or ()
    return (
        f"localization added: {len(detectors)} detectors, most probable RA "
        f"{localization['ra_deg']:.1f} deg Dec {localization['dec_deg']:+.1f} deg, 90% area "
        f"{localization['area_90_deg2']:,.0f} deg2"
    )


# -- the result as the task sends it to the writer ---------------------------------------------


def attach_payload(request: LocalizationRequest, localization: Mapping[str, Any]) -> dict[str, Any]:
    """The writer's task argument: which coincidence and members, and the summary."""
    return {
        "alert_id": request.alert_id,
        "is_test": request.is_test,
        "revision": request.revision,
        "key": [list(pair) for pair in request.key],
        "localization": dict(localization),
    }


@dataclass(frozen=True)
class Attachment:
    alert_id: str
    is_test: bool
    key: MembersKey
    localization: dict[str, Any]


def parse_attach_payload(payload: object) -> Attachment:
    """The writer's check of an attach task's argument; a ValueError names the field."""
    if not isinstance(payload, Mapping):
        raise ValueError(f"localization result: must be an object, got {payload!r:.80}")
    alert_id = require_str(payload, "alert_id", "localization result")
    is_test = payload.get("is_test")
    key = payload.get("key")
    localization = payload.get("localization")
    if not isinstance(is_test, bool):
        raise ValueError(
            f"localization result: field 'is_test' must be true or false, got {is_test!r}"
        )
    if not (
        isinstance(key, list)
        and key
        and all(
            isinstance(pair, list)
            and len(pair) == 2
            and isinstance(pair[0], int)
            and isinstance(pair[1], str)
            for pair in key
        )
    ):
        raise ValueError(
            f"localization result: field 'key' must be a list of [time_ns, detector], "
            f"got {key!r:.80}"
        )
    if not isinstance(localization, dict):
        raise ValueError(
            f"localization result: field 'localization' must be an object, got {localization!r:.80}"
        )
    return Attachment(alert_id, is_test, members_key((t, d) for t, d in key), localization)
