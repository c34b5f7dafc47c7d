"""What heartbeat feedback tells people: the contacts file, mails and operations notices.

Pure: a mail here is a JSON-safe dict (a task argument, a failure record's payload that
`snews-tasks failed retry` re-drives); `adapters.mail` turns it into a MIME message.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Collection, Mapping
from typing import Any

from .errors import MessageError, show

#: A plausible address: something@domain.tld, no spaces or angle brackets (header injection).
_ADDRESS = re.compile(r"[^@\s<>,;\"']+@[^@\s<>,;\"']+\.[^@\s<>,;\"']+")
MISSED = "missed"
BACK = "back"


def parse_contacts(data: object, detectors: Collection[str]) -> dict[str, tuple[str, ...]]:
    """The contacts file: ``{"<detector>": {"emails": ["a@b.org", ...]}, ...}``.

    Every key must be a configured detector and every address plausible, so a typo stops
    the worker that reads the file, naming it, instead of sending mail nowhere.
    A detector that is absent, or lists no address, has no contacts.
    """
    if not isinstance(data, Mapping):
        raise MessageError("contacts", f"must be a JSON object, got {type(data).__name__}")
    contacts: dict[str, tuple[str, ...]] = {}
    for detector, entry in data.items():
        if detector.startswith("_"):  # "_comment" and the like
            continue
        where = f"contacts.{detector}"
        if detector not in detectors:
            raise MessageError(where, "is not a configured detector (SNEWS_DETECTORS)")
        emails = entry.get("emails") if isinstance(entry, Mapping) else None
        if not isinstance(emails, list):
            raise MessageError(f"{where}.emails", f"must be a list of addresses, got {show(entry)}")
        for i, address in enumerate(emails):
            if not isinstance(address, str) or not _ADDRESS.fullmatch(address):
                raise MessageError(f"{where}.emails[{i}]", f"is not an address: {show(address)}")
        contacts[detector] = tuple(dict.fromkeys(emails))
    return contacts


def event_id(event: Mapping[str, Any]) -> str:
    """One id per detector, kind and gap: a check that runs twice raises nothing new."""
    return f"{event['detector_name']}:{event['event']}:{event['last_heartbeat_utc']}"


def event_document(
    event: Mapping[str, Any], *, server_tag: str, contacts: tuple[str, ...], raised_utc: str
) -> dict[str, Any]:
    """The archived event: the rule's facts, who was mailed, and when the check raised it."""
    return {
        **event,
        "event_id": event_id(event),
        "server_tag": server_tag,
        "raised_utc": raised_utc,
        "mailed_to": list(contacts),
        "not_mailed_reason": None if contacts else "the detector has no contacts",
    }


def _seconds(value: float) -> str:
    return f"{value:.0f} s" if value < 600 else f"{value / 60:.1f} min"


def event_text(event: Mapping[str, Any]) -> str:
    """One paragraph for a mail or a Slack post."""
    detector = event["detector_name"]
    usual = (
        f"Its heartbeats usually come every {_seconds(event['mean_interval_s'])} "
        f"(sigma {_seconds(event['sigma_interval_s'])}); a gap of up to "
        f"{_seconds(event['allowed_gap_s'])} is allowed."
    )
    if event["event"] == MISSED:
        return (
            f"{detector} has missed heartbeats: the last one was sent at "
            f"{event['last_heartbeat_utc']}, {_seconds(event['gap_s'])} before this check "
            f"({event['time_utc']}). {usual}"
        )
    return (
        f"{detector} is back: a heartbeat sent at {event['time_utc']} ended a gap of "
        f"{_seconds(event['gap_s'])} after the one sent at {event['last_heartbeat_utc']}. {usual}"
    )


def event_mail(
    event: Mapping[str, Any], contacts: tuple[str, ...], *, server_tag: str
) -> dict[str, Any]:
    """The mail a detector's contacts get for one event."""
    what = "missed heartbeats" if event["event"] == MISSED else "heartbeats are back"
    return {
        "mail_id": f"event:{event_id(event)}",
        "detector_name": event["detector_name"],
        "to": list(contacts),
        "subject": f"[SNEWS {server_tag}] {event['detector_name']}: {what}",
        "text": (
            f"{event_text(event)}\n\n"
            "This mail is sent by the SNEWS coincidence server to the contacts of "
            f"{event['detector_name']} (server {server_tag}).\n"
        ),
        "attachments": [],
    }


def summary_mail(
    summary: Mapping[str, Any], png: bytes, contacts: tuple[str, ...], *, server_tag: str
) -> dict[str, Any]:
    """The daily summary mail: beats, gaps, latency and the timeline picture attached."""
    detector = summary["detector_name"]
    latency = summary["latency_s"]
    lines = [
        f"Heartbeats of {detector} from {summary['start_utc']} to {summary['end_utc']}:",
        "",
        f"  heartbeats: {summary['beats']} ({summary['beats_on']} ON)",
        f"  last heartbeat: {summary['last_heartbeat_utc'] or 'none'}",
        f"  ON {summary['on_fraction']:.1%}, OFF {summary['off_fraction']:.1%}, "
        f"silent {summary['silent_fraction']:.1%} of the day",
    ]
    if latency["count"]:
        lines.append(
            f"  latency (received - sent): mean {latency['mean']:.2f} s, "
            f"median {latency['median']:.2f} s, max {latency['max']:.2f} s"
        )
    lines.append(f"  gaps: {len(summary['gaps'])}")
    for gap in summary["gaps"]:
        end = gap["end_utc"] or "still open"
        lines.append(f"    from {gap['start_utc']} to {end} ({_seconds(gap['length_s'])})")
    lines += ["", "The attached picture shows each heartbeat, its latency and the gaps."]
    day = summary["end_utc"][:10]
    return {
        "mail_id": f"summary:{detector}:{summary['end_utc']}",
        "detector_name": detector,
        "to": list(contacts),
        "subject": f"[SNEWS {server_tag}] {detector}: heartbeat summary to {day}",
        "text": "\n".join(lines) + "\n",
        "attachments": [
            {
                "filename": f"{detector}-heartbeats-{day}.png",
                "content_type": "image/png",
                "data_base64": base64.b64encode(png).decode("ascii"),
            }
        ],
    }


def operations_text(event: Mapping[str, Any], *, server_tag: str) -> str:
    """The operations channel's Slack post for an event."""
    mark = ":warning:" if event["event"] == MISSED else ":white_check_mark:"
    return f"{mark} [{server_tag}] {event_text(event)}"
