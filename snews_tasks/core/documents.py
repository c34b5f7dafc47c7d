"""Checked reads of the documents tasks carry (alerts, observations, rejects).

A task argument comes back from the broker as plain JSON; before it is written
anywhere its key fields are checked, and a malformed one fails with an error
naming the document kind and the field instead of a KeyError deep in a driver.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def require_str(document: Mapping[str, Any], field: str, what: str) -> str:
    """The non-empty string at `field`, or a ValueError naming the document kind and field."""
    value = document.get(field)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what}: field {field!r} must be a non-empty string, got {value!r}")
    return value


def require_revision(alert: Mapping[str, Any]) -> int:
    """The alert's revision; with alert_id it is the key consumers deduplicate on."""
    revision = alert.get("revision")
    if isinstance(revision, bool) or not isinstance(revision, int) or revision < 0:
        raise ValueError(f"alert: field 'revision' must be an integer >= 0, got {revision!r}")
    return revision


def alert_key(alert: Mapping[str, Any]) -> str:
    """ "alert_id:revision": what consumers deduplicate on, and the key of its failure record."""
    return f"{require_str(alert, 'alert_id', 'alert')}:{require_revision(alert)}"
