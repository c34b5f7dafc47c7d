"""The serial writer's logic on a real Redis, without Celery: what store, security and
hostile-input tests drive directly."""

from __future__ import annotations

from collections.abc import Callable

import redis

from ..core.processing import Processor
from ..tasks.writer import CoincidenceService, PublishNow, Send


def writer_service(
    client: redis.Redis,
    send: Send,
    processor: Processor,
    *,
    slack_enabled: bool = True,
    queue_is_empty: Callable[[str], bool] = lambda task: True,
    publish_now: PublishNow | None = None,
    lease_token: str = "",
) -> CoincidenceService:
    """A writer on `client` (decoding responses) that hands its deliveries to `send`,
    committing under `lease_token` ("": no lease)."""
    return CoincidenceService.on_redis(
        client,
        processor,
        send,
        lease_token=lease_token,
        queue_is_empty=queue_is_empty,
        slack_enabled=slack_enabled,
        publish_now=publish_now,
    )
