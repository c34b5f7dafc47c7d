"""An alert as a Slack message: fallback text plus Block Kit blocks.

The people on call read this on a phone, so the first lines say what
happened (type, how many detectors, when), then the per-detector details.
Only a real (not `is_test`) NEW alert mentions the channel with ``<!here>``:
updates and retractions refine an alert people already saw, and test
alerts must never page anyone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from .documents import require_revision, require_str

ALERT_TYPES = ("NEW", "UPDATE", "RETRACTION")
HEADER_EMOJI = {
    "NEW": ":rotating_light:",
    "UPDATE": ":arrows_counterclockwise:",
    "RETRACTION": ":no_entry_sign:",
}
# Block Kit limits: header text 150 characters, section text 3000.
MAX_HEADER_CHARS = 150
MAX_SECTION_CHARS = 3000
MAX_REASON_CHARS = 500


def _escape(text: str) -> str:
    """Escape the three characters Slack's mrkdwn treats as control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _flag(alert: Mapping[str, Any], field: str) -> bool:
    value = alert.get(field, False)
    if not isinstance(value, bool):
        raise ValueError(f"alert: field {field!r} must be true or false, got {value!r}")
    return value


def _list(alert: Mapping[str, Any], field: str) -> Sequence[Any]:
    value = alert.get(field)
    if not isinstance(value, list):
        raise ValueError(f"alert: field {field!r} must be a list, got {value!r}")
    return value


def _p_value_text(p_value: Any) -> str:
    if p_value is None:
        return "p = n/a"
    if isinstance(p_value, bool) or not isinstance(p_value, (int, float)):
        raise ValueError(f"alert: field 'p_values' items must be numbers or null, got {p_value!r}")
    return f"p = {p_value:.3g}"


def _far_text(alert: Mapping[str, Any]) -> str:
    far = alert.get("false_alarm_rate_per_year")
    reason = alert.get("false_alarm_rate_reason")
    if far is None:
        return f"n/a ({_escape(str(reason))})" if reason else "n/a"
    if isinstance(far, bool) or not isinstance(far, (int, float)) or not math.isfinite(far):
        raise ValueError(
            f"alert: field 'false_alarm_rate_per_year' must be a number or null, got {far!r}"
        )
    return f"{far:.3g} per year"


def _detector_lines(alert: Mapping[str, Any]) -> list[str]:
    names = _list(alert, "detector_names")
    times = _list(alert, "neutrino_times_utc")
    p_values = _list(alert, "p_values")
    if not len(names) == len(times) == len(p_values):
        raise ValueError(
            f"alert: fields 'detector_names', 'neutrino_times_utc' and 'p_values' "
            f"must have the same length, got {len(names)}, {len(times)}, "
            f"{len(p_values)}"
        )
    return [
        f"• *{_escape(str(name))}*  `{_escape(str(time))}`  {_p_value_text(p_value)}"
        for name, time, p_value in zip(names, times, p_values, strict=True)
    ]


def _significance_text(alert: Mapping[str, Any]) -> str:
    sigma, p_value = alert.get("combined_significance_sigma"), alert.get("combined_p_value")
    if not isinstance(sigma, int | float) or not isinstance(p_value, int | float):
        return "n/a"
    left_out = alert.get("combined_p_value_left_out") or {}
    text = f"{sigma:.2f} sigma (p = {p_value:.2g})"
    return text + (f", without {_escape(', '.join(map(str, left_out)))}" if left_out else "")


def _localization_text(localization: Mapping[str, Any]) -> str:
    """One line on where to look: the most probable point, the 90% area and the map's link."""
    if localization.get("refused"):
        reason = _truncate(str(localization["refused"]), MAX_REASON_CHARS)
        return f"*Localization*: none ({_escape(reason)})"
    text = (
        f"*Localization*: most probable RA {localization.get('ra_deg', 0.0):.1f}°, "
        f"Dec {localization.get('dec_deg', 0.0):+.1f}°; 90% area "
        f"{localization.get('area_90_deg2', 0.0):,.0f} deg², 50% "
        f"{localization.get('area_50_deg2', 0.0):,.0f} deg²"
    )
    url = localization.get("skymap_url")
    return text + (f" · <{_escape(str(url))}|HEALPix map>" if url else "")


def _section(text: str) -> dict[str, Any]:
    return {
        "type": "section",
        "text": {"type": "mrkdwn", "text": _truncate(text, MAX_SECTION_CHARS)},
    }


def mentions_channel(alert: Mapping[str, Any]) -> bool:
    """Page the channel only for a real alert that just appeared."""
    return alert.get("alert_type") == "NEW" and not _flag(alert, "is_test")


def slack_blocks(alert: Mapping[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """(fallback text for notifications, Block Kit blocks) for one alert."""
    alert_type = alert.get("alert_type")
    if alert_type not in ALERT_TYPES:
        raise ValueError(
            f"alert: field 'alert_type' must be one of {', '.join(ALERT_TYPES)}, got {alert_type!r}"
        )
    alert_id = require_str(alert, "alert_id", "alert")
    revision = require_revision(alert)
    labels = [
        label
        for label, field in (("TEST", "is_test"), ("FIREDRILL", "is_firedrill"))
        if _flag(alert, field)
    ]
    prefix = "".join(f"[{label}] " for label in labels)
    detector_lines = _detector_lines(alert)
    detectors = ", ".join(str(name) for name in alert["detector_names"]) or "no detectors"
    mention = "<!here> " if mentions_channel(alert) else ""

    text = (
        f"{mention}{prefix}SNEWS {alert_type} alert {_escape(alert_id)} rev {revision}: "
        f"{_escape(detectors)}"
    )
    header = _truncate(f"{prefix}SNEWS {alert_type} alert", MAX_HEADER_CHARS)
    initial = alert.get("initial_neutrino_time_utc")
    count = len(detector_lines)
    summary = (
        f"{mention}{HEADER_EMOJI[alert_type]} *{count} detector{'' if count == 1 else 's'}"
        f"* in coincidence, initial neutrino time "
        f"`{_escape(str(initial)) if initial else 'n/a'}`"
    )
    online = alert.get("detectors_online", "n/a")
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": header}},
        _section(summary),
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": f"*Alert*\n`{_escape(alert_id)}` rev {revision}"},
                {"type": "mrkdwn", "text": f"*False-alarm rate*\n{_far_text(alert)}"},
                {"type": "mrkdwn", "text": f"*Detectors online*\n{_escape(str(online))}"},
                {
                    "type": "mrkdwn",
                    "text": f"*Server*\n{_escape(str(alert.get('server_tag', 'n/a')))}",
                },
                {"type": "mrkdwn", "text": f"*Combined significance*\n{_significance_text(alert)}"},
            ],
        },
        _section("\n".join(detector_lines) or "_no detectors remain_"),
    ]
    localization = alert.get("localization")
    if isinstance(localization, Mapping):
        blocks.append(_section(_localization_text(localization)))
    notes = []
    if alert.get("reason"):
        notes.append(f"Reason: {_escape(_truncate(str(alert['reason']), MAX_REASON_CHARS))}")
    if alert.get("merged_into"):
        notes.append(f"Merged into `{_escape(str(alert['merged_into']))}`")
    notes.append(
        f"Sent {_escape(str(alert.get('sent_time_utc', 'n/a')))} · "
        f"schema {_escape(str(alert.get('schema_version', 'n/a')))}"
    )
    blocks.append(
        {"type": "context", "elements": [{"type": "mrkdwn", "text": note} for note in notes]}
    )
    return text, blocks
