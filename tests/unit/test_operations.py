"""Pure parts of the operator commands."""

from __future__ import annotations

import pytest

from snews_tasks.entrypoints.status import canary_health, redact


@pytest.mark.parametrize(("last_ok", "sent", "healthy", "says"), [
    (990.0, 900.0, True, "last canary alert 10 s ago"),
    (300.0, 900.0, False, "last canary alert 700 s ago"),
    (None, None, False, "is beat running?"),
    (None, 950.0, True, "first canary sent 50 s ago"),
    (None, 100.0, False, "never came back"),
])
def test_canary_health(last_ok, sent, healthy, says):
    ok, detail = canary_health(last_ok=last_ok, sent=sent, now=1000.0, limit_s=600.0)
    assert ok is healthy and says in detail


def test_redact_hides_passwords_only():
    assert redact("redis://:hunter2@10.0.0.1:6379/0") == "redis://:***@10.0.0.1:6379/0"
    assert redact("mongodb://snews:pw@db:27017") == "mongodb://snews:***@db:27017"
    assert redact("redis://127.0.0.1:6379/1") == "redis://127.0.0.1:6379/1"
