"""Significance-tier messages combined bin by bin across detectors, and the alert it may raise.

A significance-tier message carries `p_values` for bins of `t_bin_width_sec`; bin k covers
[machine_time_utc + k w, machine_time_utc + (k + 1) w) (`machine_time_utc` is when the
detector's machine produced the series; a message without it cannot be placed in time and is
left out, named). When one is archived, the storage task combines it with the significance-tier
messages of the same namespace (test or not) anchored from `significance_window_s` before it to
its own end, with `core.significance.combine_binned` (Fisher's method on every stretch of time
that two or more detectors' bins cover; a detector's later message overrides its earlier one
where they overlap). The result keeps the segments that overlap the new message's own bins:
the archive's `significance` collection holds one such document per message (keyed by its
uuid), which `snews-tasks status` and the console read.

An alert is raised only when the setting `significance_alert_sigma` is set (it is not by
default: the trials factor of scanning every bin is the collaboration's call) and the most
significant segment reaches it. It has the shape of a coincidence alert, so every consumer
reads it: `alert_kind` "significance", `alert_type` NEW, revision 1, an `alert_id` derived
from the triggering message's uuid (a redelivery raises the same alert), the segment's
detectors with the segment start as each one's time and their bin p-values, the combination as
`combined_p_value` / `combined_significance_sigma`, `significance_segment` with the segment's
start and end, and no false-alarm rate (null, with the reason). It goes where coincidence
alerts go: the alert topic (the test topic for test messages), Slack and the `alerts`
collection.
"""

from __future__ import annotations

import math
import uuid as uuidlib
from collections.abc import Iterable, Mapping
from typing import Any

from .alerts import SCHEMA_VERSION
from .significance import BinnedPValues, Segment, combine_binned
from .times import NS_PER_S, format_time_ns, parse_time_ns

TIER = "SignificanceTier"
ALERT_ID_NAMESPACE = uuidlib.UUID("5b3bd1e4-6f7e-4d1c-9a8e-1f5d2c7a9e40")


def binned_of(message: Mapping[str, Any]) -> BinnedPValues | str:
    """The message's bins, or why it cannot be combined."""
    detector = str(message.get("detector_name"))
    anchor = message.get("machine_time_utc")
    if anchor is None:
        return f"{detector}: no machine_time_utc to anchor its bins"
    width_s = message.get("t_bin_width_sec")
    if isinstance(width_s, bool) or not isinstance(width_s, int | float) or not width_s > 0:
        return f"{detector}: t_bin_width_sec must be a positive number, got {width_s!r}"
    p_values = message.get("p_values")
    if not isinstance(p_values, list) or not p_values:
        return f"{detector}: p_values must be a non-empty list, got {p_values!r:.60}"
    return BinnedPValues(
        detector,
        parse_time_ns(anchor, "machine_time_utc"),
        round(width_s * NS_PER_S),
        p_values,
    )


def span_ns(binned: BinnedPValues) -> tuple[int, int]:
    return binned.anchor_ns, binned.anchor_ns + binned.bin_width_ns * len(binned.p_values)


def _segment(segment: Segment) -> dict[str, Any]:
    return {
        "start_utc": format_time_ns(segment.start_ns),
        "end_utc": format_time_ns(segment.end_ns),
        "detectors": list(segment.detectors),
        "p_values": list(segment.p_values),
        "combined_p_value": segment.combined_p_value,
        "combined_significance_sigma": segment.combined_significance_sigma,
    }


def combination(
    trigger: Mapping[str, Any],
    others: Iterable[Mapping[str, Any]],
    *,
    threshold_sigma: float | None,
    now_ns: int,
) -> dict[str, Any]:
    """The archived combination for a new message `trigger` with the `others` near it."""
    messages = {str(m.get("uuid")): m for m in others}
    messages[str(trigger.get("uuid"))] = trigger
    ordered = sorted(messages.values(), key=lambda m: str(m.get("received_time_utc") or ""))
    binned: list[BinnedPValues] = []
    uuids: list[str] = []
    left_out: list[str] = []
    for message in ordered:
        found = binned_of(message)
        if isinstance(found, str):
            left_out.append(found)
        else:
            binned.append(found)
            uuids.append(str(message.get("uuid")))
    document: dict[str, Any] = {
        "trigger_uuid": str(trigger.get("uuid")),
        "detector_name": trigger.get("detector_name"),
        "is_test": bool(trigger.get("is_test")),
        "is_firedrill": bool(trigger.get("is_firedrill")),
        "computed_time_utc": format_time_ns(now_ns),
        "messages": [
            {"uuid": u, "detector_name": b.detector} for u, b in zip(uuids, binned, strict=True)
        ],
        "span_start_utc": None,
        "span_end_utc": None,
        "segments": [],
        "most_significant": None,
        "left_out": left_out,
        "alert_threshold_sigma": threshold_sigma,
        "above_threshold": False,
    }
    own = binned_of(trigger)
    if isinstance(own, str):
        return document
    start, end = span_ns(own)
    result = combine_binned(binned)
    segments = [s for s in result.segments if s.end_ns > start and s.start_ns < end]
    best = max(segments, key=lambda s: s.combined_significance_sigma, default=None)
    document.update(
        span_start_utc=format_time_ns(start),
        span_end_utc=format_time_ns(end),
        segments=[_segment(s) for s in segments],
        most_significant=None if best is None else _segment(best),
        left_out=left_out + list(result.left_out),
        above_threshold=(
            best is not None
            and threshold_sigma is not None
            and best.combined_significance_sigma >= threshold_sigma
        ),
    )
    return document


def significance_alert(document: Mapping[str, Any], *, server_tag: str) -> dict[str, Any] | None:
    """The alert of an archived combination above the threshold (its shape is in the module
    doc), or None. Built from the archived document only, so a redelivery repeats it exactly."""
    best = document.get("most_significant")
    if not document.get("above_threshold") or not isinstance(best, Mapping):
        return None
    detectors = list(best["detectors"])
    sigma = best["combined_significance_sigma"]
    return {
        "alert_id": str(uuidlib.uuid5(ALERT_ID_NAMESPACE, str(document["trigger_uuid"]))),
        "revision": 1,
        "alert_type": "NEW",
        "alert_kind": "significance",
        "reason": (
            f"significance tier: {len(detectors)} detectors' bins from {best['start_utc']} to "
            f"{best['end_utc']} combine to {sigma:.2f} sigma, at least the configured "
            f"{document['alert_threshold_sigma']:g}"
        ),
        "merged_into": None,
        "detector_names": detectors,
        "neutrino_times_utc": [best["start_utc"]] * len(detectors),
        "p_values": list(best["p_values"]),
        "observation_uuids": [m["uuid"] for m in document.get("messages", ())],
        "initial_neutrino_time_utc": best["start_utc"],
        "false_alarm_rate_per_year": None,
        "false_alarm_rate_reason": "significance tier: no false-alarm model (trials not counted)",
        "detectors_online": None,
        "combined_p_value": best["combined_p_value"],
        "combined_significance_sigma": sigma if math.isfinite(sigma) else None,
        "combined_p_value_left_out": {},
        "combined_p_value_reason": "Fisher's method over the segment's bins",
        "significance_segment": {"start_utc": best["start_utc"], "end_utc": best["end_utc"]},
        "localization": None,
        "is_test": bool(document.get("is_test")),
        "is_firedrill": bool(document.get("is_firedrill")),
        "is_canary": False,
        "server_tag": server_tag,
        "sent_time_utc": document["computed_time_utc"],
        "schema_version": SCHEMA_VERSION,
    }


def window_ns(trigger: Mapping[str, Any], window_s: float) -> tuple[int, int] | None:
    """The anchors of the messages to combine with `trigger`: from `window_s` before its own
    anchor to its end; None when it cannot be placed in time."""
    own = binned_of(trigger)
    if isinstance(own, str):
        return None
    start, end = span_ns(own)
    return start - round(window_s * NS_PER_S), end
