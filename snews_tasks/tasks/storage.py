"""The storage queue: every observation, alert, reject, heartbeat and heartbeat event archived
in MongoDB; each significance-tier message also combined with the others near it
(`core.significance_tier`).

Writes are idempotent (`adapters.archive`), so a redelivered or retried task
changes nothing. A heartbeat also updates the detector's latest status in the
state Redis, which the false-alarm rate reads; an outage of either is retried.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from ..adapters.archive import Archive, open_archive
from ..adapters.detector_status import DetectorStatus
from ..adapters.heartbeat_feed import HeartbeatFeed
from ..adapters.retry_policies import heartbeat_policy, mongo_policy
from ..core import significance_tier
from ..core.backoff import RetryPolicy
from ..core.documents import alert_key, require_str
from ..core.routing import FailureKind, TaskName
from ..core.times import parse_time_ns
from ..settings import Settings
from .app import app
from .base import DeliveryTask
from .context import resource, settings, state_redis
from .sender import CelerySender


def _record_heartbeat(archive: Archive, heartbeat: Mapping[str, Any]) -> bool:
    """Detector status: Redis first (the false-alarm rate reads it), then the archive, then
    the feedback rule's stream (last, so a retried attempt adds it once; a redelivery that
    adds it twice is a repeat the rule ignores)."""
    detector = require_str(heartbeat, "detector_name", "heartbeat")
    status = require_str(heartbeat, "detector_status", "heartbeat")
    seen_ns = parse_time_ns(heartbeat.get("received_time_utc"), "received_time_utc")
    DetectorStatus(state_redis()).record(detector, status, seen_ns)
    archive.update_detector_status(heartbeat)
    new = archive.store_observation(heartbeat)
    HeartbeatFeed(state_redis()).append(heartbeat)
    return new


def _archive_observation(archive: Archive, observation: Mapping[str, Any]) -> bool:
    """Any tier; a significance-tier message is also combined with its neighbours in time."""
    new = archive.store_observation(observation)
    if observation.get("tier") == significance_tier.TIER:
        _combine_significance(archive, observation)
    return new


def _combine_significance(archive: Archive, message: Mapping[str, Any]) -> None:
    """Archive the bin-by-bin combination this message takes part in; above the configured
    threshold, raise its alert (`core.significance_tier`: the shape and where it goes)."""
    current = settings()
    window = significance_tier.window_ns(message, current.significance_window_s)
    others = (
        []
        if window is None
        else archive.significance_messages(bool(message.get("is_test")), *window)
    )
    stored = archive.store_significance(
        significance_tier.combination(
            message,
            others,
            threshold_sigma=current.significance_alert_sigma,
            now_ns=time.time_ns(),
        )
    )
    alert = significance_tier.significance_alert(stored, server_tag=current.server_tag)
    if alert is not None:
        send = CelerySender()
        for task in (TaskName.STORE_ALERT, TaskName.PUBLISH_ALERT, TaskName.POST_SLACK):
            send(task, alert, {})


class _Kind(NamedTuple):
    """How one kind of document is archived, keyed, and retried."""

    write: Callable[[Archive, Mapping[str, Any]], bool]
    key: Callable[[Mapping[str, Any]], str]
    failure: FailureKind
    policy: Callable[[Settings], RetryPolicy]


def _key_field(field: str, what: str) -> Callable[[Mapping[str, Any]], str]:
    return lambda document: require_str(document, field, what)


KINDS: dict[str, _Kind] = {
    "observation": _Kind(
        _archive_observation,
        _key_field("uuid", "observation"),
        FailureKind.OBSERVATION_STORE,
        mongo_policy,
    ),
    "heartbeat": _Kind(
        _record_heartbeat,
        _key_field("uuid", "heartbeat"),
        FailureKind.HEARTBEAT_STORE,
        heartbeat_policy,
    ),
    "heartbeat_event": _Kind(
        Archive.store_heartbeat_event,
        _key_field("event_id", "heartbeat event"),
        FailureKind.HEARTBEAT_EVENT_STORE,
        mongo_policy,
    ),
    "alert": _Kind(Archive.store_alert, alert_key, FailureKind.ALERT_STORE, mongo_policy),
    "reject": _Kind(
        Archive.store_reject,
        _key_field("reject_id", "reject"),
        FailureKind.REJECT_STORE,
        mongo_policy,
    ),
}


def kind_of(kind: str) -> _Kind:
    try:
        return KINDS[kind]
    except KeyError:
        raise ValueError(f"kind: must be one of {', '.join(KINDS)}, got {kind!r}") from None


def store_document(archive: Archive, kind: str, document: Mapping[str, Any]) -> bool:
    """Archive `document` as `kind` (observation, heartbeat, alert, reject); True when new."""
    return kind_of(kind).write(archive, document)


def worker_archive() -> Archive:
    """This worker process's archive client, opened on first use."""
    return resource("archive", lambda: open_archive(settings()))


def _store(task: DeliveryTask, kind: str, document: Mapping[str, Any]) -> bool:
    spec = kind_of(kind)
    return task.deliver(
        kind=spec.failure,
        records={spec.key(document): document},
        policy=spec.policy(settings()),
        attempt=lambda: spec.write(worker_archive(), document),
    )


@app.task(base=DeliveryTask, name=TaskName.STORE_OBSERVATION, bind=True)
def store_observation(self: DeliveryTask, document: dict) -> bool:
    """Archive an observation of any tier (idempotent on uuid)."""
    return _store(self, "observation", document)


@app.task(base=DeliveryTask, name=TaskName.STORE_OBSERVATIONS, bind=True)
def store_observations(self: DeliveryTask, documents: list) -> int:
    """Archive a batch of observations in one write: the coincidence writer hands on each
    batch's observations together. Idempotent on uuid."""
    spec = kind_of("observation")
    return self.deliver(
        kind=spec.failure,
        records={spec.key(d): d for d in documents},
        policy=mongo_policy(settings()),
        attempt=lambda: worker_archive().store_observations(documents),
    )


@app.task(base=DeliveryTask, name=TaskName.STORE_ALERT, bind=True)
def store_alert(self: DeliveryTask, alert: dict) -> bool:
    """Archive an alert (idempotent on alert_id + revision)."""
    return _store(self, "alert", alert)


@app.task(base=DeliveryTask, name=TaskName.STORE_REJECT, bind=True)
def store_reject(self: DeliveryTask, reject: dict) -> bool:
    """Archive a rejected message with its raw payload and reason."""
    return _store(self, "reject", reject)


@app.task(base=DeliveryTask, name=TaskName.STORE_HEARTBEAT, bind=True)
def store_heartbeat(self: DeliveryTask, heartbeat: dict) -> bool:
    """A detector's heartbeat: its status in the state Redis, the archive, the feedback."""
    return _store(self, "heartbeat", heartbeat)


@app.task(base=DeliveryTask, name=TaskName.STORE_HEARTBEAT_EVENT, bind=True)
def store_heartbeat_event(self: DeliveryTask, event: dict) -> bool:
    """Archive a missed or back event of the heartbeat feedback (idempotent on event_id)."""
    return _store(self, "heartbeat_event", event)
