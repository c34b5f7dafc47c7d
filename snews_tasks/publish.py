"""`snews-tasks publish`: test observations onto the observation topic, as detectors send them.

JSON goes out as hop `JSONBlob`; `--format pickle` sends what snews-pt 3.0.0's
`Publisher` sends, a hop `Blob` holding the pickle of the snews-data-formats
pydantic model, so the ingest's restricted decoder is exercised with the real
thing. Everything is a test message (`is_test`) unless a file is published with
`--live --confirm-live`.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

from hop.io import Stream
from hop.models import Blob, JSONBlob, MessageModel

from .messages import format_time_ns
from .settings import Settings

NS_PER_S = 1_000_000_000
#: Extra wait for delivery reports beyond the produce timeout (librdkafka's timeout scan).
DELIVERY_REPORT_GRACE_S = 2.0
FORMATS = ("json", "pickle")
#: snews-data-formats model class per tier, for `--format pickle`.
MODEL_FOR_TIER = {
    "CoincidenceTier": "CoincidenceTierMessage",
    "SignificanceTier": "SignificanceTierMessage",
    "TimingTier": "TimingTierMessage",
    "Heartbeat": "HeartbeatMessage",
    "Retraction": "RetractionMessage",
}


class PublishError(RuntimeError):
    """Nothing, or not everything, could be published; the message says which and why."""


def coincidence_message(detector: str, neutrino_ns: int, *, source: str,
                        meta: dict | None = None) -> dict:
    """A test CoincidenceTier observation with a fresh uuid, tagged with where it came from."""
    return {"tier": "CoincidenceTier", "uuid": str(uuid.uuid4()), "detector_name": detector,
            "neutrino_time_utc": format_time_ns(neutrino_ns), "p_val": 0.01,
            "is_test": True, "meta": {"source": source, **(meta or {})}}


def _three_detector(detectors: tuple[str, ...], now_ns: int) -> list[dict]:
    """SPEC 3's example, 12:30:00/09/11 shifted to end now: two coincidences, two NEW alerts."""
    offsets_s = (-11, -2, 0)
    return [coincidence_message(d, now_ns + s * NS_PER_S, source="example three-detector")
            for d, s in zip(detectors[:3], offsets_s, strict=True)]


def _burst(detectors: tuple[str, ...], now_ns: int) -> list[dict]:
    """Every configured detector within 5 s: the largest alert the system can make."""
    step_ns = 5 * NS_PER_S // max(len(detectors) - 1, 1)
    return [coincidence_message(d, now_ns - 5 * NS_PER_S + i * step_ns, source="example burst20")
            for i, d in enumerate(detectors)]


EXAMPLES = {"three-detector": (_three_detector, 3), "burst20": (_burst, 2)}


def example_messages(name: str, detectors: tuple[str, ...], now_ns: int) -> list[dict]:
    build, needs = EXAMPLES[name]
    if len(detectors) < needs:
        raise PublishError(f"--example {name} needs {needs} configured detectors "
                           f"(SNEWS_DETECTORS has {len(detectors)})")
    return build(detectors, now_ns)


def read_jsonl(path: Path, *, live: bool) -> list[dict]:
    """One JSON object per line; `is_test` is forced on unless `live`."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise PublishError(f"cannot read {path}: {error}") from None
    messages = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            message = json.loads(line)
        except json.JSONDecodeError as error:
            raise PublishError(f"{path}:{number}: not valid JSON: {error}") from None
        if not isinstance(message, dict):
            raise PublishError(f"{path}:{number}: must be a JSON object, "
                               f"got {type(message).__name__}")
        messages.append(message if live else {**message, "is_test": True})
    if not messages:
        raise PublishError(f"{path}: no messages")
    return messages


def _snews_model(message: dict) -> object:
    try:
        from pydantic import ValidationError
        from snews.models import messages as snews_messages
    except ImportError:
        raise PublishError("--format pickle builds snews-pt's own message models: install "
                           "snews-pt 3.0.0 (pip install 'snews-pt==3.0.0')") from None
    tier = message.get("tier")
    if tier not in MODEL_FOR_TIER:
        raise PublishError(f"--format pickle needs 'tier' to be one of "
                           f"{', '.join(MODEL_FOR_TIER)}, got {tier!r}")
    model_class = getattr(snews_messages, MODEL_FOR_TIER[tier])
    try:
        return model_class(**{k: v for k, v in message.items() if k != "tier"})
    except ValidationError as error:
        raise PublishError(f"snews-pt refuses the {tier} message from "
                           f"{message.get('detector_name')!r}: {error}") from None


def encode(message: dict, fmt: str) -> MessageModel:
    """The hop message a detector would send: JSON, or snews-pt's pickled model in a Blob."""
    if fmt == "json":
        return JSONBlob(content=message)
    if fmt == "pickle":
        return Blob(content=pickle.dumps(_snews_model(message)))
    raise ValueError(f"fmt: must be one of {', '.join(FORMATS)}, got {fmt!r}")


def publish_observations(settings: Settings, messages: list[dict], *, fmt: str = "json") -> None:
    """Send `messages` to the observation topic (stamped with sent_time_utc); raise unless
    the broker acknowledged every one within the produce timeout."""
    from .tasks.kafka import hop_auth  # imports the Celery app: not at CLI start

    sent_time = format_time_ns(time.time_ns())
    payloads = [encode({**message, "sent_time_utc": sent_time}, fmt) for message in messages]
    url = f"{settings.kafka_url.rstrip('/')}/{settings.observation_topic}"
    timeout = timedelta(seconds=settings.kafka_produce_timeout_s)
    errors: list[object] = []
    reports = 0

    def on_delivery(error: object, _message: object) -> None:
        nonlocal reports
        reports += 1
        if error is not None:
            errors.append(error)

    writer = Stream(auth=hop_auth(settings.hop_auth)).open(
        url, "w", produce_timeout=timeout, automatic_offload=False)
    try:
        for payload in payloads:
            writer.write(payload, delivery_callback=on_delivery)
        writer.flush(timeout + timedelta(seconds=DELIVERY_REPORT_GRACE_S))
    finally:
        writer.close()
    if errors or reports < len(payloads):
        problem = errors[0] if errors else "no delivery report within the produce timeout"
        raise PublishError(f"{len(payloads) - reports + len(errors)} of {len(payloads)} "
                           f"messages not acknowledged by {url}: {problem}")


def describe(message: dict) -> str:
    """One line per sent message, so the operator can find it in the alerts and the archive."""
    flags = [flag for flag in ("is_test", "is_firedrill") if message.get(flag) is True]
    return (f"{message.get('tier', '?'):<16} {message.get('detector_name', '?'):<11} "
            f"neutrino {message.get('neutrino_time_utc', '-')}  uuid {message.get('uuid', '-')}"
            f"  {' '.join(flags) or 'LIVE'}")


# --- the command ---------------------------------------------------------------------------------

def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "publish",
        help="send test observations to the observation topic",
        description=(
            "Publish observation messages to SNEWS_KAFKA_URL/SNEWS_OBSERVATION_TOPIC with "
            "hop-client, as detectors do. Examples: three-detector (neutrino times now-11 s, "
            "now-2 s, now: two coincidences), burst20 (every configured detector within 5 s). "
            "All messages are test messages (is_test) unless --live --confirm-live."
        ),
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--example", choices=sorted(EXAMPLES), help="a built-in burst")
    source.add_argument("--file", type=Path, metavar="PATH",
                        help="JSONL file, one observation message per line")
    parser.add_argument("--format", choices=FORMATS, default="json", dest="fmt",
                        help="json (hop JSONBlob) or pickle (exactly what snews-pt 3.0.0's "
                             "Publisher sends; needs snews-pt installed); default json")
    parser.add_argument("--live", action="store_true",
                        help="with --file: keep each message's is_test as written (real alerts!)")
    parser.add_argument("--confirm-live", action="store_true",
                        help="required with --live")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        if args.live and args.example:
            raise PublishError("--live applies to --file only; examples are always test messages")
        if args.live and not args.confirm_live:
            raise PublishError("--live publishes messages that can raise real alerts to "
                               "astronomers; add --confirm-live if that is intended")
        if args.example:
            messages = example_messages(args.example, settings.detectors, time.time_ns())
        else:
            messages = read_jsonl(args.file, live=args.live)
        publish_observations(settings, messages, fmt=args.fmt)
    except PublishError as error:
        print(f"snews-tasks publish: {error}", file=sys.stderr)
        return 1
    for message in messages:
        print(f"sent {describe(message)}")
    print(f"published {len(messages)} message(s) as {args.fmt} to "
          f"{settings.kafka_url.rstrip('/')}/{settings.observation_topic}")
    return 0
