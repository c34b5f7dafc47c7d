"""The design card's own command, `celery -A snews_tasks worker`, is safe: a worker started
without -Q serves the notification and localization queues, and the coincidence queue is
consumed by one process only, started as workers/coincidence does."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from snews_tasks.entrypoints.localstack import wait_until
from snews_tasks.entrypoints.process_groups import stop_group
from snews_tasks.testing.pipeline import REPO, VENV_BIN

pytestmark = pytest.mark.integration


def worker(redis_url: str, log: Path, *args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNEWS_")}
    env.update(SNEWS_MODE="test", SNEWS_BROKER_URL=redis_url, SNEWS_RESULT_BACKEND=redis_url,
               SNEWS_STATE_REDIS_URL=redis_url)
    with log.open("wb") as out:
        return subprocess.Popen([str(VENV_BIN / "celery"), "-A", "snews_tasks", "worker",
                                 "--loglevel", "INFO", *args], env=env, cwd=REPO,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def test_a_worker_without_queues_serves_the_notification_queues_only(
        redis_url: str, tmp_path: Path) -> None:
    log = tmp_path / "bare.log"
    process = worker(redis_url, log, "--concurrency", "2")
    try:
        wait_until(lambda: "ready." in log.read_text(), 60, "the bare worker ready",
                   process=process, log_path=log)
        text = log.read_text()
    finally:
        stop_group(process)
    banner_queues = set(re.findall(r"^\s*\.> (\w+)\s+exchange=", text, re.M))
    assert banner_queues == {"storage", "alerts", "slack", "mail", "localization"}, text
    [line] = [ln for ln in text.splitlines() if "coincidence queue has one process" in ln]
    assert "serves storage, alerts, slack, mail, localization only" in line


def test_the_coincidence_queue_refuses_more_than_one_process(
        redis_url: str, tmp_path: Path) -> None:
    log = tmp_path / "writer.log"
    process = worker(redis_url, log, "-Q", "coincidence", "--concurrency", "2")
    assert process.wait(timeout=60) != 0
    assert "the coincidence queue is consumed by one process" in log.read_text()
