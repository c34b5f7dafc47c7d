"""Typed settings (pydantic-settings) from ``config/<mode>.env`` plus ``SNEWS_*`` environment
variables.

One frozen object, validated once by the process that starts, so that a typo in a
deployment's configuration stops the process with a message naming the key and where it
was set, instead of surfacing hours later as a missing alert. `load_settings` reads the
mode's file and the environment itself, keeping where each value came from for those
messages; the model then converts and checks every value. Requirements that only one
process role has (Flower's credentials) are checked by that role (`require_flower_auth`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, get_args

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "SNEWS_"
Mode = Literal["local", "test", "dev", "firedrill", "production"]
MODES: tuple[str, ...] = get_args(Mode)
SMTP_TLS_MODES = ("none", "starttls", "tls")
#: What the alert topics carry (README: "Alerts for snews_cs consumers").
ALERT_FORMATS = ("snews_tasks", "with_snews_cs")
GCN_DOMAINS = ("gcn.nasa.gov", "test.gcn.nasa.gov", "dev.gcn.nasa.gov")
CONFIG_DIR_VARIABLE = "SNEWS_CONFIG_DIR"
DEFAULT_CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"

#: A notification's retry waits in the worker that will run it (an ETA task), unacknowledged;
#: the notification queues hand such a message out again after twice this (tasks/app.py), so
#: one held at a broker crash or by a dead worker comes back within a minute.
RETRY_WAIT_MAX_S = 30.0

KNOWN_DETECTORS = (
    "Baksan", "Borexino", "DS-20K", "DUNE", "HALO", "HALO-1kT", "Hyper-K",
    "IceCube", "JUNO", "KM3NeT", "KamLAND", "LVD", "LZ", "MicroBooNe", "NOvA",
    "PandaX-4T", "SBND", "SNO+", "Super-K", "XENONnT",
)  # fmt: skip


class SettingsError(ValueError):
    """A configuration value that cannot be used; the message names key, source and problem."""


# -- value types: each says in its error what a valid value is -------------------------------


def _names(value: object) -> object:
    if not isinstance(value, str):
        return value
    names = tuple(name.strip() for name in value.split(","))
    if "" in names:
        raise ValueError("is not a comma-separated list of non-empty names")
    return names


def _distinct(names: tuple[str, ...]) -> tuple[str, ...]:
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"lists {', '.join(repeated)} more than once")
    return names


def _check_url(value: str, schemes: tuple[str, ...]) -> None:
    scheme, separator, _ = value.partition("://")
    if not (separator and scheme in schemes):
        raise ValueError(f"must be a URL starting with {' or '.join(s + '://' for s in schemes)}")


def _url(*schemes: str) -> AfterValidator:
    def check(value: str) -> str:
        _check_url(value, schemes)
        return value

    return AfterValidator(check)


def _secret_url(*schemes: str) -> AfterValidator:
    def check(value: SecretStr) -> SecretStr:
        _check_url(value.get_secret_value(), schemes)
        return value

    return AfterValidator(check)


def _slack_base_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL")
    if not value.endswith("/"):
        raise ValueError("must end with '/' (slack-sdk appends method names)")
    return value


def _hop_auth(value: str) -> str:
    if value in ("true", "false") or Path(value).is_file():
        return value
    raise ValueError("must be 'true', 'false' or the path of an existing hop auth file")


def _port(value: int) -> int:
    if not 0 < value < 65536:
        raise ValueError("must be a port number between 1 and 65535")
    return value


def _basic_auth(value: SecretStr | None) -> SecretStr | None:
    if value is not None:
        user, colon, password = value.get_secret_value().partition(":")
        if not (user and colon and password):
            raise ValueError("must have the form user:password")
    return value


def _one_of(choices: tuple[str, ...]) -> AfterValidator:
    def check(value: str) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value

    return AfterValidator(check)


def _unset_if_empty(value: object) -> object:
    return None if value == "" else value


OptionalText = Annotated[str | None, BeforeValidator(_unset_if_empty)]


def _nside(value: int) -> int:
    if not (1 <= value <= 1024 and value & (value - 1) == 0):
        raise ValueError("must be a power of 2 from 1 to 1024")
    return value


def _existing_file(value: Path | None) -> Path | None:
    if value is not None and not value.is_file():
        raise ValueError("must be the path of an existing file")
    return value


def _public_base_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL")
    return value.rstrip("/")


PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegativeFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Text = Annotated[str, Field(min_length=1)]
Names = Annotated[tuple[str, ...], BeforeValidator(_names), AfterValidator(_distinct)]
OptionalSecret = Annotated[SecretStr | None, BeforeValidator(_unset_if_empty)]


class Settings(BaseSettings):
    """Everything a process of the deployment needs to know about its surroundings."""

    model_config = SettingsConfigDict(frozen=True, extra="forbid", validate_default=True)

    mode: Mode = Field(
        description="local, test, dev, firedrill or production; chooses config/<mode>.env"
    )
    server_tag: Text = Field(description="names the deployment in every alert")
    coincidence_threshold_s: PositiveFloat = Field(
        10.0, description="coincidence window T in seconds"
    )
    cache_lifetime_s: PositiveFloat = Field(
        86400.0,
        description="an observation leaves the coincidence cache this long after its neutrino time",
    )
    max_future_skew_s: NonNegativeFloat = Field(
        60.0, description="neutrino times this far ahead of the clock are still accepted"
    )
    detectors: Names = Field(
        KNOWN_DETECTORS,
        description="comma-separated names of the detectors whose messages are accepted",
    )
    max_payload_bytes: Annotated[int, Field(gt=0)] = Field(
        65536, description="observation messages larger than this are rejected"
    )
    false_bursts_per_week: PositiveFloat = Field(
        1.0, description="per-detector false burst rate f of the false-alarm model"
    )
    detector_online_window_s: PositiveFloat = Field(
        900.0, description="a heartbeat within this window counts the detector as online"
    )
    broker_url: Annotated[str, _url("redis", "rediss", "sentinel")] = Field(
        "redis://127.0.0.1:6379/0", description="Celery broker (redis:// or sentinel:// URL)"
    )
    result_backend: Annotated[str, _url("redis", "rediss", "sentinel")] = Field(
        "redis://127.0.0.1:6379/0",
        description="Celery result backend (redis:// or sentinel:// URL)",
    )
    state_redis_url: Annotated[str, _url("redis", "rediss", "unix", "sentinel")] = Field(
        "redis://127.0.0.1:6379/1",
        description="Redis holding the coincidence state (redis:// or sentinel:// URL)",
    )
    redis_sentinel_master: Text = Field(
        "snews",
        description="name of the Redis primary the sentinels watch (with sentinel:// URLs: "
        "sentinel://HOST:PORT;sentinel://HOST:PORT/DB)",
    )
    mongo_url: Annotated[SecretStr, _secret_url("mongodb", "mongodb+srv")] = Field(
        SecretStr("mongodb://127.0.0.1:27017"), description="MongoDB archive (may hold a password)"
    )
    mongo_db: Text = Field("snews", description="MongoDB database name")
    kafka_url: Annotated[str, _url("kafka")] = Field(
        "kafka://127.0.0.1:9092", description="Kafka broker base URL for hop"
    )
    observation_topic: Text = Field(
        "snews.observations", description="topic the detectors publish to"
    )
    alert_topic: Text = Field("snews.alerts", description="topic real alerts go to")
    test_alert_topic: Text = Field(
        "snews.alerts.test", description="topic alerts on is_test messages go to"
    )
    connection_test_topic: Text = Field(
        "snews.connection-testing",
        description="topic `snews_pt test-connection` listens on for its message's echo",
    )
    connection_test_echoes_per_minute: Annotated[int, Field(ge=1)] = Field(
        6, description="most connection-test echoes written per detector per minute"
    )
    alert_format: Annotated[str, _one_of(ALERT_FORMATS)] = Field(
        "snews_tasks",
        description="snews_tasks (the alert as archived) or with_snews_cs (the same with "
        "the alert keys of snews_cs 3.0.1 beside it)",
    )
    gcn_notices: bool = Field(
        True, description="publish each live and fire-drill alert revision as a GCN notice"
    )
    gcn_notice_topic: Text = Field(
        "gcn.notices.snews2.coincidence",
        description="topic of the GCN notices (on GCN's broker when GCN credentials are set, "
        "else on SNEWS_KAFKA_URL)",
    )
    gcn_client_id: OptionalSecret = Field(
        None, description="GCN Kafka client id; with the secret, notices go to GCN"
    )
    gcn_client_secret: OptionalSecret = Field(None, description="GCN Kafka client secret")
    gcn_domain: Annotated[str, _one_of(GCN_DOMAINS)] = Field(
        "gcn.nasa.gov", description="GCN domain (test.gcn.nasa.gov for GCN's test system)"
    )
    hop_auth: Annotated[str, AfterValidator(_hop_auth)] = Field(
        "false",
        description="'false' (no auth), 'true' (hop's default auth file) or the path of a "
        "hop auth file",
    )
    kafka_produce_timeout_s: PositiveFloat = Field(
        10.0, description="longest wait for the broker to accept an alert"
    )
    slack_token: OptionalSecret = Field(
        None, description="Slack bot token; no Slack posts when unset"
    )
    slack_channel: Text = Field("#snews-alerts", description="Slack channel for alerts")
    slack_base_url: Annotated[str, AfterValidator(_slack_base_url)] = Field(
        "https://slack.com/api/", description="Slack Web API base URL"
    )
    retry_max: Annotated[int, Field(ge=0)] = Field(
        20, description="retries of a storage, Kafka or Slack task before it is recorded as failed"
    )
    retry_backoff_s: PositiveFloat = Field(1.0, description="first retry delay; doubles each retry")
    retry_backoff_max_s: Annotated[float, Field(gt=0, le=RETRY_WAIT_MAX_S)] = Field(
        RETRY_WAIT_MAX_S,
        description=f"longest retry delay (at most {RETRY_WAIT_MAX_S:g} s: a retry waits in "
        "its worker, and a held notification is handed out again after twice that)",
    )
    flower_address: Text = Field("127.0.0.1", description="address Flower binds")
    flower_port: Annotated[int, AfterValidator(_port)] = Field(
        5555, description="port Flower binds"
    )
    flower_basic_auth: Annotated[OptionalSecret, AfterValidator(_basic_auth)] = Field(
        None,
        description="user:password for Flower; required unless mode is local and Flower "
        "binds 127.0.0.1",
    )
    canary_interval_s: PositiveFloat = Field(
        300.0, description="seconds between synthetic test bursts"
    )
    # -- detector feedback, e-mail and the web console (README: "Detector feedback")
    slack_operations_channel: Text = Field(
        "#snews-operations",
        description="Slack channel for operations notices: missed and back heartbeat events",
    )
    heartbeat_check_interval_s: PositiveFloat = Field(
        30.0, description="seconds between checks of every detector's heartbeats"
    )
    contacts_file: Text = Field(
        "config/contacts.json",
        description="JSON file of each detector's e-mail contacts (relative paths: from the "
        "checkout)",
    )
    smtp_host: Text = Field("127.0.0.1", description="SMTP server for feedback mails")
    smtp_port: Annotated[int, AfterValidator(_port)] = Field(25, description="SMTP server port")
    smtp_tls: Annotated[str, _one_of(SMTP_TLS_MODES)] = Field(
        "none", description="none, starttls (upgrade after connecting) or tls (TLS from the start)"
    )
    smtp_user: OptionalText = Field(None, description="SMTP login user; no login when unset")
    smtp_password: OptionalSecret = Field(None, description="SMTP login password")
    mail_from: Text = Field(
        "SNEWS heartbeats <snews-heartbeats@localhost>",
        description="From: address of feedback mails",
    )
    console_address: Text = Field("127.0.0.1", description="address the web console binds")
    console_port: Annotated[int, AfterValidator(_port)] = Field(
        5580, description="port the web console binds"
    )
    console_basic_auth: Annotated[OptionalSecret, AfterValidator(_basic_auth)] = Field(
        None,
        description="user:password for the web console; required unless mode is local and "
        "it binds 127.0.0.1",
    )

    @model_validator(mode="after")
    def _credentials_in_pairs(self) -> Settings:
        for first, second in (
            ("gcn_client_id", "gcn_client_secret"),
            ("smtp_user", "smtp_password"),
        ):
            if (getattr(self, first) is None) != (getattr(self, second) is None):
                raise ValueError(f"{env_name(first)} and {env_name(second)}: set both or neither")
        return self

    localization: bool = Field(
        True,
        description="localize each coincidence revision on the localization queue "
        "(workers/localize); false: alerts carry no sky map",
    )
    detector_sites_file: Annotated[
        Path | None, BeforeValidator(_unset_if_empty), AfterValidator(_existing_file)
    ] = Field(
        None,
        description="JSON file of detector sites and timing errors replacing the shipped "
        "snews_tasks/data/detector_sites.json",
    )
    skymap_nside: Annotated[int, AfterValidator(_nside)] = Field(
        64, description="HEALPix resolution of the sky maps (a power of 2, 1 to 1024)"
    )
    public_base_url: Annotated[str, AfterValidator(_public_base_url)] = Field(
        "http://127.0.0.1:5580",
        description="base URL of the web console; alerts link each sky map as "
        "{this URL}/skymaps/{file name}",
    )
    significance_window_s: PositiveFloat = Field(
        3600.0,
        description="significance-tier messages anchored this close to a new one are "
        "combined with it bin by bin",
    )
    significance_alert_sigma: Annotated[PositiveFloat | None, BeforeValidator(_unset_if_empty)] = (
        Field(
            None,
            description="a significance-tier combination at least this many sigma raises an "
            "alert; unset (the default): never",
        )
    )

    @model_validator(mode="after")
    def _backoff_cap(self) -> Settings:
        if self.retry_backoff_max_s < self.retry_backoff_s:
            raise ValueError(
                f"{env_name('retry_backoff_max_s')}: must be >= "
                f"{env_name('retry_backoff_s')} ({self.retry_backoff_s})"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only what `load_settings` passes: it reads the mode's file and the environment
        itself, so that an error can say which line or variable set the bad value."""
        return (init_settings,)


def _require_auth(
    auth: SecretStr | None, address: str, settings: Settings, field: str, what: str
) -> None:
    """What serves the operators' view may be open only to this machine, in local mode."""
    if auth is None and (settings.mode != "local" or address != "127.0.0.1"):
        raise SettingsError(
            f"{env_name(field)}: required in {settings.mode} mode with {what} on {address} "
            f"({what} must not run unauthenticated); set it in the environment as user:password"
        )


def require_console_auth(settings: Settings) -> None:
    """The web console follows Flower's rule: open only in local mode on 127.0.0.1."""
    _require_auth(
        settings.console_basic_auth,
        settings.console_address,
        settings,
        "console_basic_auth",
        "the console",
    )


def require_flower_auth(settings: Settings) -> None:
    """Flower (and anything else serving the operators' view) must not run unauthenticated
    outside local mode on 127.0.0.1; checked by the process that serves it, not by every one."""
    _require_auth(
        settings.flower_basic_auth,
        settings.flower_address,
        settings,
        "flower_basic_auth",
        "Flower",
    )


def gcn_credentials(settings: Settings) -> tuple[str, str] | None:
    """GCN's client id and secret when both are set (the model refuses one alone)."""
    if settings.gcn_client_id is None or settings.gcn_client_secret is None:
        return None
    return settings.gcn_client_id.get_secret_value(), settings.gcn_client_secret.get_secret_value()


# -- documentation ------------------------------------------------------------------------------


class SettingDoc(NamedTuple):
    """One documented setting: environment variable, default as written in a .env file, doc."""

    name: str
    default: str
    doc: str


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def _as_text(value: Any) -> str:
    if value is None or value is PydanticUndefined:
        return ""
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return str(value)


def describe_settings() -> list[SettingDoc]:
    """The settings as operators set them, so `--help` and the README cannot drift from code."""
    return [
        SettingDoc(env_name(name), _as_text(field.default), field.description or "")
        for name, field in Settings.model_fields.items()
    ]


# -- loading --------------------------------------------------------------------------------------

#: How pydantic's error types read in a message about one raw setting.
_PROBLEMS = {
    "float_parsing": "is not a finite number",
    "finite_number": "is not a finite number",
    "int_parsing": "is not an integer",
    "int_from_float": "is not an integer",
    "string_too_short": "must not be empty",
    "literal_error": f"must be one of {', '.join(MODES)}",
    "bool_parsing": "is not true or false",
}


def _problem(error: Mapping[str, Any]) -> str:
    kind = error["type"]
    if kind in _PROBLEMS:
        return _PROBLEMS[kind]
    signs = {
        "greater_than": ">",
        "greater_than_equal": ">=",
        "less_than": "<",
        "less_than_equal": "<=",
    }
    if kind in signs:
        return f"must be {signs[kind]} {next(iter(error['ctx'].values()))}"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def _field_for_key(key: str, source: str) -> str:
    field_name = key[len(ENV_PREFIX) :].lower()
    if not key.startswith(ENV_PREFIX) or field_name not in Settings.model_fields:
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
        if field_name in _ENVIRONMENT_ONLY:
            raise SettingsError(f"{key} ({source}): a credential, set only in the environment")
        if field_name in entries:
            raise SettingsError(f"{key} ({source}): set twice (first at {entries[field_name][1]})")
        entries[field_name] = (value.strip(), source)
    return entries


def load_settings(mode: str | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings for `mode` (else $SNEWS_MODE, else local): its config file, then the environment."""
    environ = os.environ if environ is None else environ
    if mode is not None:
        mode_source = "argument"
    elif "SNEWS_MODE" in environ:
        mode, mode_source = environ["SNEWS_MODE"], "environment"
    else:
        mode, mode_source = "local", "default"
    raw: dict[str, tuple[str, str]] = {"mode": (mode, mode_source)}
    if mode in MODES:
        config_file = Path(environ.get(CONFIG_DIR_VARIABLE) or DEFAULT_CONFIG_DIR) / f"{mode}.env"
        raw |= _read_env_file(config_file)
    for key, text in environ.items():
        if key.startswith(ENV_PREFIX) and key not in ("SNEWS_MODE", CONFIG_DIR_VARIABLE):
            raw[_field_for_key(key, "environment")] = (text.strip(), "environment")
    try:
        return Settings.model_validate({name: text for name, (text, _) in raw.items()})
    except ValidationError as invalid:
        raise _explained(invalid, raw) from None


def _explained(invalid: ValidationError, raw: Mapping[str, tuple[str, str]]) -> SettingsError:
    """The first problem, naming the variable, where it was set and (unless secret) its value."""
    error = invalid.errors(include_url=False)[0]
    if not error["loc"]:  # a rule across settings: its message names them
        return SettingsError(_problem(error))
    field_name = str(error["loc"][0])
    if error["type"] == "missing":
        return SettingsError(
            f"{env_name(field_name)}: required, set in config/<mode>.env or the environment"
        )
    text, source = raw[field_name]
    shown = "the value" if field_name in _SECRETS else repr(text)
    return SettingsError(f"{env_name(field_name)} ({source}): {shown} {_problem(error)}")


#: Credentials that a configuration file (committed with the code) must never hold.
_ENVIRONMENT_ONLY = frozenset({"gcn_client_id", "gcn_client_secret"})

#: Settings whose values never appear in a message.
_SECRETS = frozenset(
    name for name, field in Settings.model_fields.items() if "SecretStr" in str(field.annotation)
)
