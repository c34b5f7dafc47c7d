"""Offline replay: a JSONL stream through the worker's rules, with no services.

The stream's own time is the clock (the latest neutrino time seen), so a
recorded stream replays identically whenever it is run.

With a `Localizer` (`snews-tasks replay --skymap-dir`), every alert revision the live system
would localize is localized as soon as it is emitted, and the result goes through the writer's
own rule (`Processor.attach_localization`): the next revision, an UPDATE carrying
`localization`, is printed right after it. Live, other messages may be applied before the
result comes back (a second or so later); replay is the live system with an instant localize
worker, so ids, revisions and alert types follow the same rules. Timing-tier messages of the
stream are kept (per namespace, in stream order) for the localizer to sharpen members' times.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .engine import LIVE, TEST, namespace_of
from .memory_store import MemoryStore
from .messages import Message, MessageError, Tier
from .processing import Processor
from .routing import needs_localization
from .times import parse_time_ns

CLOCK_START = -(2**62)


@dataclass
class ReplayReport:
    """Counts for the summary line; the alerts themselves go to the output stream."""

    lines: int = 0
    rejected: int = 0
    alerts: int = 0


#: Localizes one alert revision, given the stream's timing-tier messages of its namespace;
#: returns the result as the localize task sends it to the writer.
Localizer = Callable[[dict, Sequence[Mapping[str, Any]]], dict]


class Replayer:
    """Feeds messages to a `MemoryStore` the way the coincidence worker feeds Redis."""

    def __init__(self, processor: Processor, localizer: Localizer | None = None) -> None:
        self.processor = processor
        self.localizer = localizer
        self.store = MemoryStore(processor.threshold_ns)
        self.clock_ns = CLOCK_START
        self.heartbeats: dict[str, tuple[int, str]] = {}
        self.timing: dict[str, list[dict]] = {LIVE: [], TEST: []}

    def feed(self, message: Message) -> list[dict]:
        """Apply one validated message; returns the alerts it caused."""
        if message.neutrino_time_ns is not None:
            self.clock_ns = max(self.clock_ns, message.neutrino_time_ns)
        self.processor.check_fresh(message, self.clock_ns)
        if message.tier is Tier.HEARTBEAT:
            seen = (
                parse_time_ns(message.machine_time_utc, "machine_time_utc")
                if message.machine_time_utc
                else self.clock_ns
            )
            self.heartbeats[message.detector_name] = (seen, message.detector_status or "OFF")
            return []
        namespace = namespace_of(message.is_test)
        if message.tier is Tier.TIMING:
            self.timing[namespace].append(message.to_dict())
        if message.tier not in (Tier.COINCIDENCE, Tier.RETRACTION):
            return []  # validated; archiving is the worker's business
        self._expire(namespace)
        online = [
            d
            for d, (seen, status) in self.heartbeats.items()
            if self.processor.is_online(seen, status, self.clock_ns)
        ]
        outcome = self.processor.step(
            self.store,
            message,
            now_ns=self.clock_ns,
            seq=self.store.next_seq(),
            new_id=self.store.new_id,
            heartbeat_online=online,
        )
        self.store.apply(namespace, outcome.changes)
        return outcome.alerts + self._localized(outcome.alerts, namespace, online)

    def _localized(self, alerts: list[dict], namespace: str, online: list[str]) -> list[dict]:
        """The revisions carrying the localizations of `alerts`, as the writer commits them."""
        if self.localizer is None:
            return []
        localized = []
        for alert in alerts:
            if not needs_localization(alert):
                continue
            outcome = self.processor.attach_localization(
                self.store,
                self.localizer(alert, self.timing[namespace]),
                now_ns=self.clock_ns,
                heartbeat_online=online,
            )
            self.store.apply(namespace, outcome.changes)
            localized += outcome.alerts
        return localized

    def finish(self) -> None:
        """Expire what the final clock says has left the cache."""
        for namespace in (LIVE, TEST):
            self._expire(namespace)

    def _expire(self, namespace: str) -> None:
        while True:
            changes = self.processor.expire(
                self.store, namespace, now_ns=self.clock_ns, new_id=self.store.new_id
            )
            if not changes.removed:
                break
            self.store.apply(namespace, changes)
        self.store.forget_processed(self.clock_ns)

    def state(self) -> dict:
        """The live coincidences, in the STATE.json shape other tools read."""
        return {
            "coincidences": [
                {
                    "alert_id": c.alert_id,
                    "revision": c.revision,
                    "is_test": namespace == TEST,
                    "observation_uuids": [m.uuid for m in c.members],
                    "detector_names": [m.detector for m in c.members],
                    "neutrino_times_utc": [m.neutrino_time_utc for m in c.members],
                }
                for namespace in (LIVE, TEST)
                for c in self.store.coincidences(namespace)
            ]
        }


class TextSink(Protocol):
    """Where replay writes: a text stream, or anything with its `write`."""

    def write(self, text: str, /) -> object: ...


def replay_lines(
    lines: Iterable[str],
    replayer: Replayer,
    *,
    out: TextSink,
    err: TextSink,
    on_alert: Callable[[dict], object] = lambda _alert: None,
) -> ReplayReport:
    """Print each alert as a JSON line on `out` (and hand it to `on_alert`); each rejected
    line, numbered, on `err`."""
    report = ReplayReport()
    for number, line in _numbered(lines):
        report.lines += 1
        try:
            message = replayer.processor.parse(line.encode("utf-8", "surrogateescape"))
            alerts = replayer.feed(message)
        except MessageError as exc:
            report.rejected += 1
            err.write(f"line {number}: rejected: {exc}\n")
            continue
        for alert in alerts:
            out.write(json.dumps(alert, sort_keys=True) + "\n")
            on_alert(alert)
        report.alerts += len(alerts)
    replayer.finish()
    return report


def _numbered(lines: Iterable[str]) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(lines, start=1):
        if line.strip():
            yield number, line
