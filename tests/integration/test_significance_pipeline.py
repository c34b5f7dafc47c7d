"""Significance-tier messages through a real notify worker: each archived message is combined
bin by bin with its neighbours, the result archived for the console and `status`, and an alert
raised only above the configured threshold."""

from __future__ import annotations

import json
import subprocess
import time
import uuid

import pytest
from scipy import stats

from snews_tasks.core.messages import Tier
from snews_tasks.core.routing import TaskName
from snews_tasks.core.times import format_time_ns
from snews_tasks.testing.builders import message
from snews_tasks.testing.pipeline import (REPO, S, VENV_BIN, pipelines,  # noqa: F401  (fixtures)
                                          slack)

pytestmark = pytest.mark.integration


def significance_document(detector: str, start_ns: int, p_values: list[float]) -> dict:
    """What the ingest hands the storage queue for a significance-tier message."""
    document = message(Tier.SIGNIFICANCE, detector, uuid=str(uuid.uuid4()), p_values=tuple(p_values),
                       t_bin_width_sec=1.0, machine_time_utc=format_time_ns(start_ns)).to_dict()
    return {**document, "received_time_utc": format_time_ns(time.time_ns())}


def status_check(pipeline, name: str) -> dict:
    done = subprocess.run([str(VENV_BIN / "snews-tasks"), "status", "--json", "--timeout", "1"],
                          env=pipeline.env, cwd=REPO, capture_output=True, text=True, timeout=120)
    return next(c for c in json.loads(done.stdout)["checks"] if c["name"] == name)


@pytest.mark.parametrize("threshold", [None, 3.0])
def test_significance_messages_are_combined_archived_and_alert_only_above_the_threshold(
        pipelines, slack, threshold: float | None) -> None:
    settings = {} if threshold is None else {"SNEWS_SIGNIFICANCE_ALERT_SIGMA": str(threshold)}
    pipeline = pipelines(settings=settings)
    pipeline.start_workers("notify")
    start = time.time_ns() - 60 * S
    first = significance_document("IceCube", start, [0.5, 1e-3, 0.4])
    second = significance_document("JUNO", start + S, [1e-3, 0.7])
    for document in (first, second):
        pipeline.send_task(TaskName.STORE_OBSERVATION, document, {})
        pipeline.wait_until(lambda d=document: pipeline.archive.significance.count_documents(
            {"trigger_uuid": d["uuid"]}) == 1, "the combination archived")
    pipeline.drain()

    lone = pipeline.archive.significance.find_one({"trigger_uuid": first["uuid"]})
    assert lone["segments"] == []  # one detector alone is no combination
    combined = pipeline.archive.significance.find_one({"trigger_uuid": second["uuid"]})
    best = combined["most_significant"]
    assert best["detectors"] == ["IceCube", "JUNO"] and best["p_values"] == [1e-3, 1e-3]
    assert best["start_utc"] == format_time_ns(start + S)
    fisher = stats.combine_pvalues([1e-3, 1e-3], method="fisher").pvalue
    assert best["combined_significance_sigma"] == pytest.approx(stats.norm.isf(fisher))
    assert combined["above_threshold"] is (threshold is not None)
    check = status_check(pipeline, "significance tier")
    assert "4.18 sigma from IceCube, JUNO" in check["detail"]
    assert ("alerts off" if threshold is None else "alerts at 3 sigma") in check["detail"]

    alerts = pipeline.alerts()
    archived = list(pipeline.archive.alerts.find({}, {"_id": False}))
    if threshold is None:
        assert alerts == [] and archived == [] and slack.posts == []
        return
    pipeline.wait_until(lambda: len(slack.posts) == 1, "the significance alert on Slack")
    [alert] = alerts
    assert (alert["alert_kind"], alert["alert_type"], alert["revision"]) == (
        "significance", "NEW", 1)
    assert alert["combined_significance_sigma"] == best["combined_significance_sigma"]
    assert [a["alert_id"] for a in archived] == [alert["alert_id"]]
    assert alert["alert_id"] in slack.posts[0]["text"]
