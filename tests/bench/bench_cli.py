"""`votemesh status` / `nodes` / `explain` against a live agent: wall and CPU per call.

Starts two real agents (tests/agent/live_agents.py) and runs each verb N times as a fresh
process (what a monitoring script pays per poll). CPU is the children's user + system time from
getrusage. BENCH_CLI_CALLS=N (default 30). Prints figures, never fails on a timing.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from tests.agent.live_agents import BIN, AgentCluster

VERBS = (("status",), ("status", "--json"), ("nodes",), ("explain",))


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(argv: list[str], calls: int) -> tuple[float, float, float, int]:
    """(median wall s, p90 wall s, mean CPU s, last exit status) over `calls` runs."""
    walls: list[float] = []
    cpu0, code = _cpu(), 0
    for _ in range(calls):
        start = time.perf_counter()
        code = subprocess.run(argv, stdout=subprocess.DEVNULL, check=False).returncode
        walls.append(time.perf_counter() - start)
    cpu = (_cpu() - cpu0) / calls
    walls.sort()
    return statistics.median(walls), walls[int(len(walls) * 0.9) - 1], cpu, code


def main() -> None:
    calls = int(os.environ.get("BENCH_CLI_CALLS", "30"))
    with tempfile.TemporaryDirectory(prefix="vm-bench-cli-") as tmp:
        cluster = AgentCluster(Path(tmp), 2)
        try:
            cluster.start_all()
            cluster.wait_for(lambda: cluster.one_view([1, 2]), 30, "one view")
            sock = str(cluster.agents[1].control_socket)
            base = measure([str(BIN / "python"), "-c", "pass"], calls)
            print(f"python -c pass          wall median {base[0] * 1e3:5.1f} ms  "
                  f"p90 {base[1] * 1e3:5.1f} ms  cpu {base[2] * 1e3:5.1f} ms")  # fmt: skip
            for verb in VERBS:
                argv = [str(BIN / "votemesh"), *verb, "--socket", sock]
                wall, p90, cpu, code = measure(argv, calls)
                name = "votemesh " + " ".join(verb)
                print(f"{name:<23} wall median {wall * 1e3:5.1f} ms  p90 {p90 * 1e3:5.1f} ms  "
                      f"cpu {cpu * 1e3:5.1f} ms  exit {code}  ({calls} calls)")  # fmt: skip
        finally:
            cluster.close()


if __name__ == "__main__":
    main()
