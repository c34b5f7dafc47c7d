"""What a worker process holds: its settings, and its long-lived clients.

Settings are loaded once by the process that starts: an entry point that has
them already hands them over (`use_settings`); a process started by the
`celery` command loads them from the environment (SNEWS_MODE) the first time
something asks. Importing this module needs no configuration.

Clients (Redis, MongoDB, the Kafka writer, Slack) are opened once per worker
process on first use and closed when it stops. Connections must not cross a
fork, so a pool child starts with none and opens its own; nothing is stashed in
the Celery configuration.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from celery import signals

from ..adapters.redis_clients import redis_client
from ..settings import Settings, load_settings

T = TypeVar("T")
log = logging.getLogger(__name__)
_open: dict[str, Any] = {}
_settings: list[Settings] = []


def use_settings(settings: Settings) -> None:
    """This process runs with `settings` (an entry point calls it before the app is used)."""
    _settings[:] = [settings]


def settings() -> Settings:
    if not _settings:
        _settings.append(load_settings())
    return _settings[0]


def resource(name: str, factory: Callable[[], T]) -> T:
    if name not in _open:
        _open[name] = factory()
    return _open[name]  # type: ignore[no-any-return]


def state_client(*, decode_responses: bool = True, socket_timeout: float = 5.0) -> redis.Redis:
    """A new client of the state Redis (the Sentinel primary, where it has sentinels)."""
    current = settings()
    return redis_client(
        current.state_redis_url,
        master_name=current.redis_sentinel_master,
        decode_responses=decode_responses,
        socket_timeout=socket_timeout,
    )


def state_redis() -> redis.Redis:
    """The process's state Redis client, answers decoded."""
    return resource("state-redis", state_client)


def broker_redis() -> redis.Redis:
    """The Celery broker's Redis, for queue depths."""
    return resource(
        "broker-redis",
        lambda: redis_client(settings().broker_url, master_name=settings().redis_sentinel_master),
    )


@signals.worker_process_init.connect
def _forget_inherited(**_: Any) -> None:
    _open.clear()


@signals.worker_process_shutdown.connect  # a prefork pool's child
@signals.worker_shutdown.connect  # the solo pool's one process (the coincidence worker)
def close_all(**_: Any) -> None:
    while _open:
        name, client = _open.popitem()
        if client is None:  # an optional service that is not configured (no Slack token)
            continue
        try:
            client.close()
        except Exception:  # closing is best effort; the process is going away
            log.warning("closing %s failed", name, exc_info=True)
