"""From an alert revision to the localization its next revision carries.

The localize task (`tasks/localize.py`) and offline replay (`entrypoints/replay.py`) share
these steps; only where the timing-tier messages come from and where the files go differ.

1. `localization_request.request_of(alert)`: the members' detectors and neutrino times, and
   their key, which the writer compares with the coincidence's members when the result comes
   back: a result for members that have changed since is dropped.
2. `members_for`: each member's time and error. By default the coincidence-tier time and the
   site's `timing_sigma_ms`. A timing-tier message of the same detector and namespace whose
   `neutrino_time_utc` lies within the coincidence window of the member's time measures the
   same burst (the most recently received one if several do); `timing_estimate` turns it into
   an onset time and error (`core.localization.first_event_time` for an event list; the first
   non-empty bin's centre and width/sqrt(12) for a binned series), which replaces the
   member's when its error is smaller than the site's.
3. `localize` (`core.localization`), then the files: the HEALPix map as FITS and its picture
   as PNG, named after the revision localized, "<alert_id>-<revision>.fits" / ".png".
4. `Result.summary`: the alert's `localization` object.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .localization import (
    NS_PER_MS,
    FirstEventTime,
    Localization,
    Member,
    Refusal,
    first_event_time,
    localize,
)
from .localization_request import LocalizationRequest
from .sites import Site
from .skymap_fits import fits_bytes
from .skymap_image import png_bytes
from .times import format_time_ns, parse_time_ns

# -- the timing tier -------------------------------------------------------------------------------


def timing_estimate(message: Mapping[str, Any]) -> FirstEventTime | None:
    """Onset time and error from an archived timing-tier message; None when it gives none."""
    start_ns = parse_time_ns(message.get("start_time_utc"), "start_time_utc")
    series = message.get("timing_series") or []
    width = message.get("time_bin_width_ns")
    if width is None:
        return first_event_time(start_ns, series, float(message.get("background_rate_Hz") or 0.0))
    first = next((index for index, count in enumerate(series) if count > 0), None)
    if first is None:
        return None
    return FirstEventTime(start_ns + first * width + width // 2, width / math.sqrt(12) / NS_PER_MS)


def matching_timing_message(
    messages: Iterable[Mapping[str, Any]], detector: str, t_ns: int, window_ns: int
) -> Mapping[str, Any] | None:
    """The detector's timing-tier message for the burst at `t_ns`: the latest received of those
    whose neutrino time lies within the coincidence window of it (of equal receive times, the
    last given)."""
    matching = [
        m
        for m in messages
        if m.get("detector_name") == detector
        and abs(parse_time_ns(m.get("neutrino_time_utc"), "neutrino_time_utc") - t_ns) <= window_ns
    ]
    matching.sort(key=lambda m: str(m.get("received_time_utc") or ""))
    return matching[-1] if matching else None


#: A detector's timing-tier messages near a time (the archive's query, or replay's memory).
TimingSource = Callable[[str, int], Iterable[Mapping[str, Any]]]


def timing_messages_for(
    request: LocalizationRequest, source: TimingSource, window_ns: int
) -> dict[str, Mapping[str, Any]]:
    """Each member's matching timing-tier message, by detector, where it has one."""
    found = {}
    for detector, t_ns in zip(request.detectors, request.times_ns, strict=True):
        message = matching_timing_message(source(detector, t_ns), detector, t_ns, window_ns)
        if message is not None:
            found[detector] = message
    return found


def members_for(
    request: LocalizationRequest,
    sites: Mapping[str, Site],
    timing_messages: Mapping[str, Mapping[str, Any]],
) -> tuple[list[Member], dict[str, str]]:
    """The members for `localize`, and for each member whose time the timing tier sharpened,
    that message's uuid. `timing_messages` maps a detector to its matching message."""
    members: list[Member] = []
    sharpened: dict[str, str] = {}
    for detector, t_ns in zip(request.detectors, request.times_ns, strict=True):
        message = timing_messages.get(detector)
        site = sites.get(detector)
        estimate = None if message is None else _estimate_or_none(message)
        if message and estimate and site and estimate.sigma_ms < site.timing_sigma_ms:
            members.append(Member(detector, t_ns, estimate.time_ns, estimate.sigma_ms))
            sharpened[detector] = str(message.get("uuid"))
        else:
            members.append(Member(detector, t_ns))
    return members, sharpened


def _estimate_or_none(message: Mapping[str, Any]) -> FirstEventTime | None:
    """An archived message was validated on its way in; one that still does not read gives no
    estimate rather than failing the localization."""
    try:
        return timing_estimate(message)
    except (ValueError, TypeError):
        return None


# -- the result --------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Result:
    """What one localization produced: the map (or why none) and its files."""

    request: LocalizationRequest
    outcome: Localization | Refusal
    sharpened: Mapping[str, str]

    def map_file(self) -> tuple[str, bytes] | None:
        """The FITS map and its name; None for a refusal."""
        if not isinstance(self.outcome, Localization):
            return None
        request = self.request
        return request.skymap, fits_bytes(self.outcome, request.alert_id, request.revision)

    def picture_file(self) -> tuple[str, bytes] | None:
        """The PNG picture and its name; None for a refusal. It takes most of a localization's
        time (matplotlib), so the localize task renders it after sending the result."""
        if not isinstance(self.outcome, Localization):
            return None
        request = self.request
        return request.picture, png_bytes(self.outcome, request.alert_id, request.revision)

    def files(self) -> dict[str, bytes]:
        """The FITS map and its PNG picture, by file name; none for a refusal."""
        return dict(f for f in (self.map_file(), self.picture_file()) if f is not None)

    def summary(self, url_of: Callable[[str], str]) -> dict[str, Any]:
        """The alert's `localization` object; `url_of` turns a file name into its URL."""
        outcome, request = self.outcome, self.request
        located = isinstance(outcome, Localization)
        summary: dict[str, Any] = {
            "skymap": request.skymap if located else None,
            "skymap_url": url_of(request.skymap) if located else None,
            "skymap_image": request.picture if located else None,
            "skymap_image_url": url_of(request.picture) if located else None,
            "ra_deg": None,
            "dec_deg": None,
            "area_50_deg2": None,
            "area_90_deg2": None,
            "detectors": [d for d in request.detectors if d not in outcome.skipped],
            "left_out": dict(outcome.skipped),
            "refused": None,
            "timing_tier": dict(self.sharpened),
            "localized_revision": request.revision,
            "nside": None,
            "event_time_utc": None,
            "notes": [],
        }
        if isinstance(outcome, Localization):
            summary.update(
                ra_deg=round(outcome.ra_deg, 3),
                dec_deg=round(outcome.dec_deg, 3),
                area_50_deg2=round(outcome.area_50_deg2, 1),
                area_90_deg2=round(outcome.area_90_deg2, 1),
                detectors=list(outcome.detectors),
                nside=outcome.nside,
                event_time_utc=format_time_ns(outcome.event_time_ns),
                notes=list(outcome.notes),
            )
        else:
            summary["refused"] = outcome.reason
        return summary


def run(
    request: LocalizationRequest,
    sites: Mapping[str, Site],
    nside: int,
    timing_messages: Mapping[str, Mapping[str, Any]],
) -> Result:
    """Localize one request. Bad data is a refusal with its reason, never an exception."""
    members, sharpened = members_for(request, sites, timing_messages)
    return Result(request, localize(members, sites, nside), sharpened)
