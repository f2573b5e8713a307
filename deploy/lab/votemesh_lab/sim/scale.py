"""Large clusters in the simulator (issue 11): formation, a settled split and its heal at N nodes.

`split_heal(nodes, minority)`: N real cores on a clean LAN (0.5 ms) start within the first
0.3 s and form one view; after formation the run measures the wall time of `steady` simulated
seconds (the cost per simulated node); once the network has been whole for the settle time it
splits into a majority and a minority (a seeded draw of the node ids), stays split for the
settle time and the check window (what F1 needs), heals, and runs until every node reports one
view of all N again and the settle time and the check window have passed (what S3 and L1 need).
The checker (`votemesh_lab.checker.Checker`) judges the whole timeline. `SplitRun` holds the
figures: formation time, each minority node's inquorate latency after the cut, how long any
majority node was inquorate (None: never), the heal time, the wall time of each phase.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

from agent.config import Timing
from votemesh_lab.checker import Checker, Verdict, settle_time
from votemesh_lab.sim.network import LinkModel, NodeFactory, SimNetwork, cluster_configs
from votemesh_lab.sim.network import default_factory as real_core

START_SPREAD = 0.3
"""Nodes start within this many seconds (as the random schedules' nodes do)."""
CHECK_WINDOW = 0.5
"""Seconds after the settle time in each phase (as `schedules.CHECK_WINDOW`)."""
STEP = 0.05
"""How often (simulated seconds) the run looks for formation and the healed view."""
FORM_WITHIN = 30.0
"""Simulated seconds formation (and the heal) may take before the run gives up on it."""


@dataclass(slots=True)
class SplitRun:
    """One finished run: the network, the checker's verdict and the figures."""

    nodes: int
    majority: frozenset[int]
    minority: frozenset[int]
    net: SimNetwork
    verdict: Verdict | None = None
    formed_at: float | None = None
    """When every node first reported one view of all N, quorate (simulated seconds)."""
    cut_at: float | None = None
    minority_inquorate: dict[int, float] = field(default_factory=dict)
    """Minority node -> seconds from the cut until it reported inquorate (absent: never)."""
    majority_inquorate_s: float | None = None
    """The longest a majority node reported inquorate after the cut (None: never)."""
    healed_at: float | None = None
    rejoined_s: float | None = None
    """Seconds from the heal until every node reported one view of all N again."""
    steady_s: float = 0.0
    """Simulated seconds of the cost window (after formation, before the split)."""
    steady_wall: float = 0.0
    steady_cpu: float = 0.0
    """This process's CPU seconds in the cost window (a shared machine inflates wall time)."""
    walls: dict[str, float] = field(default_factory=dict)
    """Wall seconds of each phase: formation, settle, steady, split, heal, check."""
    total_wall: float = 0.0
    """Wall seconds of the whole run, from building the cluster to the verdict."""
    total_cpu: float = 0.0

    @property
    def cost_pct_per_node(self) -> float | None:
        """Wall time of the cost window per simulated node-second, in % of a core."""
        if not self.steady_s:
            return None
        return 100 * self.steady_wall / (self.nodes * self.steady_s)

    @property
    def cost_cpu_pct_per_node(self) -> float | None:
        """CPU time of the cost window per simulated node-second, in % of a core."""
        return 100 * self.steady_cpu / (self.nodes * self.steady_s) if self.steady_s else None

    @property
    def minority_inquorate_s(self) -> float | None:
        """The slowest minority node's inquorate latency (None: one never went inquorate)."""
        if len(self.minority_inquorate) < len(self.minority):
            return None
        return max(self.minority_inquorate.values(), default=None)

    @property
    def wall_s(self) -> float:
        """The whole run's wall time (the phases' sum while it runs)."""
        return self.total_wall or sum(self.walls.values())

    def describe(self) -> str:
        """One line of figures."""
        form = "never" if self.formed_at is None else f"{self.formed_at:.2f} s"
        minority = self.minority_inquorate_s
        majority = self.majority_inquorate_s
        rejoined = self.rejoined_s
        cost = self.cost_pct_per_node
        violations = "-" if self.verdict is None else str(len(self.verdict.violations))
        return (
            f"{self.nodes} nodes {len(self.majority)}|{len(self.minority)}: formed {form}; "
            f"minority inquorate max "
            f"{'never' if minority is None else f'{minority * 1000:.0f} ms'}; majority "
            f"inquorate {'never' if majority is None else f'{majority * 1000:.0f} ms'}; "
            f"one view again {'never' if rejoined is None else f'{rejoined:.2f} s'} after the "
            f"heal; core cost {'-' if cost is None else f'{cost:.3f}'} % of a core per node; "
            f"violations {violations}; wall {self.wall_s:.1f} s, CPU {self.total_cpu:.1f} s "
            f"({', '.join(f'{k} {v:.1f}' for k, v in self.walls.items())})"
        )


def one_view(net: SimNetwork, nodes: frozenset[int]) -> bool:
    """Every node reports the same ring, naming exactly `nodes`, quorate."""
    rings = set()
    for node in nodes:
        state = net.slots[node].state
        if state is None or not state.quorate or state.members != nodes:
            return False
        rings.add(state.ring)
    return len(rings) == 1


def _last_change(net: SimNetwork, nodes: frozenset[int]) -> float:
    return max(net.history[n][-1][0] for n in nodes)


def _until_one_view(net: SimNetwork, nodes: frozenset[int], limit: float) -> float | None:
    """Run until every node reports one view of `nodes`; when that began (None: not by limit)."""
    while net.now < limit:
        net.run_until(net.now + STEP)
        if one_view(net, nodes):
            return _last_change(net, nodes)
    return None


def split_heal(
    nodes: int,
    minority: int,
    *,
    seed: int = 1,
    steady: float = 1.0,
    check: bool = True,
    factory: NodeFactory = real_core,
) -> SplitRun:
    """Form, measure `steady` simulated seconds, split off `minority` nodes, heal, judge."""
    started, cpu_started = time.perf_counter(), time.process_time()
    timing = Timing.lan()
    settle = settle_time(timing.sized_for(nodes))  # the checker's (design §3.14: sized)
    everyone = frozenset(range(1, nodes + 1))
    small = frozenset(random.Random(seed).sample(sorted(everyone), minority))
    configs = cluster_configs(nodes, timing=timing)
    net = SimNetwork(configs, seed, default_link=LinkModel(), factory=factory)
    run = SplitRun(nodes, everyone - small, small, net)
    for node in sorted(everyone):
        net.at(START_SPREAD * node / nodes, lambda node=node: net.start(node))  # type: ignore[misc]
    began = time.perf_counter()
    run.formed_at = _until_one_view(net, everyone, FORM_WITHIN)
    run.walls["formation"] = time.perf_counter() - began
    if run.formed_at is None:
        return _judge(run, check, started, cpu_started)
    if steady:
        began = time.perf_counter()
        net.run_until(net.now + 0.5)  # the formation's last messages
        run.walls["settle"] = time.perf_counter() - began
        began, cpu = time.perf_counter(), time.process_time()
        net.run_until(net.now + steady)
        run.steady_wall = time.perf_counter() - began
        run.steady_cpu = time.process_time() - cpu
        run.steady_s = steady
        run.walls["steady"] = run.steady_wall
    began = time.perf_counter()
    cut_at = max(net.now, START_SPREAD + settle) + STEP
    net.run_until(cut_at)
    net.partition(run.majority, run.minority)
    run.cut_at = cut_at
    net.run_until(cut_at + settle + CHECK_WINDOW)
    run.walls["split"] = time.perf_counter() - began
    _split_figures(run, cut_at)
    began = time.perf_counter()
    net.heal()
    run.healed_at = net.now
    back = _until_one_view(net, everyone, net.now + FORM_WITHIN)
    run.rejoined_s = None if back is None else back - run.healed_at
    net.run_until(max(net.now, run.healed_at + settle + CHECK_WINDOW))
    run.walls["heal"] = time.perf_counter() - began
    return _judge(run, check, started, cpu_started)


def _split_figures(run: SplitRun, cut_at: float) -> None:
    """Each minority node's first inquorate report after the cut; the majority's worst."""
    net = run.net
    for node in run.minority:
        for t, state in net.history[node]:
            if t >= cut_at and (state is None or not state.quorate):
                run.minority_inquorate[node] = t - cut_at
                break
    worst: float | None = None
    for node in run.majority:
        lost: float | None = None
        for t, state in net.history[node]:
            if t < cut_at:
                continue
            if state is None or not state.quorate:
                lost = t if lost is None else lost
            elif lost is not None:
                worst = max(worst or 0.0, t - lost)
                lost = None
        if lost is not None:
            worst = max(worst or 0.0, net.now - lost)
    run.majority_inquorate_s = worst


def _judge(run: SplitRun, check: bool, started: float, cpu_started: float) -> SplitRun:
    if check:
        began = time.perf_counter()
        run.verdict = Checker(run.net.timeline()).check()
        run.walls["check"] = time.perf_counter() - began
    run.total_wall = time.perf_counter() - started
    run.total_cpu = time.process_time() - cpu_started
    return run
