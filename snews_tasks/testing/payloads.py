"""Payloads built with the real snews-pt 3.0.0 / snews-data-formats packages.

Tests decode exactly what detectors send, not hand-written imitations.
"""

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from unittest import mock

import snews_pt.messages
from hop.models import Blob
from pydantic import BaseModel
from snews.models.messages import (
    CoincidenceTierMessage,
    HeartbeatMessage,
    RetractionMessage,
    SignificanceTierMessage,
    TimingTierMessage,
)

DETECTORS = ("Super-K", "IceCube", "JUNO", "KamLAND")
NANOS = "123456789"


def recent_time_utc(seconds_ago: int = 60) -> str:
    """A neutrino time the models accept for real (non-test) messages, with all 9 ns digits."""
    moment = datetime.now(UTC) - timedelta(seconds=seconds_ago)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{NANOS}Z"


@contextmanager
def _quiet_models() -> Iterator[None]:
    """snews-data-formats warns via numpy on every 'Z' time; that noise hides real warnings."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "parsing timezone aware datetimes", DeprecationWarning)
        yield


def coincidence_model(**fields: object) -> CoincidenceTierMessage:
    with _quiet_models():
        return CoincidenceTierMessage(
            **{"detector_name": "Super-K", "neutrino_time_utc": recent_time_utc(), **fields}
        )


def tier_models() -> dict[str, BaseModel]:
    """One valid model of each tier, keyed by the tier name it carries."""
    with _quiet_models():
        return _build_tier_models()


def _build_tier_models() -> dict[str, BaseModel]:
    neutrino_time = recent_time_utc()
    common = {"detector_name": "Super-K", "machine_time_utc": neutrino_time, "meta": {"run": 7}}
    models = [
        CoincidenceTierMessage(**common, neutrino_time_utc=neutrino_time, p_val=0.07),
        SignificanceTierMessage(**common, p_values=[0.5, 0.01], t_bin_width_sec=0.25),
        TimingTierMessage(
            **common,
            neutrino_time_utc=neutrino_time,
            start_time_utc=neutrino_time,
            timing_series=[0, 15, 210],
            background_rate_Hz=3.5,
            detection_channel="Electron Antineutrino",
        ),
        HeartbeatMessage(**common, detector_status="ON"),
        RetractionMessage(**common, retract_latest_n=1, retraction_reason="noise burst"),
    ]
    return {model.tier.value: model for model in models}


def published_blobs(fields: dict) -> list[Blob]:
    """The Blobs `snews_pt.messages.Publisher.send` writes for `fields`, without Kafka."""
    written: list[Blob] = []
    stream = mock.MagicMock()
    stream.return_value.open.return_value.__enter__.return_value.write = written.append
    publisher = snews_pt.messages.Publisher("kafka://localhost/snews-test", auth=False)
    with _quiet_models():
        publisher.add_message(fields)
    with mock.patch.object(snews_pt.messages, "Stream", stream), _quiet_models():
        publisher.send()
    return written
