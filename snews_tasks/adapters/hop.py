"""hop-client's conventions: URLs, and credentials from hop's own auth file.

Kafka credentials never live in the settings: `SNEWS_HOP_AUTH` says whether to
use hop's default auth file or names one, and the credential matching the
broker is picked the way hop's own reader and writer pick it.
"""

from __future__ import annotations

from typing import Any

from hop.auth import Auth, load_auth, select_matching_auth


def hop_auth(setting: str) -> bool | list[Auth]:
    """The `auth` argument of hop's Stream for the settings value "false", "true" or a path."""
    if setting == "false":
        return False
    if setting == "true":
        return True
    credentials: list[Auth] = load_auth(setting)
    return credentials


def sasl_config(setting: str, broker: str, username: str | None) -> dict[str, Any]:
    """librdkafka settings for the hop credential matching `broker`, as hop's reader picks it."""
    auth = hop_auth(setting)
    if auth is False:
        return {}
    credentials = load_auth() if auth is True else auth
    return dict(select_matching_auth(credentials, broker, username)())


def topic_url(kafka_url: str, *topics: str) -> str:
    """hop's URL of one or more topics on the broker `kafka_url` (kafka://host:port)."""
    return f"{kafka_url.rstrip('/')}/{','.join(topics)}"
