"""The core's steady cost per simulated node (issue 11), before/after in one run.

    python -m tests.bench sim_steady                         (figures only)
    BENCH_SIM_STEADY_BASELINE=<rev> python -m tests.bench sim_steady

N real `AgentNode` cores on the simulator's clean LAN (0.5 ms, no loss) start 10 ms apart and
run 3 simulated seconds (formed); then this process's CPU time over WINDOW simulated seconds
is the figure: % of one core per simulated node (CPU / (N x WINDOW)) and us per `handle` call
(heartbeats and the rounds' ticks). Formation is left out: the per-node cost of the issue is
the steady one. Each measurement runs in a child process (a fresh heap). With
BENCH_SIM_STEADY_BASELINE, that revision's tree (`git archive`) runs right before this one at
every size, twice (base, this, base, this): compare within a run, by ratio.
BENCH_SIM_STEADY_SIZES=32,64,128 (default), BENCH_SIM_STEADY_WINDOW=10 (simulated seconds).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

FORM_SECONDS = 3.0
HERE = Path(__file__).resolve()
ROOT = HERE.parents[2]


def measure(nodes: int, window: float) -> dict[str, Any]:
    """One measurement in this process, with whatever `agent` and `votemesh_lab` it imports."""
    from votemesh_lab.sim.network import LinkModel, SimNetwork, cluster_configs
    from votemesh_lab.sim.network import default_factory as real

    net = SimNetwork(cluster_configs(nodes), 1, default_link=LinkModel(delay=0.0005), factory=real)
    for node in range(1, nodes + 1):
        net.at(0.01 * node, lambda node=node: net.start(node))  # type: ignore[misc]
    net.run_until(FORM_SECONDS)
    cpu, handled = time.process_time(), net.handled
    net.run_until(FORM_SECONDS + window)
    cpu = time.process_time() - cpu
    calls = net.handled - handled
    return {
        "nodes": nodes,
        "pct_per_node": 100 * cpu / (nodes * window),
        "us_per_handle": 1e6 * cpu / max(1, calls),
        "load": os.getloadavg()[0],
    }


def child(nodes: int, window: float, tree: Path) -> dict[str, Any]:
    """`measure` in a child process importing `tree`'s packages (this file's code)."""
    env = {**os.environ, "PYTHONPATH": f"{tree}:{tree / 'deploy' / 'lab'}"}
    out = subprocess.run(
        [sys.executable, str(HERE), "--one", str(nodes), str(window), str(tree)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=3600,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    from tests.bench.bench_scale import BenchError, _number, _sizes, baseline_tree

    try:
        sizes = _sizes(os.environ, "BENCH_SIM_STEADY_SIZES", (32, 64, 128))
        window = _number(os.environ, "BENCH_SIM_STEADY_WINDOW", 10.0, 0.5, 600)
        rev = os.environ.get("BENCH_SIM_STEADY_BASELINE", "").strip()
        with tempfile.TemporaryDirectory(prefix="vm-simsteady-") as tmp:
            trees: list[tuple[str, Path]] = []
            if rev:
                short, tree = baseline_tree(
                    rev, Path(tmp) / "baseline", (), "BENCH_SIM_STEADY_BASELINE"
                )
                trees.append((f"@{short}", tree))
            trees.append(("this tree", ROOT))
            for nodes in sizes:
                for _ in range(2 if rev else 1):
                    for label, tree in trees:
                        row = child(nodes, window, tree)
                        print(
                            f"  {label:>11} N={nodes}: {row['pct_per_node']:.3f} % of a core per"
                            f" simulated node, {row['us_per_handle']:.2f} us per handle"
                            f" ({window:g} simulated s after {FORM_SECONDS:g} s to form;"
                            f" load {row['load']:.2f})",
                            flush=True,
                        )
    except BenchError as exc:
        print(f"bench sim_steady: {exc}")
        raise SystemExit(1) from None


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--one":
        sys.path[:0] = [sys.argv[4], str(Path(sys.argv[4]) / "deploy" / "lab")]
        print(json.dumps(measure(int(sys.argv[2]), float(sys.argv[3]))))
    else:
        main()
