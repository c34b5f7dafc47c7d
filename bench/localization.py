"""Time to localise a burst, and to render its picture and FITS file.

Simulates a source at a random sky position seen by 5 and by all 20 detectors of the shipped
sites file (times from the plane-wave model with each site's stated noise), then reports the
median of several runs of `localize` at the given nside, of `png_bytes` and of `fits_bytes`.
The first call, which loads astropy's IERS table, is timed apart.

    .venv/bin/python bench/localization.py [--nside 64] [--runs 15] [--picture PATH]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from snews_tasks.core.localization import DEFAULT_NSIDE, Localization, Member, localize
from snews_tasks.core.sites import Site, ecef_m, load_sites
from snews_tasks.core.skymap_fits import fits_bytes
from snews_tasks.core.skymap_image import png_bytes

SPEED_OF_LIGHT_M_PER_S = 299_792_458.0
FIVE = ("IceCube", "Super-K", "JUNO", "KM3NeT", "SNO+")


def simulated_members(sites: dict[str, Site], names: tuple[str, ...], seed: int) -> list[Member]:
    """A burst from a random Earth-fixed direction (the frame does not matter for timing)."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    start = time.time_ns()
    return [
        Member(
            name,
            start
            - round(ecef_m(sites[name]) @ direction / SPEED_OF_LIGHT_M_PER_S * 1e9)
            + round(rng.normal(0.0, sites[name].timing_sigma_ms * 1e6)),
        )
        for name in names
    ]


def median_ms(action: Callable[[], object], runs: int) -> float:
    durations = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        durations.append((time.perf_counter() - start) * 1e3)
    return statistics.median(durations)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nside", type=int, default=DEFAULT_NSIDE, help="HEALPix resolution")
    parser.add_argument("--runs", type=int, default=15, help="timed runs per figure (median)")
    parser.add_argument("--picture", type=Path, help="write the 5-detector burst's PNG here")
    options = parser.parse_args()

    sites = load_sites()
    five = simulated_members(sites, FIVE, seed=1)
    twenty = simulated_members(sites, tuple(sorted(sites)), seed=2)

    start = time.perf_counter()
    localize(five, sites, options.nside)
    print(f"first call (loads astropy's IERS table): {(time.perf_counter() - start) * 1e3:7.1f} ms")
    for label, members in (("5 detectors", five), ("20 detectors", twenty)):
        result = localize(members, sites, options.nside)
        assert isinstance(result, Localization), result
        elapsed = median_ms(partial(localize, members, sites, options.nside), options.runs)
        print(
            f"localize, {label:>12}, nside {options.nside}: {elapsed:7.1f} ms  "
            f"(90% area {result.area_90_deg2:,.0f} deg²)"
        )
    if options.picture is not None:
        example = localize(five, sites, options.nside)
        assert isinstance(example, Localization), example
        options.picture.write_bytes(png_bytes(example, "BENCH-5", 1))
        print(f"picture of the 5-detector burst: {options.picture}")
    result = localize(twenty, sites, options.nside)
    assert isinstance(result, Localization)
    png_ms = median_ms(lambda: png_bytes(result, "BENCH-1", 1), max(3, options.runs // 3))
    fits_ms = median_ms(lambda: fits_bytes(result, "BENCH-1", 1), options.runs)
    print(
        f"png_bytes  (20 detectors):           {png_ms:7.1f} ms  ({len(png_bytes(result)):,} bytes)"
    )
    print(
        f"fits_bytes (20 detectors):           {fits_ms:7.1f} ms  ({len(fits_bytes(result)):,} bytes)"
    )


if __name__ == "__main__":
    main()
