"""A worker records that it has started a task the ingest sent with a receipt
(`adapters.receipts` says why)."""

from __future__ import annotations

from typing import Any

from celery import signals

from ..adapters.receipts import RECEIPT_HEADER, Receipts
from .context import state_redis


@signals.task_prerun.connect
def _task_started(task: Any = None, **_: Any) -> None:
    """A failure here is logged by Celery and the task still runs; the ingest then sends it
    again later, which the receivers absorb."""
    receipt = task.request.get(RECEIPT_HEADER)
    if receipt is not None:
        Receipts(state_redis()).mark_received(str(receipt))
