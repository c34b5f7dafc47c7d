"""Observations onto the observation topic, as detectors send them (hop-client).

JSON goes out as hop `JSONBlob`; the "pickle" format sends what snews-pt 3.0.0's
`Publisher` sends, a hop `Blob` holding the pickle of the snews-data-formats
pydantic model, so the ingest's restricted decoder is exercised with the real
thing. Used by `snews-tasks publish` and the canary.
"""

from __future__ import annotations

import pickle
import time
from datetime import timedelta
from typing import Any

from hop.io import Stream
from hop.models import Blob, JSONBlob, MessageModel

from ..core.times import format_time_ns
from ..settings import Settings
from .hop import hop_auth, topic_url

#: Extra wait for delivery reports beyond the produce timeout (librdkafka's timeout scan).
DELIVERY_REPORT_GRACE_S = 2.0
FORMATS = ("json", "pickle")
#: snews-data-formats model class per tier, for the pickle format.
MODEL_FOR_TIER = {
    "CoincidenceTier": "CoincidenceTierMessage",
    "SignificanceTier": "SignificanceTierMessage",
    "TimingTier": "TimingTierMessage",
    "Heartbeat": "HeartbeatMessage",
    "Retraction": "RetractionMessage",
}


class PublishError(RuntimeError):
    """Nothing, or not everything, could be published; the message says which and why."""


def _snews_model(message: dict[str, Any]) -> object:
    try:
        from pydantic import ValidationError
        from snews.models import messages as snews_messages
    except ImportError:
        raise PublishError(
            "--format pickle builds snews-pt's own message models: install "
            "snews-pt 3.0.0 (pip install 'snews-pt==3.0.0')"
        ) from None
    tier = message.get("tier")
    if tier not in MODEL_FOR_TIER:
        raise PublishError(
            f"--format pickle needs 'tier' to be one of {', '.join(MODEL_FOR_TIER)}, got {tier!r}"
        )
    model_class = getattr(snews_messages, MODEL_FOR_TIER[tier])
    try:
        return model_class(**{k: v for k, v in message.items() if k != "tier"})
    except ValidationError as error:
        raise PublishError(
            f"snews-pt refuses the {tier} message from {message.get('detector_name')!r}: {error}"
        ) from None


def encode(message: dict[str, Any], fmt: str) -> MessageModel:
    """The hop message a detector would send: JSON, or snews-pt's pickled model in a Blob."""
    if fmt == "json":
        return JSONBlob(content=message)
    if fmt == "pickle":
        return Blob(content=pickle.dumps(_snews_model(message)))
    raise ValueError(f"fmt: must be one of {', '.join(FORMATS)}, got {fmt!r}")


def publish_observations(
    settings: Settings, messages: list[dict[str, Any]], *, fmt: str = "json"
) -> None:
    """Send `messages` to the observation topic (stamped with sent_time_utc); raise unless
    the broker acknowledged every one within the produce timeout."""
    sent_time = format_time_ns(time.time_ns())
    payloads = [encode({**message, "sent_time_utc": sent_time}, fmt) for message in messages]
    url = topic_url(settings.kafka_url, settings.observation_topic)
    timeout = timedelta(seconds=settings.kafka_produce_timeout_s)
    errors: list[object] = []
    reports = 0

    def on_delivery(error: object, _message: object) -> None:
        nonlocal reports
        reports += 1
        if error is not None:
            errors.append(error)

    writer = Stream(auth=hop_auth(settings.hop_auth)).open(
        url, "w", produce_timeout=timeout, automatic_offload=False
    )
    try:
        for payload in payloads:
            writer.write(payload, delivery_callback=on_delivery)
        writer.flush(timeout + timedelta(seconds=DELIVERY_REPORT_GRACE_S))
    finally:
        writer.close()
    if errors or reports < len(payloads):
        problem = errors[0] if errors else "no delivery report within the produce timeout"
        raise PublishError(
            f"{len(payloads) - reports + len(errors)} of {len(payloads)} "
            f"messages not acknowledged by {url}: {problem}"
        )
