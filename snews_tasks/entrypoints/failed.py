"""Notifications whose retries ran out: listed, and re-driven by an operator.

Command-line only on purpose: nothing read from Kafka can re-drive a delivery.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..core.routing import FailureKind
from ..tasks.base import open_failure_log
from ..tasks.sender import CelerySender


def failed_records() -> list[dict[str, Any]]:
    """The failed notifications as an operator reads them, oldest first."""
    return [
        {
            "id": f"{record['kind']}:{record['key']}",
            "kind": record["kind"],
            "key": record["key"],
            "error": record["error"],
            "attempts": record["attempts"],
            "failed_utc": str(record["failed_utc"]),
            "stored_in": record.get("stored_in"),
        }
        for record in open_failure_log().list_failures()
    ]


def redrive(record_ids: Iterable[str] | None) -> tuple[list[str], list[str]]:
    """Re-enqueue the payloads of these records (None: all); the ids re-driven and the unknown."""
    log = open_failure_log()
    records = {f"{r['kind']}:{r['key']}": r for r in log.list_failures()}
    wanted = list(records) if record_ids is None else list(record_ids)
    send = CelerySender()
    done, unknown = [], []
    for record_id in wanted:
        record = records.get(record_id)
        if record is None:
            unknown.append(record_id)
            continue
        send(FailureKind(record["kind"]).redrive_task, record["payload"], {})
        log.mark_redriven(record["kind"], record["key"])
        done.append(record_id)
    return done, unknown
