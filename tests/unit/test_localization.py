"""Arrival-time localization: coverage by simulation, the two-detector ring, refusals, files.

Truth is simulated independently of the code under test: detector positions from astropy's
EarthLocation, source directions turned Earth-fixed by astropy at the event time, arrival times
t0 - r.n/c plus Gaussian noise of each site's stated sigma. Event times are drawn relative to
the clock, so the tests exercise whatever date they run on (astropy never downloads here).
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import astropy.units as u
import healpy as hp
import numpy as np
import pytest
from astropy.coordinates import ICRS, ITRS, EarthLocation
from astropy.time import Time
from astropy.utils import iers
from PIL import Image

from snews_tasks.core.localization import (
    Localization,
    Member,
    Refusal,
    first_event_time,
    localize,
    pair_rings,
    ring,
)
from snews_tasks.core.sites import Site, load_sites
from snews_tasks.core.skymap_fits import fits_bytes
from snews_tasks.core.skymap_image import png_bytes

C = 299_792_458.0
DAY_NS = 86_400 * 10**9
SITES = load_sites()
WELL_SPREAD = ("IceCube", "Super-K", "JUNO", "KM3NeT", "SNO+")

# The tests' own astropy calls for event times past the shipped IERS table (the far-future test,
# or any test on a clock moved forward) warn that they extrapolate; that is expected here.
pytestmark = pytest.mark.filterwarnings(
    "ignore::astropy.utils.exceptions.AstropyWarning", "ignore::erfa.ErfaWarning"
)


@pytest.fixture(autouse=True, scope="module")
def offline_astropy() -> Iterator[None]:
    """The test's own astropy calls must not try the network either."""
    with (
        iers.conf.set_temp("auto_download", False),
        iers.conf.set_temp("iers_degraded_accuracy", "warn"),
        iers.earth_orientation_table.set(iers.IERS_A.open(iers.IERS_A_FILE)),
    ):
        yield


def position_m(site: Site) -> np.ndarray:
    location = EarthLocation.from_geodetic(
        site.longitude_deg * u.deg, site.latitude_deg * u.deg, site.height_m * u.m
    )
    return np.asarray(location.get_itrs().cartesian.xyz.to_value(u.m))


POSITIONS = {name: position_m(site) for name, site in SITES.items()}


def earth_fixed(ra_deg: np.ndarray, dec_deg: np.ndarray, event_ns: np.ndarray) -> np.ndarray:
    """Unit vectors (rows) toward (ra, dec) in the Earth-fixed frame at each event time."""
    when = Time(event_ns // 10**9, (event_ns % 10**9) / 1e9, format="unix", scale="utc")
    itrs = ICRS(ra=ra_deg * u.deg, dec=dec_deg * u.deg).transform_to(ITRS(obstime=when))
    return np.atleast_2d(np.asarray(itrs.cartesian.xyz.value).T)


def random_directions(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    vectors = rng.normal(size=(count, 3))
    ra, dec = hp.vec2ang(vectors / np.linalg.norm(vectors, axis=1)[:, None], lonlat=True)
    return ra, dec


def arrival_members(
    detectors: Sequence[str], source: np.ndarray, event_ns: int, rng: np.random.Generator | None
) -> list[Member]:
    """t_i = t0 - r_i.n/c (+ noise of the stated sigma when rng is given)."""
    members = []
    for name in detectors:
        delay_ns = -POSITIONS[name] @ source / C * 1e9
        noise_ns = 0.0 if rng is None else rng.normal(0.0, SITES[name].timing_sigma_ms * 1e6)
        members.append(Member(name, event_ns + round(delay_ns + noise_ns)))
    return members


def angle_deg(ra1: float, dec1: float, ra2: float, dec2: float) -> float:
    first = hp.ang2vec(ra1, dec1, lonlat=True)
    second = hp.ang2vec(ra2, dec2, lonlat=True)
    return math.degrees(math.acos(min(1.0, float(first @ second))))


def now_ns() -> int:
    return time.time_ns()


def test_credible_regions_cover_the_truth_at_their_level() -> None:
    """Random sources, times in the past year, 2-5 random detectors with noise.

    nside 32 instead of the default 64 keeps 400 trials within a few seconds: its 1.8 degree
    pixels are still narrower than nearly every posterior from these sigmas (a ring is about
    c sigma / d ~ 2 degrees wide for the best pair). A larger offline run (2000 trials each)
    gave 50% / 90% coverage of 0.515 / 0.898 at nside 32 and 0.503 / 0.892 at nside 64.
    """
    trials = 400
    rng = np.random.default_rng(2026)
    ra, dec = random_directions(rng, trials)
    event_ns = now_ns() - rng.integers(0, 365 * DAY_NS, trials)
    sources = earth_fixed(ra, dec, event_ns)
    names = sorted(SITES)
    levels = []
    for index in range(trials):
        detectors = [str(d) for d in rng.choice(names, int(rng.integers(2, 6)), replace=False)]
        members = arrival_members(detectors, sources[index], int(event_ns[index]), rng)
        result = localize(members, SITES, nside=32)
        assert isinstance(result, Localization), result
        levels.append(result.credible_level(float(ra[index]), float(dec[index])))
    for level in (0.5, 0.9):
        covered = float(np.mean(np.array(levels) < level))
        standard_error = math.sqrt(level * (1 - level) / trials)
        assert abs(covered - level) < 3.5 * standard_error, (level, covered)


def test_two_detector_posterior_lies_on_the_ring() -> None:
    rng = np.random.default_rng(5)
    event_ns = now_ns() - int(rng.integers(0, 30 * DAY_NS))
    ra, dec = random_directions(rng, 1)
    source = earth_fixed(ra, dec, np.array([event_ns]))[0]
    members = arrival_members(["IceCube", "Super-K"], source, event_ns, rng=None)
    result = localize(members, SITES)
    assert isinstance(result, Localization)

    baseline = POSITIONS["Super-K"] - POSITIONS["IceCube"]
    distance = float(np.linalg.norm(baseline))
    dt_s = (members[0].neutrino_time_ns - members[1].neutrino_time_ns) / 1e9
    expected_cos = C * dt_s / distance
    ring_width = C * math.hypot(1.0e-3, 0.9e-3) / distance  # the sites' sigmas, in cos units

    top = np.argsort(result.probability)[::-1]
    top = top[: np.searchsorted(np.cumsum(result.probability[top]), 0.5) + 1]
    pixel_ra, pixel_dec = hp.pix2ang(result.nside, top, lonlat=True)
    pixels = earth_fixed(pixel_ra, pixel_dec, np.full(top.size, event_ns))
    cosines = pixels @ baseline / distance
    pixel_size = hp.nside2resol(result.nside)
    assert np.max(np.abs(cosines - expected_cos)) < 1.0 * ring_width + pixel_size
    assert np.mean(np.abs(cosines - expected_cos)) < 0.6 * ring_width
    # The whole ring, not a patch of it: the pixels go all the way round the baseline.
    across = np.cross(baseline, [0.0, 0.0, 1.0])
    azimuth = np.arctan2(pixels @ np.cross(baseline / distance, across), pixels @ across)
    assert np.all(np.histogram(azimuth, bins=12, range=(-np.pi, np.pi))[0] > 0)

    drawn = ring(SITES["IceCube"], SITES["Super-K"], round(dt_s * 1e9), event_ns)
    axis_icrs = ITRS(
        x=baseline[0] / distance, y=baseline[1] / distance, z=baseline[2] / distance,
        representation_type="cartesian",
        obstime=Time(event_ns / 1e9, format="unix"),
    ).transform_to(ICRS())  # fmt: skip
    assert (
        angle_deg(drawn.axis_ra_deg, drawn.axis_dec_deg, axis_icrs.ra.deg, axis_icrs.dec.deg) < 0.01
    )
    assert drawn.cos_theta == pytest.approx(expected_cos, abs=1e-9)
    assert drawn.opening_deg == pytest.approx(math.degrees(math.acos(expected_cos)), abs=1e-6)


def test_noiseless_burst_peaks_at_the_truth() -> None:
    rng = np.random.default_rng(9)
    ra, dec = random_directions(rng, 5)
    event_ns = now_ns() - rng.integers(0, 365 * DAY_NS, 5)
    sources = earth_fixed(ra, dec, event_ns)
    pixel_deg = math.degrees(hp.nside2resol(64))
    for index in range(5):
        members = arrival_members(WELL_SPREAD, sources[index], int(event_ns[index]), rng=None)
        result = localize(members, SITES)
        assert isinstance(result, Localization)
        assert angle_deg(result.ra_deg, result.dec_deg, ra[index], dec[index]) < 2 * pixel_deg
        assert result.credible_level(float(ra[index]), float(dec[index])) < 0.5
        assert result.probability.sum() == pytest.approx(1.0)
        assert result.area_50_deg2 < result.area_90_deg2 < 41_253


def test_areas_are_the_smallest_regions_holding_the_level() -> None:
    rng = np.random.default_rng(3)
    event_ns = now_ns()
    ra, dec = random_directions(rng, 1)
    source = earth_fixed(ra, dec, np.array([event_ns]))[0]
    result = localize(arrival_members(WELL_SPREAD[:3], source, event_ns, rng), SITES)
    assert isinstance(result, Localization)
    pixel_area = hp.nside2pixarea(result.nside, degrees=True)
    for level, area in ((0.5, result.area_50_deg2), (0.9, result.area_90_deg2)):
        count = round(area / pixel_area)
        largest = np.sort(result.probability)[::-1]
        assert largest[:count].sum() >= level > largest[: count - 1].sum()


def test_far_future_event_time_works_offline_with_a_note() -> None:
    """Two years ahead is past every IERS table astropy ships: extrapolated, noted, no error."""
    rng = np.random.default_rng(4)
    event_ns = now_ns() + 2 * 365 * DAY_NS
    ra, dec = random_directions(rng, 1)
    source = earth_fixed(ra, dec, np.array([event_ns]))[0]
    result = localize(arrival_members(WELL_SPREAD, source, event_ns, rng=None), SITES)
    assert isinstance(result, Localization)
    assert any("extrapolated" in note for note in result.notes)
    pixel_deg = math.degrees(hp.nside2resol(64))
    assert angle_deg(result.ra_deg, result.dec_deg, ra[0], dec[0]) < 2 * pixel_deg


# --- refusals and left-out members -------------------------------------------------------


def simple_members(*detectors: str, spacing_ns: int = 1_000_000) -> list[Member]:
    start = now_ns()
    return [Member(name, start + i * spacing_ns) for i, name in enumerate(detectors)]


def test_member_without_site_is_skipped_and_named() -> None:
    members = simple_members("IceCube", "Mystery-Det", "Super-K", "JUNO")
    result = localize(members, SITES)
    assert isinstance(result, Localization)
    assert result.detectors == ("IceCube", "Super-K", "JUNO")
    assert result.skipped == {"Mystery-Det": "no site in the detector sites file"}


def test_single_detector_remainder_is_refused() -> None:
    result = localize(simple_members("Super-K", "Mystery-Det"), SITES)
    assert isinstance(result, Refusal)
    assert result.reason.startswith("one detector cannot be localised")
    assert "Super-K" in result.reason
    assert "Mystery-Det" in result.skipped
    nobody = localize([], SITES)
    assert isinstance(nobody, Refusal) and "no member" in nobody.reason


def test_times_no_direction_explains_are_refused_with_numbers() -> None:
    start = now_ns()
    members = [Member("IceCube", start), Member("Super-K", start + 100_000_000)]
    result = localize(members, SITES)
    assert isinstance(result, Refusal)
    light_ms = np.linalg.norm(POSITIONS["IceCube"] - POSITIONS["Super-K"]) / C * 1e3
    assert "IceCube and Super-K are 100.000 ms apart" in result.reason
    assert f"{light_ms:.3f} ms" in result.reason


def test_times_just_beyond_light_travel_but_within_errors_are_kept() -> None:
    start = now_ns()
    light_ns = round(np.linalg.norm(POSITIONS["IceCube"] - POSITIONS["Super-K"]) / C * 1e9)
    members = [Member("IceCube", start), Member("Super-K", start + light_ns + 2_000_000)]
    assert isinstance(localize(members, SITES), Localization)


@pytest.mark.parametrize("sigma", [math.nan, -1.0, 0.0, math.inf, "1"])
def test_bad_sigma_override_skips_the_member_with_a_reason(sigma: object) -> None:
    members = simple_members("IceCube", "Super-K", "JUNO")
    members[1] = Member("Super-K", members[1].neutrino_time_ns, sigma_override_ms=sigma)  # type: ignore[arg-type]
    result = localize(members, SITES)
    assert isinstance(result, Localization)
    assert result.detectors == ("IceCube", "JUNO")
    assert "sigma_override_ms" in result.skipped["Super-K"]
    assert repr(sigma) in result.skipped["Super-K"]


def test_overrides_replace_time_and_sigma() -> None:
    members = simple_members("IceCube", "Super-K", "JUNO")
    start = members[0].neutrino_time_ns
    members[2] = Member("JUNO", start + 5, time_override_ns=start + 7, sigma_override_ms=0.25)
    result = localize(members, SITES)
    assert isinstance(result, Localization)
    juno = result.used[2]
    assert (juno.time_ns, juno.sigma_ms) == (start + 7, 0.25)


def test_bad_time_and_repeated_detector_are_skipped() -> None:
    members = simple_members("IceCube", "Super-K", "JUNO")
    members.append(Member("KM3NeT", 1.5))  # type: ignore[arg-type]
    members.append(Member("Super-K", members[0].neutrino_time_ns))
    result = localize(members, SITES)
    assert isinstance(result, Localization)
    assert "neutrino_time_ns must be an integer" in result.skipped["KM3NeT"]
    assert "repeated detector" in result.skipped["Super-K"]
    assert result.detectors == ("IceCube", "Super-K", "JUNO")


def test_bad_nside_is_refused() -> None:
    result = localize(simple_members("IceCube", "Super-K"), SITES, nside=63)
    assert isinstance(result, Refusal) and "nside" in result.reason and "63" in result.reason


# --- timing tier -------------------------------------------------------------------------


def test_first_event_time_removes_the_lag_and_states_its_error() -> None:
    """Simulated bursts of constant rate R after an onset T, first k = 10 events used.

    Theory for the estimate: mean T, standard deviation sqrt(k / (k - 1)) / R; the stated
    sigma estimates that standard deviation without bias.
    """
    rng = np.random.default_rng(21)
    scaled_errors, sigma_ratios = [], []
    for _ in range(3000):
        rate_hz = float(rng.uniform(200, 5000))
        onset_ns = int(rng.integers(10**6, 10**9))
        offsets = np.cumsum(rng.exponential(1e9 / rate_hz, 30)).round().astype(int)
        estimate = first_event_time(onset_ns - 10**6, [int(o) + 10**6 for o in offsets])
        assert estimate is not None
        true_sigma_ms = math.sqrt(10 / 9) / rate_hz * 1e3
        scaled_errors.append((estimate.time_ns - onset_ns) / 1e6 / true_sigma_ms)
        sigma_ratios.append(estimate.sigma_ms / true_sigma_ms)
    assert abs(np.mean(scaled_errors)) < 4 / math.sqrt(3000)
    assert 0.93 < np.std(scaled_errors) < 1.07
    assert abs(np.mean(sigma_ratios) - 1) < 0.02


def test_first_event_time_declines_thin_or_background_series() -> None:
    assert first_event_time(0, [0, 10, 20]) is None
    assert first_event_time(0, [i * 10**8 for i in range(12)], background_rate_hz=20.0) is None


# --- files -------------------------------------------------------------------------------


def sample_localization(detectors: Sequence[str] = WELL_SPREAD[:4]) -> Localization:
    rng = np.random.default_rng(8)
    event_ns = now_ns()
    ra, dec = random_directions(rng, 1)
    source = earth_fixed(ra, dec, np.array([event_ns]))[0]
    result = localize(arrival_members(detectors, source, event_ns, rng), SITES)
    assert isinstance(result, Localization)
    return result


def test_fits_round_trip_through_healpy(tmp_path: Path) -> None:
    result = sample_localization()
    path = tmp_path / "skymap.fits"
    path.write_bytes(fits_bytes(result, alert_id="SNEWS-test-7", revision=3))
    probability, header = hp.read_map(path, h=True, nest=None)
    header = dict(header)
    np.testing.assert_allclose(probability, result.probability, rtol=0, atol=1e-15)
    assert header["ORDERING"] == "RING" and header["NSIDE"] == result.nside
    assert header["COORDSYS"] == "C" and header["OBJECT"] == "SNEWS-test-7"
    assert header["REVISION"] == 3
    assert header["INSTRUME"].split(",") == list(result.detectors)
    date_obs = Time(header["DATE-OBS"], scale="utc")
    assert abs(date_obs.unix - result.event_time_ns / 1e9) < 1e-3


def test_png_is_a_picture_of_sensible_size() -> None:
    for detectors in (WELL_SPREAD[:2], WELL_SPREAD[:4]):
        data = png_bytes(sample_localization(detectors), alert_id="SNEWS-test-7", revision=1)
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        assert 20_000 < len(data) < 2_000_000
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "PNG"
            assert image.size == (1000, 520)
            # Not blank: the map, contours and rings put many colours on the page.
            assert len(image.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 50


def test_pair_rings_skip_detectors_in_one_lab() -> None:
    result = sample_localization(("Super-K", "Hyper-K", "IceCube"))
    pairs = {(r.detector_a, r.detector_b) for r in pair_rings(result)}
    assert pairs == {("Super-K", "IceCube"), ("Hyper-K", "IceCube")}
