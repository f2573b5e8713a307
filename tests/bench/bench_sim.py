"""The cluster simulator: simulated node-seconds per wall second, and L2 over 10 minutes.

Figures only, never a failure on timing. `python -m tests.bench sim`.

* throughput: 5 and 9 `AgentNode`s on a clean LAN for 120 simulated seconds (best of 3), and
  the random fault schedules of the CI sample; with the reference fake node and a null core
  (heartbeats, no decisions) too, which show how much of the cost is the simulator and how much
  the core.
* stability (DESIGN L2): 5 nodes, 5 % loss and +-20 ms jitter on every link, 10 simulated
  minutes: view changes after the first formation (the target is 0), and ticks where a node's
  deadline did not move past `now` (spins).
"""

from __future__ import annotations

import time

from votemesh_lab.checker import Checker
from votemesh_lab.sim.iface import Broadcast, Start, Tick
from votemesh_lab.sim.network import Core, LinkModel, NodeFactory, SimNetwork, cluster_configs
from votemesh_lab.sim.network import default_factory as real
from votemesh_lab.sim.schedules import run_seed

from agent.config import AgentConfig
from proto.mesh_messages import Heartbeat
from tests.sim.fake_node import FakeNode

STEADY_SECONDS = 120.0  # simulated, per throughput run
REPEATS = 3


def fake(config: AgentConfig, incarnation: int, max_seq: int) -> Core:
    return FakeNode(config, incarnation, max_seq=max_seq)


class NullCore:
    """Heartbeats every peer every 100 ms and decides nothing: the simulator's own cost."""

    def __init__(self, config: AgentConfig) -> None:
        self.peers = tuple(p.node_id for p in config.peers)
        self.beat = Heartbeat(link=0, stamp_us=0, wall_ms=0)
        self.next_at = 0.0

    def handle(self, event: object, now: float) -> list[object]:
        if isinstance(event, Tick | Start) and now >= self.next_at:
            self.next_at = now + 0.1
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


def main() -> None:
    throughput()
    stability()


if __name__ == "__main__":
    main()
