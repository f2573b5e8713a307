"""Configuration replicas driven by the real nodes' views: S4 beside the node simulator.

After a `SimNetwork` run (real `AgentNode` cores on a seeded faulty network), one
`ConfigReplica` per node replays the run: each node's recorded states (installed ring id and
members, quorate, expected votes; None while down) become `ViewChanged`/`QuorumInput` at the time
they were recorded, a down node loses its replica and restarts from what it persisted, replica
messages travel only between nodes the recorded topology lets talk both ways at the delivery
time (with random delay and loss), and changes are asked on random nodes at random times. The
replicas are not inside the node cores yet (design §3.9, status): they read the views the cores
installed, which is what the runtime will feed them.

Checked: S4 (one digest per version over every node and all time, no `Conflict`), and that
every view a node installs is one its replica takes part in (its ring id is not below the
replica's `promised`, design §3.9 rule c): the membership core's ring ids rise per node
(agent/membership.py, "Rising ring ids"); a view below would leave the configuration stuck until
the next view change.
"""

from __future__ import annotations

import bisect
import heapq
import random
from dataclasses import dataclass, field, replace
from typing import Any

from agent import config_replication as cr
from agent.cluster_config import ClusterConfig, digest, from_agent_config
from votemesh_lab.sim.network import NodeState, SimNetwork

TICK = 0.1
"""Seconds between replica Ticks (the heartbeat interval the runtime will use)."""
CHANGES_PER_SECOND = 2.0


@dataclass
class BesideReplay:
    """The replay of one run; `violations` empty when S4 held."""

    net: SimNetwork
    seed: int
    rng: random.Random = field(init=False)
    replicas: dict[int, cr.ConfigReplica | None] = field(init=False, default_factory=dict)
    disk: dict[int, cr.Persist] = field(init=False, default_factory=dict)
    committed: dict[int, bytes] = field(init=False, default_factory=dict)
    violations: list[str] = field(init=False, default_factory=list)
    applied: int = field(init=False, default=0)
    heap: list[tuple[float, int, str, Any]] = field(init=False, default_factory=list)
    order: int = field(init=False, default=0)
    now: float = field(init=False, default=0.0)
    request_id: int = field(init=False, default=0)
    _inactive: set[tuple[int, tuple[int, int]]] = field(init=False, default_factory=set)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed ^ 0x5EED)
        for n, config in self.net.configs.items():
            self.disk[n] = cr.Persist(from_agent_config(config), None, None)
            self.replicas[n] = None
        self._starts = [t.at for t in self.net.topologies]

    def _push(self, at: float, kind: str, data: Any) -> None:
        self.order += 1
        heapq.heappush(self.heap, (at, self.order, kind, data))

    def run(self) -> None:
        """Replay everything recorded up to the network's clock."""
        end = self.net.now
        for n, entries in self.net.history.items():
            for at, state in entries:
                self._push(at, "state", (n, state))
        for k in range(int(end / TICK)):
            self._push(k * TICK + TICK / 2, "tick", None)
        at = self.rng.expovariate(CHANGES_PER_SECOND)
        while at < end:
            self._push(at, "change", self.rng.choice(sorted(self.net.configs)))
            at += self.rng.expovariate(CHANGES_PER_SECOND)
        while self.heap:
            self.now, _, kind, data = heapq.heappop(self.heap)
            if self.now > end:
                break
            getattr(self, f"_on_{kind}")(data)

    # ---- inputs ----

    def _on_state(self, data: tuple[int, NodeState | None]) -> None:
        n, state = data
        if state is None:
            self.replicas[n] = None
            return
        if self.replicas[n] is None:
            d = self.disk[n]
            self.replicas[n] = cr.ConfigReplica(n, d.committed, d.staged, d.promised)
        if state.ring is None or n not in state.members:
            return
        rep, seq = state.ring
        self._feed(n, cr.ViewChanged(cr.Ring(seq, rep), state.members))
        replica = self.replicas[n]
        if replica is not None:
            if not replica.active and (n, state.ring) not in self._inactive:
                self._inactive.add((n, state.ring))  # one line per view, not per state record
                self.violations.append(
                    f"rising rings: n{n} installed ring {rep}.{seq} below its promised "
                    f"{replica.promised} (t={self.now:.3f}): its replica takes no part"
                )
            votes = replica.committed.votes()
            have = sum(v for m, v in votes.items() if m in state.members)
            self._feed(n, cr.QuorumInput(state.quorate, have, state.expected))

    def _on_tick(self, _: None) -> None:
        for n in sorted(self.replicas):
            self._feed(n, cr.Tick())

    def _on_change(self, n: int) -> None:
        replica = self.replicas[n]
        if replica is None:
            return
        base = replica.committed
        self.request_id += 1
        window = 10.0 + self.request_id
        new = replace(base, quorum=replace(base.quorum, last_man_standing_window=window))
        self._feed(n, cr.ChangeRequested(self.request_id, base.version, new))

    def _on_deliver(self, data: tuple[int, int, cr.Message]) -> None:
        src, dst, message = data
        topo = self.net.topologies[max(0, bisect.bisect_right(self._starts, self.now) - 1)]
        if self.replicas.get(dst) is None or not topo.mutual(src, dst):
            return
        if topo.link(src, dst).loss and self.rng.random() < topo.link(src, dst).loss:
            return
        self._feed(dst, cr.Received(src, message))

    # ---- effects ----

    def _feed(self, n: int, event: cr.Event) -> None:
        replica = self.replicas[n]
        if replica is None:
            return
        for effect in replica.handle(event):
            match effect:
                case cr.Send(to, message):
                    self._push(
                        self.now + self.rng.uniform(0.0005, 0.005), "deliver", (n, to, message)
                    )
                case cr.Persist():
                    self.disk[n] = effect
                    self._record(n, effect.committed)
                case cr.ChangeDone(ok=True):
                    self.applied += 1
                case cr.Conflict(version):
                    self.violations.append(f"S4: n{n} met two configurations at v{version}")

    def _record(self, n: int, config: ClusterConfig) -> None:
        if config.version == 0:
            return
        h = digest(config)
        if self.committed.setdefault(config.version, h) != h:
            self.violations.append(
                f"S4: v{config.version} has two configurations (n{n}, t={self.now:.3f})"
            )


def replay_beside(net: SimNetwork, seed: int) -> BesideReplay:
    """Replay a finished run with configuration replicas; check S4."""
    replay = BesideReplay(net, seed)
    replay.run()
    return replay
