"""Where to point the telescopes: the sky posterior from the members' arrival times.

Model. A plane wave from the unit direction n (pointing at the source) reaches a detector at
Earth-fixed position r at t0 - r.n/c. Member i reports t_i with a Gaussian error sigma_i. For a
direction n, d_i(n) = t_i + r_i.n/c would all equal t0, so with weights w_i = 1/sigma_i^2

    chi2(n, t0) = sum_i w_i (d_i(n) - t0)^2.

The emission time t0 is unknown. Profiling it (t0 = the weighted mean of the d_i) and
marginalising it under a flat prior give the same posterior over n: the marginal is the profile
times sqrt(2 pi / sum w), a constant. We compute the profile, p(n) ~ exp(-chi2_min(n) / 2),
with a flat prior over the sky, on equal-area HEALPix pixels (RING ordering, equatorial ICRS
coordinates). Pixel centres become Earth-fixed (ITRS) directions at the event time through
astropy's full Earth orientation (precession-nutation, Earth rotation with UT1, polar motion).
astropy is never allowed to download IERS tables here; past the end of the tables it ships it
extrapolates (an arcsecond-level effect, far below the pixel size) and the result carries a note.

Sharper times from the timing tier. By default a member's time is its coincidence-tier
`neutrino_time_utc` and its error the site's `timing_sigma_ms` (a figure for a burst at 10 kpc).
A timing-tier message from the same detector for the same burst (its `neutrino_time_utc` within
the coincidence window) measures this burst: `first_event_time` turns its event offsets into a
time and an error, which the caller passes as `Member.time_override_ns` and
`Member.sigma_override_ms`. The rule: after the onset T the signal rate R is taken as constant
over the first k events (k = 10 by default), so the first event lags T by an exponential delay
of mean and standard deviation 1/R, independent of the later gaps. With t_1 <= ... <= t_k the
first k event times, (t_k - t_1)/(k - 1) estimates 1/R without bias, so

    time  = t_1 - (t_k - t_1)/(k - 1)
    sigma = (t_k - t_1)/(k - 1) * sqrt(k / (k - 1))

(the variance of t_1 plus that of the lag estimate). A stated `background_rate_Hz` b is taken
off the rate: 1/R is estimated by 1/((k - 1)/(t_k - t_1) - b), and no estimate is made when the
series is not clearly above background. Removing the lag matters when detectors of very
different sizes are combined: a small detector's first event comes later on average. A binned
series (`time_bin_width_ns`) is not handled by this helper; its first non-empty bin gives
time = bin start + width/2 and sigma = width/sqrt(12) when the bins are wider than 1/R.

Refusals. Bad data never raises: `localize` returns a `Refusal` carrying the reason when fewer
than two members are usable ("one detector cannot be localised"), or when two members' times
differ by more than light needs to cross their baseline, by more than
`INCONSISTENCY_SIGMAS` combined standard deviations (the numbers are in the reason). A member
without a site, with an unusable override or repeating a detector is left out and named.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations

import healpy as hp
import numpy as np
from astropy import units as u
from astropy.coordinates import ICRS, ITRS, CartesianRepresentation, UnitSphericalRepresentation
from astropy.time import Time
from astropy.utils import iers
from scipy.constants import c as SPEED_OF_LIGHT_M_PER_S

from snews_tasks.core.sites import Site, ecef_m

DEFAULT_NSIDE = 64
MAX_NSIDE = 1024
INCONSISTENCY_SIGMAS = 5.0
NS_PER_S = 1_000_000_000
NS_PER_MS = 1_000_000
SKY_DEG2 = 4.0 * math.pi * (180.0 / math.pi) ** 2


@dataclass(frozen=True)
class Member:
    """One coincidence member; the overrides carry a sharper timing-tier time and error."""

    detector: str
    neutrino_time_ns: int
    time_override_ns: int | None = None
    sigma_override_ms: float | None = None


@dataclass(frozen=True, eq=False)
class UsedMember:
    detector: str
    time_ns: int
    sigma_ms: float
    position_m: np.ndarray


@dataclass(frozen=True)
class Refusal:
    """No map: why, and which members were left out (detector -> reason)."""

    reason: str
    skipped: Mapping[str, str]


@dataclass(frozen=True, eq=False)
class Localization:
    """A normalised HEALPix probability map (RING, ICRS) and its summary figures."""

    nside: int
    probability: np.ndarray
    ra_deg: float
    dec_deg: float
    area_50_deg2: float
    area_90_deg2: float
    used: tuple[UsedMember, ...]
    skipped: Mapping[str, str]
    event_time_ns: int
    chi2_min: float
    notes: tuple[str, ...]

    @property
    def detectors(self) -> tuple[str, ...]:
        return tuple(member.detector for member in self.used)

    def credible_level(self, ra_deg: float, dec_deg: float) -> float:
        """Probability in pixels more probable than the one at (ra, dec).

        The point lies inside the q credible region (the smallest set of pixels holding at
        least q, as used for the areas) when this is below q, up to ties in probability.
        """
        pixel = hp.ang2pix(self.nside, ra_deg, dec_deg, lonlat=True)
        probability = self.probability
        return float(probability[probability > probability[pixel]].sum())


@dataclass(frozen=True)
class Ring:
    """The cone cos(theta) = c dt / d about the baseline from detector_a to detector_b.

    dt = t_a - t_b. cos_theta is left unclipped so that times no direction explains show;
    opening_deg clips it to [-1, 1] for drawing.
    """

    detector_a: str
    detector_b: str
    axis_ra_deg: float
    axis_dec_deg: float
    cos_theta: float
    opening_deg: float
    baseline_m: float
    sigma_ms: float


@dataclass(frozen=True)
class FirstEventTime:
    time_ns: int
    sigma_ms: float


def first_event_time(
    start_ns: int, offsets_ns: Sequence[int], background_rate_hz: float = 0.0, first_k: int = 10
) -> FirstEventTime | None:
    """Burst onset time and error from a timing-tier event list (rule in the module doc).

    None when there are fewer than `first_k` events or the rate is not above background.
    """
    if first_k < 2 or len(offsets_ns) < first_k:
        return None
    leading = sorted(offsets_ns)[:first_k]
    span_s = (leading[-1] - leading[0]) / NS_PER_S
    if span_s <= 0.0:
        return None
    signal_rate_hz = (first_k - 1) / span_s - background_rate_hz
    if not signal_rate_hz > 0.0:
        return None
    lag_s = 1.0 / signal_rate_hz
    return FirstEventTime(
        time_ns=start_ns + leading[0] - round(lag_s * NS_PER_S),
        sigma_ms=lag_s * math.sqrt(first_k / (first_k - 1)) * 1e3,
    )


@lru_cache(maxsize=1)
def _shipped_iers_a() -> iers.IERS_A:
    return iers.IERS_A.open(iers.IERS_A_FILE)


@contextmanager
def _offline_earth_orientation(notes: list[str]) -> Iterator[None]:
    """Earth orientation from the IERS-A table astropy ships (measured values and about a year
    of predictions), never a download; past its end astropy extrapolates and that becomes a
    note rather than an error.
    """
    with (
        iers.conf.set_temp("auto_download", False),
        iers.conf.set_temp("iers_degraded_accuracy", "warn"),
        iers.earth_orientation_table.set(_shipped_iers_a()),
        warnings.catch_warnings(record=True) as caught,
    ):
        warnings.simplefilter("always")
        yield
    if caught:
        last = Time(_shipped_iers_a()["MJD"][-1], format="mjd").iso[:10]
        notes.append(
            f"Earth orientation extrapolated past the end of astropy's IERS table "
            f"({last}): an arcsecond-level effect"
        )


def _astropy_time(time_ns: int) -> Time:
    seconds, rest = divmod(time_ns, NS_PER_S)
    return Time(float(seconds), rest / NS_PER_S, format="unix", scale="utc")


@lru_cache(maxsize=8)
def _pixel_lonlat_deg(nside: int) -> tuple[np.ndarray, np.ndarray]:
    lon, lat = hp.pix2ang(nside, np.arange(hp.nside2npix(nside)), lonlat=True)
    return lon, lat


def _pixel_directions_itrs(nside: int, when: Time) -> np.ndarray:
    lon, lat = _pixel_lonlat_deg(nside)
    itrs = ICRS(ra=lon * u.deg, dec=lat * u.deg).transform_to(ITRS(obstime=when))
    return np.asarray(itrs.cartesian.xyz.value).T


def _itrs_to_radec_deg(vectors: np.ndarray, when: Time) -> tuple[np.ndarray, np.ndarray]:
    directions = CartesianRepresentation(vectors.T).represent_as(UnitSphericalRepresentation)
    icrs = ITRS(directions, obstime=when).transform_to(ICRS())
    return np.asarray(icrs.ra.deg), np.asarray(icrs.dec.deg)


def _usable(member: Member, sites: Mapping[str, Site]) -> UsedMember | str:
    """The member ready for the fit, or why it cannot take part."""
    site = sites.get(member.detector)
    if site is None:
        return "no site in the detector sites file"
    time_ns = (
        member.neutrino_time_ns if member.time_override_ns is None else member.time_override_ns
    )
    field = "neutrino_time_ns" if member.time_override_ns is None else "time_override_ns"
    if isinstance(time_ns, bool) or not isinstance(time_ns, int):
        return f"{field} must be an integer number of ns, got {time_ns!r}"
    sigma = site.timing_sigma_ms if member.sigma_override_ms is None else member.sigma_override_ms
    if isinstance(sigma, bool) or not isinstance(sigma, int | float):
        return f"sigma_override_ms must be a number of ms, got {sigma!r}"
    if not (math.isfinite(sigma) and sigma > 0.0):
        return f"sigma_override_ms must be a positive finite number of ms, got {sigma!r}"
    return UsedMember(member.detector, time_ns, float(sigma), ecef_m(site))


def _inconsistency(used: Sequence[UsedMember]) -> str | None:
    """The worst pair whose time difference no direction can explain, in words."""
    worst: tuple[float, str] | None = None
    for a, b in combinations(used, 2):
        baseline_m = float(np.linalg.norm(a.position_m - b.position_m))
        light_ms = baseline_m / SPEED_OF_LIGHT_M_PER_S * 1e3
        dt_ms = (a.time_ns - b.time_ns) / NS_PER_MS
        sigma_ms = math.hypot(a.sigma_ms, b.sigma_ms)
        excess = (abs(dt_ms) - light_ms) / sigma_ms
        if excess > INCONSISTENCY_SIGMAS and (worst is None or excess > worst[0]):
            worst = (
                excess,
                (
                    f"times inconsistent with any direction: {a.detector} and {b.detector} are "
                    f"{abs(dt_ms):.3f} ms apart but light crosses their {baseline_m / 1e3:.0f} km "
                    f"baseline in {light_ms:.3f} ms; the excess is {excess:.1f} combined sigma "
                    f"({sigma_ms:.3f} ms), more than {INCONSISTENCY_SIGMAS:g}"
                ),
            )
    return None if worst is None else worst[1]


def _credible_area_deg2(sorted_probability: np.ndarray, level: float) -> float:
    cumulative = np.cumsum(sorted_probability)
    pixels = min(int(np.searchsorted(cumulative, level)) + 1, sorted_probability.size)
    return pixels * SKY_DEG2 / sorted_probability.size


def localize(
    members: Sequence[Member], sites: Mapping[str, Site], nside: int = DEFAULT_NSIDE
) -> Localization | Refusal:
    """The posterior sky map of a coincidence, or a Refusal saying why there is none."""
    skipped: dict[str, str] = {}
    used: list[UsedMember] = []
    for member in members:
        if member.detector in skipped or any(m.detector == member.detector for m in used):
            skipped.setdefault(member.detector, "repeated detector: its first member is used")
            continue
        usable = _usable(member, sites)
        if isinstance(usable, str):
            skipped[member.detector] = usable
        else:
            used.append(usable)
    if not (isinstance(nside, int) and hp.isnsideok(nside, nest=True) and 1 <= nside <= MAX_NSIDE):
        return Refusal(f"nside must be a power of 2 from 1 to {MAX_NSIDE}, got {nside!r}", skipped)
    if len(used) < 2:
        have = f"only {used[0].detector} has" if used else "no member has"
        return Refusal(f"one detector cannot be localised: {have} a usable site and time", skipped)
    inconsistency = _inconsistency(used)
    if inconsistency is not None:
        return Refusal(inconsistency, skipped)

    event_time_ns = min(m.time_ns for m in used)
    notes: list[str] = []
    with _offline_earth_orientation(notes):
        directions = _pixel_directions_itrs(nside, _astropy_time(event_time_ns))
    positions_s = np.array([m.position_m for m in used]) / SPEED_OF_LIGHT_M_PER_S
    times_s = np.array([(m.time_ns - event_time_ns) / NS_PER_S for m in used])
    weights = np.array([1.0 / (m.sigma_ms * 1e-3) ** 2 for m in used])

    emission = times_s[None, :] + directions @ positions_s.T  # d_i(n), one row per pixel
    emission -= (emission @ weights)[:, None] / weights.sum()
    chi2 = (emission**2) @ weights
    best = int(np.argmin(chi2))
    probability = np.exp(-0.5 * (chi2 - chi2[best]))
    probability /= probability.sum()

    ordered = np.sort(probability)[::-1]
    ra, dec = hp.pix2ang(nside, best, lonlat=True)
    return Localization(
        nside=nside,
        probability=probability,
        ra_deg=float(ra),
        dec_deg=float(dec),
        area_50_deg2=_credible_area_deg2(ordered, 0.5),
        area_90_deg2=_credible_area_deg2(ordered, 0.9),
        used=tuple(used),
        skipped=skipped,
        event_time_ns=event_time_ns,
        chi2_min=float(chi2[best]),
        notes=tuple(notes),
    )


def _rings(pairs: Sequence[tuple[UsedMember, UsedMember]], event_time_ns: int) -> tuple[Ring, ...]:
    if not pairs:
        return ()
    baselines = np.array([b.position_m - a.position_m for a, b in pairs])
    lengths = np.linalg.norm(baselines, axis=1)
    notes: list[str] = []
    with _offline_earth_orientation(notes):
        ra, dec = _itrs_to_radec_deg(baselines / lengths[:, None], _astropy_time(event_time_ns))
    rings = []
    for (a, b), length, axis_ra, axis_dec in zip(pairs, lengths, ra, dec, strict=True):
        cos_theta = SPEED_OF_LIGHT_M_PER_S * (a.time_ns - b.time_ns) / NS_PER_S / length
        rings.append(
            Ring(
                detector_a=a.detector,
                detector_b=b.detector,
                axis_ra_deg=float(axis_ra),
                axis_dec_deg=float(axis_dec),
                cos_theta=float(cos_theta),
                opening_deg=math.degrees(math.acos(min(1.0, max(-1.0, cos_theta)))),
                baseline_m=float(length),
                sigma_ms=math.hypot(a.sigma_ms, b.sigma_ms),
            )
        )
    return tuple(rings)


def ring(site_a: Site, site_b: Site, dt_ns: int, event_time_ns: int) -> Ring:
    """The cone of directions allowed by t_a - t_b = dt_ns, in ICRS at the event time."""
    a = UsedMember(site_a.name, dt_ns, site_a.timing_sigma_ms, ecef_m(site_a))
    b = UsedMember(site_b.name, 0, site_b.timing_sigma_ms, ecef_m(site_b))
    return _rings([(a, b)], event_time_ns)[0]


def pair_rings(localization: Localization, min_baseline_m: float = 1.0e5) -> tuple[Ring, ...]:
    """Rings of every pair of used detectors at least `min_baseline_m` apart.

    Ordered most constraining first (longest baseline per combined sigma): detectors in one
    lab give no ring worth drawing.
    """
    pairs = [
        (a, b)
        for a, b in combinations(localization.used, 2)
        if np.linalg.norm(a.position_m - b.position_m) >= min_baseline_m
    ]
    rings = _rings(pairs, localization.event_time_ns)
    return tuple(sorted(rings, key=lambda r: -r.baseline_m / r.sigma_ms))
