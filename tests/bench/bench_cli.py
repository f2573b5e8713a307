"""`votemesh status` / `nodes` / `explain` against a live agent: wall and CPU per call.

Starts two real agents on loopback (tests/agent/live_agents.py) and runs each verb
BENCH_CLI_CALLS times (default 50) as a fresh process, as a monitoring script's poll does, after
three warm-up calls. Per call: wall time (perf_counter around the whole subprocess) and CPU (the
child's user + system time from getrusage). Printed: wall p50 / p95 and CPU p50 / mean, beside
`python -c pass` (the interpreter's own start, which the CLI cannot go below).

Two modes, because where the bytecode comes from changes the figure:
- `bytecode`: compiled modules are read, as after `pip install` (which compiles them). The runs
  use PYTHONPYCACHEPREFIX=<a temporary directory> without PYTHONDONTWRITEBYTECODE, so the
  warm-up writes the cache there and the tree gets no __pycache__.
- `env`: this process's environment as it is. With PYTHONDONTWRITEBYTECODE=1 (these sessions)
  and no __pycache__ in the checkout, every call compiles our modules from source.
- `BENCH_CLI_BIN=DIR` adds a third: DIR/python and DIR/votemesh of another install, e.g. a
  regular (not editable) one: `python3 -m venv /tmp/vm && /tmp/vm/bin/pip install --no-deps .`
  (the status verbs need none of the dependencies).

Prints figures, never fails on a timing. Target (issue 8 item 4): under 50 ms wall per call.
"""

from __future__ import annotations

import math
import os
import resource
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from tests.agent.live_agents import BIN, AgentCluster

VERBS = (("status",), ("status", "--json"), ("nodes",), ("explain",))
WARM_UP = 3


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _pct(sorted_values: list[float], share: float) -> float:
    """The nearest-rank percentile of already sorted values."""
    return sorted_values[max(0, math.ceil(len(sorted_values) * share) - 1)]


def measure(argv: list[str], calls: int, env: dict[str, str]) -> dict[str, float]:
    """Wall p50/p95 and CPU p50/mean (seconds) over `calls` runs, and the last exit status."""
    for _ in range(WARM_UP):
        subprocess.run(argv, stdout=subprocess.DEVNULL, check=False, env=env)
    walls: list[float] = []
    cpus: list[float] = []
    code = 0
    for _ in range(calls):
        cpu0, start = _cpu(), time.perf_counter()
        code = subprocess.run(argv, stdout=subprocess.DEVNULL, check=False, env=env).returncode
        walls.append(time.perf_counter() - start)
        cpus.append(_cpu() - cpu0)
    walls.sort()
    cpus.sort()
    return {
        "wall_p50": statistics.median(walls),
        "wall_p95": _pct(walls, 0.95),
        "cpu_p50": statistics.median(cpus),
        "cpu_mean": statistics.fmean(cpus),
        "code": code,
    }


def _row(name: str, m: dict[str, float], calls: int) -> str:
    ms = {k: v * 1e3 for k, v in m.items()}
    return (
        f"  {name:<24} wall p50 {ms['wall_p50']:5.1f} ms  p95 {ms['wall_p95']:5.1f} ms   "
        f"cpu p50 {ms['cpu_p50']:5.1f} ms  mean {ms['cpu_mean']:5.1f} ms   "
        f"exit {int(m['code'])}  ({calls} calls)"
    )


def modes(cache: Path) -> dict[str, tuple[Path, dict[str, str]]]:
    """The binaries and environments the calls run with (see the module docstring)."""
    bytecode = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    bytecode["PYTHONPYCACHEPREFIX"] = str(cache)
    as_is = dict(os.environ)
    flag = "PYTHONDONTWRITEBYTECODE=1" if as_is.get("PYTHONDONTWRITEBYTECODE") else "bytecode"
    chosen = {"bytecode (as installed)": (BIN, bytecode), f"env ({flag})": (BIN, as_is)}
    if other := os.environ.get("BENCH_CLI_BIN"):
        chosen[f"BENCH_CLI_BIN={other}"] = (Path(other), as_is)
    return chosen


def main() -> None:
    calls = int(os.environ.get("BENCH_CLI_CALLS", "50"))
    with tempfile.TemporaryDirectory(prefix="vm-bench-cli-") as tmp:
        cluster = AgentCluster(Path(tmp) / "agents", 2)
        try:
            cluster.start_all()
            cluster.wait_for(lambda: cluster.one_view([1, 2]), 30, "one view")
            sock = str(cluster.agents[1].control_socket)
            print("load average at start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
            for mode, (bin_dir, env) in modes(Path(tmp) / "pycache").items():
                print(f"{mode}:")
                base = measure([str(bin_dir / "python"), "-c", "pass"], calls, env)
                print(_row("python -c pass", base, calls))
                for verb in VERBS:
                    argv = [str(bin_dir / "votemesh"), *verb, "--socket", sock]
                    print(_row("votemesh " + " ".join(verb), measure(argv, calls, env), calls))
            print("load average at end:   {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
        finally:
            cluster.close()


if __name__ == "__main__":
    main()
