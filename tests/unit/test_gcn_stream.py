"""Every GCN notice of a fault-suite-sized stream, as `replay --gcn-out` writes them, is valid
against GCN's SNEWS2 schema files and tells the alert revision it was made from."""

from __future__ import annotations

import io
import json
import random
import time
from pathlib import Path

from snews_tasks.core.gcn import SECONDS_PER_YEAR
from snews_tasks.entrypoints.replay import replay_file
from snews_tasks.testing.builders import settings
from snews_tasks.testing.gcn_schema import schema_errors
from snews_tasks.testing.pipeline import fault_stream


STREAM_SIZE = 2000  # as tests/faults/test_fault_suite.py publishes


def test_every_notice_of_a_fault_suite_stream_validates_and_matches_its_alert(
        tmp_path: Path) -> None:
    stream = fault_stream(random.Random(14), time.time_ns(), STREAM_SIZE)
    # A tenth of the messages are fire drills, a tenth tests: drills get notices, tests not.
    lines = []
    for i, message in enumerate(stream):
        document = message.to_dict()
        if i % 10 == 3 and document.get("tier") == "CoincidenceTier":
            document["is_firedrill"] = True
        if i % 10 == 7:
            document["is_test"] = True
        lines.append(json.dumps(document))
    path = tmp_path / "stream.jsonl"
    path.write_text("\n".join(lines) + "\n")
    out = io.StringIO()
    current = settings()

    report = replay_file(current, path, state_out=None, progress=False, out=out,
                         gcn_out=tmp_path / "notices")

    alerts = [json.loads(line) for line in out.getvalue().splitlines()]
    assert report.alerts == len(alerts) > 500
    wanted = {f"{a['alert_id']}-{a['revision']}.json": a for a in alerts if not a["is_test"]}
    written = {p.name: json.loads(p.read_text()) for p in (tmp_path / "notices").iterdir()}
    assert set(written) == set(wanted)
    assert any(a["is_firedrill"] for a in wanted.values())
    assert {a["alert_type"] for a in wanted.values()} == {"NEW", "UPDATE", "RETRACTION"}
    for name, notice in written.items():
        alert = wanted[name]
        assert schema_errors(notice) == [], name
        assert (notice["id"], notice["record_number"]) == (alert["alert_id"], alert["revision"])
        assert notice["alert_tense"] == ("test" if alert["is_firedrill"] else "current")
        assert notice["tier_data"]["detector_names"] == alert["detector_names"]
        status = notice["detector_status"]
        assert set(status) == set(current.detectors)
        assert {d for d, s in status.items() if s == "triggered"} == set(alert["detector_names"])
        if alert["false_alarm_rate_per_year"] is not None:
            assert notice["far"] * SECONDS_PER_YEAR == alert["false_alarm_rate_per_year"]
    print(f"FIGURES gcn notices: {len(written)} from {len(alerts)} alert revisions, "
          "all valid against the SNEWS2 schema")
