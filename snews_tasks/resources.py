"""Long-lived clients: opened once per worker process on first use, closed when it stops.

Connections must not cross a fork, so a process starts with none and opens its
own; nothing is stashed in the Celery configuration.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from celery import signals

T = TypeVar("T")
log = logging.getLogger(__name__)
_open: dict[str, Any] = {}


def resource(name: str, factory: Callable[[], T]) -> T:
    if name not in _open:
        _open[name] = factory()
    return _open[name]


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
