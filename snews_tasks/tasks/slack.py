"""Slack deliveries: post one alert to the alerts channel with slack_sdk.

For the Celery wrapper: resource `open_slack(settings)` (once per worker
process; None when no token is configured, and then nothing is posted),
attempt `SlackPoster.post(alert)`, policy `retry.slack_policy(settings)`,
which reads Retry-After from a 429. Retryable errors: HTTP 429 and 5xx
(`SlackApiError`), connection errors and timeouts (`urllib.error.URLError`,
`ConnectionError`, `TimeoutError`). An ``ok: false`` answer
(`channel_not_found`, `invalid_auth`, ...) and a `ValueError` (a malformed
alert) are permanent. When retries run out, record kind "alert_slack", key
`failures.alert_key(alert)`.

Slack has no idempotency key for chat.postMessage: a retry after a lost
response can post an alert twice. The alert id and revision in every
message let readers tell.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from slack_sdk import WebClient

from ..celery_app import app, settings
from ..failures import alert_key
from ..resources import resource
from ..retry import slack_policy
from ..settings import Settings
from ..slack_format import slack_blocks
from .delivery import deliver, state_redis

# An alert post that takes longer has probably failed; the retry policy takes it from there.
REQUEST_TIMEOUT_S = 10


class SlackPoster:
    """A slack_sdk WebClient created once, with slack_sdk's own retries switched off.

    Our retry policy is the only retry layer: retries then follow one backoff
    schedule, show up in Flower and end in a failure record, instead of
    happening invisibly inside one task attempt.
    """

    def __init__(self, token: str, channel: str, *, base_url: str,
                 timeout_s: int = REQUEST_TIMEOUT_S) -> None:
        if not channel:
            raise ValueError("slack_channel: must not be empty")
        self.channel = channel
        self._client = WebClient(token=token, base_url=base_url, timeout=timeout_s,
                                 retry_handlers=[])

    def post(self, alert: Mapping[str, Any]) -> str:
        """Post one alert; returns the message timestamp (Slack's message id)."""
        text, blocks = slack_blocks(alert)
        response = self._client.chat_postMessage(channel=self.channel, text=text, blocks=blocks,
                                                 unfurl_links=False, unfurl_media=False)
        return str(response["ts"])

    def close(self) -> None:
        """Nothing to release (a connection per request); here so all resources close alike."""


def open_slack(settings: Settings) -> SlackPoster | None:
    """The worker's Slack poster, or None when Slack is not configured (no token)."""
    if settings.slack_token is None:
        return None
    return SlackPoster(settings.slack_token.reveal(), settings.slack_channel,
                       base_url=settings.slack_base_url)


# --- Celery task (the slack queue) ---------------------------------------------------------------

#: Posted (alert_id, revision) pairs are remembered this long, so a redelivered task posts nothing.
POSTED_TTL_S = 7 * 86400


@app.task(name="snews.slack.post_alert", bind=True)
def post_alert(self: Any, alert: dict) -> str:
    """Post an alert to the Slack channel, once per (alert_id, revision)."""
    poster = resource("slack-poster", lambda: open_slack(settings))
    if poster is None:
        return "slack disabled"
    key = alert_key(alert)
    posted = f"snews:slack:posted:{key}"
    redis_client = state_redis()
    if redis_client.exists(posted):
        return "already posted"
    ts = deliver(self, kind="alert_slack", key=key, document=alert, policy=slack_policy(settings),
                 attempt=lambda: poster.post(alert))
    redis_client.set(posted, ts, ex=POSTED_TTL_S)
    return ts
