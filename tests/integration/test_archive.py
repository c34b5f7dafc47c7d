"""The archive and the failure log against a real MongoDB-protocol server and Redis."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import redis

from snews_tasks.entrypoints import localstack
from snews_tasks.adapters.archive import Archive
from snews_tasks.adapters.failures import FailureLog
from snews_tasks.adapters.redis_keys import KEYS
from snews_tasks.core.errors import MessageError
from snews_tasks.core.payloads import raw_payload, reject_document
from snews_tasks.core.routing import FailureKind
from snews_tasks.adapters.retry_policies import mongo_policy
from snews_tasks.settings import Settings, load_settings
from snews_tasks.adapters.archive import open_archive
from snews_tasks.tasks.storage import KINDS, kind_of, store_document

pytestmark = pytest.mark.integration

# An hour before the clock, on a whole minute (MongoDB keeps milliseconds): never a fixed date.
T0 = (datetime.now(timezone.utc) - timedelta(hours=1)).replace(second=0, microsecond=0)


def settings_for(mongo_url: str) -> Settings:
    return load_settings("test", environ={"SNEWS_MONGO_URL": mongo_url,
                                          "SNEWS_MONGO_DB": f"test_{uuid.uuid4().hex}"})


@pytest.fixture
def archive(mongo_service: localstack.Service) -> Iterator[Archive]:
    opened = open_archive(settings_for(mongo_service.url), server_selection_timeout_ms=2000)
    try:
        yield opened
    finally:
        opened.client.drop_database(opened.db.name)
        opened.close()


@pytest.fixture
def failure_log(archive: Archive, redis_url: str) -> Iterator[FailureLog]:
    with redis.Redis.from_url(redis_url) as client:
        yield FailureLog(archive, client)


def observation(**overrides) -> dict:
    return {"uuid": "obs-1", "tier": "CoincidenceTier", "detector_name": "IceCube",
            "neutrino_time_utc": f"{T0:%Y-%m-%dT%H:%M:%S}.123456789Z", "p_val": 0.01,
            "is_test": False, **overrides}


def alert(**overrides) -> dict:
    return {"alert_id": "c-1", "revision": 1, "alert_type": "NEW", "is_test": False,
            "detector_names": ["IceCube", "JUNO"], **overrides}


def heartbeat(received: datetime, status: str = "ON", **overrides) -> dict:
    return {"uuid": f"hb-{received.timestamp()}", "tier": "Heartbeat", "detector_name": "JUNO",
            "detector_status": status, "sent_time_utc": f"{received - timedelta(seconds=2):%Y-%m-%dT%H:%M:%SZ}",
            "received_time_utc": received.isoformat(), **overrides}


def test_indexes_make_the_natural_keys_unique(archive: Archive) -> None:
    def unique_keys(collection) -> set[tuple[str, ...]]:
        return {tuple(name for name, _ in index["key"])
                for index in collection.index_information().values() if index.get("unique")}

    assert ("uuid",) in unique_keys(archive.observations)
    assert ("alert_id", "revision") in unique_keys(archive.alerts)
    assert ("reject_id",) in unique_keys(archive.rejected)
    assert ("detector_name",) in unique_keys(archive.detector_status)
    assert ("kind", "key") in unique_keys(archive.failed_notifications)
    archive.ensure_indexes()  # idempotent at every start-up


def test_redelivered_observation_changes_nothing(archive: Archive) -> None:
    assert archive.store_observation(observation()) is True
    assert archive.store_observation(observation(p_val=0.5)) is False
    stored = list(archive.observations.find({}, {"_id": False, "archived_utc": False}))
    assert stored == [observation()]
    assert archive.store_observation(observation(uuid="obs-2")) is True
    assert archive.observations.count_documents({}) == 2


def test_alert_is_stored_once_per_revision(archive: Archive) -> None:
    assert archive.store_alert(alert()) is True
    assert archive.store_alert(alert(alert_type="UPDATE")) is False
    assert archive.store_alert(alert(revision=2, alert_type="UPDATE")) is True
    assert archive.alerts.count_documents({"alert_id": "c-1"}) == 2
    assert archive.alerts.find_one({"alert_id": "c-1", "revision": 1})["alert_type"] == "NEW"


def test_reject_keeps_the_raw_payload_and_is_idempotent(archive: Archive) -> None:
    """The ingest's bytes (not UTF-8: base64, labelled so) and the writer's JSON values (text)
    go through the one encoder and come back as they were sent."""
    raw = b"\x80\x04\x95not-json-and-not-utf8"
    received_ns = int(T0.timestamp()) * 10**9
    reject = reject_document(raw, MessageError("payload", "is not valid JSON"), received_ns,
                             topic="snews.observations")
    assert archive.store_reject(reject) is True
    assert archive.store_reject({**reject, "reason": "something else"}) is False
    stored = archive.rejected.find_one({"reject_id": reject["reject_id"]})
    assert stored["raw_encoding"] == "base64"
    assert base64.b64decode(stored["raw"]) == raw
    assert (stored["raw_size_bytes"], stored["raw_truncated"]) == (len(raw), False)
    assert stored["reason"] == "payload: is not valid JSON"
    assert stored["received_utc"] == T0
    assert stored["topic"] == "snews.observations"

    payload = {"p_val": 7, "detector_name": "JUNO"}
    written = reject_document(payload, MessageError("p_val", "must be within [0, 1]"),
                              received_ns)
    archive.store_reject(written)
    readable = archive.rejected.find_one({"reject_id": written["reject_id"]})
    assert (json.loads(readable["raw"]), readable["raw_encoding"], readable["field"]) == (
        payload, "utf-8", "p_val")
    assert raw_payload(payload).digest == readable["reject_id"]


def test_a_reject_must_say_how_its_payload_is_encoded(archive: Archive) -> None:
    reject = reject_document(b"x", MessageError(None, "bad"), 0)
    with pytest.raises(ValueError, match="reject: field 'raw_encoding' must be 'utf-8' or"):
        archive.store_reject({**reject, "raw_encoding": "latin-1"})
    with pytest.raises(ValueError, match="reject: field 'raw' must be a string"):
        archive.store_reject({**reject, "raw": b"x"})


def test_detector_status_follows_the_newest_heartbeat(archive: Archive) -> None:
    store_document(archive, "heartbeat", heartbeat(T0, "ON"))
    store_document(archive, "heartbeat", heartbeat(T0 - timedelta(minutes=5), "OFF"))  # late
    status = archive.detector_status.find_one({"detector_name": "JUNO"})
    assert (status["status"], status["last_seen_utc"]) == ("ON", T0)
    assert status["latency_s"] == pytest.approx(2.0)

    later = heartbeat(T0 + timedelta(minutes=1), "OFF")
    store_document(archive, "heartbeat", later)
    store_document(archive, "heartbeat", later)  # redelivery
    status = archive.detector_status.find_one({"detector_name": "JUNO"})
    assert (status["status"], status["last_heartbeat_uuid"]) == ("OFF", later["uuid"])
    assert archive.detector_status.count_documents({}) == 1
    assert archive.observations.count_documents({"tier": "Heartbeat"}) == 3


def test_store_document_dispatches_and_names_failures(archive: Archive) -> None:
    assert store_document(archive, "alert", alert()) is True
    assert store_document(archive, "observation", observation()) is True
    assert (kind_of("alert").failure, kind_of("alert").key(alert())) == ("alert_store", "c-1:1")
    assert kind_of("observation").key(observation()) == "obs-1"
    assert {kind_of(kind).failure for kind in KINDS} == {k for k in FailureKind if k.is_store}
    with pytest.raises(ValueError, match="kind"):
        store_document(archive, "telegram", {})
    with pytest.raises(ValueError, match="'uuid'"):
        store_document(archive, "observation", {"detector_name": "JUNO"})
    with pytest.raises(ValueError, match="'revision'"):
        store_document(archive, "alert", alert(revision="1"))
    with pytest.raises(ValueError, match="received_time_utc"):
        store_document(archive, "heartbeat", heartbeat(T0, received_time_utc="yesterday"))


def test_failure_is_recorded_once_listed_and_redriven(failure_log: FailureLog) -> None:
    for attempts in (9, 9):  # the recording task itself may be redelivered
        failure_log.record_failure(kind="alert_kafka", key="c-1:1", payload=alert(),
                                   error="KafkaException _MSG_TIMED_OUT", attempts=attempts)
    assert failure_log.collection.count_documents({}) == 1
    [failed] = failure_log.list_failures()
    assert (failed["kind"], failed["key"], failed["payload"], failed["attempts"],
            failed["stored_in"]) == ("alert_kafka", "c-1:1", alert(), 9, "mongodb")

    failure_log.mark_redriven("alert_kafka", "c-1:1")
    assert failure_log.list_failures() == []
    assert [r["key"] for r in failure_log.list_failures(status="redriven")] == ["c-1:1"]
    with pytest.raises(KeyError, match="c-9:1"):
        failure_log.mark_redriven("alert_kafka", "c-9:1")
    with pytest.raises(ValueError, match="kind"):
        failure_log.record_failure(kind="pigeon", key="k", payload={}, error="e", attempts=1)


def test_store_failures_wait_in_redis_until_redriven(failure_log: FailureLog) -> None:
    failure_log.record_failure(kind="observation_store", key="obs-1", payload=observation(),
                               error="ServerSelectionTimeoutError", attempts=9)
    failure_log.record_failure(kind="alert_slack", key="c-1:1", payload=alert(),
                               error="SlackApiError 503", attempts=9)
    assert failure_log.collection.count_documents({"kind": "observation_store"}) == 0
    listed = {(r["kind"], r["stored_in"]): r for r in failure_log.list_failures()}
    assert set(listed) == {("observation_store", "redis"), ("alert_slack", "mongodb")}
    assert listed[("observation_store", "redis")]["payload"] == observation()

    failure_log.mark_redriven("observation_store", "obs-1")
    assert failure_log.redis.hlen(KEYS.failed) == 0
    moved = failure_log.collection.find_one({"kind": "observation_store", "key": "obs-1"})
    assert moved["status"] == "redriven" and moved["payload"] == observation()


def test_mongo_outage_is_retryable_and_data_survives_a_restart(tmp_path: Path,
                                                                redis_url: str) -> None:
    storage = tmp_path / "mongo"
    service = localstack.start_mongo(storage_path=storage)
    try:
        settings = settings_for(service.url)
        archive = open_archive(settings, server_selection_timeout_ms=500)
        assert archive.store_observation(observation()) is True

        service.stop()
        with pytest.raises(Exception) as caught:
            archive.store_observation(observation(uuid="obs-2"))
        assert mongo_policy(settings).is_retryable(caught.value), repr(caught.value)
        with redis.Redis.from_url(redis_url) as client:  # failures still get recorded
            failure_log = FailureLog(archive, client)
            failure_log.record_failure(kind="alert_kafka", key="c-1:1", payload=alert(),
                                       error="broker down", attempts=3)
            assert client.hlen(KEYS.failed) == 1

        service = localstack.start_mongo(service.port, storage_path=storage)
        assert archive.store_observation(observation(uuid="obs-2")) is True  # same client
        assert archive.store_observation(observation()) is False
        assert sorted(d["uuid"] for d in archive.observations.find()) == ["obs-1", "obs-2"]
        assert "uuid_1" in archive.observations.index_information()
        archive.close()
    finally:
        service.stop()
