"""`snews-tasks replay --dry-run`: the contract other tools rely on, run as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from snews_tasks.testing.builders import observation, retraction


def replay(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snews_tasks", "replay", "--dry-run", *args],
                          capture_output=True, text=True, timeout=60)


def test_replay_prints_alerts_reports_rejects_and_writes_state(tmp_path: Path):
    a, b, c = observation("Super-K", 0), observation("IceCube", 9), observation("JUNO", 11)
    bad_p = {**observation("KamLAND", 1).to_dict(), "p_val": 2}
    lines = [json.dumps(a.to_dict()), "this is not json", json.dumps(b.to_dict()), "",
             json.dumps(bad_p), json.dumps(c.to_dict()), json.dumps(c.to_dict())]
    stream = tmp_path / "stream.jsonl"
    stream.write_text("\n".join(lines) + "\n")
    state = tmp_path / "state.json"

    done = replay(str(stream), "--state-out", str(state))

    assert done.returncode == 0, done.stderr
    alerts = [json.loads(line) for line in done.stdout.splitlines()]
    assert [x["alert_type"] for x in alerts] == ["NEW", "NEW"]
    assert [x["detector_names"] for x in alerts] == [["Super-K", "IceCube"], ["IceCube", "JUNO"]]
    assert "line 2: rejected" in done.stderr
    assert "line 5: rejected: p_val" in done.stderr
    coincidences = json.loads(state.read_text())["coincidences"]
    assert {frozenset(x["observation_uuids"]) for x in coincidences} == {
        frozenset({a.uuid, b.uuid}), frozenset({b.uuid, c.uuid})}
    assert all(x["is_test"] is False and len(x["neutrino_times_utc"]) == 2 for x in coincidences)


def test_old_streams_replay_on_their_own_clock_and_retractions_apply(tmp_path: Path):
    a, b = observation("Super-K", 0), observation("IceCube", 1)
    stream = tmp_path / "stream.jsonl"
    stream.write_text("\n".join(json.dumps(m.to_dict()) for m in
                                (a, b, retraction("IceCube", target=b.uuid))) + "\n")
    state = tmp_path / "state.json"
    done = replay(str(stream), "--state-out", str(state))
    assert done.returncode == 0, done.stderr
    assert [json.loads(x)["alert_type"] for x in done.stdout.splitlines()] == ["NEW", "RETRACTION"]
    assert json.loads(state.read_text()) == {"coincidences": []}


def test_an_unreadable_stream_is_the_only_failure(tmp_path: Path):
    done = replay(str(tmp_path / "missing.jsonl"))
    assert done.returncode != 0
    assert "cannot read" in done.stderr
