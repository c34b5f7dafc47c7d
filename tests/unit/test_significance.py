"""Fisher's combination, checked against scipy and an independent closed form."""

from __future__ import annotations

import itertools
import math
from decimal import Decimal, localcontext

import numpy as np
import pytest
from scipy import special, stats

from snews_tasks.core.significance import (
    BinnedPValues,
    Segment,
    combine_binned,
    combine_p_values,
)


def closed_form_log_sf(p_values: list[float]) -> float:
    """ln P(chi2_2k > X), X = -2 sum ln p, from exp(-X/2) sum_{j<k} (X/2)^j / j! in 60 digits."""
    with localcontext() as context:
        context.prec = 60
        half = -sum(Decimal(p).ln() for p in p_values)
        series = sum((half**j / math.factorial(j) for j in range(len(p_values))), Decimal(0))
        return float(-half + series.ln())


def names(count: int) -> list[str]:
    return [f"det{i}" for i in range(count)]


@pytest.mark.parametrize("count", [1, 2, 3, 5, 8, 20])
def test_matches_scipy_and_closed_form(count: int) -> None:
    rng = np.random.default_rng(count)
    for _ in range(20):
        p_values = [float(p) for p in rng.uniform(1e-6, 1.0, count)]
        combined = combine_p_values(p_values, names(count))
        scipy_p = stats.combine_pvalues(p_values, method="fisher").pvalue
        assert combined.combined_p_value is not None
        assert combined.combined_p_value == pytest.approx(scipy_p, rel=1e-9)
        assert math.log(combined.combined_p_value) == pytest.approx(
            closed_form_log_sf(p_values), rel=1e-9, abs=1e-12
        )
        assert combined.combined_significance_sigma == pytest.approx(
            stats.norm.isf(scipy_p), rel=1e-9, abs=1e-9
        )
        assert combined.used == tuple(names(count))
        assert combined.left_out == {}


def test_simulated_background_p_values_give_a_uniform_combined_p() -> None:
    """Under the null the combination is itself uniform: its deciles hold a tenth each."""
    rng = np.random.default_rng(7)
    combined = [combine_p_values(list(rng.uniform(size=4)), names(4)) for _ in range(4000)]
    counts, _ = np.histogram([c.combined_p_value or 0.0 for c in combined], bins=10, range=(0, 1))
    expected = 400
    standard_error = math.sqrt(4000 * 0.1 * 0.9)
    assert np.all(np.abs(counts - expected) < 4 * standard_error), counts


def test_tiny_p_values_keep_a_finite_sigma() -> None:
    p_values = [1e-300, 1e-250, 1e-280]
    combined = combine_p_values(p_values, names(3))
    assert combined.combined_p_value == 0.0  # below the smallest double
    sigma = combined.combined_significance_sigma
    assert sigma is not None and math.isfinite(sigma) and sigma > 37
    # P(Z > sigma) must be the combined p-value, compared in logarithms.
    assert special.log_ndtr(-sigma) == pytest.approx(closed_form_log_sf(p_values), rel=1e-9)


def test_underflow_boundary_is_continuous() -> None:
    """Across X = 1490, where scipy's logsf underflows and the series takes over."""
    sigmas = []
    for exponent in range(-300, -324, -2):
        p_values = [10.0**exponent, 1e-20]
        sigma = combine_p_values(p_values, names(2)).combined_significance_sigma
        assert sigma is not None
        assert special.log_ndtr(-sigma) == pytest.approx(closed_form_log_sf(p_values), rel=1e-9)
        sigmas.append(sigma)
    assert all(b > a for a, b in itertools.pairwise(sigmas))


def test_p_zero_is_floored_and_said() -> None:
    combined = combine_p_values([0.0, 0.5], ["Super-K", "JUNO"])
    sigma = combined.combined_significance_sigma
    assert sigma is not None and math.isfinite(sigma)
    assert sigma >= combine_p_values([1e-300, 0.5], names(2)).combined_significance_sigma  # type: ignore[operator]
    assert len(combined.notes) == 1 and "Super-K" in combined.notes[0]
    assert "lower bound" in combined.notes[0]


def test_p_one_gives_a_finite_negative_sigma() -> None:
    combined = combine_p_values([1.0, 1.0], names(2))
    assert combined.combined_p_value == pytest.approx(1.0)
    sigma = combined.combined_significance_sigma
    assert sigma is not None and math.isfinite(sigma) and sigma < -5


def test_missing_and_bad_p_values_are_left_out_and_named() -> None:
    combined = combine_p_values(
        [0.01, None, 1.5, float("nan"), -0.1, "0.2", True, 0.02],  # type: ignore[list-item]
        ["A", "B", "C", "D", "E", "F", "G", "H"],
    )
    assert combined.used == ("A", "H")
    assert combined.left_out["B"] == "no p-value"
    assert "[0, 1]" in combined.left_out["C"] and "1.5" in combined.left_out["C"]
    assert "[0, 1]" in combined.left_out["D"] and "nan" in combined.left_out["D"]
    assert "[0, 1]" in combined.left_out["E"]
    assert "must be a number" in combined.left_out["F"]
    assert "must be a number" in combined.left_out["G"]
    scipy_p = stats.combine_pvalues([0.01, 0.02], method="fisher").pvalue
    assert combined.combined_p_value == pytest.approx(scipy_p, rel=1e-9)


def test_nothing_usable_gives_a_reason_not_a_number() -> None:
    combined = combine_p_values([None, None], ["A", "B"])
    assert combined.combined_p_value is None and combined.combined_significance_sigma is None
    assert combined.reason == "no member has a usable p-value"
    assert set(combined.left_out) == {"A", "B"}


def test_length_mismatch_is_a_caller_bug() -> None:
    with pytest.raises(ValueError, match="2 p-values for 1 names"):
        combine_p_values([0.1, 0.2], ["A"])


# --- bin by bin -------------------------------------------------------------------------


def brute_force(messages: list[BinnedPValues], t: int) -> dict[str, float]:
    """Each detector's p-value at time t: the latest message whose bin covers t."""
    found: dict[str, float] = {}
    for message in messages:
        k = (t - message.anchor_ns) // message.bin_width_ns
        if 0 <= k < len(message.p_values):
            found[message.detector] = message.p_values[k]
    return found


def segment_at(segments: tuple[Segment, ...], t: int) -> Segment | None:
    matches = [s for s in segments if s.start_ns <= t < s.end_ns]
    assert len(matches) <= 1
    return matches[0] if matches else None


def test_binned_combination_matches_brute_force_lookup() -> None:
    rng = np.random.default_rng(11)
    for _ in range(30):
        messages = [
            BinnedPValues(
                detector=str(rng.choice(["A", "B", "C", "D"])),
                anchor_ns=int(rng.integers(0, 5_000)),
                bin_width_ns=int(rng.choice([250, 1_000, 3_000])),
                p_values=[float(p) for p in rng.uniform(size=int(rng.integers(1, 8)))],
            )
            for _ in range(int(rng.integers(2, 6)))
        ]
        result = combine_binned(messages)
        starts = [s.start_ns for s in result.segments]
        assert starts == sorted(starts)
        for before, after in itertools.pairwise(result.segments):
            assert before.end_ns <= after.start_ns
            if before.end_ns == after.start_ns:  # touching segments must differ in content
                assert (before.detectors, before.p_values) != (after.detectors, after.p_values)
        for t in rng.integers(-1_000, 30_000, 400):
            expected = brute_force(messages, int(t))
            segment = segment_at(result.segments, int(t))
            if len(expected) < 2:
                assert segment is None
                continue
            assert segment is not None
            assert dict(zip(segment.detectors, segment.p_values, strict=True)) == expected
            scipy_p = stats.combine_pvalues(list(expected.values()), method="fisher").pvalue
            assert segment.combined_p_value == pytest.approx(scipy_p, rel=1e-9)
        if result.segments:
            top = max(s.combined_significance_sigma for s in result.segments)
            assert result.most_significant is not None
            assert result.most_significant.combined_significance_sigma == top
        else:
            assert result.most_significant is None


def test_different_widths_and_anchors_cut_at_every_edge() -> None:
    second = 1_000_000_000
    result = combine_binned([
        BinnedPValues("Super-K", 0, 10 * second, [0.5, 0.01]),
        BinnedPValues("IceCube", 5 * second, 4 * second, [0.2, 0.3, 0.02]),
    ])  # fmt: skip
    assert [(s.start_ns // second, s.end_ns // second, s.p_values) for s in result.segments] == [
        (5, 9, (0.5, 0.2)),
        (9, 10, (0.5, 0.3)),
        (10, 13, (0.01, 0.3)),
        (13, 17, (0.01, 0.02)),
    ]
    assert result.most_significant == result.segments[-1]


def test_bad_binned_messages_are_left_out_with_a_reason() -> None:
    result = combine_binned([
        BinnedPValues("A", 0, 0, [0.1]),
        BinnedPValues("B", 0, 10, [0.1, 1.5]),
        BinnedPValues("C", 0, 10, []),
        BinnedPValues("D", 0.5, 10, [0.1]),  # type: ignore[arg-type]
        BinnedPValues("E", 0, 10, [0.1]),
        BinnedPValues("F", 0, 10, [0.2]),
    ])  # fmt: skip
    assert result.left_out == (
        "message 0 (A): bin_width_ns must be positive, got 0",
        "message 1 (B): p_values[1]: p-value must lie in [0, 1], got 1.5",
        "message 2 (C): p_values is empty",
        "message 3 (D): anchor_ns must be an integer number of ns, got 0.5",
    )
    assert [s.detectors for s in result.segments] == [("E", "F")]


def test_one_detector_alone_is_no_combination() -> None:
    result = combine_binned([BinnedPValues("A", 0, 10, [0.001, 0.5])])
    assert result.segments == () and result.most_significant is None
