"""The MongoDB archive: every observation, alert, rejected message and detector status.

Storage tasks are delivered at least once (late acknowledgement, retries), so
every write here is idempotent: documents are inserted with ``$setOnInsert``
under a unique key, and a redelivery finds the document already there and
changes nothing. Nothing expires: the archive is the record of what the
service saw and said. Only standard MongoDB features are used (tests run
against SecantusDB, production against MongoDB).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from bson.codec_options import CodecOptions
from pymongo import ASCENDING, DESCENDING, MongoClient, UpdateOne
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, DuplicateKeyError

from ..core.documents import require_revision, require_str
from ..core.times import format_time_ns
from ..settings import Settings

OBSERVATIONS = "observations"
ALERTS = "alerts"
REJECTED = "rejected"
DETECTOR_STATUS = "detector_status"
FAILED_NOTIFICATIONS = "failed_notifications"
HEARTBEAT_EVENTS = "heartbeat_events"
HEARTBEAT_TIER = "Heartbeat"
#: Significance-tier combinations, one per message (`core.significance_tier`); the console
#: and `status` read them.
SIGNIFICANCE = "significance"
DUPLICATE_KEY = 11000  # MongoDB's error code

#: A hung server must not hold a worker forever; MongoDB answers these writes in milliseconds.
SOCKET_TIMEOUT_MS = 30_000
INDEXES: dict[str, list[tuple[list[tuple[str, int]], bool]]] = {
    OBSERVATIONS: [
        ([("uuid", ASCENDING)], True),
        ([("detector_name", ASCENDING), ("neutrino_time_utc", ASCENDING)], False),
        # A detector's heartbeats over a time range: feedback summaries, the console's timeline.
        ([("tier", ASCENDING), ("detector_name", ASCENDING), ("sent_time_utc", ASCENDING)], False),
        # Significance-tier messages in a time window, to combine across detectors.
        ([("tier", ASCENDING), ("machine_time_utc", ASCENDING)], False),
    ],
    HEARTBEAT_EVENTS: [([("event_id", ASCENDING)], True), ([("time_utc", ASCENDING)], False)],
    SIGNIFICANCE: [
        ([("trigger_uuid", ASCENDING)], True),
        ([("computed_time_utc", ASCENDING)], False),
    ],
    ALERTS: [
        ([("alert_id", ASCENDING), ("revision", ASCENDING)], True),
        ([("sent_time_utc", ASCENDING)], False),  # the console's latest alerts
    ],
    REJECTED: [([("reject_id", ASCENDING)], True), ([("received_utc", ASCENDING)], False)],
    DETECTOR_STATUS: [([("detector_name", ASCENDING)], True)],
    FAILED_NOTIFICATIONS: [
        ([("kind", ASCENDING), ("key", ASCENDING)], True),
        ([("status", ASCENDING)], False),
    ],
}


def utc_now() -> datetime:
    """Aware UTC: naive datetimes are read back by MongoDB as UTC only by convention."""
    return datetime.now(UTC)


def _parse_utc(text: Any) -> datetime | None:
    """An ISO 8601 time as an aware datetime (nanoseconds truncated), None if unreadable."""
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def received_time(document: Mapping[str, Any], what: str) -> datetime:
    """When the ingest received the message (`received_time_utc`, ISO 8601), else now."""
    value = document.get("received_time_utc")
    if value is None:
        return utc_now()
    moment = _parse_utc(value)
    if moment is None:
        raise ValueError(
            f"{what}: field 'received_time_utc' must be an ISO 8601 time, got {value!r}"
        )
    return moment


class Archive:
    """The archive collections behind one MongoClient, opened once per worker process."""

    def __init__(self, client: MongoClient, db_name: str) -> None:
        self.client = client
        # Aware UTC datetimes whatever the client's options, so times compare and sort.
        self.db = client.get_database(
            db_name, codec_options=CodecOptions(tz_aware=True, tzinfo=UTC)
        )
        self.observations: Collection = self.db[OBSERVATIONS]
        self.alerts: Collection = self.db[ALERTS]
        self.rejected: Collection = self.db[REJECTED]
        self.detector_status: Collection = self.db[DETECTOR_STATUS]
        self.failed_notifications: Collection = self.db[FAILED_NOTIFICATIONS]
        self.heartbeat_events: Collection = self.db[HEARTBEAT_EVENTS]
        self.significance: Collection = self.db[SIGNIFICANCE]

    def ensure_indexes(self) -> None:
        """Create the unique keys that make every write idempotent (no-op when they exist)."""
        for name, indexes in INDEXES.items():
            for keys, unique in indexes:
                self.db[name].create_index(keys, unique=unique)

    def close(self) -> None:
        """Stop the client's monitor threads and pooled connections (worker shutdown)."""
        self.client.close()

    @staticmethod
    def _insert_once(
        collection: Collection, key: dict[str, Any], document: Mapping[str, Any]
    ) -> bool:
        """Insert unless a document with `key` exists; True when this call inserted it."""
        try:
            result = collection.update_one(
                key, {"$setOnInsert": {**document, "archived_utc": utc_now()}}, upsert=True
            )
        except DuplicateKeyError:  # a concurrent redelivery inserted it first
            return False
        return result.upserted_id is not None

    def store_observation(self, observation: Mapping[str, Any]) -> bool:
        """Archive an observation of any tier; True when new, False for a redelivery."""
        uuid = require_str(observation, "uuid", "observation")
        return self._insert_once(self.observations, {"uuid": uuid}, observation)

    def store_observations(self, observations: Sequence[Mapping[str, Any]]) -> int:
        """Archive many observations in one round trip; how many were new."""
        now = utc_now()
        updates = [
            UpdateOne(
                {"uuid": require_str(o, "uuid", "observation")},
                {"$setOnInsert": {**o, "archived_utc": now}},
                upsert=True,
            )
            for o in observations
        ]
        if not updates:
            return 0
        try:
            return self.observations.bulk_write(updates, ordered=False).upserted_count
        except BulkWriteError as error:
            # Concurrent redeliveries inserted some first; anything else is a real failure.
            if any(e.get("code") != DUPLICATE_KEY for e in error.details.get("writeErrors", ())):
                raise
            return int(error.details.get("nUpserted", 0))

    def timing_tier_messages(
        self, detector: str, is_test: bool, lo_ns: int, hi_ns: int
    ) -> list[dict[str, Any]]:
        """The detector's archived timing-tier messages with a neutrino time in [lo, hi]
        (times are stored in one sortable text form, so the range is a text range)."""
        return list(
            self.observations.find(
                {
                    "tier": "TimingTier",
                    "detector_name": detector,
                    "is_test": is_test,
                    "neutrino_time_utc": {
                        "$gte": format_time_ns(lo_ns),
                        "$lte": format_time_ns(hi_ns),
                    },
                },
                {"_id": False},
            )
        )

    def significance_messages(self, is_test: bool, lo_ns: int, hi_ns: int) -> list[dict[str, Any]]:
        """Archived significance-tier messages anchored (machine_time_utc) in [lo, hi]."""
        return list(
            self.observations.find(
                {
                    "tier": "SignificanceTier",
                    "is_test": is_test,
                    "machine_time_utc": {
                        "$gte": format_time_ns(lo_ns),
                        "$lte": format_time_ns(hi_ns),
                    },
                },
                {"_id": False},
            )
        )

    def store_significance(self, combination: Mapping[str, Any]) -> dict[str, Any]:
        """Archive a message's combination once; returns the archived one (a redelivery gets
        the first, so what follows from it is the same every time)."""
        key = {"trigger_uuid": require_str(combination, "trigger_uuid", "significance")}
        self._insert_once(self.significance, key, combination)
        stored: dict[str, Any] = self.significance.find_one(key, {"_id": False}) or {}
        return stored

    def latest_significance(self) -> dict[str, Any] | None:
        """The most recently computed combination, for `status` and the console."""
        found: dict[str, Any] | None = self.significance.find_one(
            {}, {"_id": False}, sort=[("computed_time_utc", DESCENDING)]
        )
        return found

    def store_alert(self, alert: Mapping[str, Any]) -> bool:
        """Archive one alert revision; True when new, False for a redelivery."""
        key = {
            "alert_id": require_str(alert, "alert_id", "alert"),
            "revision": require_revision(alert),
        }
        return self._insert_once(self.alerts, key, alert)

    def store_reject(self, reject: Mapping[str, Any]) -> bool:
        """Archive a rejected message; True when new.

        `reject` is a `core.payloads.reject_document`: `reject_id` (stable across
        redeliveries: a hash of the payload), the raw payload as `raw` with its
        `raw_encoding` (utf-8 or base64), `reason`, `field` and `received_time_utc`,
        plus any context. The receive time is also stored as a date, `received_utc`,
        to query by.
        """
        reject_id = require_str(reject, "reject_id", "reject")
        require_str(reject, "reason", "reject")
        if not isinstance(reject.get("raw"), str):
            raise ValueError(f"reject: field 'raw' must be a string, got {reject.get('raw')!r:.60}")
        if reject.get("raw_encoding") not in ("utf-8", "base64"):
            raise ValueError(
                "reject: field 'raw_encoding' must be 'utf-8' or 'base64', got "
                f"{reject.get('raw_encoding')!r:.60}"
            )
        field = reject.get("field")
        if field is not None and not isinstance(field, str):
            raise ValueError(f"reject: field 'field' must be a string or None, got {field!r}")
        document = {**reject, "received_utc": received_time(reject, "reject")}
        return self._insert_once(self.rejected, {"reject_id": reject_id}, document)

    def update_detector_status(self, heartbeat: Mapping[str, Any]) -> None:
        """Record a detector's latest heartbeat: last seen, status, latency.

        "Last seen" is the heartbeat's `received_time_utc` (set by the ingest),
        so a heartbeat older than the one on record (a late redelivery) changes
        nothing, and a redelivery of the same one rewrites the same values.
        Latency is that time minus the detector's `sent_time_utc`.
        """
        detector = require_str(heartbeat, "detector_name", "heartbeat")
        uuid = require_str(heartbeat, "uuid", "heartbeat")
        status = heartbeat.get("detector_status")
        if status not in ("ON", "OFF"):
            raise ValueError(
                f"heartbeat: field 'detector_status' must be 'ON' or 'OFF', got {status!r}"
            )
        seen = received_time(heartbeat, "heartbeat")
        sent = _parse_utc(heartbeat.get("sent_time_utc"))
        latency = (seen - sent).total_seconds() if sent is not None else None
        fields = {
            "detector_name": detector,
            "last_seen_utc": seen,
            "status": status,
            "latency_s": latency,
            "last_heartbeat_uuid": uuid,
        }
        # A DuplicateKeyError means the stored heartbeat is newer: it is kept.
        with contextlib.suppress(DuplicateKeyError):
            self.detector_status.update_one(
                {"detector_name": detector, "last_seen_utc": {"$lte": seen}},
                {"$set": fields},
                upsert=True,
            )

    def store_heartbeat_event(self, event: Mapping[str, Any]) -> bool:
        """Archive a missed or back event (`core.feedback_notices.event_document`); True when
        new."""
        event_id = require_str(event, "event_id", "heartbeat event")
        return self._insert_once(self.heartbeat_events, {"event_id": event_id}, event)

    def heartbeat_events_since(
        self, since_utc: str, limit: int = 500, *, detector: str | None = None
    ) -> list[dict[str, Any]]:
        """Events raised at or after `since_utc` (normalised ISO text), of one detector or
        all, newest first."""
        query: dict[str, Any] = {"time_utc": {"$gte": since_utc}}
        if detector is not None:
            query["detector_name"] = detector
        cursor = self.heartbeat_events.find(
            query, {"_id": False}, sort=[("time_utc", -1)], limit=limit
        )
        return list(cursor)

    def heartbeats(self, detector: str, start_utc: str, end_utc: str) -> list[dict[str, Any]]:
        """A detector's archived heartbeats sent in [start_utc, end_utc), in arrival order."""
        cursor = self.observations.find(
            {
                "tier": HEARTBEAT_TIER,
                "detector_name": detector,
                "sent_time_utc": {"$gte": start_utc, "$lt": end_utc},
            },
            {
                "_id": False,
                "detector_name": True,
                "detector_status": True,
                "sent_time_utc": True,
                "received_time_utc": True,
            },
        )
        return sorted(cursor, key=lambda hb: str(hb.get("received_time_utc") or ""))


def open_archive(settings: Settings, *, server_selection_timeout_ms: int = 5_000) -> Archive:
    """Connect and create the indexes; raises a retryable error when MongoDB is unreachable.

    A short `server_selection_timeout_ms` bounds how long an attempt waits
    for an unreachable server before the retry policy takes over.
    """
    client: MongoClient = MongoClient(
        settings.mongo_url.get_secret_value(),
        appname="snews_tasks",
        serverSelectionTimeoutMS=server_selection_timeout_ms,
        connectTimeoutMS=server_selection_timeout_ms,
        socketTimeoutMS=SOCKET_TIMEOUT_MS,
    )
    archive = Archive(client, settings.mongo_db)
    try:
        archive.ensure_indexes()
    except BaseException:
        archive.close()
        raise
    return archive
