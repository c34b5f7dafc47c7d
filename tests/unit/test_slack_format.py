from __future__ import annotations

import json
from typing import Any

import pytest

from snews_tasks.core.slack_blocks import MAX_HEADER_CHARS, slack_blocks


def alert(**overrides: Any) -> dict[str, Any]:
    base = {
        "alert_id": "c-000017", "revision": 1, "alert_type": "NEW",
        "detector_names": ["IceCube", "Super-K"],
        "neutrino_times_utc": ["2026-11-21T12:30:00.000000001Z", "2026-11-21T12:30:04.5Z"],
        "p_values": [0.0012, None],
        "observation_uuids": ["u1", "u2"],
        "initial_neutrino_time_utc": "2026-11-21T12:30:00.000000001Z",
        "false_alarm_rate_per_year": 0.000123, "false_alarm_rate_reason": "2-fold",
        "detectors_online": 7, "is_test": False, "is_firedrill": False,
        "server_tag": "prod-a", "sent_time_utc": "2026-11-21T12:30:05Z", "schema_version": "1.0",
        "reason": None, "merged_into": None,
    }
    return {**base, **overrides}


def rendered(message: dict[str, Any]) -> str:
    """Everything a reader (or a notification) can see: the text and all block text."""
    text, blocks = slack_blocks(message)
    return text + "\n" + json.dumps(blocks)


def test_real_new_alert_mentions_the_channel_in_text_and_blocks() -> None:
    text, blocks = slack_blocks(alert())
    assert text.startswith("<!here> ")
    assert "<!here>" in json.dumps(blocks)


@pytest.mark.parametrize("overrides", [
    {"alert_type": "UPDATE", "revision": 2},
    {"alert_type": "RETRACTION", "revision": 3},
    {"is_test": True},
    {"is_test": True, "alert_type": "UPDATE"},
])
def test_updates_retractions_and_test_alerts_never_mention_the_channel(overrides) -> None:
    assert "<!here>" not in rendered(alert(**overrides))


def test_firedrill_new_alert_behaves_like_a_real_one_but_is_labelled() -> None:
    text, blocks = slack_blocks(alert(is_firedrill=True))
    assert text.startswith("<!here> [FIREDRILL] ")
    assert blocks[0]["text"]["text"].startswith("[FIREDRILL] ")


def test_test_alert_is_labelled() -> None:
    text, blocks = slack_blocks(alert(is_test=True))
    assert text.startswith("[TEST] ")
    assert blocks[0] == {"type": "header",
                         "text": {"type": "plain_text", "text": "[TEST] SNEWS NEW alert"}}


def test_shows_detectors_times_p_values_rate_server_and_identity() -> None:
    shown = rendered(alert())
    for expected in ("IceCube", "Super-K", "2026-11-21T12:30:00.000000001Z",
                     "2026-11-21T12:30:04.5Z", "p = 0.0012", "p = n/a", "0.000123 per year",
                     "prod-a", "c-000017", "rev 1", "*2 detectors* in coincidence",
                     "*Detectors online*\\n7"):
        assert expected in shown, expected


def test_missing_false_alarm_rate_shows_its_reason() -> None:
    shown = rendered(alert(false_alarm_rate_per_year=None,
                           false_alarm_rate_reason="withdrawn: fewer than two detectors remain"))
    assert "n/a (withdrawn: fewer than two detectors remain)" in shown


def test_retraction_shows_reason_and_merge_target() -> None:
    _, blocks = slack_blocks(alert(alert_type="RETRACTION", revision=4, detector_names=[],
                                   neutrino_times_utc=[], p_values=[],
                                   initial_neutrino_time_utc=None, merged_into="c-000009",
                                   reason="merged"))
    context = blocks[-1]
    assert context["type"] == "context"
    notes = [element["text"] for element in context["elements"]]
    assert "Reason: merged" in notes
    assert "Merged into `c-000009`" in notes
    assert "_no detectors remain_" in json.dumps(blocks)


def test_untrusted_text_cannot_inject_mentions_or_links() -> None:
    shown = rendered(alert(alert_type="RETRACTION", reason="<!channel> see <http://x|here> & more"))
    assert "<!channel>" not in shown
    assert "&lt;!channel&gt; see &lt;http://x|here&gt; &amp; more" in shown


def test_header_and_sections_respect_block_kit_limits() -> None:
    _, blocks = slack_blocks(alert(alert_type="RETRACTION", reason="x" * 10_000))
    assert len(blocks[0]["text"]["text"]) <= MAX_HEADER_CHARS
    for block in blocks:
        if block["type"] == "section" and "text" in block:
            assert len(block["text"]["text"]) <= 3000
        for element in block.get("elements", []) + block.get("fields", []):
            assert len(element["text"]) <= 3000


@pytest.mark.parametrize("overrides, field", [
    ({"alert_type": "MAYBE"}, "alert_type"),
    ({"alert_id": ""}, "alert_id"),
    ({"revision": "2"}, "revision"),
    ({"is_test": "no"}, "is_test"),
    ({"p_values": [0.1]}, "p_values"),
    ({"p_values": ["0.1", None]}, "p_values"),
    ({"detector_names": "IceCube"}, "detector_names"),
    ({"false_alarm_rate_per_year": "often"}, "false_alarm_rate_per_year"),
])
def test_malformed_alert_is_refused_naming_the_field(overrides, field) -> None:
    with pytest.raises(ValueError, match=field):
        slack_blocks(alert(**overrides))
