"""Slack: alerts posted to a channel with slack_sdk's Web API client, and the sky-map picture of
a localized revision uploaded into the post's thread with `files_upload_v2`.

Retryable errors (HTTP 429 and 5xx, connection errors, timeouts) are named by
`retry_policies.slack_policy`, which honours Retry-After; an ``ok: false``
answer (`channel_not_found`, `invalid_auth`, ...) and a malformed alert are
permanent. Slack has no idempotency key for chat.postMessage: a retry after a
lost response can post an alert twice; the alert id and revision in every
message let readers tell, and the Slack task remembers what it posted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from slack_sdk import WebClient

from ..core.slack_blocks import slack_blocks
from ..settings import Settings

# An alert post that takes longer has probably failed; the retry policy takes it from there.
REQUEST_TIMEOUT_S = 10


class Posted(NamedTuple):
    """Where a post went: the channel's id (uploads need it, not the name) and the message."""

    channel: str
    ts: str


class SlackPoster:
    """A slack_sdk WebClient created once, with slack_sdk's own retries switched off.

    Our retry policy is the only retry layer: retries then follow one backoff
    schedule, show up in Flower and end in a failure record, instead of
    happening invisibly inside one task attempt.
    """

    def __init__(
        self, token: str, channel: str, *, base_url: str, timeout_s: int = REQUEST_TIMEOUT_S
    ) -> None:
        if not channel:
            raise ValueError("slack_channel: must not be empty")
        self.channel = channel
        self._client = WebClient(
            token=token, base_url=base_url, timeout=timeout_s, retry_handlers=[]
        )

    def post(self, alert: Mapping[str, Any]) -> Posted:
        """Post one alert; returns its channel id and timestamp (Slack's message id)."""
        text, blocks = slack_blocks(alert)
        response = self._client.chat_postMessage(
            channel=self.channel, text=text, blocks=blocks, unfurl_links=False, unfurl_media=False
        )
        return Posted(str(response["channel"]), str(response["ts"]))

    def upload_picture(self, posted: Posted, filename: str, data: bytes, title: str) -> str:
        """Upload a PNG into the thread of a post; returns the file's id."""
        response = self._client.files_upload_v2(
            channel=posted.channel,
            thread_ts=posted.ts,
            file=data,
            filename=filename,
            title=title,
            alt_txt=title,
        )
        return str(response["file"]["id"])

    def post_text(self, channel: str, text: str) -> str:
        """Post plain text to another channel (operations notices); returns its timestamp."""
        response = self._client.chat_postMessage(
            channel=channel, text=text, unfurl_links=False, unfurl_media=False
        )
        return str(response["ts"])

    def close(self) -> None:
        """Nothing to release (a connection per request); here so all resources close alike."""


def open_slack(settings: Settings) -> SlackPoster | None:
    """The worker's Slack poster, or None when Slack is not configured (no token)."""
    if settings.slack_token is None:
        return None
    return SlackPoster(
        settings.slack_token.get_secret_value(),
        settings.slack_channel,
        base_url=settings.slack_base_url,
    )
