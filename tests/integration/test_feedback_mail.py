"""Heartbeat feedback and mail on real workers: heartbeats through the storage queue, the
periodic check, events archived, posted to the operations channel and mailed through a real
SMTP server (aiosmtpd); an SMTP outage delays mail, and a re-drive delivers it."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from snews_tasks.core.routing import TaskName, queue_of
from snews_tasks.core.times import NS_PER_S, format_time_ns
from snews_tasks.entrypoints import localstack
from snews_tasks.testing.heartbeats import (  # noqa: F401
    attachments,
    beats,
    heartbeat_document,
    mails_to,
    received_mails,
    smtp_service,
)
from snews_tasks.testing.pipeline import ClockedSlackApi, Pipeline, pipelines, slack  # noqa: F401

pytestmark = pytest.mark.integration
SUPERK = "super-k-shifters@example.org"  # config/contacts.local.json
OPERATIONS = "#snews-ops-test"
#: The mails the shifters got, kept for reading (docs/examples/ holds a copy).
ARTIFACTS = (Path(os.environ.get("SNEWS_TEST_ARTIFACTS")
                  or Path(__file__).resolve().parents[2] / "test-artifacts") / "mail")


def smtp_settings(port: int) -> dict[str, str]:
    return {
        "SNEWS_SMTP_HOST": "127.0.0.1",
        "SNEWS_SMTP_PORT": str(port),
        "SNEWS_SLACK_OPERATIONS_CHANNEL": OPERATIONS,
    }


def store(pipeline: Pipeline, heartbeats: list[dict]) -> None:
    for heartbeat in heartbeats:
        pipeline.send_task(TaskName.STORE_HEARTBEAT, heartbeat, {})


def check(pipeline: Pipeline) -> None:
    """One feedback check, as beat sends it, then everything it handed on."""
    pipeline.drain()
    pipeline.client.send_task(TaskName.FEEDBACK_CHECK, queue=queue_of(TaskName.FEEDBACK_CHECK))
    pipeline.drain()


def test_a_gap_is_archived_posted_and_mailed_and_so_is_its_end(
    pipelines: Callable[..., Pipeline],
    smtp_service: localstack.Service,
    slack: ClockedSlackApi,
) -> None:
    pipeline = pipelines(settings=smtp_settings(smtp_service.port))
    pipeline.start_workers("notify")
    now = time.time_ns()
    # Super-K beat every 60 s and fell silent 3 min ago; IceCube beats every 60 s up to now;
    # LZ (no contacts) fell silent too.
    store(pipeline, beats("Super-K", now - 12 * 60 * NS_PER_S, 60, 10))
    store(pipeline, beats("IceCube", now - 12 * 60 * NS_PER_S, 60, 13))
    store(pipeline, beats("LZ", now - 12 * 60 * NS_PER_S, 60, 8))
    check(pipeline)

    events = {(e["detector_name"], e["event"]): e for e in pipeline.archive.heartbeat_events.find()}
    assert set(events) == {("Super-K", "missed"), ("LZ", "missed")}
    assert events[("Super-K", "missed")]["mailed_to"] == [SUPERK]
    assert events[("LZ", "missed")]["not_mailed_reason"] == "the detector has no contacts"
    pipeline.wait_until(lambda: len(received_mails(smtp_service.data_dir)) >= 1, "the mail")
    [missed] = mails_to(smtp_service.data_dir, SUPERK)
    assert "Super-K: missed heartbeats" in missed["Subject"]
    assert "has missed heartbeats" in missed.get_payload(decode=True).decode()
    assert not any("lz" in str(m["To"]).lower() for m in received_mails(smtp_service.data_dir))
    posted = [p for p in slack.posts if p.get("channel") == OPERATIONS]
    assert sorted(("Super-K" in p["text"], "LZ" in p["text"]) for p in posted) == [
        (False, True),
        (True, False),
    ]

    # A second check raises nothing new; Super-K's next heartbeat ends its gap.
    check(pipeline)
    assert pipeline.archive.heartbeat_events.count_documents({}) == 2
    store(pipeline, [heartbeat_document("Super-K", time.time_ns())])
    check(pipeline)
    back = pipeline.archive.heartbeat_events.find_one({"event": "back"})
    assert back is not None and back["detector_name"] == "Super-K"
    pipeline.wait_until(lambda: len(mails_to(smtp_service.data_dir, SUPERK)) == 2, "back mail")
    subjects = sorted(m["Subject"] for m in mails_to(smtp_service.data_dir, SUPERK))
    assert "Super-K: heartbeats are back" in subjects[0]

    # The daily summary: one mail per detector with contacts, its timeline attached.
    pipeline.send_task(TaskName.FEEDBACK_SUMMARY, format_time_ns(time.time_ns()), {})
    pipeline.wait_until(lambda: len(mails_to(smtp_service.data_dir, SUPERK)) == 3, "summary")
    [summary] = [m for m in mails_to(smtp_service.data_dir, SUPERK) if "summary" in m["Subject"]]
    text = next(p for p in summary.walk() if p.get_content_type() == "text/plain")
    body = text.get_payload(decode=True).decode()
    assert "heartbeats: 11 (11 ON)" in body and "gaps: 1" in body
    [(name, png)] = list(attachments(summary))
    assert name.startswith("Super-K-heartbeats-") and png.startswith(b"\x89PNG")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for mail in mails_to(smtp_service.data_dir, SUPERK):
        kind = str(mail["Subject"]).split(": ")[-1].replace(" ", "-")
        (ARTIFACTS / f"Super-K-{kind}.eml").write_bytes(bytes(mail))
    print(f"feedback mails saved to {ARTIFACTS}")


def test_bad_heartbeats_never_reach_the_rule(
    pipelines: Callable[..., Pipeline], smtp_service: localstack.Service
) -> None:
    """One stored by mistake (the ingest rejects them; a re-drive of an old record could
    bring one): a sent time far past its receive time is skipped by the check."""
    pipeline = pipelines(settings=smtp_settings(smtp_service.port))
    pipeline.start_workers("notify")
    now = time.time_ns()
    future = heartbeat_document("JUNO", now + 3600 * NS_PER_S, received_ns=now)
    store(pipeline, [*beats("JUNO", now - 10 * 60 * NS_PER_S, 60, 11), future])
    check(pipeline)
    assert pipeline.archive.heartbeat_events.count_documents({}) == 0
    log = "\n".join(worker.log() for worker in pipeline.workers)
    assert "not used by the feedback: sent_time_utc" in log


def test_mail_waits_for_an_smtp_server_that_is_down(
    pipelines: Callable[..., Pipeline], tmp_path
) -> None:
    port = localstack.free_port()
    pipeline = pipelines(settings=smtp_settings(port))
    pipeline.start_workers("notify")
    mail = {
        "mail_id": "test:outage",
        "detector_name": "Super-K",
        "to": [SUPERK],
        "subject": "outage test",
        "text": "sent while the server was down\n",
        "attachments": [],
    }
    pipeline.send_task(TaskName.SEND_MAIL, mail, {})
    pipeline.drain()  # every retry refused: the mail is recorded, with its content
    failed = pipeline.cli("failed", "list").stdout
    assert "mail:test:outage" in failed and "ConnectionRefusedError" in failed

    server = localstack.start_smtp(port, mail_dir=tmp_path / "maildir")
    try:
        assert "re-driven mail:test:outage" in pipeline.cli("failed", "retry", "--all").stdout
        pipeline.wait_until(lambda: len(received_mails(tmp_path / "maildir")) == 1, "the mail")
        [received] = received_mails(tmp_path / "maildir")
        assert received["Subject"] == "outage test"
        assert received["X-SNEWS-Mail-Id"] == "test:outage"
        assert "no failed notifications" in pipeline.cli("failed", "list").stdout
    finally:
        server.stop()
