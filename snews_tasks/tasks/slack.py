"""The slack queue: each alert revision posted to the alerts channel once (a localized
revision's sky-map picture follows in the post's thread), each heartbeat event to the
operations channel once."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..adapters.redis_keys import KEYS
from ..adapters.retry_policies import slack_policy
from ..adapters.skymap_store import SkymapStore
from ..adapters.slack import Posted, SlackPoster, open_slack
from ..core.documents import alert_key, require_str
from ..core.feedback_notices import operations_text
from ..core.routing import FailureKind, TaskName
from .app import app
from .base import Delivered, DeliveryTask
from .context import resource, settings, state_redis
from .storage import worker_archive

#: Posted (alert_id, revision) pairs are remembered this long, so a redelivered task posts nothing.
POSTED_TTL_S = 7 * 86400
#: The localize task stores a picture a second or so after the revision naming it is sent;
#: past this the attempt fails (retried: `NotStored` is retryable) and the post waits no more.
PICTURE_WAIT_S = 10.0


def slack_poster() -> SlackPoster | None:
    return resource("slack-poster", lambda: open_slack(settings()))


def picture_of(alert: Mapping[str, Any]) -> str | None:
    """The sky-map picture's file name, when the revision carries a map."""
    localization = alert.get("localization")
    return localization.get("skymap_image") if isinstance(localization, Mapping) else None


def _post_and_upload(poster: SlackPoster, alert: Mapping[str, Any], key: str) -> Posted:
    """Post unless an earlier attempt did, then upload the picture unless one did: a retry
    repeats only the step that failed."""
    redis_client = state_redis()
    posted_key = KEYS.slack_posted(key)
    remembered = redis_client.get(posted_key)
    if remembered is None:
        posted = poster.post(alert)
        redis_client.set(posted_key, json.dumps(posted), ex=POSTED_TTL_S)
    else:
        posted = Posted(*json.loads(remembered))
    picture = picture_of(alert)
    if picture is not None and not redis_client.exists(KEYS.slack_picture(key)):
        data = SkymapStore(worker_archive().db).wait_for(picture, PICTURE_WAIT_S)
        poster.upload_picture(posted, picture, data, f"SNEWS alert {key} sky map")
        redis_client.set(KEYS.slack_picture(key), picture, ex=POSTED_TTL_S)
    return posted


@app.task(base=DeliveryTask, name=TaskName.POST_SLACK, bind=True)
def post_alert(self: DeliveryTask, alert: dict) -> Delivered:
    """Post an alert to the Slack channel, once per (alert_id, revision), with its sky-map
    picture when it carries one."""
    poster = slack_poster()
    if poster is None:
        return Delivered.DISABLED
    key = alert_key(alert)
    redis_client = state_redis()
    if redis_client.exists(KEYS.slack_posted(key)) and (
        picture_of(alert) is None or redis_client.exists(KEYS.slack_picture(key))
    ):
        return Delivered.ALREADY_DONE
    self.deliver(
        kind=FailureKind.ALERT_SLACK,
        records={key: alert},
        policy=slack_policy(settings()),
        attempt=lambda: _post_and_upload(poster, alert, key),
    )
    return Delivered.DELIVERED


@app.task(base=DeliveryTask, name=TaskName.POST_SLACK_OPERATIONS, bind=True)
def post_operations(self: DeliveryTask, event: dict) -> Delivered:
    """Post a heartbeat event to the operations channel, once per event."""
    poster = slack_poster()
    if poster is None:
        return Delivered.DISABLED
    key = require_str(event, "event_id", "heartbeat event")
    posted = KEYS.operations_posted(key)
    redis_client = state_redis()
    if redis_client.exists(posted):
        return Delivered.ALREADY_DONE
    text = operations_text(event, server_tag=settings().server_tag)
    ts = self.deliver(
        kind=FailureKind.OPERATIONS_SLACK,
        records={key: event},
        policy=slack_policy(settings()),
        attempt=lambda: poster.post_text(settings().slack_operations_channel, text),
    )
    redis_client.set(posted, ts, ex=POSTED_TTL_S)
    return Delivered.DELIVERED
