"""Task names, their queues, and which tasks deliver each kind of outbox entry: defined once.

The ingest, the writer, the notification tasks, `status` and `failed retry` all
name tasks; they take the names from here, so a rename cannot leave one behind.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from .gcn import wants_notice


class Queue(StrEnum):
    """One queue per serialisation class: the writer's has one consumer, the others scale out."""

    COINCIDENCE = "coincidence"
    STORAGE = "storage"
    ALERTS = "alerts"
    SLACK = "slack"
    MAIL = "mail"
    LOCALIZATION = "localization"


class TaskName(StrEnum):
    PROCESS = "snews.coincidence.process"
    EXPIRE = "snews.coincidence.expire"
    SWEEP_OUTBOX = "snews.coincidence.sweep_outbox"
    STORE_OBSERVATION = "snews.storage.store_observation"
    STORE_OBSERVATIONS = "snews.storage.store_observations"
    STORE_ALERT = "snews.storage.store_alert"
    STORE_REJECT = "snews.storage.store_reject"
    STORE_HEARTBEAT = "snews.storage.store_heartbeat"
    PUBLISH_ALERT = "snews.kafka.publish_alert"
    ECHO_CONNECTION_TEST = "snews.kafka.echo_connection_test"
    PUBLISH_NOTICE = "snews.gcn.publish_notice"
    POST_SLACK = "snews.slack.post_alert"
    CANARY_SEND = "snews.canary.send"
    CANARY_CHECK = "snews.canary.check"
    FEEDBACK_CHECK = "snews.feedback.check"
    FEEDBACK_SUMMARY = "snews.feedback.daily_summary"
    STORE_HEARTBEAT_EVENT = "snews.storage.store_heartbeat_event"
    POST_SLACK_OPERATIONS = "snews.slack.post_operations"
    SEND_MAIL = "snews.mail.send"
    LOCALIZE = "snews.localization.localize"
    #: The localize task's result, applied by the writer; only tasks send it, never the ingest.
    ATTACH_LOCALIZATION = "snews.coincidence.attach_localization"


#: Task name prefix -> queue; the Celery routes are built from it.
ROUTES: dict[str, Queue] = {
    "snews.coincidence.*": Queue.COINCIDENCE,
    "snews.storage.*": Queue.STORAGE,
    "snews.kafka.*": Queue.ALERTS,
    "snews.gcn.*": Queue.ALERTS,
    "snews.slack.*": Queue.SLACK,
    "snews.canary.*": Queue.STORAGE,
    "snews.feedback.*": Queue.STORAGE,
    "snews.mail.*": Queue.MAIL,
    "snews.localization.*": Queue.LOCALIZATION,
}


def queue_of(task: str) -> Queue:
    """The queue a task is routed to (the same answer as Celery's router, without the app)."""
    for pattern, queue in ROUTES.items():
        if task.startswith(pattern.rstrip("*")):
            return queue
    raise ValueError(f"task: {task!r} matches no route ({', '.join(ROUTES)})")


#: Which tasks deliver each kind of outbox entry; `deliveries` leaves out those an entry does
#: not need.
DELIVERIES: dict[str, tuple[TaskName, ...]] = {
    "alert": (
        TaskName.STORE_ALERT,
        TaskName.PUBLISH_ALERT,
        TaskName.POST_SLACK,
        TaskName.LOCALIZE,
        TaskName.PUBLISH_NOTICE,
    ),
    "observation": (TaskName.STORE_OBSERVATIONS,),
    "reject": (TaskName.STORE_REJECT,),
}
#: Tasks that take a list of documents: one task carries a whole dispatch's entries.
BATCHED = frozenset({TaskName.STORE_OBSERVATIONS})


def needs_localization(alert: Mapping[str, Any]) -> bool:
    """An alert revision is localized when it has two or more detectors and no localization
    yet (one carried over from an earlier revision with the same members counts), and it is
    neither withdrawn into another coincidence nor a canary's."""
    return (
        alert.get("localization") is None
        and len(set(alert.get("detector_names") or ())) >= 2
        and alert.get("merged_into") is None
        and not alert.get("is_canary")
    )


def deliveries(kind: str, document: Mapping[str, Any]) -> list[TaskName]:
    """The tasks that deliver one outbox entry. Canary alerts skip Slack: the canary proves the
    path every few minutes, and people need not read that. Only live and fire-drill alerts
    become GCN notices."""
    return [
        task
        for task in DELIVERIES[kind]
        if not (task is TaskName.POST_SLACK and document.get("is_canary"))
        and not (task is TaskName.LOCALIZE and not needs_localization(document))
        and not (task is TaskName.PUBLISH_NOTICE and not wants_notice(document))
    ]


class FailureKind(StrEnum):
    """Failed-notification records, and the task that re-drives each."""

    ALERT_KAFKA = "alert_kafka"
    ALERT_SLACK = "alert_slack"
    ALERT_STORE = "alert_store"
    OBSERVATION_STORE = "observation_store"
    REJECT_STORE = "reject_store"
    HEARTBEAT_STORE = "heartbeat_store"
    HEARTBEAT_EVENT_STORE = "heartbeat_event_store"
    OPERATIONS_SLACK = "operations_slack"
    MAIL = "mail"
    ALERT_LOCALIZATION = "alert_localization"
    ALERT_GCN = "alert_gcn"
    CONNECTION_ECHO = "connection_echo"

    @property
    def redrive_task(self) -> TaskName:
        return _REDRIVE[self]

    @property
    def is_store(self) -> bool:
        """A MongoDB write: its failure record cannot go to MongoDB."""
        return self.value.endswith("_store")


_REDRIVE = {
    FailureKind.ALERT_KAFKA: TaskName.PUBLISH_ALERT,
    FailureKind.ALERT_SLACK: TaskName.POST_SLACK,
    FailureKind.ALERT_STORE: TaskName.STORE_ALERT,
    FailureKind.OBSERVATION_STORE: TaskName.STORE_OBSERVATION,
    FailureKind.REJECT_STORE: TaskName.STORE_REJECT,
    FailureKind.HEARTBEAT_STORE: TaskName.STORE_HEARTBEAT,
    FailureKind.HEARTBEAT_EVENT_STORE: TaskName.STORE_HEARTBEAT_EVENT,
    FailureKind.OPERATIONS_SLACK: TaskName.POST_SLACK_OPERATIONS,
    FailureKind.MAIL: TaskName.SEND_MAIL,
    FailureKind.ALERT_LOCALIZATION: TaskName.LOCALIZE,
    FailureKind.ALERT_GCN: TaskName.PUBLISH_NOTICE,
    FailureKind.CONNECTION_ECHO: TaskName.ECHO_CONNECTION_TEST,
}
