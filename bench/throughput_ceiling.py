"""Throughput ceiling of the serialized coincidence stage.

    .venv/bin/python bench/throughput_ceiling.py [--flood 6000] [--rates 250,500,1000,1500]
                                                 [--step-s 10]

Coincidence tasks are enqueued straight onto the coincidence queue with a
plain Celery client (JSON), as the ingest does; the messages are load.py's
mix (isolated observations, a completing pair every 250). The worker from
workers/coincidence processes them; its rate is the growth of the processed
uuid set (ZCARD, sampled every 0.5 s).

  flood   --flood tasks queued with the worker stopped, then the worker starts
          and drains them: its rate between 10 % and 90 % done. Once with the
          coincidence worker alone, once with the notify worker consuming the
          storage and alert tasks it hands on (both compete for the 2 CPUs, as
          deployed).
  steps   the notify worker running too, tasks enqueued at each paced rate for
          --step-s seconds; a rate is sustained when the queue is back under a
          tenth of a second's worth at the end of its step.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from load import (Deployment, command_line, deployed, header,  # noqa: E402
                  markdown_table, observation_stream, write_section)
from pipeline import PRIORITY_SUFFIXES  # noqa: E402

SECTION_TITLE = "Throughput ceiling of the coincidence stage"
GOAL_PER_S = 1000
SAMPLE_S = 0.5
MIX_RATE = 500  # load.py's mix: a completing pair among every MIX_RATE x PAIR_EVERY_S messages
PAIR_EVERY_S = 0.5
DRAIN_TIMEOUT_S = 300.0
TASK = "snews.coincidence.process"


def mix(count: int, first: int = 0) -> list[dict]:
    """`count` messages of the mix; `first` = how many came before, so none repeats one."""
    stream = observation_stream(MIX_RATE, count / MIX_RATE + PAIR_EVERY_S, PAIR_EVERY_S,
                                first_isolated=first, first_pair=first // 250)
    return [json.loads(scheduled.payload) for scheduled in stream[:count]]


def processed(deployment: Deployment) -> int:
    state = deployment.pipeline.state
    return state.client.zcard(state.key("processed"))


def queued(deployment: Deployment) -> int:
    broker = deployment.pipeline.broker
    return sum(broker.llen(f"coincidence{suffix}") for suffix in PRIORITY_SUFFIXES)


def flood(count: int, roles: tuple[str, ...]) -> float:
    """Messages/s of the coincidence worker draining `count` queued tasks."""
    with deployed(roles=(), ingest=False) as deployment:
        deployment.pipeline.send(mix(count))
        deployment.pipeline.start_workers(*roles)
        samples: list[tuple[float, int]] = []
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while time.monotonic() < deadline:
            samples.append((time.monotonic(), processed(deployment)))
            if samples[-1][1] >= count:
                break
            time.sleep(SAMPLE_S)
    steady = [(t, n) for t, n in samples if 0.1 * count <= n <= 0.9 * count]
    if len(steady) < 2:
        steady = samples
    (t0, n0), (t1, n1) = steady[0], steady[-1]
    return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


@dataclass
class Step:
    offered: float
    enqueued_per_s: float
    processed_per_s: float
    queue_at_end: int
    max_queue: int

    @property
    def sustained(self) -> bool:
        return self.queue_at_end <= max(10, self.offered / 10) and \
            self.enqueued_per_s >= 0.95 * self.offered


def steps(rates: list[float], step_s: float) -> list[Step]:
    """Paced enqueues at each rate, with both workers running, until one is not sustained."""
    results: list[Step] = []
    with deployed(ingest=False) as deployment:
        client = deployment.pipeline.client
        sent = 0
        for rate in rates:
            messages = mix(int(rate * step_s), sent)
            sent += len(messages)
            start_count, max_queue = processed(deployment), 0
            next_sample = start = time.monotonic()
            with client.producer_or_acquire() as producer:
                for index, payload in enumerate(messages):
                    delay = start + index / rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    client.send_task(TASK, args=[payload], queue="coincidence",
                                     producer=producer)
                    if time.monotonic() >= next_sample:
                        max_queue = max(max_queue, queued(deployment))
                        next_sample += SAMPLE_S
            enqueue_s = time.monotonic() - start
            time.sleep(max(0.0, start + step_s - time.monotonic()))
            elapsed = time.monotonic() - start
            depth = queued(deployment)
            step = Step(rate, len(messages) / enqueue_s,
                        (processed(deployment) - start_count) / elapsed, depth,
                        max(max_queue, depth))
            results.append(step)
            print(f"{rate:g}/s: enqueued {step.enqueued_per_s:.0f}/s, processed "
                  f"{step.processed_per_s:.0f}/s, queue {depth} at the end", flush=True)
            if not step.sustained:
                break
            deployment.pipeline.wait_until(lambda: queued(deployment) == 0, "the queue to drain",
                                           DRAIN_TIMEOUT_S)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flood", type=int, default=6000, help="tasks queued before the worker")
    parser.add_argument("--rates", default="250,500,1000,1500")
    parser.add_argument("--step-s", type=float, default=10.0)
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md")
    args = parser.parse_args()
    rates = [float(rate) for rate in args.rates.split(",")]
    head = header(command_line())

    alone = flood(args.flood, ("coincidence",))
    print(f"flood, coincidence worker alone: {alone:.0f}/s", flush=True)
    with_notify = flood(args.flood, ("coincidence", "notify"))
    print(f"flood, with the notify worker: {with_notify:.0f}/s", flush=True)
    stepped = steps(rates, args.step_s)

    flood_rows = [["coincidence worker alone", f"{alone:.0f}"],
                  ["coincidence + notify workers", f"{with_notify:.0f}"]]
    step_rows = [[f"{s.offered:g}", f"{s.enqueued_per_s:.0f}", f"{s.processed_per_s:.0f}",
                  str(s.queue_at_end), str(s.max_queue), "yes" if s.sustained else "no"]
                 for s in stepped]
    best = max((s.offered for s in stepped if s.sustained), default=0)
    ceiling = max(alone, with_notify)
    verdict = (f"Highest sustained paced rate: {best:g}/s. Flood ceiling "
               f"{ceiling:.0f}/s: the {GOAL_PER_S}/s goal is "
               f"{'met' if ceiling >= GOAL_PER_S else 'not met'}.")
    body = "\n".join([
        head,
        f"Flood of {args.flood} queued tasks, drained (rate between 10 % and 90 % done):",
        "",
        markdown_table(["setup", "messages/s"], flood_rows),
        "",
        f"Paced enqueues, {args.step_s:g} s per rate, both workers running; the enqueuing "
        "client shares the machine's CPUs:",
        "",
        markdown_table(["offered/s", "enqueued/s", "processed/s", "queue at end",
                        "max queue", "sustained"], step_rows),
        "",
        verdict,
    ])
    print(body)
    if not args.no_write:
        write_section(SECTION_TITLE, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
