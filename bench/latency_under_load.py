"""Alert latency under background load: 0, 100 and 500 observations/s.

    .venv/bin/python bench/latency_under_load.py [--rates 0,100,500] [--alerts 200]
                                                 [--coincidence-every-s 0.5] [--busy-loops 0]

For each background rate, a fresh deployment (load.py: servers, ingest,
coincidence and notify workers) gets the background stream plus a completing
pair every --coincidence-every-s until --alerts alerts are due, and each
alert's latency is measured as load.py describes: in-system (ingest receive
to the broker's acknowledgement of the alert) and wire to wire (produce to a subscriber),
with subscribers at fetch.wait.max.ms 10 and at librdkafka's default 500,
beside the bare broker round trip measured in the same run. Writes its section
of RESULTS.md and bench/latency.png.

--busy-loops N runs N busy-looping processes for the whole measurement: the
CPUs shared with other work, as on a crowded host. Such a run writes a section
of its own (and bench/latency-busy.png), beside the quiet one.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path


from load import (BENCH_DIR, CPU_NOTE, SAMPLED, LoadRun, command_line,
                  cpu_table, deployed, depth_rows, header, load_now, markdown_table,
                  percentile, run_load, summary, write_section)

SECTION_TITLE = "Alert latency under background load"
BUSY_SECTION_TITLE = "Alert latency under background load, CPUs shared with busy loops"
FIGURE_FILE = BENCH_DIR / "latency.png"
BUSY_FIGURE_FILE = BENCH_DIR / "latency-busy.png"
GOAL_P50_MS, GOAL_P99_MS, GOAL_RATE = 10.0, 50.0, 100.0
SERIES = (  # (label, LoadRun field, plot style)
    ("in-system", "in_system", "-"),
    ("wire to wire, fetch wait 10 ms", "wire_fast", "-"),
    ("wire to wire, fetch wait 500 ms", "wire_default", "-"),
    ("broker floor, fetch wait 10 ms", "floor_fast", ":"),
    ("broker floor, fetch wait 500 ms", "floor_default", ":"),
)


def table(runs: list[LoadRun]) -> str:
    head = ["background obs/s", "alerts", "measure", "p50 ms", "p99 ms", "max ms"]
    rows = []
    for run in runs:
        for label, name, _ in SERIES:
            values = getattr(run, name)
            rows.append([f"{run.rate:g}", str(len(run.in_system)), label, *summary(values)])
    return markdown_table(head, rows)


def backlog(runs: list[LoadRun]) -> str:
    """The deepest each queue (in tasks) and the backlog of unprocessed observations got, per
    rate: a growing queue explains a growing latency."""
    rows = [[f"{run.rate:g}", *(row[-1] for row in depth_rows(run)),
             f"{run.published / run.achieved_span_s:.0f}"] for run in runs]
    return markdown_table(["background obs/s", *(f"max {q}" for q in SAMPLED),
                           "published/s"], rows)


def verdict(runs: list[LoadRun]) -> str:
    at_goal = next((run for run in runs if run.rate == GOAL_RATE), None)
    if at_goal is None or not at_goal.in_system:
        return f"No run at {GOAL_RATE:g} obs/s: the goal was not checked."
    p50, p99 = percentile(at_goal.in_system, 0.5), percentile(at_goal.in_system, 0.99)
    met = p50 < GOAL_P50_MS and p99 < GOAL_P99_MS
    return (f"Goal at {GOAL_RATE:g} obs/s, in-system p50 < {GOAL_P50_MS:g} ms and p99 < "
            f"{GOAL_P99_MS:g} ms: p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
            f"{'met' if met else 'not met'}.")


@contextlib.contextmanager
def busy_loops(count: int) -> Iterator[None]:
    """`count` processes that only burn CPU, stopped on exit."""
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
             for _ in range(count)]
    try:
        yield
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()


def plot(runs: list[LoadRun], figure_file: Path) -> None:
    """One panel per background rate: the distribution (ECDF) of each measure, log time axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, panels = plt.subplots(1, len(runs), figsize=(5 * len(runs), 4.5), sharey=True,
                                  squeeze=False)
    for axes, run in zip(panels[0], runs, strict=True):
        for label, name, style in SERIES:
            values = sorted(v for v in getattr(run, name) if v > 0)
            if values:
                fractions = [(i + 1) / len(values) for i in range(len(values))]
                axes.step(values, fractions, style, where="post", label=label)
        axes.set_xscale("log")
        axes.set_title(f"{run.rate:g} background obs/s")
        axes.set_xlabel("latency, ms")
        axes.grid(True, which="both", alpha=0.3)
    panels[0][0].set_ylabel("fraction of alerts (probes for the floor)")
    panels[0][0].legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    figure.savefig(figure_file, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="0,100,500",
                        help="background observations/s, comma-separated, one deployment each")
    parser.add_argument("--alerts", type=int, default=200, help="alerts measured per rate")
    parser.add_argument("--coincidence-every-s", type=float, default=0.5,
                        help="seconds between the completing pairs, each making one alert")
    parser.add_argument("--busy-loops", type=int, default=0,
                        help="busy-looping processes competing for the CPUs throughout")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md")
    args = parser.parse_args()
    head = header(command_line())
    duration_s = args.alerts * args.coincidence_every_s
    runs = []
    figure_file = BUSY_FIGURE_FILE if args.busy_loops else FIGURE_FILE
    with busy_loops(args.busy_loops):
        for rate in (float(r) for r in args.rates.split(",")):
            with deployed() as deployment:
                runs.append(run_load(deployment, rate, duration_s, args.coincidence_every_s))
            print(f"{rate:g}/s done", flush=True)
    competing = (f" {args.busy_loops} busy-looping processes ran throughout, competing for "
                 "the CPUs (the machine-busy column counts them)." if args.busy_loops else "")
    body = "\n".join([
        head,
        f"A completing pair every {args.coincidence_every_s:g} s for {duration_s:g} s per rate, "
        f"each rate on a fresh deployment.{competing}",
        "",
        table(runs),
        "",
        "Deepest queues (LLEN, in tasks) and most observations published but not yet processed, "
        "sampled every second while publishing:",
        "",
        backlog(runs),
        "",
        f"While publishing. {CPU_NOTE}",
        "",
        cpu_table([(f"{run.rate:g} obs/s", run.cpu) for run in runs]),
        "",
        verdict(runs),
        "",
        f"![alert latency distributions]({figure_file.name})",
        "",
        load_now(),
    ])
    print(body)
    if not args.no_write:
        plot(runs, figure_file)
        write_section(BUSY_SECTION_TITLE if args.busy_loops else SECTION_TITLE, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
