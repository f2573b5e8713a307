"""A small round-based network of `Membership` instances for the membership tests.

Not the cluster simulator (votemesh_lab.sim composes whole nodes): this drives only membership, the
way `agent/node.py` does. Every heartbeat interval each node sets `heard` from the heartbeats that
arrived within the failure timeout, evaluates, persists `max_seq` (before sending, as the runtime
must) and sends its report along the directed links that are up, each copy dropped or delayed by
whole rounds with the injected `random.Random`. Restarts come back with the persisted `max_seq`
and a new incarnation (receivers `forget` the old one). Every install, boot views included, is
recorded so S2 can be checked across all nodes and all lives.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from agent.clique import greedy_partition, mutual_graph
from agent.config import Timing
from agent.membership import Membership, MemberView, PeerReport, RingId, ViewInstalled

Link = tuple[int, int]
"""(sender, receiver): the receiver hears the sender's heartbeats."""


def full_mesh(ids: Iterable[int]) -> set[Link]:
    """Every directed link between distinct nodes."""
    nodes = list(ids)
    return {(a, b) for a in nodes for b in nodes if a != b}


def without(links: set[Link], *cuts: tuple[int, int]) -> set[Link]:
    """`links` with both directions of each cut pair removed."""
    return links - {c for a, b in cuts for c in ((a, b), (b, a))}


@dataclass(order=True)
class _Datagram:
    due: int
    order: int
    sender: int = field(compare=False)
    incarnation: int = field(compare=False)
    receiver: int = field(compare=False)
    report: PeerReport = field(compare=False)


@dataclass
class MembershipNet:
    """Nodes, directed links, loss and delay; `step()` is one heartbeat round."""

    ids: list[int]
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    timing: Timing = field(default_factory=Timing)
    links: set[Link] = field(default_factory=set)
    loss: float = 0.0
    max_delay: int = 0
    """Extra whole rounds a datagram may be held (0 = delivered at the next round)."""
    round: int = 0
    nodes: dict[int, Membership] = field(init=False)
    persisted: dict[int, int] = field(init=False)
    incarnation: dict[int, int] = field(init=False)
    installs: list[tuple[int, MemberView]] = field(init=False, default_factory=list)
    proposals: list[tuple[int, MemberView]] = field(init=False, default_factory=list)
    _arrivals: dict[Link, float] = field(init=False, default_factory=dict)
    _known: dict[Link, int] = field(init=False, default_factory=dict)
    _in_flight: list[_Datagram] = field(init=False, default_factory=list)
    _sent: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.persisted = dict.fromkeys(self.ids, 0)
        self.incarnation = dict.fromkeys(self.ids, 0)
        self.nodes = {}
        for node in self.ids:
            self.restart(node)

    @property
    def now(self) -> float:
        """Seconds since the start: one heartbeat interval per round."""
        return self.round * self.timing.heartbeat_interval

    def restart(self, node: int) -> None:
        """Crash and restart `node` with its persisted max_seq and a new incarnation."""
        self.incarnation[node] += 1
        fresh = Membership(node, self.timing, self.persisted[node])
        self.nodes[node] = fresh
        self._arrivals = {k: v for k, v in self._arrivals.items() if k[1] != node}
        self.installs.append((node, fresh.view))
        self.proposals.append((node, fresh.proposal))

    def run(self, rounds: int) -> None:
        """`rounds` heartbeat rounds."""
        for _ in range(rounds):
            self.step()

    def step(self) -> None:
        """Deliver what is due, then every node evaluates, persists and sends."""
        self.round += 1
        self._deliver()
        for node, member in self.nodes.items():
            member.set_heard(self.heard(node), self.now)
            for change in member.evaluate(self.now):
                if isinstance(change, ViewInstalled):
                    self.installs.append((node, change.view))
                else:
                    self.proposals.append((node, change.proposal))
            self.persisted[node] = max(self.persisted[node], member.max_seq)
        for sender, receiver in sorted(self.links):
            self._send(sender, receiver)

    def heard(self, node: int) -> frozenset[int]:
        """Peers whose heartbeats reached `node` within the failure timeout."""
        limit = self.timing.failure_timeout
        return frozenset(
            s for (s, r), at in self._arrivals.items() if r == node and self.now - at <= limit
        )

    def _send(self, sender: int, receiver: int) -> None:
        if self.loss and self.rng.random() < self.loss:
            return
        member = self.nodes[sender]
        report = PeerReport(self.heard(sender), member.view, member.proposal)
        delay = self.rng.randint(0, self.max_delay) if self.max_delay else 0
        self._sent += 1
        datagram = _Datagram(
            self.round + 1 + delay, self._sent, sender, self.incarnation[sender], receiver, report
        )
        self._in_flight.append(datagram)

    def _deliver(self) -> None:
        due = sorted(d for d in self._in_flight if d.due <= self.round)
        self._in_flight = [d for d in self._in_flight if d.due > self.round]
        for d in due:
            key = (d.sender, d.receiver)
            known = self._known.get(key, 0)
            if d.incarnation < known:
                continue
            if d.incarnation > known and known:
                self.nodes[d.receiver].forget(d.sender)
            self._known[key] = d.incarnation
            self._arrivals[key] = self.now
            self.nodes[d.receiver].peer_report(d.sender, d.report, self.now)

    # ------------------------------------------------------------ checks
    def s2_violations(self) -> list[str]:
        """Ring ids installed (by anyone, ever) with two different member sets."""
        seen: dict[RingId, frozenset[int]] = {}
        bad = []
        for node, view in self.installs:
            first = seen.setdefault(view.ring_id, view.members)
            if first != view.members:
                bad.append(f"node {node}: {view.ring_id} as {sorted(view.members)}")
        return bad

    def ring_regressions(self) -> list[str]:
        """A node installed a ring id below the one it had installed before, in the (sequence,
        representative) order the configuration replica's `promised` rises in (design §3.9,
        rule c): a view the node's replica takes no part in (the same ring id again, a boot view
        after a restart that persisted nothing newer, is the same view re-installed)."""
        last: dict[int, tuple[int, int]] = {}
        bad = []
        for node, view in self.installs:
            ring = (view.ring_id.seq, view.ring_id.representative)
            if node in last and ring < last[node]:
                bad.append(f"node {node}: {ring} after {last[node]} ({sorted(view.members)})")
            last[node] = ring
        return bad

    def representative_reuse(self) -> list[str]:
        """Invariant I: a node proposing under its own ring id (r, s) used two member sets."""
        seen: dict[RingId, frozenset[int]] = {}
        bad = []
        for node, view in self.proposals:
            if view.ring_id.representative == node:
                first = seen.setdefault(view.ring_id, view.members)
                if first != view.members:
                    bad.append(f"node {node}: {view.ring_id} as {sorted(view.members)}")
        return bad

    def expected_partition(self) -> list[frozenset[int]]:
        """The greedy clique partition of the mutual graph of the links that are up."""
        heard = {n: {s for s, r in self.links if r == n} for n in self.ids}
        return greedy_partition(mutual_graph(heard))

    def views(self) -> dict[int, MemberView]:
        """Every node's installed view."""
        return {n: m.view for n, m in self.nodes.items()}

    def converged(self) -> bool:
        """Each node has installed its part of the expected partition, with one ring id per
        part."""
        views = self.views()
        for part in self.expected_partition():
            if len({views[n] for n in part}) != 1 or views[min(part)].members != part:
                return False
        return True
