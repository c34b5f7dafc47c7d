"""Localization through the deployed workers: the writer publishes the first alert at once, the
localize worker maps it, and the writer commits the map as the coincidence's next revision.

Real Celery workers from workers/ (coincidence, notify, localize), real Redis, Tansu, SecantusDB
and the Slack Web API stand-in driven by the real slack_sdk; sky maps read back from GridFS.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import healpy as hp
import numpy as np
import pytest
from astropy.io import fits

from snews_tasks.adapters.skymap_store import SkymapStore
from snews_tasks.core.routing import TaskName
from snews_tasks.testing.builders import retraction
from snews_tasks.testing.pipeline import (S, live_observation, pipelines,  # noqa: F401  (fixtures)
                                          slack, unique_alerts)

pytestmark = pytest.mark.integration

BASE_URL = "https://snews.example.org/console"
SHIPPED_SITES = Path(__file__).resolve().parents[2] / "snews_tasks" / "data" / "detector_sites.json"


def by_revision(pipeline, alert_id: str) -> list[dict]:
    alerts = [a for (i, _), a in sorted(unique_alerts(pipeline.alerts()).items()) if i == alert_id]
    return sorted(alerts, key=lambda a: a["revision"])


def alert_ids(pipeline) -> set[str]:
    return {a["alert_id"] for a in pipeline.alerts()}


def test_a_burst_gets_its_alert_at_once_and_its_sky_map_as_the_next_revision(pipelines,
                                                                              slack) -> None:
    pipeline = pipelines(settings={"SNEWS_LOCALIZATION": "true",
                                   "SNEWS_PUBLIC_BASE_URL": BASE_URL})
    pipeline.start_workers("coincidence", "notify", "localize")
    t = time.time_ns() - 30 * S
    burst = [live_observation("IceCube", t, p_val=0.02),
             live_observation("Super-K", t + 12_000_000, p_val=0.001),
             live_observation("JUNO", t + 20_000_000, p_val=None)]
    # One batch, one commit: NEW (IceCube, Super-K) and UPDATE (+ JUNO) are both committed
    # before any localization returns, so the first one's result is always dropped.
    pipeline.send_task(TaskName.PROCESS, [m.to_dict() for m in burst], {})

    pipeline.wait_until(lambda: any(a["revision"] == 3 for a in pipeline.alerts()),
                        "the localized revision on the alert topic")
    pipeline.wait_until(lambda: bool(slack.files), "the sky-map picture on Slack")
    pipeline.drain()
    [alert_id] = alert_ids(pipeline)
    first, grown, localized = by_revision(pipeline, alert_id)

    assert (first["alert_type"], first["detector_names"]) == ("NEW", ["IceCube", "Super-K"])
    assert first["localization"] is None
    assert first["combined_p_value_left_out"] == {}
    assert 0 < first["combined_p_value"] < 0.001 and first["combined_significance_sigma"] > 3
    assert (grown["alert_type"], grown["localization"]) == ("UPDATE", None)
    assert grown["combined_p_value_left_out"] == {"JUNO": "no p-value"}
    assert localized["alert_type"] == "UPDATE"
    assert localized["reason"].startswith("localization added: 3 detectors")
    assert localized["observation_uuids"] == grown["observation_uuids"]
    summary = localized["localization"]
    assert summary["skymap"] == f"{alert_id}-2.fits"  # named after the revision it maps
    assert summary["skymap_url"] == f"{BASE_URL}/skymaps/{alert_id}-2.fits"
    assert summary["skymap_image_url"] == f"{BASE_URL}/skymaps/{alert_id}-2.png"
    assert (summary["detectors"], summary["refused"], summary["left_out"]) == (
        ["IceCube", "Super-K", "JUNO"], None, {})
    assert 0 < summary["area_50_deg2"] < summary["area_90_deg2"] < 41_253

    store = SkymapStore(pipeline.archive)
    data = store.get(summary["skymap"])
    assert data is not None
    probability = hp.read_map(fits.open(io.BytesIO(data)))
    assert probability.size == hp.nside2npix(64)
    assert probability.sum() == pytest.approx(1.0)
    ra, dec = hp.pix2ang(64, int(np.argmax(probability)), lonlat=True)
    assert (ra, dec) == (pytest.approx(summary["ra_deg"], abs=1e-3),
                         pytest.approx(summary["dec_deg"], abs=1e-3))

    archived = {d["revision"]: d for d in pipeline.archive.alerts.find({"alert_id": alert_id})}
    assert sorted(archived) == [1, 2, 3] and archived[3]["localization"] == summary
    [post_3] = [p for p in slack.posts if f"{alert_id} rev 3" in p["text"]]
    [shared] = slack.files
    assert shared.data == store.get(summary["skymap_image"])
    assert shared.data.startswith(b"\x89PNG")
    assert shared.filename == f"{alert_id}-2.png"
    assert shared.thread_ts is not None and "Localization" in json.dumps(post_3["blocks"])
    assert len(slack.posts) == 3
    assert pipeline.archive.failed_notifications.count_documents({}) == 0
    localize_log = next(w for w in pipeline.workers if w.name.startswith("localize")).log()
    assert "localization ready" in localize_log and "revision 1: localization added" in localize_log
    writer_log = next(w for w in pipeline.workers if w.name.startswith("coincidence")).log()
    assert "localization dropped" in writer_log  # revision 1's map came back too late


def test_bad_input_gives_a_reason_in_the_alert_and_never_fails_the_task(pipelines,
                                                                        tmp_path: Path) -> None:
    sites = {k: v for k, v in json.loads(SHIPPED_SITES.read_text()).items() if k != "Baksan"}
    sites_file = tmp_path / "sites.json"
    sites_file.write_text(json.dumps(sites))
    pipeline = pipelines(settings={"SNEWS_LOCALIZATION": "true", "SNEWS_SLACK_TOKEN": "",
                                   "SNEWS_DETECTOR_SITES_FILE": str(sites_file)})
    pipeline.start_workers("coincidence", "notify", "localize")
    t = time.time_ns() - 200 * S
    bursts = {
        "unsited member": [live_observation("Baksan", t), live_observation("IceCube", t),
                           live_observation("Super-K", t + 5_000_000)],
        "one usable detector": [live_observation("Baksan", t + 30 * S),
                                live_observation("JUNO", t + 30 * S)],
        "too far apart": [live_observation("Super-K", t + 60 * S),
                          live_observation("IceCube", t + 60 * S + 200_000_000)],
        "retracted": [live_observation("JUNO", t + 90 * S), live_observation("SNO+", t + 90 * S)],
    }
    for messages in bursts.values():
        pipeline.send_task(TaskName.PROCESS, [m.to_dict() for m in messages], {})
    pipeline.wait_until(lambda: sum(a["revision"] == 2 for a in pipeline.alerts()) == 4,
                        "four localized revisions")
    ids = {name: next(a["alert_id"] for a in pipeline.alerts()
                      if a["observation_uuids"][0] == messages[0].uuid)
           for name, messages in bursts.items()}
    localized = {name: by_revision(pipeline, i)[-1]["localization"] for name, i in ids.items()}

    unsited = localized["unsited member"]
    assert unsited["left_out"] == {"Baksan": "no site in the detector sites file"}
    assert unsited["detectors"] == ["IceCube", "Super-K"] and unsited["skymap"] is not None
    lonely = localized["one usable detector"]
    assert lonely["refused"] == "one detector cannot be localised: only JUNO has a usable site and time"
    assert lonely["skymap"] is None and lonely["skymap_url"] is None
    far = localized["too far apart"]
    assert far["refused"].startswith("times inconsistent with any direction: Super-K and IceCube "
                                     "are 200.000 ms apart")
    assert by_revision(pipeline, ids["too far apart"])[-1]["reason"] == (
        f"localization refused: {far['refused']}")
    assert SkymapStore(pipeline.archive).get(f"{ids['too far apart']}-1.fits") is None

    # A retraction that leaves one detector withdraws the coincidence: no localization, and
    # nothing is localized after it.
    pipeline.send([retraction("SNO+", target=bursts["retracted"][1].uuid)])
    pipeline.wait_until(lambda: len(by_revision(pipeline, ids["retracted"])) == 3,
                        "the retraction")
    pipeline.drain()
    last = by_revision(pipeline, ids["retracted"])
    assert [(a["alert_type"], a["localization"] is None) for a in last] == [
        ("NEW", True), ("UPDATE", False), ("RETRACTION", True)]
    assert last[-1]["detector_names"] == ["JUNO"]

    assert pipeline.archive.failed_notifications.count_documents({}) == 0
    localize_log = next(w for w in pipeline.workers if w.name.startswith("localize")).log()
    assert localize_log.count("snews.localization.localize") >= 4 and "Traceback" not in localize_log
    assert " failed: " not in localize_log
