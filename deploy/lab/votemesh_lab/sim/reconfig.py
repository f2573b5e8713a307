"""Run-time configuration changes in the simulator, applied the way replication applies them.

A `Reconfigurer` rides on a `SimNetwork` of real `AgentNode` cores and plays the replication of
docs/design.md §3.9 by its rules, without its messages:

* **Commit** (at the schedule's change times): only in a view that some running node has
  installed, that every member has installed too (same ring id), whose members all hold the
  latest version, whose representative-side node is quorate, and that holds a strict majority
  of the latest configuration's node votes; one change at a time (the previous one applied by
  its view first). Otherwise the change is refused, as the replica refuses it.
* **Apply**: every member of the committing view staged the new version; its representative
  applies it at once, each other member 0-150 ms after the commit (`Commit` delivery), or, for
  LATE_SHARE of them, 0.15-2 s later (its `Commit`s were lost) and only if it is still in that
  view then; a removed member applies it with `member=False` (it stops, as the runtime does on
  `Removed`); an added node starts 50-300 ms later with the new configuration (the join).
* **Catch-up**: a node behind that has installed the same view as a node ahead of it applies
  that node's version 5-100 ms later (step 1's `Sync`: possibly several versions at once, a
  jump); so does a node outside the view of a node ahead when the two hear each other and its
  heartbeats report its older version (the runtime's once-a-second `_tell_behind`); a view
  whose members all hold version w, one of them staged w + 1, and that holds a
  strict majority of w's votes commits w + 1 again (step 1's re-proposal).

Changes: `delnode` (a random member, the cluster keeps at least two), `add` (a spare node id
that never ran), `votes` (a member's votes set to 0-3, at least two votes in total). Each node
runs `AgentConfig`s built from one cluster shape (`shape_configs`), all peers static.
"""

from __future__ import annotations

import random
import traceback
from dataclasses import dataclass, field, replace

from agent.config import AgentConfig, LinkConfig, PeerConfig, QuorumOptions, Timing
from agent.membership import MemberView, RingId
from agent.node import AgentNode, transition_span
from votemesh_lab.checker import Violation, settle_time
from votemesh_lab.sim.network import SimNetwork
from votemesh_lab.sim.schedules import (
    CHECK_WINDOW,
    FORMATION,
    RunResult,
    Schedule,
    judge,
    random_schedule,
)

APPLY_SPREAD = 0.15
"""Seconds within which the members of the committing view apply a change."""
SYNC_DELAY = (0.005, 0.1)
"""Seconds until a node behind applies what a member of its view holds."""
LATE_SHARE = 0.3
LATE_DELAY = (0.15, 2.0)
"""Seconds after the commit at which a member whose `Commit`s were lost applies it."""
JOIN_DELAY = (0.05, 0.3)
CATCH_UP_EVERY = 0.05
TELL_BEHIND_EVERY = 1.0  # agent/runtime/config_runtime.py FAREWELL_EVERY
BEHIND_HEARD = 5.0  # agent/runtime/config_runtime.py BEHIND_HEARD
"""Seconds between two looks for nodes that are behind."""


def shape_configs(
    shape: dict[int, int], timing: Timing, quorum: QuorumOptions
) -> dict[int, AgentConfig]:
    """Node id -> votes as each member's configuration (static peers, one link)."""
    peers = {
        i: PeerConfig(i, f"node{i}", ((0, f"10.0.0.{i}", 5407),), votes)
        for i, votes in shape.items()
    }
    return {
        i: AgentConfig(
            cluster_name="sim",
            node_id=i,
            node_name=f"node{i}",
            links=(LinkConfig(0, f"10.0.0.{i}"),),
            peers=tuple(p for j, p in sorted(peers.items()) if j != i),
            timing=timing,
            quorum=replace(quorum, votes=votes),
            discovery=False,
        )
        for i, votes in shape.items()
    }


@dataclass
class Reconfigurer:
    """Commits and applies configuration changes on `net` (see the module docstring)."""

    net: SimNetwork
    rng: random.Random
    shapes: list[dict[int, int]]
    """shapes[v - 1]: node id -> votes of version v (version 1 is the start)."""
    timing: Timing
    quorum: QuorumOptions
    spares: list[int]
    """Node ids that may be added (never started before)."""
    pending: dict[int, int] = field(default_factory=dict)
    """Node -> the version it will apply soon (scheduled)."""
    committed: list[str] = field(default_factory=list)
    refused: int = 0
    staged: dict[int, int] = field(default_factory=dict)
    """Node -> the highest version it staged (acknowledged a proposal of)."""

    @property
    def version(self) -> int:
        return len(self.shapes)

    def start(self, until: float) -> None:
        """Begin looking for nodes that are behind every CATCH_UP_EVERY seconds."""
        self.net.at(self.net.now + CATCH_UP_EVERY, lambda: self._catch_up(until))

    def change(self) -> None:
        """One change, if replication would accept it now."""
        view = self._committing_view()
        if view is None or self.pending:
            self.refused += 1
            self.net.note(f"config change refused (version {self.version}): no ready majority")
            return
        shape, what, joiner = self._next_shape()
        if shape is None:
            self.refused += 1
            return
        self.shapes.append(shape)
        version = self.version
        self.committed.append(what)
        self.net.note(f"config version {version} committed in view {sorted(view)}: {what}")
        configs = shape_configs(shape, self.timing, self.quorum)
        rep = self._installed(min(view))
        ring = None if rep is None else rep.ring_id
        for node in sorted(view):
            self.staged[node] = version
            if node == min(view):  # the representative commits first
                self._apply_at(node, self.net.now + 0.001, version, configs)
            elif self.rng.random() < LATE_SHARE:
                late = self.net.now + self.rng.uniform(*LATE_DELAY)
                self._apply_at(node, late, version, configs, ring=ring)
            else:
                at = self.net.now + self.rng.uniform(0.001, APPLY_SPREAD)
                self._apply_at(node, at, version, configs)
        if joiner is not None:
            at = self.net.now + self.rng.uniform(*JOIN_DELAY)
            self.net.at(at, lambda: self.net.add_node(joiner, configs[joiner], version))

    def _apply_at(
        self,
        node: int,
        at: float,
        version: int,
        configs: dict[int, AgentConfig],
        ring: RingId | None = None,
    ) -> None:
        """`node` applies `version` at `at` (with `ring`: only if its view still has it)."""
        self.pending[node] = version
        slot = self.net.slots[node]

        def apply() -> None:
            self.pending.pop(node, None)
            view = self._installed(node)
            if view is None or slot.version >= version:
                return
            if ring is not None and view.ring_id != ring:
                return  # the view broke before its Commit arrived: it stays staged
            if node in configs:
                self.net.reconfigure(node, configs[node], version)
            else:
                self.net.reconfigure(node, slot.config, version, member=False)

        self.net.at(at, apply)

    def _committing_view(self) -> frozenset[int] | None:
        """A view replication could commit in now (module docstring), else None."""
        latest = self.shapes[-1]
        for node in sorted(self.net.slots):
            core = self._running(node)
            if core is None or not core.quorate:
                continue
            view = core.view
            if self._agreed_at(view, self.version) and 2 * sum(
                latest.get(m, 0) for m in view.members
            ) > sum(latest.values()):
                return frozenset(view.members)
        return None

    def _told_outside(self, node: int, version: int) -> list[int]:
        """Versions of running nodes ahead that would send `node` their configuration outside
        a view (config_runtime `_tell_behind`): `node` is not in their view, they heard it
        within BEHIND_HEARD reporting `version`, and it heard them within BEHIND_HEARD (the
        path works both ways). Applied with the Sync delay, no later than the next second's
        tick (the CATCH_UP_EVERY poll that crosses a whole second)."""
        now = self.net.now
        second = int(now // TELL_BEHIND_EVERY) != int((now - CATCH_UP_EVERY) // TELL_BEHIND_EVERY)
        if version < 1 or not second:  # once a second, on the poll that crosses it (no rng)
            return []
        mine = self._running(node)
        if mine is None:
            return []
        told = []
        for other, slot in sorted(self.net.slots.items()):
            core = self._running(other)
            if core is None or other == node or slot.version <= version:
                continue
            peer, back = core.peers.get(node), mine.peers.get(other)
            if peer is None or back is None or node in core.view.members:
                continue
            fresh = self.net.now - max(peer.seen_at, -1e9) < BEHIND_HEARD
            fresh = fresh and self.net.now - max(back.seen_at, -1e9) < BEHIND_HEARD
            if fresh and peer.config_version == version:
                told.append(slot.version)
        return told

    def _running(self, node: int) -> AgentNode | None:
        """The node's core while it runs and is not paused."""
        slot = self.net.slots[node]
        core = slot.core
        if not isinstance(core, AgentNode) or slot.paused_until is not None:
            return None
        return core

    def _installed(self, node: int) -> MemberView | None:
        """The node's installed view (None while it is down)."""
        core = self.net.slots[node].core
        return core.view if isinstance(core, AgentNode) else None

    def _next_shape(self) -> tuple[dict[int, int] | None, str, int | None]:
        latest = dict(self.shapes[-1])
        kinds = ["votes", "delnode"] + (["add"] if self.spares else [])
        kind = self.rng.choice(kinds)
        if kind == "add":
            node = self.spares.pop(0)
            latest[node] = 1
            return latest, f"add node {node}", node
        node = self.rng.choice(sorted(latest))
        if kind == "delnode":
            if len(latest) <= 2:
                return None, "", None
            del latest[node]
            return latest, f"delnode {node}", None
        latest[node] = self.rng.randint(0, 3)
        if sum(latest.values()) < 2:
            return None, "", None
        return latest, f"node {node} votes {latest[node]}", None

    def _agreed_at(self, view: MemberView, version: int) -> bool:
        """Every member runs, installed `view` and holds `version`, none is about to apply."""
        return all(
            (core := self._running(m)) is not None
            and m not in self.pending
            and core.view == view
            and self.net.slots[m].version == version
            for m in view.members
        )

    def _repropose(self, view: MemberView, version: int) -> None:
        """Step 1 of a view whose member staged version + 1: commit it again if the view holds
        a strict majority of `version`'s votes."""
        members = sorted(view.members)
        if version >= self.version or max(self.staged.get(m, 0) for m in members) <= version:
            return
        votes = self.shapes[version - 1]
        if 2 * sum(votes.get(m, 0) for m in members) <= sum(votes.values()):
            return
        configs = shape_configs(self.shapes[version], self.timing, self.quorum)
        self.net.note(f"view {members} commits staged version {version + 1} again")
        for m in members:
            self.staged[m] = max(self.staged.get(m, 0), version + 1)
            at = self.net.now + self.rng.uniform(0.001, APPLY_SPREAD)
            self._apply_at(m, at, version + 1, configs)

    def _catch_up(self, until: float) -> None:
        """Nodes behind a member of their installed view apply its version (`Sync`)."""
        for node, slot in sorted(self.net.slots.items()):
            core = self._running(node)
            if core is None or node in self.pending:
                continue
            view = core.view
            ahead = [
                self.net.slots[m].version
                for m in view.members
                if m != node
                and self._installed(m) == view
                and self.net.slots[m].version > slot.version
            ]
            if not ahead:
                ahead = self._told_outside(node, slot.version)
            if ahead:
                version = max(ahead)
                configs = shape_configs(self.shapes[version - 1], self.timing, self.quorum)
                at = self.net.now + self.rng.uniform(*SYNC_DELAY)
                self._apply_at(node, at, version, configs)
            elif self._agreed_at(view, slot.version):
                self._repropose(view, slot.version)
        if self.net.now + CATCH_UP_EVERY < until:
            self.net.at(self.net.now + CATCH_UP_EVERY, lambda: self._catch_up(until))


CHANGES = (1, 4)
"""Changes asked per run (some are refused: no ready majority view at that moment)."""
SPARES = 2
"""Node ids beyond the schedule's nodes that a change may add."""
EXTRA_END = 1.0
"""Seconds added to the run after the transition span, so S3 and L1 are checked after it."""


@dataclass(slots=True)
class ReconfigRun:
    """A finished run with configuration changes."""

    result: RunResult
    driver: Reconfigurer

    @property
    def ok(self) -> bool:
        return self.result.ok

    def report(self) -> str:
        return "\n".join(
            [
                (
                    f"reconfiguration seed {self.result.schedule.seed}: replay with "
                    f"`python -m votemesh_lab.sim.replay {self.result.schedule.seed} --reconfig`"
                ),
                f"changes committed: {self.driver.committed}, refused: {self.driver.refused}",
                self.result.report(),
            ]
        )


def reconfig_schedule(seed: int) -> tuple[Schedule, list[float]]:
    """The fault schedule of `seed` (no qnetd: the device's node list is the runtime's) and the
    times at which a configuration change is asked (during the fault phases)."""
    base = random_schedule(seed)
    steps = tuple(s for s in base.steps if s.action not in {"cut_qnetd", "uncut_qnetd"})
    sized = base.timing.sized_for(base.nodes + SPARES)  # the largest shape the run can reach
    span = transition_span(sized)
    end = base.healed_at + span + settle_time(sized) + CHECK_WINDOW + EXTRA_END
    schedule = replace(base, qdevice=None, steps=steps, end=end)
    rng = random.Random(seed * 15485863 + 5)
    first = min((s.at for s in steps if s.action != "start"), default=FORMATION)
    times = sorted(rng.uniform(first - 0.3, base.healed_at) for _ in range(rng.randint(*CHANGES)))
    return schedule, times


def run_reconfig_seed(seed: int, *, trace_limit: int | None = 2000) -> ReconfigRun:
    """Simulate `reconfig_schedule(seed)` with a `Reconfigurer` and check every property."""
    schedule, times = reconfig_schedule(seed)
    count = schedule.nodes
    spares = list(range(count + 1, count + 1 + SPARES))
    shape = dict.fromkeys(range(1, count + 1), 1)
    configs = shape_configs(shape, schedule.timing, schedule.quorum)
    future = shape_configs(shape | dict.fromkeys(spares, 1), schedule.timing, schedule.quorum)
    configs |= {n: future[n] for n in spares}
    net = SimNetwork(configs, seed, default_link=schedule.base, trace_limit=trace_limit)
    for n in spares:
        net.hold_back(n)
    for n in shape:  # version 1: what every node starts from (as from its disk)
        net.slots[n].version = 1
        net.config_history[n] = [(0.0, 1, configs[n])]
    rng = random.Random(seed * 2147483647 + 1)
    driver = Reconfigurer(net, rng, [shape], schedule.timing, schedule.quorum, spares)
    driver.start(schedule.end)
    for step in schedule.steps:
        net.at(step.at, lambda step=step: step.apply(net))  # type: ignore[misc]
    for at in times:
        net.at(at, driver.change)
    try:
        net.run_until(schedule.end)
    except Exception as exc:  # noqa: BLE001 -- a core raising or a busy loop is a finding
        net.note("".join(traceback.format_exception(exc, limit=-4)).rstrip())
        result = RunResult(schedule, net, [Violation("ERROR", net.now, (), f"{exc!r}")])
        return ReconfigRun(result, driver)
    return ReconfigRun(judge(schedule, net), driver)
