"""Storage deliveries: one attempt to archive one document in MongoDB.

For the Celery wrapper: resource `open_archive(settings)` (once per worker
process), attempt `store_document(archive, kind, document)`, policy
`retry.mongo_policy(settings)`. Retryable errors are MongoDB being
unreachable or failing over (`AutoReconnect`, `ServerSelectionTimeoutError`,
`NetworkTimeout`, `ConnectionFailure`); a `ValueError` (a document missing its
key) or any other write error is permanent. When retries run out, record the
failure as kind `failure_kind(kind)`, key `failure_key(kind, document)`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from pymongo import MongoClient

from ..celery_app import app, settings
from ..archive import Archive, require_str
from ..failures import alert_key
from ..messages import parse_time_ns
from ..resources import resource
from ..retry import mongo_policy
from ..settings import Settings
from ..store import RedisStore
from .delivery import deliver, deliver_many, state_redis

# A hung server must not hold a worker forever; MongoDB answers these writes in milliseconds.
SOCKET_TIMEOUT_MS = 30_000


def open_archive(settings: Settings, *, server_selection_timeout_ms: int = 5_000) -> Archive:
    """Connect and create the indexes; raises a retryable error when MongoDB is unreachable.

    A short `server_selection_timeout_ms` bounds how long an attempt waits
    for an unreachable server before the retry policy takes over.
    """
    client: MongoClient = MongoClient(
        settings.mongo_url.reveal(), appname="snews_tasks",
        serverSelectionTimeoutMS=server_selection_timeout_ms,
        connectTimeoutMS=server_selection_timeout_ms, socketTimeoutMS=SOCKET_TIMEOUT_MS)
    archive = Archive(client, settings.mongo_db)
    try:
        archive.ensure_indexes()
    except BaseException:
        archive.close()
        raise
    return archive


def _store_heartbeat(archive: Archive, heartbeat: Mapping[str, Any]) -> bool:
    """A heartbeat is archived like any observation and also updates the detector status."""
    archive.update_detector_status(heartbeat)  # first: it validates the heartbeat fields
    return archive.store_observation(heartbeat)


class _Store(NamedTuple):
    write: Callable[[Archive, Mapping[str, Any]], bool]
    key: Callable[[Mapping[str, Any]], str]


def _key_field(field: str, what: str) -> Callable[[Mapping[str, Any]], str]:
    return lambda document: require_str(document, field, what)


STORES: dict[str, _Store] = {
    "observation": _Store(Archive.store_observation, _key_field("uuid", "observation")),
    "heartbeat": _Store(_store_heartbeat, _key_field("uuid", "heartbeat")),
    "alert": _Store(Archive.store_alert, alert_key),
    "reject": _Store(Archive.store_reject, _key_field("reject_id", "reject")),
}


def _store_for(kind: str) -> _Store:
    try:
        return STORES[kind]
    except KeyError:
        raise ValueError(f"kind: must be one of {', '.join(STORES)}, got {kind!r}") from None


def store_document(archive: Archive, kind: str, document: Mapping[str, Any]) -> bool:
    """Archive `document` as `kind` (observation, heartbeat, alert, reject); True when new."""
    return _store_for(kind).write(archive, document)


def failure_kind(kind: str) -> str:
    """The failed-notification kind for a storage kind, e.g. "alert" -> "alert_store"."""
    _store_for(kind)
    return f"{kind}_store"


def failure_key(kind: str, document: Mapping[str, Any]) -> str:
    """The key under which a failed store of `document` is recorded."""
    return _store_for(kind).key(document)


# --- Celery tasks (the storage queue) ------------------------------------------------------------

def _archive() -> Archive:
    return resource("archive", lambda: open_archive(settings))


def _store(task: Any, kind: str, document: Mapping[str, Any]) -> bool:
    return deliver(task, kind=failure_kind(kind), key=failure_key(kind, document),
                   document=document, policy=mongo_policy(settings),
                   attempt=lambda: store_document(_archive(), kind, document))


@app.task(name="snews.storage.store_observation", bind=True)
def store_observation(self: Any, document: dict) -> bool:
    """Archive an observation of any tier (idempotent on uuid)."""
    return _store(self, "observation", document)


@app.task(name="snews.storage.store_observations", bind=True)
def store_observations(self: Any, documents: list) -> int:
    """Archive a batch of observations in one write: the coincidence writer hands on each
    batch's observations together. Idempotent on uuid."""
    records = {failure_key("observation", d): d for d in documents}
    return deliver_many(self, kind=failure_kind("observation"), records=records,
                        policy=mongo_policy(settings),
                        attempt=lambda: _archive().store_observations(documents))


@app.task(name="snews.storage.store_alert", bind=True)
def store_alert(self: Any, alert: dict) -> bool:
    """Archive an alert (idempotent on alert_id + revision)."""
    return _store(self, "alert", alert)


@app.task(name="snews.storage.store_reject", bind=True)
def store_reject(self: Any, reject: dict) -> bool:
    """Archive a rejected message with its raw payload and reason."""
    return _store(self, "reject", reject)


@app.task(name="snews.storage.store_heartbeat", bind=True)
def store_heartbeat(self: Any, heartbeat: dict) -> bool:
    """Detector status: Redis first (the false-alarm rate reads it), then the archive."""
    seen_ns = parse_time_ns(heartbeat["received_time_utc"], "received_time_utc")
    RedisStore(state_redis()).record_heartbeat(heartbeat["detector_name"],
                                               heartbeat["detector_status"], seen_ns)
    return _store(self, "heartbeat", heartbeat)
