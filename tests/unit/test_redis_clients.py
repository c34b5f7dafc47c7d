"""Sentinel URLs, in the form kombu reads for the Celery broker, read the same way here."""

from __future__ import annotations

import pytest

from snews_tasks.adapters.redis_clients import (celery_transport_options, is_sentinel_url,
                                                parse_sentinel_url)


def test_a_sentinel_url_names_every_sentinel_the_database_and_the_password() -> None:
    url = "sentinel://:s3cret@h1:26379;sentinel://h2:26380;sentinel://h3:26381/1"
    assert parse_sentinel_url(url) == ([("h1", 26379), ("h2", 26380), ("h3", 26381)], 1,
                                       "s3cret")
    assert parse_sentinel_url("sentinel://h1:26379")[1:] == (0, None)
    assert is_sentinel_url(url) and not is_sentinel_url("redis://h:6379/1")


@pytest.mark.parametrize("url", ["sentinel://h1;sentinel://h2:1/0", "redis://h:6379;x",
                                 "sentinel://:26379/0"])
def test_a_malformed_sentinel_url_says_what_each_part_must_be(url: str) -> None:
    with pytest.raises(ValueError, match="each part must be sentinel://HOST:PORT"):
        parse_sentinel_url(url)


def test_celery_gets_the_primary_name_and_timeouts_only_for_sentinel_urls() -> None:
    assert celery_transport_options("redis://h:6379/0", "snews") == {}
    options = celery_transport_options("sentinel://h:26379/0", "snews")
    assert options["master_name"] == "snews" and options["socket_timeout"] > 0
