"""Throughput ceiling of the serialized coincidence stage, fed the way it is deployed.

    .venv/bin/python bench/throughput_ceiling.py [--flood 30000] [--reference-flood 5000]
                                                 [--rates 250,500,1000,1500,2000] [--step-s 10]

The messages are load.py's mix (isolated observations, a completing pair
every 250). They reach the coincidence worker from workers/coincidence
through the deployed path: published to the observation topic, read by the
ingest (workers/ingest), which makes one coincidence task of all that one
poll returned (one message when traffic is light, up to 500 under load). The
rate is the growth of the writer's processed uuid set (ZCARD, sampled every
0.5 s).

  flood      --flood messages published with no ingest and no worker running;
             then the workers start, then the ingest, resuming at the topic's
             start as after an outage: its rate between 10 % and 90 % done.
             Once with the coincidence worker alone, once with the notify
             worker consuming the storage and alert tasks it hands on (all
             compete for the machine's CPUs, as deployed).
  reference  the feeding before batching: --reference-flood tasks of one
             message each (args=[[payload]]) queued straight onto the
             coincidence queue, drained by the coincidence worker alone.
  steps      the mix published at each paced rate for --step-s seconds, each
             rate on a fresh deployment (ingest, coincidence and notify
             workers). A rate is
             sustained when the publisher achieved it (95 %) and the stage
             processed, from 1 s in until the last publish, at least 95 % of
             the rate published.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path


from load import (BACKLOG, CPU_NOTE, CpuUse, Deployment, QueueSampler,
                  command_line, cpu_table, deployed, flooded, header, load_now,
                  markdown_table, mix, publish_paced, write_section)

SECTION_TITLE = "Throughput ceiling of the coincidence stage"
GOAL_PER_S = 1000
SAMPLE_S = 0.5
DRAIN_TIMEOUT_S = 240.0
RAMP_S = 1.0  # a step's first second is left out of its processed rate
KEPT_UP = 0.95


def flood(count: int, roles: tuple[str, ...], *, batched: bool = True
          ) -> tuple[float, dict[str, float]]:
    """Messages/s of the coincidence worker working off a backlog of `count` (see `flooded`),
    and the CPU use meanwhile."""
    payloads = [scheduled.payload for scheduled in mix(count)]
    with flooded(payloads, roles, batched=batched) as (deployment, _):
        cpu = CpuUse(deployment)
        samples: list[tuple[float, int]] = []
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while time.monotonic() < deadline:
            samples.append((time.monotonic(), deployment.processed()))
            if samples[-1][1] >= count:
                break
            time.sleep(SAMPLE_S)
        else:
            raise RuntimeError(f"{samples[-1][1]} of {count} processed after "
                               f"{DRAIN_TIMEOUT_S:g} s")
        shares = cpu.shares()
    steady = [(t, n) for t, n in samples if 0.1 * count <= n <= 0.9 * count]
    if len(steady) < 2:
        steady = samples
    (t0, n0), (t1, n1) = steady[0], steady[-1]
    return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0, shares


@dataclass
class Step:
    offered: float
    published_per_s: float
    processed_per_s: float
    backlog_at_end: int
    max_backlog: int
    max_tasks_queued: int
    cpu: dict[str, float]

    @property
    def publisher_kept_up(self) -> bool:
        return self.published_per_s >= KEPT_UP * self.offered

    @property
    def sustained(self) -> bool:
        return self.publisher_kept_up and self.processed_per_s >= KEPT_UP * self.published_per_s

    def verdict(self) -> str:
        if not self.publisher_kept_up:
            return "publisher short"
        return "yes" if self.sustained else "no"


def run_step(deployment: Deployment, rate: float, step_s: float) -> Step:
    """Publish the mix at `rate` for `step_s` and measure the stage behind the ingest."""
    stream = [replace(scheduled, at_s=index / rate)
              for index, scheduled in enumerate(mix(int(rate * step_s)))]
    sampler = QueueSampler(deployment, SAMPLE_S)
    sampler.start()
    cpu = CpuUse(deployment)
    try:
        _, span_s = publish_paced(deployment.producer, deployment.observation_topic, stream)
        shares = cpu.shares()
        end_backlog = deployment.backlog()
    finally:
        sampler.stop()
    window = [(t, n) for t, n in sampler.processed if RAMP_S <= t <= span_s]
    (t0, n0), (t1, n1) = (window[0], window[-1]) if window else ((0.0, 0), (0.0, 0))
    return Step(rate, len(stream) / span_s, (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0,
                end_backlog,
                max(end_backlog, *(d[BACKLOG] for _, d in sampler.samples)),
                max(d["coincidence"] for _, d in sampler.samples), shares)


def steps(rates: list[float], step_s: float) -> list[Step]:
    """Paced publishing at each rate, each on a fresh deployment (ingest and both workers), so
    a rate that leaves a backlog does not hold up or burden the next."""
    results: list[Step] = []
    for rate in rates:
        with deployed() as deployment:
            step = run_step(deployment, rate, step_s)
        results.append(step)
        print(f"{rate:g}/s: published {step.published_per_s:.0f}/s, processed "
              f"{step.processed_per_s:.0f}/s, backlog {step.backlog_at_end} at the end",
              flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flood", type=int, default=30000,
                        help="messages published before the ingest and the workers start")
    parser.add_argument("--reference-flood", type=int, default=5000,
                        help="one-message tasks queued before the worker starts")
    parser.add_argument("--rates", default="250,500,1000,1500,2000",
                        help="paced observations/s to step through, comma-separated")
    parser.add_argument("--step-s", type=float, default=10.0,
                        help="seconds of publishing per paced rate")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md")
    args = parser.parse_args()
    rates = [float(rate) for rate in args.rates.split(",")]
    head = header(command_line())

    floods = [  # (short name, description, messages, workers, batched)
        ("batched, coincidence alone", "Kafka -> ingest (batches of up to 500) -> coincidence "
         f"worker alone, {args.flood} messages", args.flood, ("coincidence",), True),
        ("batched, coincidence + notify", "Kafka -> ingest (batches of up to 500) -> "
         f"coincidence + notify workers, {args.flood} messages", args.flood,
         ("coincidence", "notify"), True),
        ("one message per task", "reference: one message per task, queued directly -> "
         f"coincidence worker alone, {args.reference_flood} tasks", args.reference_flood,
         ("coincidence",), False),
    ]
    flood_rows, cpu_rows = [], []
    for name, label, count, roles, batched in floods:
        rate, cpu = flood(count, roles, batched=batched)
        print(f"{label}: {rate:.0f}/s", flush=True)
        flood_rows.append([label, f"{rate:.0f}"])
        cpu_rows.append((f"flood: {name}", cpu))
    stepped = steps(rates, args.step_s)
    cpu_rows += [(f"paced {s.offered:g}/s", s.cpu) for s in stepped]

    step_rows = [[f"{s.offered:g}", f"{s.published_per_s:.0f}", f"{s.processed_per_s:.0f}",
                  str(s.backlog_at_end), str(s.max_backlog), str(s.max_tasks_queued),
                  s.verdict()] for s in stepped]
    best = max((s.offered for s in stepped if s.sustained), default=0)
    ceiling = max(float(row[1]) for row in flood_rows[:2])
    verdict = (f"Highest sustained paced rate: {best:g}/s. Flood ceiling through the deployed "
               f"path {ceiling:.0f}/s: the {GOAL_PER_S}/s goal is "
               f"{'met' if ceiling >= GOAL_PER_S else 'not met'}.")
    body = "\n".join([
        head,
        "Floods, worked off from a standing start (rate between 10 % and 90 % done):",
        "",
        markdown_table(["feeding and workers", "messages/s"], flood_rows),
        "",
        f"Paced publishing to the observation topic, {args.step_s:g} s per rate, each on a fresh "
        "deployment with the ingest, coincidence and notify workers running; the publisher "
        "shares the machine's CPUs. "
        f"Processed/s is the writer's rate from {RAMP_S:g} s in to the last publish; backlog is "
        "observations published but not yet processed (sampled every "
        f"{SAMPLE_S:g} s); queued tasks is the coincidence queue's LLEN.",
        "",
        markdown_table(["offered/s", "published/s", "processed/s", "backlog at end",
                        "max backlog", "max queued tasks", "sustained"], step_rows),
        "",
        verdict,
        "",
        "From the ingest's start until the backlog was worked off (floods) or while publishing "
        f"(paced). {CPU_NOTE}",
        "",
        cpu_table(cpu_rows),
        "",
        load_now(),
    ])
    print(body)
    if not args.no_write:
        write_section(SECTION_TITLE, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
