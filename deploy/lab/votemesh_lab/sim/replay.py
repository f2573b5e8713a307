"""`python -m votemesh_lab.sim.replay SEED [--nodes N] [--tail LINES] [--algorithm lms]
[--reconfig]`:
rerun one random schedule (`--reconfig`: one with run-time configuration changes,
votemesh_lab/sim/reconfig.py).

Prints the schedule, the whole trace (or its last LINES lines) and the checker's verdict; exits
1 when a property was violated. The run is the same as in CI and in the soak: same seed, same
schedule, same network randomness.
"""

from __future__ import annotations

import argparse
import sys

from votemesh_lab.sim.reconfig import run_reconfig_seed
from votemesh_lab.sim.schedules import run_seed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m votemesh_lab.sim.replay", description=__doc__)
    parser.add_argument("seed", type=int)
    parser.add_argument("--nodes", type=int, default=None, help="force the cluster size (3-9)")
    parser.add_argument("--tail", type=int, default=0, help="print only the last LINES lines")
    parser.add_argument("--algorithm", default=None, help="the qnetd's algorithm (ffsplit, lms)")
    parser.add_argument("--reconfig", action="store_true", help="with configuration changes")
    args = parser.parse_args(argv)
    if args.reconfig:
        run = run_reconfig_seed(args.seed, trace_limit=None)
        result = run.result
        print(f"changes committed: {run.driver.committed}, refused: {run.driver.refused}")
    else:
        result = run_seed(args.seed, args.nodes, args.algorithm, trace_limit=None)
    print(result.schedule.describe())
    print("--- trace ---")
    lines = list(result.net.trace)
    print("\n".join(lines[-args.tail :] if args.tail else lines))
    if result.ok:
        print(f"seed {args.seed}: all properties hold")
        return 0
    print(f"seed {args.seed}: {len(result.violations)} violations")
    for violation in result.violations:
        print(f"  {violation}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
