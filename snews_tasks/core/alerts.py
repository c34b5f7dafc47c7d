"""Alert content (SPEC section 4) and the false-alarm-rate model.

False-alarm model: each of the n online detectors is taken to produce false
bursts as an independent Poisson process of rate f. An r-fold accidental
coincidence needs one detector's burst followed, within the window T, by
bursts of r - 1 others; counting the choices of detectors and of which one
comes first gives the rate C(n, r) * r * f**r * T**(r - 1), valid while
f * T << 1. Detectors online are those with an ON heartbeat within the online
window, together with the coincidence's own members (which just sent data).

Significance: `combined_p_value` is Fisher's combination of the members' p-values
(`core.significance`), with its one-sided Gaussian `combined_significance_sigma`;
members without a p-value are named in `combined_p_value_left_out`. `localization` is the
sky-map summary the localize task attached (null until then; `core.alert_localization`).

`Alert` is the published schema: `build_alert` validates what it builds against it, and a
module that receives an alert can check it with ``Alert.model_validate``. Fields it does not
know (additions such as a combined significance) are kept, so the schema does not stand in
the way of the alerts it describes growing.
"""

from __future__ import annotations

import math
from collections.abc import Collection

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .engine import NEW, RETRACTION, TEST, UPDATE, AlertEvent
from .significance import Combined, combine_p_values

SCHEMA_VERSION = "1.0"
SECONDS_PER_WEEK = 7 * 86400
SECONDS_PER_YEAR = 365.25 * 86400


def false_alarm_rate_per_year(
    n_online: int, r: int, false_bursts_per_week: float, threshold_s: float
) -> float:
    """Accidental r-fold coincidence rate among n detectors, per year."""
    if r < 2 or n_online < r:
        raise ValueError(f"need 2 <= r <= n, got r={r}, n={n_online}")
    f = false_bursts_per_week / SECONDS_PER_WEEK
    per_second = math.comb(n_online, r) * r * f**r * threshold_s ** (r - 1)
    return per_second * SECONDS_PER_YEAR


class Alert(BaseModel):
    """One alert as published, archived and posted (SPEC section 4), in the published order."""

    model_config = ConfigDict(frozen=True, strict=True, extra="allow")

    alert_id: str = Field(min_length=1, description="the coincidence's stable id")
    revision: int = Field(
        ge=1, description="1 when the coincidence forms, one more with each alert about it"
    )
    alert_type: str = Field(
        pattern=f"^({NEW}|{UPDATE}|{RETRACTION})$",
        description="formed; gained or changed a member; lost one (or was withdrawn)",
    )
    reason: str = Field(description="what changed, in words")
    merged_into: str | None = Field(
        description="for a coincidence withdrawn by a merge: the id that lives on"
    )
    detector_names: list[str] = Field(description="one per member, in neutrino-time order")
    neutrino_times_utc: list[str] = Field(description="each member's neutrino time")
    p_values: list[float | None] = Field(description="each member's p-value, if it sent one")
    observation_uuids: list[str] = Field(description="each member's observation uuid")
    initial_neutrino_time_utc: str | None = Field(
        description="the earliest member's neutrino time; null when no member is left"
    )
    false_alarm_rate_per_year: float | None = Field(
        ge=0, description="accidental rate of such a coincidence; null when withdrawn"
    )
    false_alarm_rate_reason: str = Field(
        description="the numbers behind the false-alarm rate, or why there is none"
    )
    detectors_online: int = Field(
        ge=0, description="detectors taken as online: recent ON heartbeat or a member"
    )
    online_detector_names: list[str] = Field(
        description="the detectors counted online (members and recent ON heartbeats), sorted: "
        "a GCN notice's detector status"
    )
    combined_p_value: float | None = Field(
        ge=0, le=1, description="Fisher's combination of the members' p-values"
    )
    combined_significance_sigma: float | None = Field(
        description="the combined p-value as a one-sided Gaussian significance"
    )
    combined_p_value_left_out: dict[str, str] = Field(
        description="members left out of the combination, and why"
    )
    combined_p_value_reason: str = Field(description="how the combined p-value was found")
    localization: dict[str, object] | None = Field(
        description="the sky-map summary, once the localize task has attached it"
    )
    alert_kind: str = Field(
        pattern="^(coincidence|significance)$",
        description="a coincidence of detectors, or a combined significance-tier excess",
    )
    is_test: bool = Field(description="built from test messages: never a real alert")
    is_firedrill: bool = Field(description="a member was sent as a fire drill")
    is_canary: bool = Field(description="every member is a canary: a pipeline self-check")
    server_tag: str = Field(description="which server sent it")
    sent_time_utc: str = Field(description="when the server built it")
    schema_version: str = Field(description="version of this alert schema")

    @model_validator(mode="after")
    def _one_entry_per_member(self) -> Alert:
        for name in ("neutrino_times_utc", "p_values", "observation_uuids"):
            if len(getattr(self, name)) != len(self.detector_names):
                raise ValueError(
                    f"{name} has {len(getattr(self, name))} entries, "
                    f"detector_names {len(self.detector_names)}: one each per member"
                )
        return self


def combined_reason(combined: Combined) -> str:
    """How the combined p-value was found, as `false_alarm_rate_reason` says how the rate was."""
    if combined.reason is not None:
        return combined.reason
    total = len(combined.used) + len(combined.left_out)
    text = f"Fisher's method over {len(combined.used)} of {total} members' p-values"
    if combined.left_out:
        text += " (left out: " + ", ".join(f"{d}: {r}" for d, r in combined.left_out.items()) + ")"
    return "; ".join((text, *combined.notes))


def build_alert(
    event: AlertEvent,
    *,
    server_tag: str,
    heartbeat_online: Collection[str],
    false_bursts_per_week: float,
    threshold_s: float,
    sent_time_utc: str,
) -> dict:
    """The alert as published, archived and posted: built once, so every retry sends the same."""
    c = event.coincidence
    detectors = [m.detector for m in c.members]
    online = set(heartbeat_online) | set(detectors)
    far: float | None = None
    if len(set(detectors)) >= 2:
        far = false_alarm_rate_per_year(
            len(online), len(set(detectors)), false_bursts_per_week, threshold_s
        )
        far_reason = (
            f"{len(online)} detectors online, {len(set(detectors))}-fold, "
            f"{false_bursts_per_week:g} false bursts/week each, window {threshold_s:g} s"
        )
    else:
        far_reason = "withdrawn: fewer than two detectors remain"
    combined = combine_p_values([m.p_val for m in c.members], detectors)
    alert = Alert(
        alert_id=c.alert_id,
        revision=c.revision,
        alert_type=event.alert_type,
        reason=event.reason,
        merged_into=event.merged_into,
        detector_names=detectors,
        neutrino_times_utc=[m.neutrino_time_utc for m in c.members],
        p_values=[m.p_val for m in c.members],
        observation_uuids=[m.uuid for m in c.members],
        initial_neutrino_time_utc=c.members[0].neutrino_time_utc if c.members else None,
        false_alarm_rate_per_year=far,
        false_alarm_rate_reason=far_reason,
        detectors_online=len(online),
        online_detector_names=sorted(online),
        combined_p_value=combined.combined_p_value,
        combined_significance_sigma=combined.combined_significance_sigma,
        combined_p_value_left_out=combined.left_out,
        combined_p_value_reason=combined_reason(combined),
        localization=c.localization,
        alert_kind="coincidence",
        is_test=c.namespace == TEST,
        is_firedrill=any(m.is_firedrill for m in c.members),
        is_canary=bool(c.members) and all(m.is_canary for m in c.members),
        server_tag=server_tag,
        sent_time_utc=sent_time_utc,
        schema_version=SCHEMA_VERSION,
    )
    return alert.model_dump(mode="json")
