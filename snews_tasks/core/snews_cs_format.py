"""The alert keys of snews_cs 3.0.1, the server being replaced, computed from our alert.

Consumers written against snews_cs 3.0.1 (``snews_pt subscribe`` and the scripts it hands
saved alerts to) read these ten keys. What snews_cs 3.0.1 puts in each
(``snews_cs/cs_alert_schema.py`` ``CoincidenceTierAlert.get_cs_alert_schema``, fed by
``snews_coinc.py`` ``CoincidenceDistributor.send_alert``), and what we put:

``id``
    3.0.1: ``"SNEWS_Coincidence_ALERT <utcnow().isoformat()>"`` when the alert has exactly
    two detectors, ``"SNEWS_Coincidence_ALERT-UPDATE <...>"`` otherwise. Ours keeps the
    form (prefix, one space, the sent time, so ``id.split(' ')[1] == sent_time`` still
    holds) but takes ``-UPDATE`` from what the alert is: none on NEW, ``-UPDATE`` on UPDATE
    and RETRACTION. The coincidence's identity stays in the alert's ``alert_id`` and
    ``revision``.
``alert_type``
    3.0.1: the sub-list state (``COINC_MSG``, ``UPDATE``, ``RETRACTION``; also
    ``COINC_MSG_STAGGERED``), ``"TEST "`` in front on test alerts. Ours: NEW →
    ``COINC_MSG``, UPDATE → ``UPDATE``, RETRACTION → ``RETRACTION``, the same prefix on
    ``is_test`` alerts (firedrill alerts are not test alerts there either).
``server_tag``, ``detector_names``
    As they are (member order is time order, as in a snews_cs sub-list).
``False Alarm Prob``
    3.0.1: ``"N/A"`` on test alerts; on others the value of ``cs_stats.
    cache_false_alarm_rate``, which reads a heartbeat column ``Detector`` that its table
    names ``detector``, so every live alert carried ``"(couldn't compute)"``; it was meant
    to be the number of years between false alarms. Ours is text too: ``"N/A"`` on test alerts; the
    rate with its inverse, ``"2.1e-05 per year (one every 4.8e+04 years)"``, when known;
    ``"N/A (<reason>)"`` when not.
``sent_time``
    3.0.1: the time in ``id``, ``datetime.utcnow().isoformat()``: UTC without offset.
    Ours: the alert's sent time in that form, always with microseconds.
``p_values``
    3.0.1: the members' ``p_val`` (a float, or None/NaN when unset). Ours: the alert's
    list; an unset p-value is null (NaN is not JSON).
``neutrino_times``
    3.0.1: the members' ``neutrino_time_utc`` as the detectors sent them (snews-data-formats
    makes ``YYYY-MM-DDTHH:MM:SS.fffffffffZ``). Ours: the alert's, which have that form.
``p_values average``
    3.0.1: the mean of the set p-values rounded to 5 decimals (NaN when none). Ours: the
    same mean and rounding; null when no member has a p-value.
``sub list number``
    3.0.1: the index of the sub-list in that server's cache (0, 1, ...): the same on
    every alert of one sub-list, but it says nothing across restarts and the engine here
    has no such index. Ours: the CRC-32 of the alert id, the same on every revision of
    one coincidence (as on every alert of one sub-list), different between coincidences
    (up to CRC collisions), stable across restarts and replays.

Four keys share a name with the alert's own: ``server_tag``, ``detector_names`` and
``p_values`` have the same values, ``alert_type`` does not (``COINC_MSG`` for ``NEW``).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any, Final

from .gcn import AlertView, utc_microseconds

SNEWS_CS_ALERT_TYPES: Final = {"NEW": "COINC_MSG", "UPDATE": "UPDATE", "RETRACTION": "RETRACTION"}
ID_PREFIX: Final = "SNEWS_Coincidence_ALERT"
TEST_PREFIX: Final = "TEST "
P_VALUE_AVERAGE_DECIMALS: Final = 5


def _false_alarm_text(view: AlertView) -> str:
    rate = view.false_alarm_rate_per_year
    if view.is_test:
        return "N/A"
    if rate is None:
        return f"N/A ({view.false_alarm_rate_reason})" if view.false_alarm_rate_reason else "N/A"
    if rate == 0:
        return "0 per year"
    return f"{rate:.2g} per year (one every {1 / rate:.2g} years)"


def snews_cs_fields(alert: Mapping[str, Any]) -> dict[str, Any]:
    """The ten snews_cs 3.0.1 alert keys for one alert revision (choices above).

    Raises gcn.AlertFieldError naming the field when the alert is malformed.
    """
    view = AlertView.of(alert)
    sent_time = utc_microseconds(view.sent_time_utc, "sent_time_utc")
    suffix = "" if view.alert_type == "NEW" else "-UPDATE"
    reported = [p for p in view.p_values if p is not None]
    return {
        "id": f"{ID_PREFIX}{suffix} {sent_time}",
        "alert_type": (TEST_PREFIX if view.is_test else "") + SNEWS_CS_ALERT_TYPES[view.alert_type],
        "server_tag": view.server_tag,
        "False Alarm Prob": _false_alarm_text(view),
        "detector_names": list(view.detector_names),
        "sent_time": sent_time,
        "p_values": list(view.p_values),
        "neutrino_times": list(view.neutrino_times_utc),
        "p_values average": (
            round(sum(reported) / len(reported), P_VALUE_AVERAGE_DECIMALS) if reported else None
        ),
        "sub list number": zlib.crc32(view.alert_id.encode()),
    }


def topic_document(alert: Mapping[str, Any], alert_format: str) -> dict[str, Any]:
    """What the alert topics carry (setting ``alert_format``).

    ``snews_tasks``: the alert as archived. ``with_snews_cs``: the same with the ten keys
    above beside it, so consumers of either server read what they expect from one message.
    The one key both have with different values is ``alert_type``: the snews_cs value is
    kept, because the consumers written against snews_cs branch on it, and nothing is lost:
    COINC_MSG, UPDATE and RETRACTION map one to one onto NEW, UPDATE and RETRACTION, and
    ``is_test`` still says what the ``TEST`` prefix says. Test and canary alerts go to the
    test alert topic in every mode, so snews_cs consumers see them only there.
    """
    if alert_format == "snews_tasks" or alert.get("alert_kind") == "significance":
        return dict(alert)  # snews_cs had no significance-tier alerts to be compatible with
    if alert_format == "with_snews_cs":
        return {**alert, **snews_cs_fields(alert)}
    raise ValueError(f"alert_format: must be snews_tasks or with_snews_cs, got {alert_format!r}")
