"""The slack queue: each alert revision posted to the alerts channel once, each heartbeat
event to the operations channel once."""

from __future__ import annotations

from collections.abc import Callable

from ..adapters.redis_keys import KEYS
from ..adapters.retry_policies import slack_policy
from ..adapters.slack import SlackPoster, open_slack
from ..core.documents import alert_key, require_str
from ..core.feedback_notices import operations_text
from ..core.routing import FailureKind, TaskName
from .app import app
from .base import Delivered, DeliveryTask
from .context import resource, settings, state_redis

#: Posted (alert_id, revision) pairs are remembered this long, so a redelivered task posts nothing.
POSTED_TTL_S = 7 * 86400


def slack_poster() -> SlackPoster | None:
    return resource("slack-poster", lambda: open_slack(settings()))


def _post_once(
    task: DeliveryTask,
    kind: FailureKind,
    key: str,
    posted: str,
    document: dict,
    post: Callable[[SlackPoster], str],
) -> Delivered:
    """Post unless Slack is off or `posted` says it was done; remember it for a week."""
    poster = slack_poster()
    if poster is None:
        return Delivered.DISABLED
    redis_client = state_redis()
    if redis_client.exists(posted):
        return Delivered.ALREADY_DONE
    ts = task.deliver(
        kind=kind,
        records={key: document},
        policy=slack_policy(settings()),
        attempt=lambda: post(poster),
    )
    redis_client.set(posted, ts, ex=POSTED_TTL_S)
    return Delivered.DELIVERED


@app.task(base=DeliveryTask, name=TaskName.POST_SLACK, bind=True)
def post_alert(self: DeliveryTask, alert: dict) -> Delivered:
    """Post an alert to the Slack channel, once per (alert_id, revision)."""
    key = alert_key(alert)
    return _post_once(
        self, FailureKind.ALERT_SLACK, key, KEYS.slack_posted(key), alert, lambda p: p.post(alert)
    )


@app.task(base=DeliveryTask, name=TaskName.POST_SLACK_OPERATIONS, bind=True)
def post_operations(self: DeliveryTask, event: dict) -> Delivered:
    """Post a heartbeat event to the operations channel, once per event."""
    key = require_str(event, "event_id", "heartbeat event")
    text = operations_text(event, server_tag=settings().server_tag)
    channel = settings().slack_operations_channel
    return _post_once(
        self,
        FailureKind.OPERATIONS_SLACK,
        key,
        KEYS.operations_posted(key),
        event,
        lambda p: p.post_text(channel, text),
    )
