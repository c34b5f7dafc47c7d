"""The slack queue: each alert revision posted to the alerts channel once."""

from __future__ import annotations

from ..adapters.redis_keys import KEYS
from ..adapters.retry_policies import slack_policy
from ..adapters.slack import SlackPoster, open_slack
from ..core.documents import alert_key
from ..core.routing import FailureKind, TaskName
from .app import app
from .base import Delivered, DeliveryTask
from .context import resource, settings, state_redis

#: Posted (alert_id, revision) pairs are remembered this long, so a redelivered task posts nothing.
POSTED_TTL_S = 7 * 86400


def slack_poster() -> SlackPoster | None:
    return resource("slack-poster", lambda: open_slack(settings()))


@app.task(base=DeliveryTask, name=TaskName.POST_SLACK, bind=True)
def post_alert(self: DeliveryTask, alert: dict) -> Delivered:
    """Post an alert to the Slack channel, once per (alert_id, revision)."""
    poster = slack_poster()
    if poster is None:
        return Delivered.DISABLED
    key = alert_key(alert)
    posted = KEYS.slack_posted(key)
    redis_client = state_redis()
    if redis_client.exists(posted):
        return Delivered.ALREADY_DONE
    ts = self.deliver(
        kind=FailureKind.ALERT_SLACK,
        records={key: alert},
        policy=slack_policy(settings()),
        attempt=lambda: poster.post(alert),
    )
    redis_client.set(posted, ts, ex=POSTED_TTL_S)
    return Delivered.DELIVERED
