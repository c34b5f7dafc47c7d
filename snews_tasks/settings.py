"""Typed settings from ``config/<mode>.env`` plus ``SNEWS_*`` environment variables.

One frozen object, validated once at start-up, so that a typo in a deployment's
configuration stops the process with a message naming the key and where it was
set, instead of surfacing hours later as a missing alert.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

ENV_PREFIX = "SNEWS_"
MODES = ("local", "test", "firedrill", "production")
CONFIG_DIR_VARIABLE = "SNEWS_CONFIG_DIR"
DEFAULT_CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"

KNOWN_DETECTORS = (
    "Baksan", "Borexino", "DS-20K", "DUNE", "HALO", "HALO-1kT", "Hyper-K",
    "IceCube", "JUNO", "KM3NeT", "KamLAND", "LVD", "LZ", "MicroBooNe", "NOvA",
    "PandaX-4T", "SBND", "SNO+", "Super-K", "XENONnT",
)


class SettingsError(ValueError):
    """A configuration value that cannot be used; the message names key, source and problem."""


class Secret:
    """A value that must never reach a log line, a repr or an error message."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "***"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be > 0"


def _non_negative(value: float) -> str | None:
    return None if value >= 0 else "must be >= 0"


def _port(value: int) -> str | None:
    return None if 0 < value < 65536 else "must be a port number between 1 and 65535"


def _mode(value: str) -> str | None:
    return None if value in MODES else f"must be one of {', '.join(MODES)}"


def _url_scheme(*schemes: str) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        scheme, separator, _ = value.partition("://")
        if separator and scheme in schemes:
            return None
        return f"must be a URL starting with {' or '.join(s + '://' for s in schemes)}"
    return check


def _secret_url_scheme(*schemes: str) -> Callable[[Secret], str | None]:
    check_url = _url_scheme(*schemes)
    return lambda secret: check_url(secret.reveal())


def _slack_base_url(value: str) -> str | None:
    if not value.startswith(("http://", "https://")):
        return "must be an http:// or https:// URL"
    return None if value.endswith("/") else "must end with '/' (slack-sdk appends method names)"


def _hop_auth(value: str) -> str | None:
    if value in ("true", "false") or Path(value).is_file():
        return None
    return "must be 'true', 'false' or the path of an existing hop auth file"


def _basic_auth(secret: Secret | None) -> str | None:
    if secret is None:
        return None
    user, colon, password = secret.reveal().partition(":")
    return None if user and colon and password else "must have the form user:password"


def _distinct_names(names: tuple[str, ...]) -> str | None:
    duplicates = sorted({name for name in names if names.count(name) > 1})
    return f"lists {', '.join(duplicates)} more than once" if duplicates else None


def _setting(doc: str, default: Any = dataclasses.MISSING,
             check: Callable[[Any], str | None] | None = None) -> Any:
    return dataclasses.field(default=default, metadata={"doc": doc, "check": check})


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything a process of the deployment needs to know about its surroundings."""

    mode: str = _setting("local, test, firedrill or production; chooses config/<mode>.env",
                         check=_mode)
    server_tag: str = _setting("names the deployment in every alert")
    coincidence_threshold_s: float = _setting(
        "coincidence window T in seconds", 10.0, _positive)
    cache_lifetime_s: float = _setting(
        "an observation leaves the coincidence cache this long after its neutrino time",
        86400.0, _positive)
    max_future_skew_s: float = _setting(
        "neutrino times this far ahead of the clock are still accepted", 60.0, _non_negative)
    detectors: tuple[str, ...] = _setting(
        "comma-separated names of the detectors whose messages are accepted",
        KNOWN_DETECTORS, _distinct_names)
    max_payload_bytes: int = _setting(
        "observation messages larger than this are rejected", 65536, _positive)
    false_bursts_per_week: float = _setting(
        "per-detector false burst rate f of the false-alarm model", 1.0, _positive)
    detector_online_window_s: float = _setting(
        "a heartbeat within this window counts the detector as online", 900.0, _positive)
    broker_url: str = _setting("Celery broker", "redis://127.0.0.1:6379/0")
    result_backend: str = _setting("Celery result backend", "redis://127.0.0.1:6379/0")
    state_redis_url: str = _setting(
        "Redis holding the coincidence state", "redis://127.0.0.1:6379/1",
        _url_scheme("redis", "rediss", "unix"))
    mongo_url: Secret = _setting(
        "MongoDB archive (may hold a password)", Secret("mongodb://127.0.0.1:27017"),
        _secret_url_scheme("mongodb", "mongodb+srv"))
    mongo_db: str = _setting("MongoDB database name", "snews")
    kafka_url: str = _setting("Kafka broker base URL for hop", "kafka://127.0.0.1:9092",
                              _url_scheme("kafka"))
    observation_topic: str = _setting("topic the detectors publish to", "snews.observations")
    alert_topic: str = _setting("topic real alerts go to", "snews.alerts")
    test_alert_topic: str = _setting("topic alerts on is_test messages go to",
                                     "snews.alerts.test")
    hop_auth: str = _setting(
        "'false' (no auth), 'true' (hop's default auth file) or the path of a hop auth file",
        "false", _hop_auth)
    kafka_produce_timeout_s: float = _setting(
        "longest wait for the broker to accept an alert", 10.0, _positive)
    slack_token: Secret | None = _setting("Slack bot token; no Slack posts when unset", None)
    slack_channel: str = _setting("Slack channel for alerts", "#snews-alerts")
    slack_base_url: str = _setting("Slack Web API base URL", "https://slack.com/api/",
                                   _slack_base_url)
    retry_max: int = _setting(
        "retries of a storage, Kafka or Slack task before it is recorded as failed",
        8, _non_negative)
    retry_backoff_s: float = _setting("first retry delay; doubles each retry", 1.0, _positive)
    retry_backoff_max_s: float = _setting("longest retry delay", 300.0, _positive)
    flower_address: str = _setting("address Flower binds", "127.0.0.1")
    flower_port: int = _setting("port Flower binds", 5555, _port)
    flower_basic_auth: Secret | None = _setting(
        "user:password for Flower; required unless mode is local and Flower binds 127.0.0.1",
        None, _basic_auth)
    canary_interval_s: float = _setting("seconds between synthetic test bursts", 300.0,
                                        _positive)

    def __post_init__(self) -> None:
        """Cross-field rules, checked on every construction so no invalid object exists."""
        if self.retry_backoff_max_s < self.retry_backoff_s:
            raise SettingsError(
                f"{_env_name('retry_backoff_max_s')}: must be >= "
                f"{_env_name('retry_backoff_s')} ({self.retry_backoff_s})")
        if self.flower_basic_auth is None and (
                self.mode != "local" or self.flower_address != "127.0.0.1"):
            raise SettingsError(
                f"{_env_name('flower_basic_auth')}: required in {self.mode} mode with Flower "
                f"on {self.flower_address} (Flower must not run unauthenticated); "
                "set it in the environment as user:password")


class SettingDoc(NamedTuple):
    """One documented setting: environment variable, default as written in a .env file, doc."""

    name: str
    default: str
    doc: str


def _env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def _format_value(value: Any) -> str:
    if value is None or value is dataclasses.MISSING:
        return ""
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, Secret):
        return value.reveal()
    return str(value)


def describe_settings() -> list[SettingDoc]:
    """The settings as operators set them, so `--help` and the README cannot drift from code."""
    return [SettingDoc(_env_name(f.name), _format_value(f.default), f.metadata["doc"])
            for f in dataclasses.fields(Settings)]


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def _parse_names(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(","))
    if "" in names:
        raise ValueError(text)
    return names


# Per field type: the parser (raising ValueError) and what a valid value is, for errors.
_PARSERS: dict[Any, tuple[Callable[[str], Any], str]] = {
    str: (str, "a string"),
    int: (int, "an integer"),
    float: (_parse_float, "a finite number"),
    tuple[str, ...]: (_parse_names, "a comma-separated list of non-empty names"),
    Secret: (Secret, "a string"),
    Secret | None: (Secret, "a string"),
}
_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
_TYPES = typing.get_type_hints(Settings)


def _convert(field_name: str, text: str, source: str) -> Any:
    """Turn one raw string into a checked value, without echoing secrets into the error."""
    field_type = _TYPES[field_name]
    is_secret = field_type in (Secret, Secret | None)
    shown = "the value" if is_secret else repr(text)

    def fail(problem: str) -> SettingsError:
        return SettingsError(f"{_env_name(field_name)} ({source}): {shown} {problem}")

    if text == "":
        if field_type == Secret | None:
            return None
        raise fail("must not be empty")
    parse, expected = _PARSERS[field_type]
    try:
        value = parse(text)
    except ValueError:
        raise fail(f"is not {expected}") from None
    check = _FIELDS[field_name].metadata["check"]
    problem = check(value) if check else None
    if problem:
        raise fail(problem)
    return value


def _field_for_key(key: str, source: str) -> str:
    field_name = key[len(ENV_PREFIX):].lower()
    if not key.startswith(ENV_PREFIX) or field_name not in _FIELDS:
        raise SettingsError(f"{key} ({source}): unknown setting")
    return field_name


def _read_env_file(path: Path) -> dict[str, tuple[str, str]]:
    """Parse KEY=value lines; values are literal (no quotes, no inline comments: '#' is data)."""
    entries: dict[str, tuple[str, str]] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise SettingsError(f"cannot read configuration file {path}: {error.strerror}") from None
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        source = f"{path}:{number}"
        key, equals, value = stripped.partition("=")
        key = key.strip()
        if not equals:
            raise SettingsError(f"{source}: expected SNEWS_NAME=value, got {key!r}")
        field_name = _field_for_key(key, source)
        if field_name == "mode":
            raise SettingsError(f"{key} ({source}): the mode is chosen by the file name")
        if field_name in entries:
            raise SettingsError(f"{key} ({source}): set twice (first at {entries[field_name][1]})")
        entries[field_name] = (value.strip(), source)
    return entries


def load_settings(mode: str | None = None,
                  environ: Mapping[str, str] | None = None) -> Settings:
    """Settings for `mode` (else $SNEWS_MODE, else local): its config file, then the environment."""
    environ = os.environ if environ is None else environ
    if mode is not None:
        mode_source = "argument"
    elif "SNEWS_MODE" in environ:
        mode, mode_source = environ["SNEWS_MODE"], "environment"
    else:
        mode, mode_source = "local", "default"
    values: dict[str, Any] = {"mode": _convert("mode", mode, mode_source)}

    config_dir = Path(environ.get(CONFIG_DIR_VARIABLE) or DEFAULT_CONFIG_DIR)
    raw: dict[str, tuple[str, str]] = _read_env_file(config_dir / f"{mode}.env")
    for key, text in environ.items():
        if key.startswith(ENV_PREFIX) and key not in ("SNEWS_MODE", CONFIG_DIR_VARIABLE):
            raw[_field_for_key(key, "environment")] = (text.strip(), "environment")

    for field_name, (text, source) in raw.items():
        values[field_name] = _convert(field_name, text, source)
    missing = [_env_name(name) for name, f in _FIELDS.items()
               if name not in values and f.default is dataclasses.MISSING]
    if missing:
        raise SettingsError(f"{', '.join(missing)}: required, set in "
                            f"{config_dir / (mode + '.env')} or the environment")
    return Settings(**values)
