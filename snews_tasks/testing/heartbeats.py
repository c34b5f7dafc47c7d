"""Heartbeats as the ingest hands them to the storage queue, and the mails a test received."""

from __future__ import annotations

import mailbox
import uuid as uuidlib
from collections.abc import Iterable, Iterator
from email.message import Message as EmailMessage
from pathlib import Path

import pytest

from ..core.messages import parse_message
from ..core.times import NS_PER_S, format_time_ns
from ..entrypoints import localstack
from ..settings import KNOWN_DETECTORS


def heartbeat_document(
    detector: str, sent_ns: int, *, received_ns: int | None = None, status: str = "ON"
) -> dict:
    """A validated heartbeat with the ingest's receive stamp (default: sent + 0.5 s)."""
    message = parse_message(
        {
            "tier": "Heartbeat",
            "uuid": str(uuidlib.uuid4()),
            "detector_name": detector,
            "detector_status": status,
            "sent_time_utc": format_time_ns(sent_ns),
            "machine_time_utc": format_time_ns(sent_ns),
        },
        detectors=KNOWN_DETECTORS,
    )
    received = sent_ns + NS_PER_S // 2 if received_ns is None else received_ns
    return {**message.to_dict(), "received_time_utc": format_time_ns(received)}


def beats(detector: str, first_ns: int, every_s: float, count: int) -> list[dict]:
    """`count` regular heartbeats of one detector, `every_s` apart from `first_ns`."""
    return [
        heartbeat_document(detector, first_ns + round(i * every_s * NS_PER_S)) for i in range(count)
    ]


def received_mails(maildir: Path) -> list[EmailMessage]:
    """Every mail the SMTP server has kept so far."""
    return list(mailbox.Maildir(maildir, create=False))


def mails_to(maildir: Path, address: str) -> list[EmailMessage]:
    return [m for m in received_mails(maildir) if address in str(m["To"])]


def attachments(mail: EmailMessage) -> Iterable[tuple[str, bytes]]:
    """(file name, content) of each attachment."""
    for part in mail.walk():
        name = part.get_filename()
        if name:
            yield name, bytes(part.get_payload(decode=True))


@pytest.fixture
def smtp_service() -> Iterator[localstack.Service]:
    """A real SMTP server (aiosmtpd) keeping what it receives in `service.data_dir`."""
    service = localstack.start_smtp()
    try:
        yield service
    finally:
        service.stop()
