"""Task names, their queues, and which tasks deliver each kind of outbox entry: defined once.

The ingest, the writer, the notification tasks, `status` and `failed retry` all
name tasks; they take the names from here, so a rename cannot leave one behind.
"""

from __future__ import annotations

from enum import StrEnum


class Queue(StrEnum):
    """One queue per serialisation class: the writer's has one consumer, the others scale out."""

    COINCIDENCE = "coincidence"
    STORAGE = "storage"
    ALERTS = "alerts"
    SLACK = "slack"
    MAIL = "mail"


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
    POST_SLACK = "snews.slack.post_alert"
    CANARY_SEND = "snews.canary.send"
    CANARY_CHECK = "snews.canary.check"
    FEEDBACK_CHECK = "snews.feedback.check"
    FEEDBACK_SUMMARY = "snews.feedback.daily_summary"
    STORE_HEARTBEAT_EVENT = "snews.storage.store_heartbeat_event"
    POST_SLACK_OPERATIONS = "snews.slack.post_operations"
    SEND_MAIL = "snews.mail.send"


#: Task name prefix -> queue; the Celery routes are built from it.
ROUTES: dict[str, Queue] = {
    "snews.coincidence.*": Queue.COINCIDENCE,
    "snews.storage.*": Queue.STORAGE,
    "snews.kafka.*": Queue.ALERTS,
    "snews.slack.*": Queue.SLACK,
    "snews.canary.*": Queue.STORAGE,
    "snews.feedback.*": Queue.STORAGE,
    "snews.mail.*": Queue.MAIL,
}


def queue_of(task: str) -> Queue:
    """The queue a task is routed to (the same answer as Celery's router, without the app)."""
    for pattern, queue in ROUTES.items():
        if task.startswith(pattern.rstrip("*")):
            return queue
    raise ValueError(f"task: {task!r} matches no route ({', '.join(ROUTES)})")


#: Which tasks deliver each kind of outbox entry. Canary alerts skip Slack: the canary proves
#: the path every few minutes, and people need not read that.
DELIVERIES: dict[str, tuple[TaskName, ...]] = {
    "alert": (TaskName.STORE_ALERT, TaskName.PUBLISH_ALERT, TaskName.POST_SLACK),
    "observation": (TaskName.STORE_OBSERVATIONS,),
    "reject": (TaskName.STORE_REJECT,),
}
#: Tasks that take a list of documents: one task carries a whole dispatch's entries.
BATCHED = frozenset({TaskName.STORE_OBSERVATIONS})


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
}
