"""Idle CPU of two code revisions in ONE cluster: half the agents run each, at the same time.

    BENCH_MIXED_BASELINE=main python -m tests.bench mixed     (figures only; skipped unset)

Sequential clusters (`bench_scale`'s BENCH_SCALE_BASELINE) see whatever load the machine had
during each window; on a shared host that moves the figures more than a change does. Here one
cluster of N real agents (LAN preset, host loopback, static peers) runs the baseline revision
(`git archive` + PYTHONPATH) on odd node ids and this tree on even ones, then the other way
round, so both halves share the load, the round and the representative's extra work. Per half:
mean CPU per agent (utime + stime over the window), datagrams received and sent per agent per
second, CPU per datagram received + one sent; the two revisions must stay in one view (they
interoperate on the wire). BENCH_MIXED_SIZES=16,32 (default), BENCH_MIXED_IDLE=seconds (60).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.agent.live_agents import LAN_TIMING, AgentCluster
from tests.bench.bench_agent import cpu_seconds
from tests.bench.bench_scale import BenchError, _number, _sizes, baseline_tree, load

SETTLE = 300.0  # seconds allowed for one view (32 agents starting on 2 busy cores)


def _datagrams(status: dict[str, Any] | None) -> dict[str, Any]:
    runtime = (status or {}).get("runtime") or {}
    datagrams: dict[str, Any] = runtime.get("datagrams") or {}
    return datagrams


def mixed_run(workdir: Path, nodes: int, odd: Path | None, even: Path | None, idle: float) -> str:
    """One cluster, odd ids on `odd`'s code and even ids on `even`'s (None: this tree)."""
    cluster = AgentCluster(workdir, nodes, timing=LAN_TIMING)
    try:
        for node_id in cluster.agents:
            code = odd if node_id % 2 else even
            cluster.prefix = () if code is None else ("env", f"PYTHONPATH={code}")
            cluster.spawn(node_id)
        everyone = list(range(1, nodes + 1))
        cluster.wait_for(lambda: cluster.one_view(everyone), SETTLE, f"one view of {nodes}")
        time.sleep(3.0)
        before = cluster.statuses()
        pids = {i: a.process.pid for i, a in cluster.agents.items() if a.process is not None}
        cpu0 = {i: cpu_seconds(p) for i, p in pids.items()}
        begin, load0 = time.monotonic(), load()
        time.sleep(idle)
        elapsed = time.monotonic() - begin
        pct = {i: (cpu_seconds(p) - cpu0[i]) / elapsed * 100 for i, p in pids.items()}
        after = cluster.statuses()
        stayed = cluster.one_view(everyone)
    finally:
        cluster.close()
    parts = []
    for parity, code in ((1, odd), (0, even)):
        ids = [i for i in pids if i % 2 == parity]
        mean = sum(pct[i] for i in ids) / len(ids)
        got = [
            _datagrams(after.get(i)).get("received", 0)
            - _datagrams(before.get(i)).get("received", 0)
            for i in ids
        ]
        per_s = sum(got) / len(ids) / elapsed
        pair_us = mean * 1e4 / per_s if per_s else float("nan")
        name = "this tree" if code is None else "baseline"
        parts.append(f"{name} {mean:.2f} % ({pair_us:.1f} us per pair, {per_s:.0f}/s received)")
    return (
        f"N={nodes}, {'odd' if odd else 'even'} ids baseline: {'; '.join(parts)}; one view "
        f"throughout: {stayed}; load {load0:.2f} -> {load():.2f}"
    )


def main() -> None:
    """Each size twice (baseline on odd ids, then on even ids); figures only."""
    rev = os.environ.get("BENCH_MIXED_BASELINE")
    if not rev:
        print("  skipped: set BENCH_MIXED_BASELINE=<git revision> to compare with this tree")
        return
    try:
        sizes = _sizes(os.environ, "BENCH_MIXED_SIZES", (16, 32))
        idle = _number(os.environ, "BENCH_MIXED_IDLE", 60.0, 1, 3600)
        with tempfile.TemporaryDirectory(prefix="bench-mixed-") as tmp:
            short, tree = baseline_tree(rev, Path(tmp) / "baseline")
            print(f"  baseline {rev} = {short}; idle {idle:g} s; load {load():.2f}", flush=True)
            for turn, nodes in enumerate(sizes):
                for odd, even in ((tree, None), (None, tree)):
                    workdir = Path(tmp) / f"{nodes}-{turn}-{'odd' if odd else 'even'}"
                    print("  " + mixed_run(workdir, nodes, odd, even, idle), flush=True)
    except BenchError as error:
        raise SystemExit(f"bench mixed: {error}") from None


if __name__ == "__main__":
    main()
