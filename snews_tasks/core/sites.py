"""Where the detectors are, and how well they time a burst.

Localization needs each member's Earth-fixed position and the error of its reported neutrino
time. The project ships `snews_tasks/data/detector_sites.json` (figures and their public
sources inside it); the setting SNEWS_DETECTOR_SITES_FILE may name a replacement of the same
form. Keys starting with "_" are comments. A detector without an entry takes no part in
localization.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

_NUMBER_FIELDS = ("latitude_deg", "longitude_deg", "height_m", "timing_sigma_ms")
_TEXT_FIELDS = ("source",)

# WGS84 defining constants (NIMA TR8350.2).
_WGS84_A_M = 6378137.0
_WGS84_F = 1.0 / 298.257223563
_WGS84_E2 = _WGS84_F * (2.0 - _WGS84_F)


class SiteError(ValueError):
    """A sites file entry is unusable; the message names the detector and the field."""


@dataclass(frozen=True)
class Site:
    name: str
    latitude_deg: float
    longitude_deg: float
    height_m: float
    timing_sigma_ms: float
    source: str = ""


def _number(detector: str, entry: Mapping[str, object], field: str) -> float:
    if field not in entry:
        raise SiteError(f"detector {detector!r}: field {field!r} is missing")
    value = entry[field]
    # bool is an int subclass, and true/false in JSON is a typo, never a coordinate.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SiteError(f"detector {detector!r}: field {field!r} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise SiteError(f"detector {detector!r}: field {field!r} must be finite, got {value!r}")
    return number


def _site(detector: str, entry: object) -> Site:
    if not isinstance(entry, Mapping):
        raise SiteError(f"detector {detector!r}: entry must be an object, got {entry!r}")
    unknown = sorted(set(entry) - set(_NUMBER_FIELDS) - set(_TEXT_FIELDS))
    if unknown:
        raise SiteError(f"detector {detector!r}: unknown field(s) {', '.join(map(repr, unknown))}")
    latitude, longitude, height, sigma = (_number(detector, entry, f) for f in _NUMBER_FIELDS)
    if not -90.0 <= latitude <= 90.0:
        raise SiteError(
            f"detector {detector!r}: field 'latitude_deg' must lie in [-90, 90], got {latitude}"
        )
    if not -180.0 <= longitude <= 180.0:
        raise SiteError(
            f"detector {detector!r}: field 'longitude_deg' must lie in [-180, 180], got {longitude}"
        )
    if sigma <= 0.0:
        raise SiteError(
            f"detector {detector!r}: field 'timing_sigma_ms' must be positive, got {sigma}"
        )
    source = entry.get("source", "")
    if not isinstance(source, str):
        raise SiteError(f"detector {detector!r}: field 'source' must be a string, got {source!r}")
    return Site(detector, latitude, longitude, height, sigma, source)


def parse_sites(data: Mapping[str, object]) -> dict[str, Site]:
    """Validate a decoded sites file; raises SiteError naming the detector and field."""
    if not isinstance(data, Mapping):
        raise SiteError(f"the sites file must hold a JSON object, got {type(data).__name__}")
    return {name: _site(name, entry) for name, entry in data.items() if not name.startswith("_")}


def load_sites(path: Path | None = None) -> dict[str, Site]:
    """Read a sites file; None reads the one shipped with the package."""
    if path is None:
        text = resources.files("snews_tasks.data").joinpath("detector_sites.json").read_text()
        where = "the shipped detector_sites.json"
    else:
        text = path.read_text(encoding="utf-8")
        where = str(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise SiteError(f"{where} is not valid JSON: {error}") from error
    return parse_sites(data)


def ecef_m(site: Site) -> np.ndarray:
    """Earth-centred, Earth-fixed position in metres (WGS84 geodetic to Cartesian)."""
    lat = math.radians(site.latitude_deg)
    lon = math.radians(site.longitude_deg)
    prime_vertical = _WGS84_A_M / math.sqrt(1.0 - _WGS84_E2 * math.sin(lat) ** 2)
    radial = (prime_vertical + site.height_m) * math.cos(lat)
    return np.array(
        [
            radial * math.cos(lon),
            radial * math.sin(lon),
            (prime_vertical * (1.0 - _WGS84_E2) + site.height_m) * math.sin(lat),
        ]
    )
