"""Combined significance in coincidence alerts, and significance-tier messages bin by bin."""

from __future__ import annotations

from typing import Any

import pytest
from scipy import stats

from snews_tasks.core.significance import combine_p_values
from snews_tasks.core.significance_tier import combination, significance_alert, window_ns
from snews_tasks.core.slack_blocks import slack_blocks
from snews_tasks.core.times import format_time_ns
from snews_tasks.testing.builders import T0, Run, observation

S = 1_000_000_000


def fisher(p_values: list[float]) -> float:
    return float(stats.combine_pvalues(p_values, method="fisher").pvalue)


def test_every_coincidence_alert_carries_fisher_s_combination() -> None:
    run = Run()
    [first] = run.send(observation("IceCube", 0, p_val=0.01), observation("JUNO", 1, p_val=0.03))
    assert first["combined_p_value"] == pytest.approx(fisher([0.01, 0.03]), rel=1e-9)
    assert first["combined_significance_sigma"] == pytest.approx(
        stats.norm.isf(fisher([0.01, 0.03])), rel=1e-9)
    assert first["combined_p_value_left_out"] == {}
    assert first["combined_p_value_reason"] == "Fisher's method over 2 of 2 members' p-values"
    [grown] = run.send(observation("Super-K", 2, p_val=None))
    assert grown["combined_p_value"] == first["combined_p_value"]
    assert grown["combined_p_value_left_out"] == {"Super-K": "no p-value"}
    assert grown["combined_p_value_reason"] == (
        "Fisher's method over 2 of 3 members' p-values (left out: Super-K: no p-value)")


def test_without_any_p_value_the_combination_is_null_with_its_reason() -> None:
    [alert] = Run().send(observation("IceCube", 0, p_val=None), observation("JUNO", 1, p_val=None))
    assert (alert["combined_p_value"], alert["combined_significance_sigma"]) == (None, None)
    assert alert["combined_p_value_reason"] == "no member has a usable p-value"


def significance(detector: str, start_s: float, p_values: list[float], width_s: float = 1.0,
                 **fields: Any) -> dict[str, Any]:
    """A significance-tier message as the archive holds it."""
    return {"uuid": f"sig-{detector}-{start_s}", "tier": "SignificanceTier",
            "detector_name": detector, "is_test": False, "p_values": p_values,
            "t_bin_width_sec": width_s, "machine_time_utc": format_time_ns(T0 + round(start_s * S)),
            "received_time_utc": format_time_ns(T0 + round(start_s * S) + S), **fields}


def test_a_new_message_is_combined_bin_by_bin_with_its_neighbours() -> None:
    earlier = significance("IceCube", 0, [0.5, 0.01, 0.2])
    new = significance("JUNO", 1, [0.02, 0.9])  # its bins are IceCube's second and third
    unrelated = significance("KamLAND", -100, [0.001])  # ends long before the new one starts
    result = combination(new, [earlier, unrelated], threshold_sigma=None, now_ns=T0)
    assert [s["detectors"] for s in result["segments"]] == [["IceCube", "JUNO"]] * 2
    first, second = result["segments"]
    assert (first["start_utc"], first["end_utc"]) == (format_time_ns(T0 + S),
                                                      format_time_ns(T0 + 2 * S))
    assert first["p_values"] == [0.01, 0.02]
    assert first["combined_p_value"] == pytest.approx(fisher([0.01, 0.02]), rel=1e-9)
    assert second["combined_p_value"] == pytest.approx(fisher([0.2, 0.9]), rel=1e-9)
    assert result["most_significant"] == first
    assert (result["above_threshold"], result["trigger_uuid"]) == (False, new["uuid"])
    assert {m["detector_name"] for m in result["messages"]} == {"IceCube", "JUNO", "KamLAND"}
    assert significance_alert(result, server_tag="t") is None


def test_messages_that_cannot_be_placed_are_left_out_and_named() -> None:
    unanchored = significance("IceCube", 0, [0.01], machine_time_utc=None)
    zero_width = significance("Super-K", 0, [0.01], width_s=0)
    new = significance("JUNO", 0, [0.02])
    result = combination(new, [unanchored, zero_width], threshold_sigma=3.0, now_ns=T0)
    assert result["segments"] == [] and result["most_significant"] is None
    assert result["left_out"] == ["IceCube: no machine_time_utc to anchor its bins",
                                  "Super-K: t_bin_width_sec must be a positive number, got 0"]
    assert result["above_threshold"] is False
    lone = combination(unanchored, [new], threshold_sigma=3.0, now_ns=T0)
    assert lone["span_start_utc"] is None and lone["segments"] == []
    assert window_ns(unanchored, 60) is None
    assert window_ns(new, 60) == (T0 - 60 * S, T0 + S)


def test_above_the_threshold_the_combination_raises_an_alert_shaped_like_the_others() -> None:
    earlier = significance("IceCube", 0, [1e-4, 0.5])
    new = significance("JUNO", 0, [1e-5, 0.5])
    result = combination(new, [earlier], threshold_sigma=4.0, now_ns=T0 + 5 * S)
    assert result["above_threshold"] is True
    alert = significance_alert(result, server_tag="test")
    assert alert is not None
    assert alert == significance_alert(dict(result), server_tag="test")  # a redelivery repeats it
    assert alert["alert_id"] != significance_alert({**result, "trigger_uuid": "other"},
                                                   server_tag="test")["alert_id"]
    assert (alert["alert_kind"], alert["alert_type"], alert["revision"]) == (
        "significance", "NEW", 1)
    assert alert["detector_names"] == ["IceCube", "JUNO"]
    assert alert["p_values"] == [1e-4, 1e-5]
    assert alert["combined_p_value"] == pytest.approx(fisher([1e-4, 1e-5]), rel=1e-9)
    assert alert["combined_significance_sigma"] >= 4.0
    assert alert["significance_segment"] == {"start_utc": format_time_ns(T0),
                                             "end_utc": format_time_ns(T0 + S)}
    assert alert["false_alarm_rate_per_year"] is None and alert["sent_time_utc"] == (
        format_time_ns(T0 + 5 * S))
    text, _ = slack_blocks(alert)
    assert "SNEWS NEW alert" in text and "IceCube, JUNO" in text


def test_combine_p_values_matches_the_alert_fields() -> None:
    combined = combine_p_values([0.2, None, 0.0], ["A", "B", "C"])
    assert combined.left_out == {"B": "no p-value"}
    assert combined.notes and "lower bound" in combined.notes[0]
