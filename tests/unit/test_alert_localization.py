"""From an alert revision to its localization: members, the timing tier, files and summary."""

from __future__ import annotations

import io
import math
from typing import Any

import healpy as hp
import numpy as np
import pytest
from astropy.io import fits

from snews_tasks.core.alert_localization import (
    matching_timing_message,
    members_for,
    run,
    timing_estimate,
    timing_messages_for,
)
from snews_tasks.core.localization import Localization, Member, first_event_time
from snews_tasks.core.localization_request import request_of
from snews_tasks.core.sites import load_sites
from snews_tasks.core.times import format_time_ns
from snews_tasks.testing.builders import T0

SITES = load_sites()
MS = 1_000_000
pytestmark = pytest.mark.filterwarnings(
    "ignore::astropy.utils.exceptions.AstropyWarning", "ignore::erfa.ErfaWarning"
)


def alert(detectors: list[str], offsets_ms: list[float], **fields: Any) -> dict[str, Any]:
    return {"alert_id": "c-7", "revision": 2, "is_test": False, "detector_names": detectors,
            "neutrino_times_utc": [format_time_ns(T0 + round(o * MS)) for o in offsets_ms],
            **fields}


def timing(detector: str, offset_ms: float, series: list[int], **fields: Any) -> dict[str, Any]:
    t_ns = T0 + round(offset_ms * MS)
    return {"uuid": f"timing-{detector}-{offset_ms}", "tier": "TimingTier",
            "detector_name": detector, "neutrino_time_utc": format_time_ns(t_ns),
            "start_time_utc": format_time_ns(t_ns), "timing_series": series,
            "received_time_utc": format_time_ns(T0), **fields}


def test_an_event_list_gives_the_first_event_time_of_the_core_rule() -> None:
    series = [0, 400_000, 500_000, 900_000, 1_200_000, 1_500_000, 1_600_000, 2_000_000,
              2_100_000, 2_700_000, 9_000_000]
    message = timing("IceCube", 0, series, background_rate_Hz=50.0)
    assert timing_estimate(message) == first_event_time(T0, series, 50.0)


def test_a_binned_series_gives_its_first_non_empty_bin() -> None:
    message = timing("IceCube", 0, [0, 0, 3, 7], time_bin_width_ns=2 * MS)
    estimate = timing_estimate(message)
    assert estimate is not None
    assert estimate.time_ns == T0 + 4 * MS + 1 * MS
    assert estimate.sigma_ms == pytest.approx(2 / math.sqrt(12))
    assert timing_estimate(timing("IceCube", 0, [0, 0], time_bin_width_ns=MS)) is None


def test_the_matching_message_is_the_detector_s_latest_within_the_window() -> None:
    near = timing("JUNO", 3, [1])
    later = {**timing("JUNO", -4, [2]), "received_time_utc": format_time_ns(T0 + 1)}
    far = timing("JUNO", 20_000, [3])
    other = timing("Super-K", 0, [4])
    assert matching_timing_message([near, far, other], "JUNO", T0, 10_000 * MS) is near
    assert matching_timing_message([later, near], "JUNO", T0, 10_000 * MS) is later
    assert matching_timing_message([far, other], "JUNO", T0, 10_000 * MS) is None
    request = request_of(alert(["JUNO", "Super-K"], [0, 1]))
    found = timing_messages_for(request, lambda detector, t_ns: [near, far, other], 10_000 * MS)
    assert found == {"JUNO": near, "Super-K": other}


def test_the_timing_tier_replaces_a_member_s_time_only_when_it_is_sharper() -> None:
    request = request_of(alert(["IceCube", "Super-K", "JUNO"], [0, 5, 9]))
    sharp = timing("IceCube", 0, [0, 0, 5], time_bin_width_ns=MS // 10)  # sigma 0.03 ms
    coarse = timing("Super-K", 5, [0, 4], time_bin_width_ns=100 * MS)  # sigma 29 ms > 0.9
    broken = timing("JUNO", 9, [1], start_time_utc="yesterday")  # no estimate, no failure
    members, sharpened = members_for(request, SITES, {"IceCube": sharp, "Super-K": coarse,
                                                      "JUNO": broken})
    estimate = timing_estimate(sharp)
    assert estimate is not None
    assert members == [Member("IceCube", T0, estimate.time_ns, estimate.sigma_ms),
                       Member("Super-K", T0 + 5 * MS), Member("JUNO", T0 + 9 * MS)]
    assert sharpened == {"IceCube": sharp["uuid"]}


def test_a_sharper_time_makes_a_smaller_map() -> None:
    request = request_of(alert(["IceCube", "Super-K", "JUNO", "KM3NeT"], [0, 3, 9, 12]))
    plain = run(request, SITES, 32, {})
    sharp = run(request, SITES, 32, {
        d: timing(d, o, [0, 0, 5], time_bin_width_ns=MS // 10)
        for d, o in (("IceCube", 0), ("Super-K", 3))})
    assert isinstance(plain.outcome, Localization) and isinstance(sharp.outcome, Localization)
    assert sharp.outcome.area_90_deg2 < plain.outcome.area_90_deg2
    assert sharp.summary(str)["timing_tier"] == {"IceCube": "timing-IceCube-0",
                                                 "Super-K": "timing-Super-K-3"}


def test_a_map_s_files_and_summary() -> None:
    result = run(request_of(alert(["IceCube", "Super-K", "Baksan"], [0, 3, 9])),
                 {k: v for k, v in SITES.items() if k != "Baksan"}, 32, {})
    files = result.files()
    assert sorted(files) == ["c-7-2.fits", "c-7-2.png"]
    assert files["c-7-2.png"].startswith(b"\x89PNG")
    probability = hp.read_map(fits.open(io.BytesIO(files["c-7-2.fits"])))
    assert probability.size == hp.nside2npix(32) and probability.sum() == pytest.approx(1)
    summary = result.summary(lambda name: f"https://x.example/skymaps/{name}")
    assert summary["skymap_url"] == "https://x.example/skymaps/c-7-2.fits"
    assert summary["skymap_image"] == "c-7-2.png"
    assert summary["left_out"] == {"Baksan": "no site in the detector sites file"}
    assert summary["detectors"] == ["IceCube", "Super-K"]
    assert (summary["nside"], summary["localized_revision"], summary["refused"]) == (32, 2, None)
    ra, dec = hp.pix2ang(32, int(np.argmax(probability)), lonlat=True)
    assert summary["ra_deg"] == pytest.approx(ra, abs=1e-3)
    assert summary["dec_deg"] == pytest.approx(dec, abs=1e-3)


def test_a_refusal_has_no_files_and_says_why() -> None:
    result = run(request_of(alert(["IceCube", "Super-K"], [0, 300])), SITES, 32, {})
    assert result.files() == {}
    summary = result.summary(lambda name: "unused")
    assert summary["refused"].startswith("times inconsistent with any direction")
    assert [summary[k] for k in ("skymap", "skymap_url", "ra_deg", "area_90_deg2")] == [None] * 4


@pytest.mark.parametrize("fields, field", [
    ({"detector_names": "IceCube"}, "detector_names"),
    ({"neutrino_times_utc": ["2026-01-01T00:00:00Z"]}, "neutrino_times_utc"),
    ({"neutrino_times_utc": ["soon", "later"]}, "neutrino_times_utc"),
    ({"is_test": "no"}, "is_test"),
    ({"revision": -1}, "revision"),
    ({"alert_id": None}, "alert_id"),
])
def test_a_malformed_alert_names_its_field(fields: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        request_of({**alert(["IceCube", "Super-K"], [0, 3]), **fields})
