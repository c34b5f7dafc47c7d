"""Real servers for the tests: started once per session on free ports, stopped by PID.

A server that cannot start makes the tests that need it fail, never skip.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis
import time_machine

from snews_tasks.testing.slack_api import FakeSlackApi
from snews_tasks.entrypoints import localstack

REDIS_DATABASES = 16  # redis-server's default number of databases


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--clock-shift-days", type=float,
        default=float(os.environ.get("SNEWS_TEST_CLOCK_SHIFT_DAYS", "0")),
        help="run the tests with this process's clock moved forward by this many days "
             "(time-machine, ticking), so a test that depends on the day it was written fails; "
             "subprocesses keep the real clock, so use it with in-process tests (tests/unit)")


def pytest_configure(config: pytest.Config) -> None:
    """Move the clock before collection: module-level fixtures are built on the moved clock."""
    days = config.getoption("--clock-shift-days")
    if days:
        traveller = time_machine.travel(datetime.now(UTC) + timedelta(days=days), tick=True)
        traveller.start()
        config.add_cleanup(traveller.stop)


def pytest_report_header(config: pytest.Config) -> str | None:
    days = config.getoption("--clock-shift-days")
    return f"clock moved forward by {days:g} days: now {datetime.now(UTC):%Y-%m-%dT%H:%M}Z" if days else None


@pytest.fixture(scope="session")
def redis_service() -> Iterator[localstack.Service]:
    service = localstack.start_redis()
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="session")
def kafka_service() -> Iterator[localstack.Service]:
    """A Tansu broker; tests create their own topics with `localstack.create_topics`."""
    service = localstack.start_kafka()
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="session")
def mongo_service() -> Iterator[localstack.Service]:
    service = localstack.start_mongo()
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="session")
def _redis_database_numbers() -> Iterator[int]:
    return itertools.cycle(range(REDIS_DATABASES))


@pytest.fixture
def new_redis_url(redis_service: localstack.Service,
                  _redis_database_numbers: Iterator[int]) -> Callable[[], str]:
    """Hands out URLs of flushed databases, for tests that need more than one (broker, state)."""
    def allocate() -> str:
        url = f"redis://127.0.0.1:{redis_service.port}/{next(_redis_database_numbers)}"
        with redis.Redis.from_url(url) as client:
            client.flushdb()
        return url
    return allocate


@pytest.fixture
def redis_url(new_redis_url: Callable[[], str]) -> str:
    """A flushed database of the session's Redis, so tests never see each other's keys."""
    return new_redis_url()


@pytest.fixture
def slack_api() -> Iterator[FakeSlackApi]:
    with FakeSlackApi() as server:
        yield server
