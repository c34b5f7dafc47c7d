from __future__ import annotations

from pathlib import Path

import pytest
import snews_pt

from snews_tasks.settings import (
    KNOWN_DETECTORS, Settings, SettingsError, describe_settings, gcn_credentials, load_settings,
    require_console_auth,
    require_flower_auth,
)

FLOWER_AUTH = {"SNEWS_FLOWER_BASIC_AUTH": "operator:s3cret-pw"}


def write_config(directory: Path, mode: str, text: str) -> dict[str, str]:
    (directory / f"{mode}.env").write_text(text)
    return {"SNEWS_CONFIG_DIR": str(directory)}


def test_local_defaults_from_the_repository_config() -> None:
    settings = load_settings(environ={})
    assert settings.mode == "local"
    assert settings.server_tag == "local"
    assert settings.coincidence_threshold_s == 10.0
    assert settings.detectors == KNOWN_DETECTORS
    assert len(settings.detectors) == 20
    assert settings.state_redis_url == "redis://127.0.0.1:6379/1"
    assert settings.mongo_url.get_secret_value() == "mongodb://127.0.0.1:27017"
    assert settings.slack_token is None
    assert settings.flower_basic_auth is None


def test_mode_comes_from_the_environment_when_not_given() -> None:
    settings = load_settings(environ={"SNEWS_MODE": "test"})
    assert (settings.mode, settings.server_tag) == ("test", "test")


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    environ = write_config(tmp_path, "local", "SNEWS_SERVER_TAG=from-file\n"
                                              "SNEWS_COINCIDENCE_THRESHOLD_S=10\n")
    environ |= {"SNEWS_COINCIDENCE_THRESHOLD_S": "2.5", "SNEWS_DETECTORS": "JUNO, Super-K"}
    settings = load_settings("local", environ)
    assert settings.server_tag == "from-file"
    assert settings.coincidence_threshold_s == 2.5
    assert settings.detectors == ("JUNO", "Super-K")


def test_comments_and_blank_lines_are_ignored_and_hash_in_values_is_data(tmp_path: Path) -> None:
    environ = write_config(tmp_path, "local", "# a comment\n\n  SNEWS_SERVER_TAG = x \n"
                                              "SNEWS_SLACK_CHANNEL=#alerts\n")
    settings = load_settings("local", environ)
    assert (settings.server_tag, settings.slack_channel) == ("x", "#alerts")


def test_unknown_key_in_file_names_key_and_line(tmp_path: Path) -> None:
    environ = write_config(tmp_path, "local", "SNEWS_SERVER_TAG=x\n\nSNEWS_COINCIDENSE_S=5\n")
    with pytest.raises(SettingsError, match=r"SNEWS_COINCIDENSE_S .*local\.env:3.*unknown"):
        load_settings("local", environ)


def test_unknown_key_in_environment_names_key_and_source() -> None:
    with pytest.raises(SettingsError, match=r"SNEWS_SLACK_TOKN \(environment\): unknown"):
        load_settings("local", {"SNEWS_SLACK_TOKN": "xoxb-1"})


def test_malformed_float_names_key_source_and_value() -> None:
    with pytest.raises(SettingsError, match=r"SNEWS_COINCIDENCE_THRESHOLD_S \(environment\): "
                                            r"'ten' is not a finite number"):
        load_settings("local", {"SNEWS_COINCIDENCE_THRESHOLD_S": "ten"})


@pytest.mark.parametrize(("key", "value", "problem"), [
    ("SNEWS_COINCIDENCE_THRESHOLD_S", "0", "must be > 0"),
    ("SNEWS_MAX_FUTURE_SKEW_S", "-1", "must be >= 0"),
    ("SNEWS_COINCIDENCE_THRESHOLD_S", "nan", "is not a finite number"),
    ("SNEWS_RETRY_MAX", "2.5", "is not an integer"),
    ("SNEWS_FLOWER_PORT", "70000", "port number"),
    ("SNEWS_DETECTORS", "JUNO,,IceCube", "list of non-empty names"),
    ("SNEWS_DETECTORS", "JUNO,JUNO", "JUNO more than once"),
    ("SNEWS_KAFKA_URL", "127.0.0.1:9092", "kafka://"),
    ("SNEWS_SLACK_BASE_URL", "http://127.0.0.1:1/api", "must end with '/'"),
    ("SNEWS_HOP_AUTH", "/nonexistent/auth.toml", "existing hop auth file"),
    ("SNEWS_SERVER_TAG", "", "must not be empty"),
])
def test_bad_values_are_rejected_with_the_problem(key: str, value: str, problem: str) -> None:
    with pytest.raises(SettingsError, match=rf"{key} \(environment\): .*{problem}"):
        load_settings("local", {key: value})


def test_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    environ = write_config(tmp_path, "local", "SNEWS_SERVER_TAG=x\nSNEWS_ALERT_TOPIC\n")
    with pytest.raises(SettingsError, match=r"local\.env:2: expected SNEWS_NAME=value"):
        load_settings("local", environ)


def test_key_set_twice_in_a_file_is_an_error(tmp_path: Path) -> None:
    environ = write_config(tmp_path, "local", "SNEWS_SERVER_TAG=x\nSNEWS_SERVER_TAG=y\n")
    with pytest.raises(SettingsError, match=r"SNEWS_SERVER_TAG .*:2\): set twice .*:1\)"):
        load_settings("local", environ)


def test_missing_server_tag_is_reported(tmp_path: Path) -> None:
    environ = write_config(tmp_path, "local", "# nothing\n")
    with pytest.raises(SettingsError, match=r"SNEWS_SERVER_TAG: required"):
        load_settings("local", environ)


def test_unknown_mode_and_missing_file_are_errors(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"SNEWS_MODE \(argument\): 'staging' must be one of"):
        load_settings("staging", {})
    with pytest.raises(SettingsError, match=r"cannot read configuration file .*firedrill\.env"):
        load_settings("firedrill", {"SNEWS_CONFIG_DIR": str(tmp_path)})


def test_secrets_never_appear_in_repr_str_or_errors() -> None:
    token = "xoxb-very-secret-token"
    settings = load_settings("production", {"SNEWS_SLACK_TOKEN": token,
                                            "SNEWS_MONGO_URL": "mongodb://u:pw123@db:27017"}
                             | FLOWER_AUTH)
    assert settings.slack_token is not None and settings.slack_token.get_secret_value() == token
    text = repr(settings) + str(settings) + str(settings.slack_token)
    for secret in (token, "pw123", "s3cret-pw"):
        assert secret not in text
    with pytest.raises(SettingsError) as raised:
        load_settings("local", {"SNEWS_FLOWER_BASIC_AUTH": "no-colon-secret"})
    assert "SNEWS_FLOWER_BASIC_AUTH" in str(raised.value)
    assert "no-colon-secret" not in str(raised.value)


def test_empty_optional_secret_means_unset() -> None:
    assert load_settings("local", {"SNEWS_SLACK_TOKEN": ""}).slack_token is None


def test_flower_in_production_needs_auth_from_the_environment_and_nothing_else_does() -> None:
    without = load_settings("production", {})  # status, the workers, the ingest: no Flower
    with pytest.raises(SettingsError, match=r"SNEWS_FLOWER_BASIC_AUTH: required in production"):
        require_flower_auth(without)
    settings = load_settings("production", FLOWER_AUTH)
    require_flower_auth(settings)
    assert settings.flower_basic_auth is not None
    assert settings.flower_basic_auth.get_secret_value() == "operator:s3cret-pw"
    assert settings.hop_auth == "true"


def test_flower_beyond_localhost_needs_auth_even_locally() -> None:
    require_flower_auth(load_settings("local", {}))
    with pytest.raises(SettingsError, match="SNEWS_FLOWER_BASIC_AUTH: required"):
        require_flower_auth(load_settings("local", {"SNEWS_FLOWER_ADDRESS": "0.0.0.0"}))


def test_firedrill_and_production_differ_only_in_topics_channel_and_tag() -> None:
    firedrill = load_settings("firedrill", FLOWER_AUTH).model_dump()
    production = load_settings("production", FLOWER_AUTH).model_dump()
    differing = {name for name in production if production[name] != firedrill[name]}
    assert differing == {"mode", "server_tag", "observation_topic", "alert_topic",
                         "test_alert_topic", "slack_channel"}


def test_retry_backoff_cap_below_start_is_rejected() -> None:
    with pytest.raises(SettingsError, match="SNEWS_RETRY_BACKOFF_MAX_S: must be >="):
        load_settings("local", {"SNEWS_RETRY_BACKOFF_S": "10", "SNEWS_RETRY_BACKOFF_MAX_S": "5"})


def test_describe_settings_covers_every_field_with_doc_and_file_syntax_default() -> None:
    described = {doc.name: doc for doc in describe_settings()}
    assert set(described) == {"SNEWS_" + name.upper() for name in Settings.model_fields}
    assert all(doc.doc for doc in described.values())
    assert described["SNEWS_COINCIDENCE_THRESHOLD_S"].default == "10.0"
    assert described["SNEWS_DETECTORS"].default == ",".join(KNOWN_DETECTORS)
    assert described["SNEWS_SLACK_TOKEN"].default == ""


def test_every_described_default_loads_back_to_the_same_value(tmp_path: Path) -> None:
    lines = [f"{doc.name}={doc.default}" for doc in describe_settings()
             if doc.default and doc.name != "SNEWS_MODE"]
    environ = write_config(tmp_path, "local", "SNEWS_SERVER_TAG=x\n" + "\n".join(lines))
    assert load_settings("local", environ) == Settings(mode="local", server_tag="x")


def test_readme_documents_every_setting_as_the_code_does() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    rows = [f"| `{doc.name}` | {f'`{doc.default}`' if doc.default else ''} | {doc.doc} |"
            for doc in describe_settings()]
    missing = [row for row in rows if row not in readme]
    assert not missing, ("README.md settings table is out of date; expected rows:\n"
                         + "\n".join(rows))


def test_console_follows_flowers_rule_and_smtp_login_comes_in_pairs() -> None:
    require_console_auth(load_settings("local", {}))
    for mode, environ in (("production", {}), ("local", {"SNEWS_CONSOLE_ADDRESS": "0.0.0.0"})):
        with pytest.raises(SettingsError, match="SNEWS_CONSOLE_BASIC_AUTH: required"):
            require_console_auth(load_settings(mode, environ))
    require_console_auth(load_settings("production", {"SNEWS_CONSOLE_BASIC_AUTH": "ops:pw"}))
    with pytest.raises(SettingsError, match="SNEWS_SMTP_USER and SNEWS_SMTP_PASSWORD"):
        load_settings("local", {"SNEWS_SMTP_USER": "snews"})
    with pytest.raises(SettingsError) as raised:
        load_settings("local", {"SNEWS_SMTP_TLS": "ssl3", "SNEWS_SMTP_PASSWORD": "hunter2"})
    assert "SNEWS_SMTP_TLS (environment): 'ssl3' must be one of none, starttls, tls" in str(
        raised.value)
    assert "hunter2" not in str(raised.value)


def _snews_pt_topics(profile: str) -> dict[str, str]:
    """Topic names in snews-pt 3.0.0's shipped broker profile (auxiliary/<profile>-config.env)."""
    text = (Path(snews_pt.__file__).parent / "auxiliary" / f"{profile}-config.env").read_text()
    return {key: value.strip('"').rsplit("/", 1)[-1]
            for key, _, value in (line.partition("=") for line in text.splitlines())
            if key.endswith("TOPIC") and value.strip('"')}


@pytest.mark.parametrize(("mode", "profile", "observations", "alerts"), [
    ("dev", "dev", "OBSERVATION_TOPIC", "ALERT_TOPIC"),
    ("firedrill", "prod", "FIREDRILL_OBSERVATION_TOPIC", "FIREDRILL_ALERT_TOPIC"),
    ("production", "prod", "OBSERVATION_TOPIC", "ALERT_TOPIC"),
])
def test_collaboration_modes_use_the_topics_snews_pt_ships(mode: str, profile: str,
                                                           observations: str,
                                                           alerts: str) -> None:
    settings = load_settings(mode, FLOWER_AUTH)
    shipped = _snews_pt_topics(profile)
    assert settings.observation_topic == shipped[observations]
    assert settings.alert_topic == shipped[alerts]
    assert settings.connection_test_topic == shipped["CONNECTION_TEST_TOPIC"]
    # The canary's test alerts every few minutes never reach the collaboration's subscribers.
    assert settings.test_alert_topic not in shipped.values()
    assert settings.alert_format == "with_snews_cs" and settings.hop_auth == "true"


def test_gcn_credentials_come_in_pairs_and_only_from_the_environment(tmp_path: Path) -> None:
    assert gcn_credentials(load_settings("local", {})) is None
    pair = {"SNEWS_GCN_CLIENT_ID": "client", "SNEWS_GCN_CLIENT_SECRET": "hunter2"}
    assert gcn_credentials(load_settings("local", pair)) == ("client", "hunter2")
    with pytest.raises(SettingsError, match="SNEWS_GCN_CLIENT_ID and SNEWS_GCN_CLIENT_SECRET"):
        load_settings("local", {"SNEWS_GCN_CLIENT_ID": "client"})
    environ = write_config(tmp_path, "local", "SNEWS_GCN_CLIENT_SECRET=hunter2\n")
    with pytest.raises(SettingsError, match="only in the environment") as raised:
        load_settings("local", environ)
    assert "hunter2" not in str(raised.value)
    with pytest.raises(SettingsError, match="must be one of gcn.nasa.gov, test.gcn.nasa.gov"):
        load_settings("local", {"SNEWS_GCN_DOMAIN": "gcn.example"})
