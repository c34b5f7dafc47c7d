"""SlackPoster with the real slack_sdk over real HTTP against the fake Slack API."""

from __future__ import annotations

import re
import urllib.error
from typing import Any

import pytest
from slack_sdk.errors import SlackApiError

from snews_tasks.testing.builders import utc
from snews_tasks.entrypoints.localstack import free_port
from snews_tasks.adapters.retry_policies import slack_policy
from snews_tasks.settings import load_settings
from snews_tasks.core.slack_blocks import slack_blocks
from snews_tasks.adapters.slack import SlackPoster, open_slack
from snews_tasks.testing.slack_api import channel_id

pytestmark = pytest.mark.integration

ALERT: dict[str, Any] = {
    "alert_id": "c-000042", "revision": 1, "alert_type": "NEW",
    "detector_names": ["JUNO", "KamLAND"],
    "neutrino_times_utc": [utc(0), utc(2)],
    "p_values": [0.01, 0.02], "observation_uuids": ["u1", "u2"],
    "initial_neutrino_time_utc": utc(0),
    "false_alarm_rate_per_year": 0.5, "false_alarm_rate_reason": "2-fold",
    "detectors_online": 5, "is_test": False, "is_firedrill": False, "server_tag": "test",
    "sent_time_utc": utc(3), "schema_version": "1.0",
}


def settings_for(base_url: str, token: str | None = "xoxb-test-token"):
    environ = {"SNEWS_SLACK_BASE_URL": base_url}
    if token is not None:
        environ["SNEWS_SLACK_TOKEN"] = token
    return load_settings("test", environ=environ)


@pytest.fixture
def poster(slack_api) -> SlackPoster:
    opened = open_slack(settings_for(slack_api.base_url))
    assert opened is not None
    return opened


def failed_post(poster: SlackPoster) -> SlackApiError:
    with pytest.raises(SlackApiError) as caught:
        poster.post(ALERT)
    return caught.value


def test_post_arrives_with_blocks_in_the_configured_channel(slack_api, poster) -> None:
    channel, ts = poster.post(ALERT)
    text, blocks = slack_blocks(ALERT)
    assert len(slack_api.posts) == 1
    post = slack_api.posts[0]
    assert post["channel"] == "#snews-test"
    assert post["text"] == text
    assert post["blocks"] == blocks
    assert re.fullmatch(r"\d+\.\d{6}", ts)  # Slack's message id, e.g. "1700000000.000101"
    assert channel == channel_id("#snews-test")  # the id, which uploads need


def test_rate_limit_is_retryable_and_waits_at_least_retry_after(slack_api, poster) -> None:
    slack_api.script([(429, {"Retry-After": "7"})])
    error = failed_post(poster)
    policy = slack_policy(settings_for(slack_api.base_url))
    assert policy.is_retryable(error)
    assert policy.retry_after(error) == 7.0
    assert all(policy.next_delay(error, attempt) >= 7.0 for attempt in range(3))
    assert len(slack_api.calls) == 1  # slack_sdk did not retry on its own
    assert slack_api.posts == []
    poster.post(ALERT)  # the retry goes through once the limit has passed
    assert len(slack_api.posts) == 1


@pytest.mark.parametrize("status", [500, 503])
def test_server_errors_are_retryable(slack_api, poster, status) -> None:
    slack_api.script([(status, {})])
    error = failed_post(poster)
    assert slack_policy(settings_for(slack_api.base_url)).is_retryable(error)
    assert len(slack_api.calls) == 1


@pytest.mark.parametrize("answer", ["channel_not_found", "invalid_auth", "not_in_channel"])
def test_refusals_are_permanent(slack_api, poster, answer) -> None:
    slack_api.script([("ok_false", answer)])
    error = failed_post(poster)
    assert error.response["error"] == answer
    policy = slack_policy(settings_for(slack_api.base_url))
    assert not policy.is_retryable(error)
    assert policy.next_delay(error, 0) is None


def test_outage_is_retryable_and_posting_resumes(slack_api, poster) -> None:
    slack_api.down()
    error = failed_post(poster)
    assert slack_policy(settings_for(slack_api.base_url)).is_retryable(error)
    slack_api.up()
    poster.post(ALERT)
    assert len(slack_api.posts) == 1


def test_unreachable_server_is_retryable() -> None:
    unreachable = f"http://127.0.0.1:{free_port()}/api/"
    poster = open_slack(settings_for(unreachable))
    assert poster is not None
    with pytest.raises(urllib.error.URLError) as caught:
        poster.post(ALERT)
    assert slack_policy(settings_for(unreachable)).is_retryable(caught.value)


def test_no_token_means_no_slack(slack_api) -> None:
    assert open_slack(settings_for(slack_api.base_url, token=None)) is None


def test_malformed_alert_is_refused_before_any_request(slack_api, poster) -> None:
    with pytest.raises(ValueError, match="alert_type"):
        poster.post({**ALERT, "alert_type": "maybe"})
    assert slack_api.calls == []


def test_a_picture_goes_into_the_thread_of_its_post(slack_api, poster) -> None:
    """files_upload_v2 through the real slack_sdk: upload URL, the bytes, completion."""
    posted = poster.post(ALERT)
    picture = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 50
    file_id = poster.upload_picture(posted, "c-000042-1.png", picture, "sky map")
    [shared] = slack_api.files
    assert (shared.id, shared.filename, shared.data) == (file_id, "c-000042-1.png", picture)
    assert (shared.channel_id, shared.thread_ts, shared.title) == (posted.channel, posted.ts,
                                                                   "sky map")
    assert [c.method for c in slack_api.calls] == [
        "chat.postMessage", "files.getUploadURLExternal", "files.completeUploadExternal"]


def test_a_failed_upload_step_is_retryable(slack_api, poster) -> None:
    posted = poster.post(ALERT)
    slack_api.script([(503, {})])
    with pytest.raises(SlackApiError) as caught:
        poster.upload_picture(posted, "c-000042-1.png", b"png", "sky map")
    assert slack_policy(settings_for(slack_api.base_url)).is_retryable(caught.value)
    assert slack_api.files == []
    poster.upload_picture(posted, "c-000042-1.png", b"png", "sky map")
    assert [f.data for f in slack_api.files] == [b"png"]
