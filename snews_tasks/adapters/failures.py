"""Notifications whose retries ran out: recorded, listed, and re-driven by an operator.

No alert may be silently dropped, so a delivery task that gives up writes a
failure record holding the full payload; `snews-tasks failures` lists them
and a re-drive re-enqueues the payload and marks the record "redriven".

Records live in the MongoDB collection ``failed_notifications``, one per
(kind, key), so recording the same failure twice keeps one record. When
MongoDB is itself the failing service (the ``*_store`` kinds, or any kind
while MongoDB is unreachable) the record goes to the Redis hash
``snews:failed`` instead, field ``"<kind>:<key>"``. A hash rather than a list
gives the same one-record-per-(kind, key) rule as MongoDB. `list_failures`
merges both places; `mark_redriven` moves a Redis record into MongoDB (with
status "redriven") so the audit trail ends up in one place.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC
from typing import Any

import redis
from bson import json_util
from pymongo.errors import ConnectionFailure

from ..core.routing import FailureKind
from .archive import Archive, utc_now
from .redis_keys import KEYS, Keys

logger = logging.getLogger(__name__)

FAILED = "failed"
REDRIVEN = "redriven"
# Extended JSON keeps datetimes and bytes in payloads intact through Redis.
_JSON_OPTIONS = json_util.RELAXED_JSON_OPTIONS.with_options(tz_aware=True, tzinfo=UTC)


def _check_kind(kind: str) -> FailureKind:
    try:
        return FailureKind(kind)
    except ValueError:
        raise ValueError(
            f"kind: must be one of {', '.join(sorted(FailureKind))}, got {kind!r}"
        ) from None


def _to_json(record: Mapping[str, Any]) -> str:
    return json_util.dumps(record, json_options=_JSON_OPTIONS)


def _from_json(text: str | bytes) -> dict[str, Any]:
    record: dict[str, Any] = json_util.loads(text, json_options=_JSON_OPTIONS)
    return record


def _field(kind: str, key: str) -> str:
    return f"{kind}:{key}"  # kinds contain no ':', so the first ':' separates them


class FailureLog:
    """Failure records in MongoDB, with a Redis fallback for when MongoDB is the problem."""

    def __init__(self, archive: Archive, redis_client: redis.Redis, keys: Keys = KEYS) -> None:
        self.collection = archive.failed_notifications
        self.redis = redis_client
        self.key = keys.failed

    def close(self) -> None:
        """Worker shutdown closes every resource: this one's MongoDB client (Redis is shared)."""
        self.collection.database.client.close()

    def record_failure(
        self, *, kind: str, key: str, payload: Mapping[str, Any], error: str, attempts: int
    ) -> None:
        """Record (or refresh) the failure of one notification; raises only if both stores fail."""
        failure_kind = _check_kind(kind)
        if not isinstance(key, str) or not key:
            raise ValueError(f"key: must be a non-empty string, got {key!r}")
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 0:
            raise ValueError(f"attempts: must be an integer >= 0, got {attempts!r}")
        record = {
            "kind": kind,
            "key": key,
            "payload": dict(payload),
            "error": str(error),
            "attempts": attempts,
            "status": FAILED,
            "failed_utc": utc_now(),
        }
        if failure_kind.is_store or not self._try_write_mongo(record):
            self.redis.hset(self.key, _field(kind, key), _to_json(record))
        logger.error(
            "notification %s %s failed after %d attempts: %s", kind, key, attempts, record["error"]
        )

    def _try_write_mongo(self, record: Mapping[str, Any]) -> bool:
        try:
            self._write_mongo(record)
        except ConnectionFailure as mongo_error:
            logger.warning(
                "MongoDB unreachable (%s); recording failed %s %s in Redis",
                type(mongo_error).__name__,
                record["kind"],
                record["key"],
            )
            return False
        return True

    def _write_mongo(self, record: Mapping[str, Any]) -> None:
        self.collection.update_one(
            {"kind": record["kind"], "key": record["key"]}, {"$set": dict(record)}, upsert=True
        )

    def list_failures(self, status: str = FAILED) -> list[dict[str, Any]]:
        """Records with `status`, oldest failure first; Redis-held ones carry stored_in="redis"."""
        merged: dict[tuple[str, str], dict[str, Any]] = {}
        for document in self.collection.find({"status": status}, {"_id": False}):
            merged[(document["kind"], document["key"])] = {**document, "stored_in": "mongodb"}
        if status == FAILED:  # Redis only ever holds records that are still failed
            for raw in self.redis.hvals(self.key):
                record = _from_json(raw)
                merged[(record["kind"], record["key"])] = {**record, "stored_in": "redis"}
        return sorted(merged.values(), key=lambda record: record["failed_utc"])

    def mark_redriven(self, kind: str, key: str) -> None:
        """Mark a record re-driven after its payload was re-enqueued; KeyError if there is none."""
        _check_kind(kind)
        now = utc_now()
        held = self.redis.hget(self.key, _field(kind, key))
        if held is not None:
            record = {**_from_json(held), "status": REDRIVEN, "redriven_utc": now}
            self._write_mongo(record)
            self.redis.hdel(self.key, _field(kind, key))
            return
        result = self.collection.update_one(
            {"kind": kind, "key": key}, {"$set": {"status": REDRIVEN, "redriven_utc": now}}
        )
        if result.matched_count == 0:
            raise KeyError(f"no failed notification recorded for kind {kind!r} key {key!r}")
