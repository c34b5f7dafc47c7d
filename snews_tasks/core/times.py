"""Times as exact integer nanoseconds since the epoch, and their one text form.

A float loses nanoseconds, and SNEWS neutrino times carry them; every time in the
system is an int of ns, written ``YYYY-MM-DDTHH:MM:SS.fffffffffZ`` so that text
sorts like time.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from .errors import MessageError, show

NS_PER_S = 1_000_000_000
_EPOCH = datetime(1970, 1, 1)
_MIN_TIME_NS = (datetime.min - _EPOCH) // timedelta(seconds=1) * NS_PER_S
_MAX_TIME_NS = ((datetime.max - _EPOCH) // timedelta(seconds=1) + 1) * NS_PER_S - 1
_ISO_TIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})?",
    re.ASCII,
)


def parse_time_ns(value: object, field: str) -> int:
    """Parse an ISO 8601 time into exact integer ns since the epoch (no offset means UTC)."""
    if not isinstance(value, str):
        raise MessageError(field, f"must be an ISO 8601 time string, got {show(value)}")
    match = _ISO_TIME.fullmatch(value)
    if match is None:
        raise MessageError(
            field, f"is not an ISO 8601 time like 2026-01-31T12:30:00.123456789Z: {show(value)}"
        )
    year, month, day, hour, minute, second = (int(part) for part in match.groups()[:6])
    fraction, zone = match.group(7) or "", match.group(8) or "Z"
    try:
        moment = datetime(year, month, day, hour, minute, second)
    except ValueError as error:
        raise MessageError(field, f"is not a valid time ({error}): {show(value)}") from None
    offset_s = 0
    if zone != "Z":
        zone_hours, zone_minutes = int(zone[1:3]), int(zone[4:6])
        if zone_hours > 23 or zone_minutes > 59:
            raise MessageError(field, f"has an invalid UTC offset {zone}: {show(value)}")
        offset_s = (zone_hours * 3600 + zone_minutes * 60) * (1 if zone[0] == "+" else -1)
    seconds = (moment - _EPOCH) // timedelta(seconds=1) - offset_s
    t_ns = seconds * NS_PER_S + int(fraction.ljust(9, "0"))
    if not _MIN_TIME_NS <= t_ns <= _MAX_TIME_NS:
        raise MessageError(field, f"is outside the years 1 to 9999 in UTC: {show(value)}")
    return t_ns


def format_time_ns(t_ns: int) -> str:
    """Inverse of parse_time_ns: always 9 fractional digits and 'Z', so text sorts like time."""
    seconds, nanos = divmod(t_ns, NS_PER_S)
    return f"{(_EPOCH + timedelta(seconds=seconds)).isoformat()}.{nanos:09d}Z"


def normalise_time(value: object, field: str) -> str:
    """Any accepted ISO 8601 form, in the one form the system writes."""
    return format_time_ns(parse_time_ns(value, field))


def duration_text(ns: int) -> str:
    """A duration as people read it in a reject reason: seconds, minutes or hours."""
    seconds = ns / NS_PER_S
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 7200:
        return f"{seconds / 60:.3g} min"
    return f"{seconds / 3600:.3g} h"
