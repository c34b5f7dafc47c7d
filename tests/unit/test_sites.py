"""Detector sites: the shipped file, its validation, and the geodetic-to-Cartesian conversion."""

from __future__ import annotations

import json
import math
from pathlib import Path

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import EarthLocation

from snews_tasks.core.sites import Site, SiteError, ecef_m, load_sites, parse_sites

SPEC_DETECTORS = {
    "Baksan", "Borexino", "DS-20K", "DUNE", "HALO", "HALO-1kT", "Hyper-K", "IceCube", "JUNO",
    "KM3NeT", "KamLAND", "LVD", "LZ", "MicroBooNe", "NOvA", "PandaX-4T", "SBND", "SNO+",
    "Super-K", "XENONnT",
}  # fmt: skip

GOOD = {"latitude_deg": 36.4, "longitude_deg": 137.3, "height_m": 370.0, "timing_sigma_ms": 0.9}


def test_shipped_file_has_every_known_detector_with_a_source() -> None:
    sites = load_sites()
    assert set(sites) == SPEC_DETECTORS
    for name, site in sites.items():
        assert site.name == name
        assert site.source.strip(), name
        assert site.timing_sigma_ms > 0


def test_positions_match_astropy_wgs84() -> None:
    for site in load_sites().values():
        expected = EarthLocation.from_geodetic(
            site.longitude_deg * u.deg, site.latitude_deg * u.deg, site.height_m * u.m,
            ellipsoid="WGS84",
        ).to_geocentric()  # fmt: skip
        np.testing.assert_allclose(ecef_m(site), [c.to_value(u.m) for c in expected], atol=1e-3)


def test_distance_between_two_labs_is_a_known_figure() -> None:
    """Super-K to IceCube, through the Earth: about 11,350 km (a sanity check on the data)."""
    sites = load_sites()
    distance_km = np.linalg.norm(ecef_m(sites["Super-K"]) - ecef_m(sites["IceCube"])) / 1e3
    assert 11_000 < distance_km < 11_700


def test_comment_keys_are_skipped() -> None:
    sites = parse_sites({"_about": "anything at all", "Super-K": GOOD})
    assert list(sites) == ["Super-K"]
    assert sites["Super-K"] == Site("Super-K", 36.4, 137.3, 370.0, 0.9)


@pytest.mark.parametrize(
    ("change", "field", "problem"),
    [
        ({"latitude_deg": None}, "latitude_deg", "must be a number"),
        ({"longitude_deg": "137"}, "longitude_deg", "must be a number"),
        ({"height_m": True}, "height_m", "must be a number"),
        ({"height_m": math.nan}, "height_m", "must be finite"),
        ({"timing_sigma_ms": math.inf}, "timing_sigma_ms", "must be finite"),
        ({"latitude_deg": 90.5}, "latitude_deg", "[-90, 90]"),
        ({"longitude_deg": -180.01}, "longitude_deg", "[-180, 180]"),
        ({"timing_sigma_ms": 0}, "timing_sigma_ms", "must be positive"),
        ({"timing_sigma_ms": -1.0}, "timing_sigma_ms", "must be positive"),
        ({"source": 3}, "source", "must be a string"),
        ({"lat": 1.0}, "lat", "unknown field"),
    ],
)
def test_bad_entry_names_detector_and_field(change: dict, field: str, problem: str) -> None:
    with pytest.raises(SiteError) as caught:
        parse_sites({"Super-K": GOOD | change})
    assert "'Super-K'" in str(caught.value)
    assert f"'{field}'" in str(caught.value)
    assert problem in str(caught.value)


def test_missing_field_is_named() -> None:
    entry = dict(GOOD)
    del entry["timing_sigma_ms"]
    with pytest.raises(SiteError, match=r"'JUNO'.*'timing_sigma_ms' is missing"):
        parse_sites({"JUNO": entry})


def test_entry_and_file_must_be_objects() -> None:
    with pytest.raises(SiteError, match="'JUNO': entry must be an object"):
        parse_sites({"JUNO": [1, 2, 3]})
    with pytest.raises(SiteError, match="must hold a JSON object"):
        parse_sites([1, 2])  # type: ignore[arg-type]


def test_load_sites_reads_a_replacement_file(tmp_path: Path) -> None:
    path = tmp_path / "sites.json"
    path.write_text(json.dumps({"Test-Det": GOOD | {"source": "made up"}}))
    assert load_sites(path) == {"Test-Det": Site("Test-Det", 36.4, 137.3, 370.0, 0.9, "made up")}


def test_load_sites_names_a_file_that_is_not_json(tmp_path: Path) -> None:
    path = tmp_path / "sites.json"
    path.write_text("{not json")
    with pytest.raises(SiteError, match=r"sites\.json is not valid JSON"):
        load_sites(path)
