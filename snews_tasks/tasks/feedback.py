"""Heartbeat feedback, live: the periodic check that raises missed and back events, and the
daily summary mailed to each detector's contacts.

How heartbeats reach the rule with several notify workers: `adapters.heartbeat_feed`
(one Redis stream in arrival order, one check at a time under a lock, state and events
committed together). Each event goes to three deliveries: the archive
(``heartbeat_events``), the operations Slack channel, and a mail to the detector's
contacts; a detector without contacts is logged and its event archived with
``not_mailed_reason``, not mailed.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import redis
from redis.exceptions import LockError

from ..adapters.archive import Archive
from ..adapters.heartbeat_feed import START, HeartbeatFeed
from ..adapters.mail import contacts_path, load_contacts
from ..core.errors import MessageError
from ..core.feedback_notices import event_document, event_mail, summary_mail
from ..core.heartbeat_feedback import (
    FeedbackRule,
    Heartbeat,
    HeartbeatError,
    HeartbeatFeedback,
    daily_summary,
    heartbeat_from_record,
    replay_events,
    usable_heartbeats,
)
from ..core.routing import TaskName
from ..core.times import NS_PER_S, format_time_ns, parse_time_ns
from ..settings import Settings
from .app import app
from .context import settings, state_redis
from .sender import CelerySender
from .storage import worker_archive

log = logging.getLogger(__name__)
RULE = FeedbackRule()
DAY_NS = 86400 * NS_PER_S
Send = Callable[[str, Any, dict[str, Any]], None]
#: A summary of a day too long for one run's time limit would be a bug; this bounds it.
TASK_TIME_LIMIT_S = 300


def detector_contacts(settings: Settings) -> dict[str, tuple[str, ...]]:
    """Each detector's addresses; an unreadable file is logged and mails nobody (the events
    still reach the archive and Slack, and `status` shows the file's problem)."""
    try:
        return load_contacts(contacts_path(settings), settings.detectors)
    except MessageError as error:
        log.error("contacts file unusable, no feedback mail is sent: %s", error)
        return {}


def _restore(stored: object, position: str) -> tuple[HeartbeatFeedback, str]:
    """The rule's state and where to read on; without a usable state, the whole stream
    (its last 24 h) teaches the rule afresh."""
    if stored is not None:
        try:
            return HeartbeatFeedback.from_dict(stored, RULE), position
        except HeartbeatError as error:
            log.error("feedback state unreadable (%s): re-learning from the stream", error)
    return HeartbeatFeedback(RULE), START


def check_heartbeats(
    settings: Settings, client: redis.Redis, send: Send, *, now_ns: int | None = None
) -> dict[str, int] | None:
    """Feed the rule the heartbeats stored since the last check, check every detector at
    the clock, commit, then hand the events on. None when another check holds the lock."""
    feed = HeartbeatFeed(client)
    lock = feed.lock()
    if not lock.acquire():
        log.info("another heartbeat check is running; this one does nothing")
        return None
    try:
        feedback, position = _restore(*feed.load())
        read: list[Heartbeat] = []
        for entry_id, record in feed.read_after(position):
            position = entry_id
            try:
                read.append(
                    heartbeat_from_record(
                        record,
                        detectors=settings.detectors,
                        max_future_skew_s=settings.max_future_skew_s,
                    )
                )
            except HeartbeatError as error:
                log.warning("heartbeat %s not used by the feedback: %s", entry_id, error)
        # Notify workers store heartbeats side by side, so the stream can hold one detector's
        # beats of the same few seconds out of order; within a check they are taken in the
        # order they were sent (the rule ignores a beat older than the detector's latest).
        events = []
        for heartbeat in sorted(read, key=lambda hb: hb.sent_ns):
            observed = feedback.observe(heartbeat)
            if observed.ignored:
                log.info("heartbeat ignored: %s", observed.ignored)
            events += observed.events
        events += feedback.check(time.time_ns() if now_ns is None else now_ns)
        contacts = detector_contacts(settings)
        raised = format_time_ns(time.time_ns())
        documents = {}
        for event in events:
            document = event_document(
                event.to_dict(),
                server_tag=settings.server_tag,
                contacts=contacts.get(event.detector_name, ()),
                raised_utc=raised,
            )
            documents[document["event_id"]] = document
        if not feed.commit(lock, feedback.to_dict(), position, documents):
            log.warning("heartbeat check outlived its lock; nothing committed")
            return None
        feed.trim(RULE.window_s)
    finally:
        with contextlib.suppress(LockError):  # it expired: the commit above refused already
            lock.release()
    for document in documents.values():
        log.warning("heartbeat event: %s %s", document["event"], document["detector_name"])
    handed = hand_on(feed, send, server_tag=settings.server_tag)
    return {"heartbeats": len(read), "events": len(documents), "handed_on": handed}


def hand_on(feed: HeartbeatFeed, send: Send, *, server_tag: str) -> int:
    """Send each pending event's deliveries; it leaves the pending set once all are sent."""
    pending = feed.pending()
    for document in pending.values():
        send(TaskName.STORE_HEARTBEAT_EVENT, document, {})
        send(TaskName.POST_SLACK_OPERATIONS, document, {})
        if document["mailed_to"]:
            send(
                TaskName.SEND_MAIL,
                event_mail(document, tuple(document["mailed_to"]), server_tag=server_tag),
                {},
            )
        else:
            log.warning(
                "%s has no contacts: its %s event is not mailed",
                document["detector_name"],
                document["event"],
            )
    feed.handed_on(list(pending))
    return len(pending)


def send_summaries(
    settings: Settings, archive: Archive, send: Send, *, end_ns: int
) -> dict[str, list[str]]:
    """Each detector's summary of the day before `end_ns` to its contacts; a detector with
    heartbeats in the last two days and no contacts is reported."""
    start_ns = end_ns - DAY_NS
    history_ns = start_ns - round(RULE.window_s * NS_PER_S)
    contacts = detector_contacts(settings)
    outcome: dict[str, list[str]] = {"mailed": [], "no_contacts": []}
    for detector in settings.detectors:
        records = archive.heartbeats(detector, format_time_ns(history_ns), format_time_ns(end_ns))
        heartbeats = usable_heartbeats(records)
        if not heartbeats:
            continue
        if not contacts.get(detector):
            log.warning("%s has no contacts: its daily summary is not mailed", detector)
            outcome["no_contacts"].append(detector)
            continue
        summary = daily_summary(heartbeats, detector, start_ns, end_ns, rule=RULE)
        events = replay_events(heartbeats, end_ns, rule=RULE)
        # matplotlib takes a second to import: only the first picture's worker pays for it.
        from ..core.heartbeat_plot import timeline_png

        png = timeline_png(heartbeats, detector, start_ns, end_ns, events)
        mail = summary_mail(summary, png, contacts[detector], server_tag=settings.server_tag)
        send(TaskName.SEND_MAIL, mail, {})
        outcome["mailed"].append(detector)
    return outcome


def day_end(now_ns: int) -> int:
    """The last midnight (UTC) at or before `now_ns`."""
    return now_ns - now_ns % DAY_NS


@app.task(name=TaskName.FEEDBACK_CHECK, time_limit=TASK_TIME_LIMIT_S)
def check() -> dict[str, int] | None:
    """Beat: feed the rule the new heartbeats, raise missed and back events, hand them on."""
    return check_heartbeats(settings(), state_redis(), CelerySender())


@app.task(name=TaskName.FEEDBACK_SUMMARY, time_limit=TASK_TIME_LIMIT_S)
def summarise(end_utc: str | None = None) -> Mapping[str, list[str]]:
    """Beat, daily: each detector's heartbeat summary of the day before `end_utc` (default:
    the last midnight UTC) mailed to its contacts."""
    end_ns = day_end(time.time_ns()) if end_utc is None else parse_time_ns(end_utc, "end_utc")
    return send_summaries(settings(), worker_archive(), CelerySender(), end_ns=end_ns)
