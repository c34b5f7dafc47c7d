"""snews_cs 3.0.1's alert keys, and snews-pt 3.0.0's subscriber reading alerts that carry them."""

from __future__ import annotations

import contextlib
import json
import math
import re
import statistics
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import snews_pt.snews_sub
from hop.io import Deserializer, Producer
from hop.models import JSONBlob, MessageModel
from hypothesis import given
from test_gcn import alert_time_ns, gcn_time_ns, project_alerts, sample_alert

from snews_tasks.core.gcn import AlertFieldError
from snews_tasks.core.snews_cs_format import snews_cs_fields, topic_document

KEYS = (
    "id", "alert_type", "server_tag", "False Alarm Prob", "detector_names", "sent_time",
    "p_values", "neutrino_times", "p_values average", "sub list number",
)  # fmt: skip
ALERT_TOPIC = "kafka://127.0.0.1:9/snews.alert-test"


@given(project_alerts())
def test_the_keys_carry_the_alert_as_snews_cs_3_0_1_did(alert: dict[str, Any]) -> None:
    fields = snews_cs_fields(alert)
    assert tuple(fields) == KEYS
    json.dumps(fields, allow_nan=False)

    kind = {"NEW": "COINC_MSG", "UPDATE": "UPDATE", "RETRACTION": "RETRACTION"}
    prefix = "TEST " if alert["is_test"] else ""
    assert fields["alert_type"] == prefix + kind[alert["alert_type"]]

    head, sent_time = fields["id"].split(" ")
    assert head == (
        "SNEWS_Coincidence_ALERT" if alert["alert_type"] == "NEW"
        else "SNEWS_Coincidence_ALERT-UPDATE"
    )  # fmt: skip
    assert sent_time == fields["sent_time"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}", sent_time)
    assert datetime.fromisoformat(sent_time).tzinfo is None  # like utcnow().isoformat()
    assert 0 <= alert_time_ns(alert["sent_time_utc"]) - gcn_time_ns(sent_time + "Z") < 1000

    assert fields["server_tag"] == alert["server_tag"]
    assert fields["detector_names"] == alert["detector_names"]
    assert fields["p_values"] == alert["p_values"]
    assert fields["neutrino_times"] == alert["neutrino_times_utc"]
    reported = [p for p in alert["p_values"] if p is not None]
    if reported:
        assert math.isclose(fields["p_values average"], statistics.fmean(reported), abs_tol=6e-6)
    else:
        assert fields["p_values average"] is None
    assert isinstance(fields["sub list number"], int)
    assert 0 <= fields["sub list number"] < 2**32

    rate = alert["false_alarm_rate_per_year"]
    text = fields["False Alarm Prob"]
    if alert["is_test"]:
        assert text == "N/A"
    elif rate is None:
        assert text.startswith("N/A")
    else:
        assert math.isclose(float(text.split(" per year")[0]), rate, rel_tol=0.05)


def test_a_coincidence_keeps_its_sub_list_number_across_revisions_and_types() -> None:
    first = sample_alert() | {"alert_type": "NEW", "revision": 1}
    later = sample_alert() | {"alert_type": "RETRACTION", "revision": 7, "is_test": True}
    other = sample_alert() | {"alert_id": "C000043"}
    number = snews_cs_fields(first)["sub list number"]
    assert snews_cs_fields(later)["sub list number"] == number
    assert snews_cs_fields(other)["sub list number"] != number
    assert number == zlib.crc32(b"C000042")  # stable across processes, unlike hash()


def test_a_malformed_alert_is_refused_naming_the_field() -> None:
    with pytest.raises(AlertFieldError, match="^p_values: "):
        snews_cs_fields(sample_alert() | {"p_values": "0.1"})


# --- snews-pt 3.0.0's `snews_pt subscribe`, fed in-process ----------------------------------


@dataclass
class KafkaRecord:
    """What a Kafka consumer hands hop: the value and the headers."""

    payload: bytes
    header_list: list[tuple[str, bytes]]

    def value(self) -> bytes:
        return self.payload

    def headers(self) -> list[tuple[str, bytes]]:
        return self.header_list


def as_consumed(alert: dict[str, Any]) -> MessageModel:
    """An alert through hop as our publisher writes it (JSONBlob) and hop's consumer decodes it."""
    payload, headers = Producer.pack(JSONBlob(content=alert))
    model: MessageModel = Deserializer.deserialize(KafkaRecord(payload, headers))
    return model


def alerts_to_read() -> list[dict[str, Any]]:
    """Every kind the subscriber must cope with, carrying our keys and snews_cs's."""
    withdrawn = sample_alert() | {
        "alert_type": "RETRACTION", "detector_names": [], "neutrino_times_utc": [],
        "p_values": [], "observation_uuids": [], "initial_neutrino_time_utc": None,
        "false_alarm_rate_per_year": None, "false_alarm_rate_reason": "withdrawn",
        "merged_into": "C000001",
    }  # fmt: skip
    kinds = [
        sample_alert() | {"alert_type": "NEW", "revision": 1},
        sample_alert(),
        sample_alert() | {"is_test": True, "p_values": [None, None, None]},
        withdrawn,
        sample_alert() | {"localization": {"ra_deg": 83.6, "dec_deg": 22.0}},
    ]
    return [{**alert, **snews_cs_fields(alert)} for alert in kinds]


@pytest.fixture
def subscriber(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[snews_pt.snews_sub.Subscriber, list[dict[str, Any]], list[str]]:
    """snews-pt's Subscriber with hop's Stream replaced by one serving decoded alerts."""
    alerts = alerts_to_read()
    opened: list[str] = []

    class ServedStream:
        def __init__(self, *, until_eos: bool, auth: bool) -> None:
            assert auth is False

        def open(self, url: str, mode: str) -> contextlib.nullcontext[Iterator[MessageModel]]:
            assert mode == "r"
            opened.append(url)
            return contextlib.nullcontext(iter([as_consumed(alert) for alert in alerts]))

    monkeypatch.setattr(snews_pt.snews_sub, "Stream", ServedStream)
    for name in ("ALERT_TOPIC", "FIREDRILL_ALERT_TOPIC", "CONNECTION_TEST_TOPIC"):
        monkeypatch.setenv(name, ALERT_TOPIC if name == "ALERT_TOPIC" else "kafka://unused/x")
    monkeypatch.setenv("ALERT_OUTPUT", "unused/")
    no_settings = tmp_path / "empty.env"  # so snews-pt loads no topics of its own
    no_settings.write_text("")
    return snews_pt.snews_sub.Subscriber(str(no_settings), firedrill_mode=False), alerts, opened


def saved(folder: Path) -> list[dict[str, Any]]:
    """snews-pt's saved alerts, in the order it numbered them (0-SNEWS_ALERT_<date>.json, ...)."""
    files = sorted(folder.glob("*-SNEWS_ALERT_*.json"), key=lambda p: int(p.name.split("-")[0]))
    return [json.loads(path.read_text()) for path in files]


def test_snews_pt_subscribe_saves_and_displays_every_alert(
    subscriber: tuple[snews_pt.snews_sub.Subscriber, list[dict[str, Any]], list[str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sub, alerts, opened = subscriber
    sub.subscribe(outputfolder=str(tmp_path / "out"), auth=False)

    assert opened == [ALERT_TOPIC]
    assert saved(tmp_path / "out") == alerts
    shown = capsys.readouterr().out
    blocks = shown.split("ALERT MESSAGE")[1:]
    assert len(blocks) == len(alerts)
    for block, alert in zip(blocks, alerts):
        lines = block.splitlines()
        for key in KEYS:
            value = alert[key]
            if value is None:  # snews-pt's display skips null values (and booleans, objects)
                continue
            text = "\t".join(map(str, value)) if isinstance(value, list) else str(value)
            assert any(line.startswith(f"{key:<20s}:{text}") for line in lines), (key, block)


def test_snews_pt_plugin_path_hands_on_each_saved_alert(
    subscriber: tuple[snews_pt.snews_sub.Subscriber, list[dict[str, Any]], list[str]],
    tmp_path: Path,
) -> None:
    sub, alerts, _ = subscriber
    files = sub.subscribe_and_redirect_alert(outputfolder=str(tmp_path / "out"), auth=False)
    assert [json.loads(Path(file).read_text()) for file in files] == alerts


@given(project_alerts())
def test_the_topic_carries_the_alert_and_with_snews_cs_also_their_keys(
        alert: dict[str, Any]) -> None:
    assert topic_document(alert, "snews_tasks") == alert
    both = topic_document(alert, "with_snews_cs")
    assert {k: v for k, v in both.items() if k in KEYS} == snews_cs_fields(alert)
    # Only alert_type changes meaning, and it maps back one to one (with is_test alongside).
    changed = {k for k in alert if both[k] != alert[k]}
    assert changed <= {"alert_type"}
    back = {"COINC_MSG": "NEW", "UPDATE": "UPDATE", "RETRACTION": "RETRACTION"}
    assert back[both["alert_type"].removeprefix("TEST ")] == alert["alert_type"]
    assert both["alert_type"].startswith("TEST ") is alert["is_test"]


def test_significance_alerts_keep_their_own_form_and_formats_are_checked() -> None:
    significance = {"alert_kind": "significance", "alert_id": "S1", "revision": 1}
    assert topic_document(significance, "with_snews_cs") == significance
    with pytest.raises(ValueError, match="alert_format: must be snews_tasks or with_snews_cs"):
        topic_document(sample_alert(), "snews_cs_only")
