"""`snews-tasks replay --dry-run`: the contract other tools rely on, run as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import healpy as hp
import pytest

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


def test_skymap_dir_prints_the_localized_revisions_and_writes_their_maps(tmp_path: Path):
    """Each localized revision right after the alert it maps, as live consumers see them."""
    a, b = observation("IceCube", 0), observation("Super-K", 0, ns=12_000_000)
    far = [observation("JUNO", 100), observation("KM3NeT", 100.5)]  # 0.5 s: no direction
    stream = tmp_path / "stream.jsonl"
    stream.write_text("\n".join(json.dumps(m.to_dict()) for m in (a, b, *far)) + "\n")
    maps = tmp_path / "maps"

    done = replay(str(stream), "--skymap-dir", str(maps))

    assert done.returncode == 0, done.stderr
    alerts = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(x["alert_type"], x["revision"], x["localization"] is None) for x in alerts] == [
        ("NEW", 1, True), ("UPDATE", 2, False), ("NEW", 1, True), ("UPDATE", 2, False)]
    mapped, refused = alerts[1]["localization"], alerts[3]["localization"]
    assert mapped["skymap"] == f"{alerts[0]['alert_id']}-1.fits"
    assert mapped["skymap_url"] == (maps / mapped["skymap"]).resolve().as_uri()
    probability = hp.read_map(str(maps / mapped["skymap"]))
    assert probability.size == hp.nside2npix(64) and probability.sum() == pytest.approx(1)
    assert (maps / mapped["skymap_image"]).read_bytes().startswith(b"\x89PNG")
    assert refused["refused"].startswith("times inconsistent with any direction: JUNO and KM3NeT")
    assert sorted(p.name for p in maps.iterdir()) == [mapped["skymap"], mapped["skymap_image"]]
    assert "4 alerts" in done.stderr


def test_an_unusable_sites_file_stops_a_localizing_replay(tmp_path: Path):
    stream = tmp_path / "stream.jsonl"
    stream.write_text(json.dumps(observation("IceCube", 0).to_dict()) + "\n")
    sites = tmp_path / "sites.json"
    sites.write_text(json.dumps({"IceCube": {"latitude_deg": 95, "longitude_deg": 0,
                                             "height_m": 0, "timing_sigma_ms": 1}}))
    done = subprocess.run([sys.executable, "-m", "snews_tasks", "replay", "--dry-run",
                           str(stream), "--skymap-dir", str(tmp_path / "maps")],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SNEWS_DETECTOR_SITES_FILE": str(sites)})
    assert done.returncode == 2
    assert "detector 'IceCube': field 'latitude_deg' must lie in [-90, 90], got 95" in done.stderr
