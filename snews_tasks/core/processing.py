"""One message through validation and the engine: shared by the worker and offline replay.

Both callers own their clock and their store; this module owns the rules about
which tier goes where, so replay reproduces the worker exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ..settings import Settings
from .alerts import build_alert
from .engine import Changes, CoincidenceEngine, NewId, StateView, namespace_of
from .localization_request import parse_attach_payload, reason_of
from .messages import Message, MessageError, Tier, check_freshness, parse_message
from .payloads import decode_payload
from .times import NS_PER_S, format_time_ns

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What one message (or a localization result: no message) did: the state changes to
    commit and the alerts to send."""

    message: Message | None
    namespace: str
    changes: Changes
    alerts: list[dict] = field(default_factory=list)


@contextmanager
def _internal_errors_rejected() -> Iterator[None]:
    """A bug in the decoder is a MessageError too: a message that crashed the ingest would be
    read again after every restart and block everything behind it, and the writer and replay
    must treat it alike."""
    try:
        yield
    except MessageError:
        raise
    except Exception as error:
        log.exception("decoding a message failed")
        raise MessageError(None, f"internal error while decoding: {error!r}") from error


class Processor:
    """Holds the configured rules; stateless between messages."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.threshold_ns = round(settings.coincidence_threshold_s * NS_PER_S)
        self.lifetime_ns = round(settings.cache_lifetime_s * NS_PER_S)
        self.max_future_ns = round(settings.max_future_skew_s * NS_PER_S)
        self.online_window_ns = round(settings.detector_online_window_s * NS_PER_S)
        self.engine = CoincidenceEngine(self.threshold_ns, self.lifetime_ns)

    def decode(self, payload: object) -> dict[str, Any]:
        """The payload as a plain JSON object; raises MessageError naming the field and the
        problem."""
        with _internal_errors_rejected():
            return decode_payload(payload, max_bytes=self.settings.max_payload_bytes)

    def validate(self, data: dict[str, Any]) -> Message:
        """A payload `decode` returned, checked against SPEC section 2."""
        with _internal_errors_rejected():
            return parse_message(data, detectors=self.settings.detectors, decoded=True)

    def parse(self, payload: object) -> Message:
        """Decode and validate."""
        return self.validate(self.decode(payload))

    def check_fresh(self, message: Message, now_ns: int) -> None:
        check_freshness(
            message, now_ns=now_ns, max_age_ns=self.lifetime_ns, max_future_ns=self.max_future_ns
        )

    def step(
        self,
        view: StateView,
        message: Message,
        *,
        now_ns: int,
        seq: int,
        new_id: NewId,
        heartbeat_online: Collection[str],
    ) -> Outcome:
        """Apply a validated, fresh CoincidenceTier or Retraction message."""
        namespace = namespace_of(message.is_test)
        if message.tier is Tier.COINCIDENCE:
            changes = self.engine.observe(view, message, seq=seq, new_id=new_id)
        elif message.tier is Tier.RETRACTION:
            changes = self.engine.retract(view, message, seq=seq, new_id=new_id, now_ns=now_ns)
        else:
            raise ValueError(f"{message.tier} messages do not enter the coincidence cache")
        return Outcome(message, namespace, changes, self.alerts(changes, now_ns, heartbeat_online))

    def alerts(
        self, changes: Changes, now_ns: int, heartbeat_online: Collection[str]
    ) -> list[dict]:
        """The alert documents of a step's events."""
        sent = format_time_ns(now_ns)
        return [
            build_alert(
                event,
                server_tag=self.settings.server_tag,
                heartbeat_online=heartbeat_online,
                false_bursts_per_week=self.settings.false_bursts_per_week,
                threshold_s=self.settings.coincidence_threshold_s,
                sent_time_utc=sent,
            )
            for event in changes.events
        ]

    def attach_localization(
        self, view: StateView, payload: object, *, now_ns: int, heartbeat_online: Collection[str]
    ) -> Outcome:
        """A localize task's result: the coincidence's next revision carries it, if its
        members are still those localized (`CoincidenceEngine.attach_localization`).
        Raises ValueError naming the field of a malformed result."""
        result = parse_attach_payload(payload)
        namespace = namespace_of(result.is_test)
        changes = self.engine.attach_localization(
            view,
            namespace,
            alert_id=result.alert_id,
            key=result.key,
            localization=result.localization,
            reason=reason_of(result.localization),
        )
        return Outcome(None, namespace, changes, self.alerts(changes, now_ns, heartbeat_online))

    def expire(self, view: StateView, namespace: str, *, now_ns: int, new_id: NewId) -> Changes:
        return self.engine.expire(view, namespace, now_ns=now_ns, new_id=new_id)

    def is_online(self, last_heartbeat_ns: int, status: str, now_ns: int) -> bool:
        return status == "ON" and now_ns - last_heartbeat_ns <= self.online_window_ns
