"""Observation and retraction messages for tests, and a replay harness that keeps every alert."""

from __future__ import annotations

import itertools
import time
from typing import Any

from ..core.engine import LIVE, TEST
from ..core.messages import Message, Tier
from ..core.processing import Processor
from ..core.replay import Replayer
from ..core.times import format_time_ns
from ..settings import Settings

S = 1_000_000_000
# Streams start an hour before the clock (on a whole minute), never on a fixed date: a
# test that passes its own `now_ns` fixes the clock, and one that goes through a worker
# reading the real clock gets times its freshness rules accept on any day.
T0 = (time.time_ns() // (60 * S) - 60) * 60 * S


def utc(seconds: float = 0.0) -> str:
    """The ISO time `seconds` after T0, as a message or an alert carries it."""
    return format_time_ns(T0 + round(seconds * S))


_uuids = itertools.count(1)


def fresh_uuid() -> str:
    return f"00000000-0000-4000-8000-{next(_uuids):012d}"


def observation(
    detector: str,
    seconds: float,
    *,
    p_val: float | None = 0.01,
    uuid: str | None = None,
    is_test: bool = False,
    ns: int = 0,
) -> Message:
    return observation_at(
        detector, T0 + round(seconds * S) + ns, p_val=p_val, uuid=uuid, is_test=is_test
    )


def observation_at(
    detector: str,
    t_ns: int,
    *,
    p_val: float | None = 0.01,
    uuid: str | None = None,
    is_test: bool = False,
) -> Message:
    """A CoincidenceTier observation at an absolute time."""
    return message(
        Tier.COINCIDENCE,
        detector,
        uuid=uuid or fresh_uuid(),
        is_test=is_test,
        neutrino_time_ns=t_ns,
        neutrino_time_utc=format_time_ns(t_ns),
        p_val=p_val,
    )


def message(
    tier: Tier, detector: str, *, uuid: str | None = None, is_test: bool = False, **fields: Any
) -> Message:
    """A valid message of `tier`: no firedrill, no pre-supernova flag."""
    return Message(
        tier=tier,
        uuid=uuid or fresh_uuid(),
        detector_name=detector,
        is_test=is_test,
        is_firedrill=False,
        is_pre_sn=False,
        **fields,
    )


def retraction(
    detector: str, *, target: str | None = None, latest_n: int = 0, is_test: bool = False
) -> Message:
    return message(
        Tier.RETRACTION,
        detector,
        is_test=is_test,
        retract_message_uuid=target,
        retract_latest_n=latest_n,
        retraction_reason="unit test",
    )


def heartbeat(detector: str, seconds: float, status: str = "ON") -> Message:
    return message(
        Tier.HEARTBEAT,
        detector,
        detector_status=status,
        machine_time_utc=format_time_ns(T0 + round(seconds * S)),
    )


def settings(**overrides) -> Settings:
    return Settings(mode="local", server_tag="unit", **overrides)


class Run:
    """A replay of messages, keeping every alert for assertions."""

    def __init__(self, **overrides) -> None:
        self.replayer = Replayer(Processor(settings(**overrides)))
        self.alerts: list[dict] = []

    def send(self, *messages: Message) -> list[dict]:
        new: list[dict] = []
        for m in messages:
            new += self.replayer.feed(m)
        self.alerts += new
        return new

    def member_sets(self, namespace: str = LIVE) -> set[frozenset[str]]:
        return {c.uuids for c in self.replayer.store.coincidences(namespace)}

    def detector_sets(self, namespace: str = LIVE) -> list[list[str]]:
        return [
            [m.detector for m in c.members] for c in self.replayer.store.coincidences(namespace)
        ]

    def cached(self, namespace: str = LIVE):
        return self.replayer.store.observations(namespace)


__all__ = [
    "LIVE",
    "T0",
    "TEST",
    "Run",
    "S",
    "fresh_uuid",
    "heartbeat",
    "observation",
    "retraction",
    "settings",
    "utc",
]


class Sent(list):
    """A recording `send` for `CoincidenceService`: (task, document) for every document handed
    on, a batched task's documents one by one."""

    def __call__(self, task: str, argument: object, headers: dict) -> None:
        self.extend((task, d) for d in (argument if isinstance(argument, list) else [argument]))


class Reduces:
    """Pickles as the call `function(*arguments)`: what a hostile sender's payload does when
    something unpickles it the ordinary way."""

    def __init__(self, function: object, arguments: tuple) -> None:
        self.function = function
        self.arguments = arguments

    def __reduce__(self) -> tuple:
        return self.function, self.arguments
