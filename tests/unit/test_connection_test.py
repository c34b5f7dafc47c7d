"""snews-pt's connection test: the echo it waits for, what is refused, and the echo bound."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from snews.models import messages as snews_messages

from snews_tasks.core.connection_test import (
    CONNECTION_TEST_ID,
    TIER,
    EchoLimiter,
    archived,
    echo_of,
    is_connection_test,
)
from snews_tasks.core.errors import MessageError
from snews_tasks.core.payloads import decode_payload
from snews_tasks.settings import KNOWN_DETECTORS


def sent_by_snews_pt(detector: str = "Super-K") -> dict:
    """The message `snews_pt test-connection` builds (snews-pt 3.0.0), as it reaches us."""
    model = snews_messages.DetectorMessageBase(
        id=CONNECTION_TEST_ID, detector_name=detector, tier=snews_messages.Tier.HEART_BEAT,
        sent_time_utc=datetime.now(UTC).isoformat(), meta={"status": "sending"})
    return json.loads(model.model_dump_json())


def test_the_echo_is_what_snews_pt_compares_with() -> None:
    sent = sent_by_snews_pt()
    assert is_connection_test(sent)
    echo = echo_of(sent, detectors=KNOWN_DETECTORS)
    # snews-pt compares the whole read message with its own, status "received".
    model = snews_messages.DetectorMessageBase(**sent)
    model.meta["status"] = "received"
    assert echo == model.model_dump()
    assert sent["meta"]["status"] == "sending"  # the message itself is not changed
    # What snews-pt 3.0.0 really sends: its expected echo shares the message's meta.
    assert echo_of({**sent, "meta": {"status": "received"}}, detectors=KNOWN_DETECTORS) == echo


def test_snews_pts_double_encoded_json_is_decoded() -> None:
    sent = sent_by_snews_pt()
    on_the_wire = json.dumps(json.dumps(sent)).encode()  # JSONBlob(model_dump_json())
    assert decode_payload(on_the_wire, max_bytes=65536) == sent


@pytest.mark.parametrize(("change", "field"), [
    ({"detector_name": "Nobody"}, "detector_name"),
    ({"detector_name": 7}, "detector_name"),
    ({"tier": "CoincidenceTier"}, "tier"),
    ({"meta": {"status": "lost"}}, "meta.status"),
    ({"meta": None}, "meta.status"),
])
def test_what_snews_pt_would_not_send_is_refused_naming_the_field(change: dict,
                                                                   field: str) -> None:
    with pytest.raises(MessageError) as refused:
        echo_of({**sent_by_snews_pt(), **change}, detectors=KNOWN_DETECTORS)
    assert refused.value.field == field


def test_a_flood_gets_a_bounded_number_of_echoes_per_detector_and_minute() -> None:
    limiter = EchoLimiter(per_minute=6)
    flood = [limiter.allow(detector, now_s=i * 0.1)
             for i in range(200) for detector in ("Super-K", "JUNO")]
    assert flood.count(True) == 12  # 6 for each detector
    assert not limiter.allow("Super-K", now_s=59.9)
    assert limiter.allow("Super-K", now_s=60.0)  # the first echo has left the window
    assert limiter.allow("IceCube", now_s=60.0)  # another detector's echoes are its own
    with pytest.raises(ValueError, match="per_minute"):
        EchoLimiter(per_minute=0)


def test_the_archive_record_keeps_the_message_under_its_own_tier() -> None:
    sent = sent_by_snews_pt()
    record = archived(sent, received_time_utc="2030-01-01T00:00:00.000000000Z", echoed=False)
    assert record["uuid"] == sent["uuid"] and record["message"] == sent
    assert record["tier"] == TIER != "Heartbeat"
    assert record["echoed"] is False and record["detector_name"] == "Super-K"
    without_uuid = archived({**sent, "uuid": None}, received_time_utc="t", echoed=True)
    assert without_uuid["uuid"] == f"{CONNECTION_TEST_ID}:Super-K:{sent['sent_time_utc']}"
