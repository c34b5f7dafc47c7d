"""Runs inside bench/.venv-reference: feeds a job's streams to snews-cs 3.0.1, in process.

    bench/.venv-reference/bin/python bench/reference_runner.py JOB.json

Started by compare_reference.py, which writes the job: {"cap_s", "sizes",
"background": [message, ...], "probes": {stream: {size: [message, ...]}}}.
Prints one JSON object: the reference's per-message times and alert counts.

Each message goes through `CoincidenceDistributor.deal_with_the_cache`, the
step the reference's Kafka loop runs for a CoincidenceTier message. Only its
outside world is replaced, so it runs offline: alerts are counted instead of
written to a hop stream, and the per-message SQLite copy of the whole cache is
skipped (our side of the comparison times no archive either). Slack and email
are off by constructor arguments. Like the reference's loop, an exception
costs that message and the run goes on.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.metadata
import json
import os
import platform
import sys
import time
import warnings
from collections import Counter
from datetime import UTC, datetime

# The reference parses '...Z' times with numpy, which warns on every message.
warnings.filterwarnings("ignore", category=DeprecationWarning)


class CountingPublisher:
    """Stands in for snews_cs.alert_pub.AlertPublisher: no broker, one count per send."""

    sent_types: Counter[str] = Counter()

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __enter__(self) -> CountingPublisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    def send(self, alert: dict) -> None:
        CountingPublisher.sent_types[alert["alert_type"]] += 1


class DiscardingStorage:
    """Stands in for snews_cs.snews_sql.Storage, which rewrites its SQLite table per message."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def insert_coinc_cache(self, cache: object) -> None:
        pass


def _reference_distributor() -> object:
    from snews_cs import snews_coinc

    snews_coinc.AlertPublisher = CountingPublisher
    snews_coinc.Storage = DiscardingStorage
    return snews_coinc.CoincidenceDistributor(
        send_slack=False, send_email=False, server_tag="bench", show_table=False
    )


class ReferenceRun:
    """One distributor, its cache grown size by size along the background stream."""

    def __init__(self) -> None:
        self.distributor = _reference_distributor()
        self.fed = 0
        self.fill_errors: Counter[str] = Counter()

    def feed(self, message: dict, errors: Counter[str]) -> int:
        """One message through the coincidence step; returns its wall time in ns."""
        # the reference's Kafka loop stamps this before the step
        entry = dict(message, received_time=datetime.now(UTC).replace(tzinfo=None).isoformat())
        start = time.perf_counter_ns()
        try:
            self.distributor.deal_with_the_cache(entry)
        except Exception as error:  # the reference's loop logs these and carries on
            errors[f"{type(error).__name__}: {error}"[:200]] += 1
        return time.perf_counter_ns() - start

    def grow(self, background: list[dict], size: int, deadline: float) -> bool:
        """Feed the background up to `size` messages; False when the deadline passes first."""
        while self.fed < size:
            if time.perf_counter() > deadline:
                return False
            self.feed(background[self.fed], self.fill_errors)
            self.fed += 1
        return True

    def snapshot(self) -> tuple:
        cache = self.distributor
        return copy.deepcopy((cache.coinc_data, cache.message_count))

    def restore(self, state: tuple) -> None:
        self.distributor.coinc_data, self.distributor.message_count = copy.deepcopy(state)

    def probe(self, messages: list[dict], deadline: float) -> dict | None:
        """Times and alert counts for a probe stream; None when the deadline passes first."""
        CountingPublisher.sent_types.clear()
        errors: Counter[str] = Counter()
        samples_ns = []
        for message in messages:
            if time.perf_counter() > deadline:
                return None
            samples_ns.append(self.feed(message, errors))
        return {
            "samples_ns": samples_ns,
            "alerts": dict(CountingPublisher.sent_types),
            "errors": dict(errors),
            "rows_after": len(self.distributor.coinc_data.cache),
        }


def run(job: dict) -> dict:
    """Each size gets cap_s to grow the cache from the previous size and run every probe."""
    reference = ReferenceRun()
    results = []
    gave_up = False
    for size in job["sizes"]:
        if gave_up:
            results.append({"size": size, "status": "not attempted"})
            continue
        start = time.perf_counter()
        deadline = start + job["cap_s"]
        result: dict = {"size": size, "grown_from": reference.fed}
        if not reference.grow(job["background"], size, deadline):
            result.update(status="did not finish", reached=reference.fed,
                          seconds=time.perf_counter() - start)
            results.append(result)
            gave_up = True
            continue
        result["fill_errors"] = dict(reference.fill_errors)
        result["rows_held"] = len(reference.distributor.coinc_data.cache)
        state = reference.snapshot()
        probes = {}
        for stream, by_size in job["probes"].items():
            reference.restore(state)
            outcome = reference.probe(by_size[str(size)], deadline)
            if outcome is None:
                break
            probes[stream] = outcome
        reference.restore(state)  # the next size grows from the background alone
        finished = len(probes) == len(job["probes"])
        result.update(status="finished" if finished else "did not finish",
                      seconds=time.perf_counter() - start)
        if finished:
            result["probes"] = probes
        else:
            gave_up = True
        results.append(result)
    return {
        "python": platform.python_version(),
        "packages": {name: importlib.metadata.version(name)
                     for name in ("snews-cs", "pandas", "numpy")},
        "results": results,
    }


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as job_file:
        job = json.load(job_file)
    # The reference prints tables and banners for every message: they go nowhere.
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        report = run(job)
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
