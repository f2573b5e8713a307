"""The cluster simulator: simulated node-seconds per wall second, and L2 over 10 minutes.

Figures only, never a failure on timing. `python -m tests.bench sim`.

* throughput: 5 and 9 `AgentNode`s on a clean LAN for 120 simulated seconds (best of 3), and
  the random fault schedules of the CI sample; with the reference fake node and a null core
  (heartbeats, no decisions) too, which show how much of the cost is the simulator and how much
  the core.
* stability (DESIGN L2): 5 nodes, 5 % loss and +-20 ms jitter on every link, 10 simulated
  minutes: view changes after the first formation (the target is 0), and ticks where a node's
  deadline did not move past `now` (spins).
* scale (issue 11): `scale_rows(sizes)`, which tests/bench/bench_scale.py imports for its
  table (`python -m tests.bench scale`; here only when BENCH_SIM_SCALE names sizes, e.g.
  64,128,256): N real cores form, split 60/40 and heal, with the core cost per node, the null
  core's share, the split times and the checker's verdict.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

from votemesh_lab.checker import Checker
from votemesh_lab.sim.iface import Broadcast, Start, Tick
from votemesh_lab.sim.network import Core, LinkModel, NodeFactory, SimNetwork, cluster_configs
from votemesh_lab.sim.network import default_factory as real
from votemesh_lab.sim.scale import START_SPREAD, split_heal
from votemesh_lab.sim.schedules import run_seed

from agent.config import AgentConfig
from proto.mesh_messages import Heartbeat
from tests.sim.fake_node import FakeNode

STEADY_SECONDS = 120.0  # simulated, per throughput run
ROUND = 0.1
"""The null core's heartbeat interval (seconds)."""
REPEATS = 3


def fake(config: AgentConfig, incarnation: int, max_seq: int) -> Core:
    return FakeNode(config, incarnation, max_seq=max_seq)


class NullCore:
    """Heartbeats every peer every 100 ms, on the same round instants as every other node (as
    the real core does, design §3.3), and decides nothing: the simulator's own cost."""

    def __init__(self, config: AgentConfig) -> None:
        self.peers = tuple(p.node_id for p in config.peers)
        self.beat = Heartbeat(link=0, stamp_us=0, wall_ms=0)
        self.next_at = 0.0

    def handle(self, event: object, now: float) -> list[object]:
        if isinstance(event, Tick | Start) and now >= self.next_at:
            self.next_at = (math.floor(now / ROUND + 1e-9) + 1) * ROUND
            return [Broadcast(0, self.peers, self.beat)]
        return []

    def next_deadline(self) -> float | None:
        return self.next_at

    def status(self, now: float) -> dict[str, object]:
        return {"ring_id": None, "members": [], "quorate": False, "expected_votes": 0}


def null(config: AgentConfig, incarnation: int, max_seq: int) -> Core:
    return NullCore(config)


def steady(nodes: int, seconds: float, factory: NodeFactory, link: LinkModel) -> SimNetwork:
    """A cluster started at 0 and run for `seconds` without faults."""
    net = SimNetwork(cluster_configs(nodes), 1, default_link=link, factory=factory)
    for node in range(1, nodes + 1):
        net.at(0.01 * node, lambda node=node: net.start(node))  # type: ignore[misc]
    net.run_until(seconds)
    return net


def throughput() -> None:
    lan = LinkModel(delay=0.0005)
    for label, factory in (("AgentNode", real), ("fake node", fake), ("null core", null)):
        for nodes in (5, 9):
            walls = []
            for _ in range(REPEATS):  # the best of a few: other processes only ever slow it
                start = time.perf_counter()
                net = steady(nodes, STEADY_SECONDS, factory, lan)
                walls.append(time.perf_counter() - start)
            wall = min(walls)
            print(
                f"  {label:<10} {nodes} nodes, {STEADY_SECONDS:.0f} s clean LAN: "
                f"{nodes * STEADY_SECONDS / wall:>9,.0f} node-seconds/s  "
                f"({net.handled / wall:,.0f} handle() calls/s, best of {REPEATS}: {wall:.2f} s)"
            )
    start, node_seconds = time.perf_counter(), 0.0
    for seed in range(40):
        result = run_seed(seed)
        node_seconds += result.schedule.nodes * result.schedule.end
    wall = time.perf_counter() - start
    print(
        f"  AgentNode  40 random fault schedules (3-9 nodes): {node_seconds / wall:>9,.0f} "
        f"node-seconds/s  ({wall / 40:.3f} s per schedule)"
    )


def stability(minutes: float = 10.0) -> None:
    link = LinkModel(delay=0.025, jitter=0.02, loss=0.05)
    start = time.perf_counter()
    net = steady(5, minutes * 60, real, link)
    wall = time.perf_counter() - start
    checker = Checker(net.timeline())
    formed = checker.formation()
    print(
        f"  L2: 5 nodes, 5 % loss, 25 +- 20 ms, {minutes:.0f} simulated minutes: "
        f"{checker.view_changes()} view changes after formation at "
        f"{formed if formed is None else round(formed, 3)} s; "
        f"{len(checker.check().violations)} property violations; {net.spins} spins; "
        f"{wall:.1f} s wall ({5 * minutes * 60 / wall:,.0f} node-seconds/s)"
    )


def null_pct_per_node(nodes: int, seconds: float) -> float:
    """The simulator's own cost (null cores, clean LAN, after every node started): wall time per
    simulated node-second, in % of a core."""
    net = SimNetwork(cluster_configs(nodes), 1, default_link=LinkModel(), factory=null)
    for node in range(1, nodes + 1):
        net.at(START_SPREAD * node / nodes, lambda node=node: net.start(node))  # type: ignore[misc]
    net.run_until(START_SPREAD + 0.2)
    start = time.perf_counter()
    net.run_until(net.now + seconds)
    return 100 * (time.perf_counter() - start) / (nodes * seconds)


def scale_rows(sizes: list[int]) -> list[dict[str, Any]]:
    """One row per cluster size: N real cores form, split 60/40 (154|102 at 256) and heal
    (`votemesh_lab.sim.scale.split_heal`), judged by the checker. Keys: nodes, split,
    cost_pct_per_node (the real cores and the simulator, after formation), null_pct_per_node
    (the simulator alone), cost_cpu_pct_per_node (the same by this process's CPU time: the
    machine is shared), formation_s, minority_inquorate_s (the slowest minority node),
    majority_inquorate_s (None: never), rejoined_s (heal -> one view), wall_s and cpu_s (the
    whole run, checker included), violations, load (1-minute load average at the end)."""
    rows = []
    for nodes in sizes:
        minority = round(0.4 * nodes)
        steady_s = 2.0 if nodes <= 64 else 1.0
        run = split_heal(nodes, minority, steady=steady_s)
        rows.append(
            {
                "nodes": nodes,
                "split": f"{nodes - minority}|{minority}",
                "cost_pct_per_node": run.cost_pct_per_node,
                "cost_cpu_pct_per_node": run.cost_cpu_pct_per_node,
                "null_pct_per_node": null_pct_per_node(nodes, steady_s),
                "formation_s": run.formed_at,
                "minority_inquorate_s": run.minority_inquorate_s,
                "majority_inquorate_s": run.majority_inquorate_s,
                "rejoined_s": run.rejoined_s,
                "wall_s": run.wall_s,
                "cpu_s": run.total_cpu,
                "violations": None if run.verdict is None else len(run.verdict.violations),
                "load": os.getloadavg()[0],
            }
        )
    return rows


def scale(sizes: list[int]) -> None:
    """The scale rows, printed (issue 11)."""
    for row in scale_rows(sizes):
        print("  " + ", ".join(f"{k} {_figure(v)}" for k, v in row.items()), flush=True)


def _figure(value: object) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def main() -> None:
    throughput()
    stability()
    sizes = os.environ.get("BENCH_SIM_SCALE", "")  # `bench scale` prints them in its table
    scale([int(n) for n in sizes.split(",") if n.strip()])


if __name__ == "__main__":
    main()
