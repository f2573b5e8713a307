"""`python -m votemesh_lab.sim.soak --runs 100000 [--workers 2] [--first-seed 0] [--nodes N]`.

Runs many random fault schedules (seeds first-seed .. first-seed + runs - 1) through the
simulator and the checker, in worker processes; every fourth seed also checks S4 with
configuration replicas driven by that run's views (votemesh_lab/sim/config_beside.py) and on a
replication schedule of its own (votemesh_lab/sim/config_sim.py), and runs the seed's schedule with
run-time configuration changes (votemesh_lab/sim/reconfig.py). Prints progress every few
seconds; on the first failing seed it prints the seed, the replay command and the trace tail,
and exits 1 (the other seeds already in flight finish first). Exit 0 when every run held
every property.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor

from votemesh_lab.sim.config_beside import replay_beside
from votemesh_lab.sim.config_sim import run_config_seed
from votemesh_lab.sim.reconfig import run_reconfig_seed
from votemesh_lab.sim.schedules import run_seed

CHUNK = 50
"""Seeds per task: large enough to amortise the process hop, small enough for progress."""
CONFIG_EVERY = 4
"""Every fourth seed also runs a configuration-replication schedule (S4, sim/config_sim.py)."""


def run_chunk(first: int, count: int, nodes: int | None) -> tuple[int, float, str | None]:
    """Run `count` seeds from `first`; (runs done, node-seconds, report of the first failure)."""
    node_seconds = 0.0
    for seed in range(first, first + count):
        result = run_seed(seed, nodes)
        node_seconds += result.schedule.nodes * result.schedule.end
        if not result.ok:
            return seed - first + 1, node_seconds, result.report()
        if seed % CONFIG_EVERY == 0:
            beside = replay_beside(result.net, seed)
            if beside.violations:
                return seed - first + 1, node_seconds, f"{result.report()}\n{beside.violations}"
            config = run_config_seed(seed)
            if config.violations:
                replay = (
                    "python -c 'from votemesh_lab.sim.config_sim import *; "
                    f"run_config_seed({seed})'"
                )
                return seed - first + 1, node_seconds, f"{config.report()}\nreplay: {replay}"
            changed = run_reconfig_seed(seed)
            if not changed.ok:
                return seed - first + 1, node_seconds, changed.report()
    return count, node_seconds, None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m votemesh_lab.sim.soak", description=__doc__)
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--nodes", type=int, default=None)
    args = parser.parse_args(argv)
    start = time.monotonic()
    done, node_seconds, last_print = 0, 0.0, start
    chunks = [
        (s, min(CHUNK, args.first_seed + args.runs - s), args.nodes)
        for s in range(args.first_seed, args.first_seed + args.runs, CHUNK)
    ]
    failure: str | None = None
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = [pool.submit(run_chunk, *chunk) for chunk in chunks]
        for future in futures:
            runs, seconds, report = future.result()
            done, node_seconds = done + runs, node_seconds + seconds
            if report is not None:
                failure = report
                for other in futures:
                    other.cancel()
                break
            now = time.monotonic()
            if now - last_print >= 5 or done == args.runs:
                last_print = now
                rate = node_seconds / (now - start)
                print(
                    f"{done}/{args.runs} runs ok, {now - start:.0f} s, "
                    f"{rate:,.0f} simulated node-seconds per second",
                    flush=True,
                )
    if failure is not None:
        print(failure, flush=True)
        return 1
    print(f"soak: {done} random fault schedules, every property held")
    return 0


if __name__ == "__main__":
    sys.exit(main())
