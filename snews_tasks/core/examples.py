"""Test bursts built from the clock: the `publish` examples and the canary's pair.

Every message is a test message (`is_test`), tagged in `meta.source` with where
it came from, so it can be found in the alerts and the archive.
"""

from __future__ import annotations

import uuid
from typing import Any

from .times import NS_PER_S, format_time_ns


def coincidence_message(
    detector: str, neutrino_ns: int, *, source: str, meta: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A test CoincidenceTier observation with a fresh uuid, tagged with where it came from."""
    return {
        "tier": "CoincidenceTier",
        "uuid": str(uuid.uuid4()),
        "detector_name": detector,
        "neutrino_time_utc": format_time_ns(neutrino_ns),
        "p_val": 0.01,
        "is_test": True,
        "meta": {"source": source, **(meta or {})},
    }


def _three_detector(detectors: tuple[str, ...], now_ns: int) -> list[dict[str, Any]]:
    """SPEC 3's example, 12:30:00/09/11 shifted to end now: two coincidences, two NEW alerts."""
    offsets_s = (-11, -2, 0)
    return [
        coincidence_message(d, now_ns + s * NS_PER_S, source="example three-detector")
        for d, s in zip(detectors[:3], offsets_s, strict=True)
    ]


def _burst(detectors: tuple[str, ...], now_ns: int) -> list[dict[str, Any]]:
    """Every configured detector within 5 s: the largest alert the system can make."""
    step_ns = 5 * NS_PER_S // max(len(detectors) - 1, 1)
    return [
        coincidence_message(d, now_ns - 5 * NS_PER_S + i * step_ns, source="example burst20")
        for i, d in enumerate(detectors)
    ]


EXAMPLES = {"three-detector": (_three_detector, 3), "burst20": (_burst, 2)}


def example_messages(name: str, detectors: tuple[str, ...], now_ns: int) -> list[dict[str, Any]]:
    build, needs = EXAMPLES[name]
    if len(detectors) < needs:
        raise ValueError(
            f"--example {name} needs {needs} configured detectors "
            f"(SNEWS_DETECTORS has {len(detectors)})"
        )
    return build(detectors, now_ns)


def describe(message: dict[str, Any]) -> str:
    """One line per sent message, so the operator can find it in the alerts and the archive."""
    flags = [flag for flag in ("is_test", "is_firedrill") if message.get(flag) is True]
    return (
        f"{message.get('tier', '?'):<16} {message.get('detector_name', '?'):<11} "
        f"neutrino {message.get('neutrino_time_utc', '-')}  uuid {message.get('uuid', '-')}"
        f"  {' '.join(flags) or 'LIVE'}"
    )
