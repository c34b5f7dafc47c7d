"""Engine cost per message against the number of cached observations.

    .venv/bin/python bench/engine_scaling.py [--sizes 1000,10000,100000] [--messages 2000]

Fills an in-memory cache with N observations from 20 detectors (one every
12.5 s, so detectors keep separate observations and nearby ones coincide),
then times fresh observations landing at random places in it, each applied
(observe + commit), as the worker would. The cache lifetime is set beyond the
stream so nothing expires during the measurement.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from snews_tasks.coincidence import CoincidenceEngine  # noqa: E402
from snews_tasks.memory_store import MemoryStore  # noqa: E402
from snews_tasks.messages import Message, Tier, format_time_ns  # noqa: E402
from snews_tasks.settings import KNOWN_DETECTORS  # noqa: E402

S = 1_000_000_000
T = 10 * S
SPACING = 12_500_000_000


def message(i: int, detector: str, t_ns: int) -> Message:
    return Message(tier=Tier.COINCIDENCE, uuid=f"bench-{i}", detector_name=detector,
                   is_test=False, is_firedrill=False, is_pre_sn=False, neutrino_time_ns=t_ns,
                   neutrino_time_utc=format_time_ns(t_ns), p_val=0.01)


def measure(size: int, messages: int, rng: random.Random) -> tuple[float, float, int]:
    engine = CoincidenceEngine(T, 10**9 * S)
    store = MemoryStore(T)

    def apply(m: Message) -> int:
        changes = engine.observe(store, m, seq=store.next_seq(), new_id=store.new_id)
        store.apply("live", changes)
        return len(changes.events)

    for i in range(size):
        apply(message(i, KNOWN_DETECTORS[i % len(KNOWN_DETECTORS)], i * SPACING))
    samples, events = [], 0
    for j in range(messages):
        t = rng.randrange(size * SPACING)
        m = message(size + j, rng.choice(KNOWN_DETECTORS), t)
        start = time.perf_counter_ns()
        events += apply(m)
        samples.append(time.perf_counter_ns() - start)
    samples.sort()
    return statistics.median(samples) / 1000, samples[int(0.99 * len(samples))] / 1000, events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000",
                        help="cached observations to measure at, comma-separated")
    parser.add_argument("--messages", type=int, default=2000,
                        help="fresh observations timed per size")
    parser.add_argument("--seed", type=int, default=1,
                        help="random seed of the probes' places in the cache")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    print(f"{'cached':>8} {'median us/msg':>14} {'p99 us/msg':>11} {'alert events':>13}")
    for size in (int(s) for s in args.sizes.split(",")):
        median, p99, events = measure(size, args.messages, rng)
        print(f"{size:>8} {median:>14.1f} {p99:>11.1f} {events:>13}", flush=True)


if __name__ == "__main__":
    main()
