"""How sure the network is: Fisher's combination of the detectors' p-values.

Fisher's method. Under the background hypothesis k independent p-values are uniform, so
X = -2 sum ln p_i follows a chi-squared distribution with 2k degrees of freedom, and the
combined p-value is its survival function at X. The significance is the one-sided Gaussian
equivalent: the sigma with P(Z > sigma) = p.

Numerics. A detector may send p = 0 (its background model says "impossible"). It enters as the
smallest positive double (about 5e-324) so that X stays finite, and the result says so: the
significance is then a lower bound. The combined p-value can be far below the smallest double;
it is carried as its logarithm, from the exact series for even degrees of freedom,
ln sf = -X/2 + ln sum_{j<k} (X/2)^j / j! (summed with logsumexp, so it neither underflows where
scipy's chi2.logsf does, past X of about 1490, nor needs scipy.stats, whose import alone takes
over a second in every process that builds alerts). The sigma comes from that logarithm through
scipy.special.ndtri_exp, so it stays finite (38.5 sigma for p = 5e-324, more beyond) where
norm.isf would return infinity; `combined_p_value` itself may then read 0.0. At the other end,
p = 1 gives sigma = -inf in exact arithmetic; it is reported as the sigma of the largest double
below 1 (about -8.2), so the figure stays a finite number in JSON.

Binned messages. A significance-tier message carries `p_values` for bins of width w: bin k
covers [anchor + k w, anchor + (k + 1) w), with the anchor its `machine_time_utc` (as integer ns)
unless the caller chooses another. Bins of different widths and anchors are matched by cutting
the time axis at every bin edge of every message: on each resulting piece every detector has at
most one bin covering it, and the detectors that do are combined with Fisher's method. Adjacent
pieces covered by the same bins are one segment. A detector's later message (later in the input
sequence) overrides its earlier ones where their bins overlap. Only pieces that two or more
detectors cover are reported: one detector's bin alone is its own p-value, not a combination.
A long bin that overlaps several short bins of another detector enters each of those segments
with its one p-value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import special

SMALLEST_P = math.ulp(0.0)  # the smallest positive double, stands in for p = 0
_LARGEST_P_BELOW_ONE = 1.0 - math.ulp(1.0) / 2.0


@dataclass(frozen=True)
class Combined:
    """Fisher's combination; both figures are None (with `reason`) when nothing is usable."""

    combined_p_value: float | None
    combined_significance_sigma: float | None
    used: tuple[str, ...]
    left_out: dict[str, str]
    notes: tuple[str, ...] = ()
    reason: str | None = None


@dataclass(frozen=True)
class BinnedPValues:
    """One significance-tier message: bin k covers [anchor + k width, anchor + (k+1) width)."""

    detector: str
    anchor_ns: int
    bin_width_ns: int
    p_values: Sequence[float]


@dataclass(frozen=True)
class Segment:
    start_ns: int
    end_ns: int
    detectors: tuple[str, ...]
    p_values: tuple[float, ...]
    combined_p_value: float
    combined_significance_sigma: float


@dataclass(frozen=True)
class BinnedCombination:
    segments: tuple[Segment, ...]
    most_significant: Segment | None
    left_out: tuple[str, ...]


def _p_problem(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"p-value must be a number, got {value!r}"
    if not 0.0 <= value <= 1.0:  # also false for NaN
        return f"p-value must lie in [0, 1], got {value!r}"
    return None


def _fisher_log_sf(p_values: Sequence[float]) -> float:
    """ln of the combined p-value; p = 0 enters as SMALLEST_P."""
    half = -sum(math.log(max(p, SMALLEST_P)) for p in p_values)  # X / 2
    if half == 0.0:  # every p is 1: the series' first term, ln 1
        return 0.0
    terms = [j * math.log(half) - math.lgamma(j + 1) for j in range(len(p_values))]
    return -half + float(special.logsumexp(terms))


def _fisher(p_values: Sequence[float]) -> tuple[float, float]:
    """(combined p, one-sided Gaussian sigma) of valid p-values."""
    log_p = min(_fisher_log_sf(p_values), math.log(_LARGEST_P_BELOW_ONE))
    return math.exp(log_p), -float(special.ndtri_exp(log_p))


def combine_p_values(p_values: Sequence[float | None], names: Sequence[str]) -> Combined:
    """Fisher's method over members' p-values; None or invalid ones are left out and named.

    Raises ValueError only when the two sequences differ in length (a caller's bug).
    """
    if len(p_values) != len(names):
        raise ValueError(f"{len(p_values)} p-values for {len(names)} names")
    used: list[str] = []
    values: list[float] = []
    left_out: dict[str, str] = {}
    for name, p in zip(names, p_values, strict=True):
        problem = "no p-value" if p is None else _p_problem(p)
        if problem is None and p is not None:
            used.append(name)
            values.append(float(p))
        else:
            left_out[name] = problem or "no p-value"
    if not values:
        return Combined(None, None, (), left_out, reason="no member has a usable p-value")
    notes = tuple(
        f"{name} sent p = 0, taken as {SMALLEST_P:.1e}: the significance is a lower bound"
        for name, p in zip(used, values, strict=True)
        if p == 0.0
    )
    combined_p, sigma = _fisher(values)
    return Combined(combined_p, sigma, tuple(used), left_out, notes)


def _message_problem(message: BinnedPValues) -> str | None:
    for field in ("anchor_ns", "bin_width_ns"):
        value = getattr(message, field)
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{field} must be an integer number of ns, got {value!r}"
    if message.bin_width_ns <= 0:
        return f"bin_width_ns must be positive, got {message.bin_width_ns}"
    if len(message.p_values) == 0:
        return "p_values is empty"
    for index, p in enumerate(message.p_values):
        problem = _p_problem(p)
        if problem is not None:
            return f"p_values[{index}]: {problem}"
    return None


def _covering_bins(message: BinnedPValues, starts: np.ndarray) -> np.ndarray:
    """Index of the bin covering each piece start, -1 where none does."""
    index = (starts - message.anchor_ns) // message.bin_width_ns
    return np.where((index >= 0) & (index < len(message.p_values)), index, -1)


def combine_binned(messages: Sequence[BinnedPValues]) -> BinnedCombination:
    """Bin-by-bin Fisher combination across detectors (matching rule in the module doc)."""
    left_out: list[str] = []
    valid: list[BinnedPValues] = []
    for position, message in enumerate(messages):
        problem = _message_problem(message)
        if problem is None:
            valid.append(message)
        else:
            left_out.append(f"message {position} ({message.detector}): {problem}")
    if not valid:
        return BinnedCombination((), None, tuple(left_out))

    edges = np.unique(
        np.concatenate(
            [
                m.anchor_ns + m.bin_width_ns * np.arange(len(m.p_values) + 1, dtype=np.int64)
                for m in valid
            ]
        )
    )
    starts, ends = edges[:-1], edges[1:]
    detectors = list(dict.fromkeys(m.detector for m in valid))
    # Per detector and piece: which of its messages covers the piece (latest wins) and the bin.
    owner = np.full((len(detectors), starts.size), -1)
    bins = np.full((len(detectors), starts.size), -1)
    for number, message in enumerate(valid):
        row = detectors.index(message.detector)
        covered = _covering_bins(message, starts)
        hit = covered >= 0
        owner[row, hit] = number
        bins[row, hit] = covered[hit]

    segments: list[Segment] = []
    previous_key: tuple[tuple[int, int], ...] | None = None
    for piece in range(starts.size):
        key = tuple((int(owner[r, piece]), int(bins[r, piece])) for r in range(len(detectors)))
        present = [r for r in range(len(detectors)) if owner[r, piece] >= 0]
        if len(present) < 2:
            previous_key = None
            continue
        if key == previous_key:
            segments[-1] = replace(segments[-1], end_ns=int(ends[piece]))
            continue
        names = tuple(detectors[r] for r in present)
        values = tuple(float(valid[owner[r, piece]].p_values[bins[r, piece]]) for r in present)
        combined_p, sigma = _fisher(values)
        segments.append(
            Segment(int(starts[piece]), int(ends[piece]), names, values, combined_p, sigma)
        )
        previous_key = key
    best = max(segments, key=lambda s: s.combined_significance_sigma, default=None)
    return BinnedCombination(tuple(segments), best, tuple(left_out))
