"""The Celery app: JSON only, one queue per concern, explicit routes, late acks.

Queues and what consumes them:
  coincidence  exactly one process (workers/coincidence: solo pool): the serial state writer
  storage      MongoDB archive (observations, alerts, rejects, detector status), the canary
  alerts       the Kafka alert topic
  slack        Slack posts (alerts; heartbeat events to the operations channel)
  mail         feedback mails to detectors' contacts (SMTP)
  slack        Slack posts
  localization sky maps of coincidence revisions (workers/localize; scale out)

The app is built without settings, so importing it needs no configuration;
what depends on the deployment (broker URL, periodic schedule) is read from the
process's settings the first time Celery reads its configuration.

A worker started without `-Q` (the bare `celery -A snews_tasks worker`) serves
the notification and localization queues only: the coincidence queue is consumed by one process,
started as `workers/coincidence` does.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, signals
from celery.schedules import crontab
from kombu import Queue as KombuQueue

from ..adapters.redis_clients import celery_transport_options
from ..core.routing import ROUTES, Queue, TaskName
from ..settings import RETRY_WAIT_MAX_S, Settings
from . import context
from .reconnect import FastReconnectConsumer
from .writer_lease import WriterGate

log = logging.getLogger(__name__)

TASK_MODULES = [
    "snews_tasks.tasks.coincidence",
    "snews_tasks.tasks.storage",
    "snews_tasks.tasks.kafka",
    "snews_tasks.tasks.gcn",
    "snews_tasks.tasks.slack",
    "snews_tasks.tasks.canary",
    "snews_tasks.tasks.receipts",
    "snews_tasks.tasks.feedback",
    "snews_tasks.tasks.mail",
    "snews_tasks.tasks.localize",
]
NOTIFICATION_QUEUES = tuple(q for q in Queue if q is not Queue.COINCIDENCE)

#: A batch taken by a writer that then froze or died goes back to the head of the queue after
#: a second, and the writer holding the lease takes it within a quarter second more (restore
#: runs only in a worker that consumes the queue, and a solo worker runs none while it works,
#: so a live writer's own batch is never handed out twice). The unacked index is the writers'
#: own, so the short timeout never touches the notification workers'; the restore lock expires
#: at once should its holder die with it.
COINCIDENCE_TRANSPORT_OPTIONS = {
    "visibility_timeout": 1,
    "unacked_key": "unacked:coincidence",
    "unacked_index_key": "unacked_index:coincidence",
    "unacked_mutex_key": "unacked_mutex:coincidence",
    "unacked_restore_interval": 0.25,
    "unacked_restore_throttle": 1,
    "unacked_mutex_expire": 1,
}
#: A notification held by a worker that died, or at a broker crash, is handed out again after
#: this long; a retry waits at most half of it in its worker.
NOTIFY_VISIBILITY_S = 2 * RETRY_WAIT_MAX_S

app = Celery("snews_tasks", include=TASK_MODULES)
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
    task_queues=tuple(KombuQueue(name.value) for name in Queue),
    task_routes={pattern: {"queue": queue.value} for pattern, queue in ROUTES.items()},
    task_create_missing_queues=False,
    task_default_queue=Queue.STORAGE.value,
    worker_send_task_events=True,
    task_send_sent_event=True,
    broker_connection_retry_on_startup=True,
    worker_consumer=f"{FastReconnectConsumer.__module__}:{FastReconnectConsumer.__name__}",
)
app.steps["consumer"].add(WriterGate)


def deployment_config(settings: Settings) -> dict[str, Any]:
    """The configuration that depends on the deployment's settings."""
    canary_check_s = min(60.0, settings.canary_interval_s)
    return {
        "broker_url": settings.broker_url,
        "result_backend": settings.result_backend,
        "broker_transport_options": {
            "visibility_timeout": NOTIFY_VISIBILITY_S,
            "unacked_mutex_expire": 5,
            **celery_transport_options(settings.broker_url, settings.redis_sentinel_master),
        },
        "result_backend_transport_options": celery_transport_options(
            settings.result_backend, settings.redis_sentinel_master
        ),
        # Periodic tasks expire unrun after one period: a worker that was down finds one, not
        # a pile.
        "beat_schedule": {
            "expire-coincidence-cache": {
                "task": TaskName.EXPIRE.value,
                "schedule": 60.0,
                "options": {"expires": 60.0},
            },
            "sweep-outbox": {
                "task": TaskName.SWEEP_OUTBOX.value,
                "schedule": 15.0,
                "options": {"expires": 15.0},
            },
            "canary-send": {
                "task": TaskName.CANARY_SEND.value,
                "schedule": settings.canary_interval_s,
                "options": {"expires": settings.canary_interval_s},
            },
            # Checked more often than sent, so a returned canary shows within a minute.
            "canary-check": {
                "task": TaskName.CANARY_CHECK.value,
                "schedule": canary_check_s,
                "options": {"expires": canary_check_s},
            },
            "heartbeat-feedback": {
                "task": TaskName.FEEDBACK_CHECK.value,
                "schedule": settings.heartbeat_check_interval_s,
                "options": {"expires": settings.heartbeat_check_interval_s},
            },
            # Each detector's summary of the day that just ended (UTC), to its contacts.
            "heartbeat-summary": {
                "task": TaskName.FEEDBACK_SUMMARY.value,
                "schedule": crontab(minute=5, hour=0),
                "options": {"expires": 3600.0},
            },
        },
    }


app.add_defaults(lambda: deployment_config(context.settings()))


def _requested_queues(options: dict[str, Any]) -> list[str]:
    queues = options.get("queues") or []
    return queues.split(",") if isinstance(queues, str) else list(queues)


@signals.celeryd_init.connect
def _configure_writer(conf: Any = None, options: Any = None, **_: Any) -> None:
    """A worker asked for the coincidence queue is the writer: that queue alone, in one
    process, with fast redelivery settings."""
    options = options or {}
    queues = _requested_queues(options)
    if Queue.COINCIDENCE not in queues:
        return
    if set(queues) != {Queue.COINCIDENCE}:
        raise SystemExit("the coincidence queue must have a worker of its own (-Q coincidence)")
    pool = str(options.get("pool_cls") or options.get("pool") or "")
    if "solo" not in pool.lower() or int(options.get("concurrency") or 1) != 1:
        raise SystemExit(
            "the coincidence queue is consumed by one process: "
            "start it with --pool solo --concurrency 1 (workers/coincidence)"
        )
    conf.broker_transport_options = {
        **conf.broker_transport_options,
        **COINCIDENCE_TRANSPORT_OPTIONS,
    }
    WriterGate.enabled = True


@signals.celeryd_after_setup.connect
def _notification_queues_by_default(
    sender: Any = None, instance: Any = None, conf: Any = None, **_: Any
) -> None:
    """Without -Q a worker would consume every queue, the writer's too: it leaves that one."""
    queues = instance.app.amqp.queues
    selected = queues.consume_from
    if Queue.COINCIDENCE in selected and len(selected) > 1:
        queues.deselect([Queue.COINCIDENCE.value])
        log.warning(
            "worker %s serves %s only: the coincidence queue has one process of its own "
            "(workers/coincidence)",
            sender,
            ", ".join(NOTIFICATION_QUEUES),
        )


@signals.beat_init.connect
def _first_canary_at_start(sender: Any = None, **_: Any) -> None:
    """An interval schedule first fires one interval after beat starts; the canary need not wait.

    Best effort: with the broker down, beat must still start (its schedule sends later).
    """
    try:
        app.send_task(TaskName.CANARY_SEND.value, ignore_result=True, retry=False)
    except Exception:
        log.warning("first canary not sent at beat start", exc_info=True)
