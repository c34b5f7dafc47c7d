"""What heartbeat feedback tells people: contacts, mails, the SMTP retry rule, and the
offline `snews-tasks heartbeats --dry-run`."""

from __future__ import annotations

import base64
import json
import smtplib
import subprocess
import sys
from pathlib import Path

import pytest

from snews_tasks.adapters.mail import build_message, load_contacts
from snews_tasks.adapters.retry_policies import is_transient_smtp_error
from snews_tasks.core.errors import MessageError
from snews_tasks.core.feedback_notices import (
    event_document,
    event_mail,
    operations_text,
    parse_contacts,
    summary_mail,
)
from snews_tasks.core.heartbeat_feedback import (
    FeedbackRule,
    daily_summary,
    replay_events,
    usable_heartbeats,
)
from snews_tasks.core.times import NS_PER_S, format_time_ns
from snews_tasks.settings import DEFAULT_CONFIG_DIR, KNOWN_DETECTORS
from snews_tasks.testing.builders import T0
from snews_tasks.testing.heartbeats import beats

EVENT = {
    "detector_name": "Super-K",
    "event": "missed",
    "time_utc": "2026-03-01T12:05:00.000000000Z",
    "last_heartbeat_utc": "2026-03-01T12:02:00.000000000Z",
    "overdue_since_utc": "2026-03-01T12:03:15.000000000Z",
    "allowed_gap_s": 75.0,
    "gap_s": 180.0,
    "mean_interval_s": 60.0,
    "sigma_interval_s": 0.0,
}


def test_contacts_name_the_bad_entry() -> None:
    assert parse_contacts(
        {"_comment": "x", "JUNO": {"emails": ["a@b.org", "a@b.org"]}, "LZ": {"emails": []}},
        KNOWN_DETECTORS,
    ) == {"JUNO": ("a@b.org",), "LZ": ()}
    bad = [
        ({"Kamiokande": {"emails": []}}, "contacts.Kamiokande: is not a configured detector"),
        ({"JUNO": ["a@b.org"]}, "contacts.JUNO.emails: must be a list"),
        ({"JUNO": {"emails": ["a@b.org", "x@y.org>\nBcc: z@w.org"]}}, "contacts.JUNO.emails[1]"),
        ([], "contacts: must be a JSON object"),
    ]
    for data, message in bad:
        with pytest.raises(MessageError, match=message.replace("[", r"\[").replace("]", r"\]")):
            parse_contacts(data, KNOWN_DETECTORS)


def test_shipped_contact_files_are_valid(tmp_path: Path) -> None:
    production = load_contacts(DEFAULT_CONFIG_DIR / "contacts.json", KNOWN_DETECTORS)
    assert set(production) == set(KNOWN_DETECTORS) and not any(production.values())
    local = load_contacts(DEFAULT_CONFIG_DIR / "contacts.local.json", KNOWN_DETECTORS)
    assert local["Super-K"] == ("super-k-shifters@example.org",) and "LZ" not in local
    assert load_contacts(tmp_path / "missing.json", KNOWN_DETECTORS) == {}
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(MessageError, match="broken.json: is not JSON"):
        load_contacts(tmp_path / "broken.json", KNOWN_DETECTORS)


def test_event_mail_and_notice_say_what_happened() -> None:
    document = event_document(EVENT, server_tag="prod", contacts=(), raised_utc="now")
    assert document["event_id"] == "Super-K:missed:2026-03-01T12:02:00.000000000Z"
    assert document["not_mailed_reason"] == "the detector has no contacts"
    mail = event_mail(EVENT, ("a@b.org",), server_tag="prod")
    assert mail["subject"] == "[SNEWS prod] Super-K: missed heartbeats"
    assert "last one was sent at 2026-03-01T12:02:00" in mail["text"]
    assert "every 60 s" in mail["text"] and "up to 75 s is allowed" in mail["text"]
    back = event_mail({**EVENT, "event": "back"}, ("a@b.org",), server_tag="prod")
    assert back["mail_id"] != mail["mail_id"] and "is back" in back["text"]
    assert operations_text(EVENT, server_tag="prod").startswith(":warning: [prod] Super-K")
    message = build_message(mail, "SNEWS <snews@example.org>")
    assert message["To"] == "a@b.org" and message["X-SNEWS-Mail-Id"] == mail["mail_id"]


def test_summary_mail_carries_the_day_and_its_picture() -> None:
    heartbeats = beats("JUNO", T0, 60, 30) + beats("JUNO", T0 + 40 * 60 * NS_PER_S, 60, 5)
    usable = usable_heartbeats(heartbeats)
    end = T0 + 45 * 60 * NS_PER_S  # a minute after the last beat: no gap open
    summary = daily_summary(usable, "JUNO", end - 86400 * NS_PER_S, end)
    assert [e.event for e in replay_events(usable, end, rule=FeedbackRule())] == [
        "missed",
        "back",
    ]
    mail = summary_mail(summary, b"\x89PNG-picture", ("a@b.org",), server_tag="t")
    assert "heartbeats: 35 (35 ON)" in mail["text"] and "gaps: 1" in mail["text"]
    assert "latency (received - sent): mean 0.50 s" in mail["text"]
    [attachment] = mail["attachments"]
    assert base64.b64decode(attachment["data_base64"]) == b"\x89PNG-picture"
    assert attachment["filename"] == f"JUNO-heartbeats-{format_time_ns(end)[:10]}.png"
    message = build_message(mail, "s@example.org")
    assert [p.get_filename() for p in message.iter_attachments()] == [attachment["filename"]]


def test_smtp_outages_are_retried_refusals_are_not() -> None:
    assert is_transient_smtp_error(ConnectionRefusedError())
    assert is_transient_smtp_error(TimeoutError())
    assert is_transient_smtp_error(smtplib.SMTPServerDisconnected("gone"))
    assert is_transient_smtp_error(smtplib.SMTPResponseException(421, b"busy"))
    assert not is_transient_smtp_error(smtplib.SMTPAuthenticationError(535, b"bad login"))
    assert not is_transient_smtp_error(smtplib.SMTPRecipientsRefused({"a@b": (550, b"no")}))
    assert is_transient_smtp_error(smtplib.SMTPRecipientsRefused({"a@b": (450, b"later")}))
    assert not is_transient_smtp_error(smtplib.SMTPNotSupportedError("no STARTTLS"))


def test_heartbeats_dry_run_prints_events_on_the_streams_clock(tmp_path: Path) -> None:
    start = T0 - 3 * 86400 * NS_PER_S  # any date: the stream's own clock decides
    lines = [json.dumps(hb) for hb in beats("Super-K", start, 60, 10)]
    lines += [json.dumps(hb) for hb in beats("IceCube", start + 5 * NS_PER_S, 60, 20)]
    lines += [json.dumps(hb) for hb in beats("Super-K", start + 19 * 60 * NS_PER_S, 60, 1)]
    lines += ["not json", json.dumps({**json.loads(lines[0]), "detector_name": "Nope"})]
    stream = tmp_path / "heartbeats.jsonl"
    stream.write_text("\n".join(lines) + "\n")
    done = subprocess.run(
        [sys.executable, "-m", "snews_tasks", "heartbeats", "--dry-run", str(stream)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(e["detector_name"], e["event"]) for e in events] == [
        ("Super-K", "missed"),
        ("Super-K", "back"),
    ]
    # Raised when IceCube's heartbeats moved the stream's clock past the allowed 75 s.
    assert events[0]["time_utc"] == format_time_ns(start + (9 * 60 + 125) * NS_PER_S)
    assert events[1]["time_utc"] == format_time_ns(start + 19 * 60 * NS_PER_S)
    assert "line 32: not valid JSON" in done.stderr
    assert "line 33: detector_name: is not a known detector: 'Nope'" in done.stderr
