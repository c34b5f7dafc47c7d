"""The Celery app: JSON only, one queue per concern, explicit routes, late acks.

Queues and what consumes them:
  coincidence  exactly one worker, concurrency 1, prefetch 1: the serial state writer
  storage      MongoDB archive (observations, alerts, rejects, detector status)
  alerts       the Kafka alert topic
  slack        Slack posts
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, signals
from kombu import Queue

from .settings import load_settings

COINCIDENCE_QUEUE = "coincidence"
QUEUES = (COINCIDENCE_QUEUE, "storage", "alerts", "slack")
ROUTES = {
    "snews.coincidence.*": COINCIDENCE_QUEUE,
    "snews.storage.*": "storage",
    "snews.kafka.*": "alerts",
    "snews.slack.*": "slack",
    "snews.canary.*": "storage",
}

settings = load_settings()
CANARY_CHECK_S = min(60.0, settings.canary_interval_s)

app = Celery(
    "snews_tasks",
    broker=settings.broker_url,
    backend=settings.result_backend,
    include=[
        "snews_tasks.tasks.coincidence",
        "snews_tasks.tasks.storage",
        "snews_tasks.tasks.kafka",
        "snews_tasks.tasks.slack",
        "snews_tasks.tasks.canary",
        "snews_tasks.tasks.receipts",
    ],
)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    event_serializer="json",
    accept_content=["json"],
    result_accept_content=["json"],
    task_ignore_result=True,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_queues=tuple(Queue(name) for name in QUEUES),
    task_routes={pattern: {"queue": queue} for pattern, queue in ROUTES.items()},
    task_create_missing_queues=False,
    task_default_queue="storage",
    worker_send_task_events=True,
    task_send_sent_event=True,
    broker_connection_retry_on_startup=True,
    # Notification retries wait up to retry_backoff_max_s in the worker (ETA); a message must
    # not be handed to a second worker meanwhile, so the visibility timeout is far longer.
    broker_transport_options={"visibility_timeout": max(3600, 4 * settings.retry_backoff_max_s)},
    # Periodic tasks expire unrun after one period: a worker that was down finds one, not a pile.
    beat_schedule={
        "expire-coincidence-cache": {"task": "snews.coincidence.expire", "schedule": 60.0,
                                     "options": {"expires": 60.0}},
        "sweep-outbox": {"task": "snews.coincidence.sweep_outbox", "schedule": 15.0,
                         "options": {"expires": 15.0}},
        "canary-send": {"task": "snews.canary.send", "schedule": settings.canary_interval_s,
                        "options": {"expires": settings.canary_interval_s}},
        # Checked more often than sent, so a returned canary shows within a minute.
        "canary-check": {"task": "snews.canary.check", "schedule": CANARY_CHECK_S,
                         "options": {"expires": CANARY_CHECK_S}},
    },
)

#: The serial writer's tasks take milliseconds, so a killed worker's message may be handed
#: out again after seconds. Its unacked index is its own, so the short timeout never touches
#: the notification workers' long-waiting retries.
COINCIDENCE_TRANSPORT_OPTIONS = {
    "visibility_timeout": 15,
    "unacked_key": "unacked:coincidence",
    "unacked_index_key": "unacked_index:coincidence",
    "unacked_mutex_key": "unacked_mutex:coincidence",
    "unacked_restore_interval": 2,
    "unacked_restore_throttle": 1,
}


@signals.celeryd_init.connect
def _configure_coincidence_worker(conf: Any = None, options: Any = None, **_: Any) -> None:
    """A worker consuming the coincidence queue gets the fast redelivery settings."""
    queues = (options or {}).get("queues") or []
    if isinstance(queues, str):
        queues = queues.split(",")
    if COINCIDENCE_QUEUE in queues:
        if set(queues) != {COINCIDENCE_QUEUE}:
            raise SystemExit("the coincidence queue must have a worker of its own (-Q coincidence)")
        conf.broker_transport_options = {**conf.broker_transport_options,
                                         **COINCIDENCE_TRANSPORT_OPTIONS}


@signals.beat_init.connect
def _first_canary_at_start(sender: Any = None, **_: Any) -> None:
    """An interval schedule first fires one interval after beat starts; the canary need not wait.

    Best effort: with the broker down, beat must still start (its schedule sends later).
    """
    try:
        app.send_task("snews.canary.send", ignore_result=True, retry=False)
    except Exception:
        logging.getLogger(__name__).warning("first canary not sent at beat start", exc_info=True)
