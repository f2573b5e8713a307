"""The checker of DESIGN §3's properties, run on what a simulated cluster reported.

Input: a `SimNetwork` after a run: every node's reported states over time (installed view,
quorate flag, expected votes; None while down) and the topology snapshots (who runs, who is
paused, which directions are cut, the link models). Output: a list of `Violation`s.

* **S1 majority intersection** — at every instant, any two quorate nodes count member sets that
  intersect. Exempt: two_node clusters, runs where an operator changed expected votes, and any
  node whose expected votes are below the configured total (last_man_standing lowered them).
* **S2 agreement** — one ring id names one member set, across all nodes and all time.
* **S3 one winner** — in every stretch where the network stayed unchanged and benign (loss <= 5 %,
  jitter <= 20 ms) for the settle time, all quorate nodes share one view.
* **L1 liveness** — in such a stretch, after the settle time, every node of a connected group
  (a complete clique that is a whole component) that holds quorum votes is quorate; and in any
  stretch, a running node that cannot hear a quorum (itself plus the nodes it has both directions
  up with) is inquorate once the minority bound (which grows with the slowest link) has passed.
  Datagrams sent before a topology change still arrive after it (at most the old slowest delay
  later), so both rules start counting once those have landed. Nodes stretch a peer's failure
  timeout when its heartbeats were lost (`Timing.failure_timeout_at`, sized every second from
  the last 3.2 s): within `loss_memory` after a non-benign stretch or another topology change
  (a healed cut looks like loss too), both bounds assume the longest timeout.
* **No silent failure** — a view, quorum or expected-votes change that the node's status shows
  but no event announced (found by the network's once-a-second audit).
* **L2 stability** — in a run whose only faults are loss <= 5 % and jitter <= 20 ms, no node
  changes its view after the initial formation (all nodes in one view).
* **F1 no flicker** — a settled split: the running nodes were quorate in one view, the network
  had been benign and whole for the settle time, then it splits into complete groups (benign
  links, nothing else changes) for at least the settle time. Every node of a group that is
  quorate at the end of that stretch (it kept quorum: by majority, tie-breaker or the qnetd's
  vote) reported quorate at every moment of it (design §3.4).

With a qnetd (`SimNetwork.qnetd`), the device's votes count in the total; the minority rule of
L1 applies to nodes that cannot reach quorum even with the device, and its bound grows by the
hold span (design §3.4), and the stable rule to groups that hold quorum without it (which group
the qnetd picks is the algorithm's business; S3 and F1 check the outcome).

Exempt from the generic L1 rules: clusters with two_node, wait_for_all or last_man_standing, and
runs with operator-set expected votes (their outcomes are pinned by the specific case tests).

With configuration changes at run time (`SimNetwork.reconfigured`, votemesh_lab/sim/reconfig.py), S1
uses each node's own configured total at that moment (a node is exempt only while its expected
votes are below it), and S3, L1 and F1 apply from `quiet_from` on: the last configuration
applied anywhere plus the transition span (design §3.9), with the votes of the final
configuration, and only if every running node holds the final version by then (`stable_checks`;
a node that never shared a view with an updated one stays behind, and nothing is checked of the
stable rules in that run).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass

from agent.config import AgentConfig, QuorumOptions, Timing
from agent.link_loss import WINDOW_INTERVALS
from agent.node import TIMEOUT_REFRESH, transition_span
from votemesh_lab.sim.network import NodeState, SimNetwork, Topology


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken property: which, when, and what was seen."""

    prop: str
    at: float
    detail: str

    def __str__(self) -> str:
        return f"{self.prop} at t={self.at:.4f}: {self.detail}"


def settle_time(timing: Timing) -> float:
    """How long the network must stay unchanged before S3 and L1 apply: a lost peer is noticed
    (failure timeout), proposals converge (a few rounds), with a second detection as margin:
    2 x failure_timeout + (agreement_rounds + 3) x heartbeat_interval + 1 s (lan: 2.9 s)."""
    return (
        2 * timing.failure_timeout + (timing.agreement_rounds + 3) * timing.heartbeat_interval + 1.0
    )


def minority_bound(timing: Timing, max_delay: float = 0.0167) -> float:
    """How soon an isolated minority must be inquorate: the failure timeout, plus the agreement
    rounds to install the smaller view, plus three one-way deliveries on the slowest link (the
    last heartbeat, a proposal there and back): failure_timeout + (agreement_rounds + 1) x
    heartbeat_interval + 3 x max_delay (lan, fast links: 1.1 s)."""
    return (
        timing.failure_timeout
        + (timing.agreement_rounds + 1) * timing.heartbeat_interval
        + 3 * max_delay
    )


def loss_memory(timing: Timing) -> float:
    """How long a fault can stretch failure timeouts: the loss window, one re-sizing period and
    a heartbeat (lan: 4.3 s)."""
    return (WINDOW_INTERVALS + 1) * timing.heartbeat_interval + TIMEOUT_REFRESH


class Checker:
    """Checks one finished run; `check(end)` returns every violation found (empty = pass)."""

    def __init__(self, net: SimNetwork, *, settle: float | None = None) -> None:
        self.net = net
        first = next(iter(net.configs.values()))
        self.timing = first.timing
        self.options: QuorumOptions = first.quorum
        self.votes = first.configured_votes()
        self.device = _device_votes(first) if net.qnetd is not None else 0
        self.total = self.options.expected_votes or sum(self.votes.values()) + self.device
        self.hold = _hold_span(first) if self.device else 0.0
        self.settle = settle if settle is not None else settle_time(self.timing)
        self._times = {n: [t for t, _ in h] for n, h in net.history.items()}
        self.quiet_from = 0.0
        """S3, L1 and F1 apply from here on (after the last run-time configuration change)."""
        self.stable_checks = True
        """False when a running node still ran an older configuration at `quiet_from`."""
        self._totals = {
            n: ([t for t, _, _ in h], [self._total_of(c) for _, _, c in h])
            for n, h in net.config_history.items()
        }
        if net.reconfigured:
            self._after_changes()

    def _total_of(self, config: AgentConfig) -> int:
        """The expected votes `config` starts from (its nodes' votes and the device's)."""
        device = _device_votes(config) if self.net.qnetd is not None else 0
        return config.quorum.expected_votes or sum(config.configured_votes().values()) + device

    def _total_at(self, node: int, at: float) -> int:
        """The configured total of the configuration `node` ran at `at`."""
        times, totals = self._totals[node]
        return totals[max(0, bisect.bisect_right(times, at) - 1)]

    def _after_changes(self) -> None:
        """Run-time configuration changes: where the stable rules start, with which votes."""
        history = self.net.config_history
        last = max(t for h in history.values() for t, _, _ in h)
        last = max([last, *self.net.removed_at.values()])
        self.quiet_from = last + transition_span(self.timing)
        top = max(v for h in history.values() for _, v, _ in h)
        final = next(c for h in history.values() for _, v, c in reversed(h) if v == top)
        self.votes = final.configured_votes()
        self.total = self._total_of(final)
        topo = self.net.topologies[
            max(0, bisect.bisect_right([x.at for x in self.net.topologies], self.quiet_from) - 1)
        ]
        for node in topo.alive:
            times = [t for t, _, _ in history[node]]
            version = history[node][max(0, bisect.bisect_right(times, self.quiet_from) - 1)][1]
            if version != top:
                self.stable_checks = False

    # ---- helpers ---------------------------------------------------------------------------

    def state_at(self, node: int, at: float) -> NodeState | None:
        """The node's state after every change at or before `at`."""
        i = bisect.bisect_right(self._times[node], at)
        return self.net.history[node][i - 1][1] if i else None

    def _changes(self, start: float, end: float) -> list[float]:
        """Times of state changes of any node in (start, end)."""
        out = {t for ts in self._times.values() for t in ts if start < t < end}
        return sorted(out)

    def quorum_capable(self, group: Iterable[int], *, tie: bool, device: bool = False) -> bool:
        """Could these nodes alone (with the device's votes: `device`) hold quorum? A majority
        can; exactly half with auto_tie_breaker answers `tie`: whether it wins depends on the
        nodes' history (the tie-breaker comes from the last quorate view and needs every member
        to name it, design §3.8), so the L1 rules neither require nor forbid it."""
        have = sum(self.votes.get(n, 0) for n in set(group)) + (self.device if device else 0)
        if 2 * have > self.total:
            return True
        return tie and 2 * have == self.total and self.options.auto_tie_breaker

    def _segments(self, end: float) -> list[tuple[Topology, float, float]]:
        topos = self.net.topologies
        out = []
        for i, topo in enumerate(topos):
            stop = topos[i + 1].at if i + 1 < len(topos) else end
            if stop > topo.at:
                out.append((topo, topo.at, min(stop, end)))
        return out

    @property
    def generic_l1(self) -> bool:
        """The generic L1 rules apply (no option that changes who may be quorate)."""
        o = self.options
        return not (
            o.two_node
            or o.effective_wait_for_all
            or o.last_man_standing
            or o.expected_votes is not None
            or self.net.operator_lowered
        )

    # ---- the properties --------------------------------------------------------------------

    def check(self, end: float) -> list[Violation]:
        """Every property that applies to this run."""
        found = self.s1() + self.s2() + self.s3_l1(end) + self.silent() + self.f1(end)
        if self.l2_applies():
            found += self.l2()
        return found

    def s1(self) -> list[Violation]:
        """S1: quorate nodes at the same instant count intersecting member sets."""
        if self.options.two_node or self.net.operator_lowered:
            return []
        changes = sorted(
            ((t, n, s) for n, h in self.net.history.items() for t, s in h), key=lambda x: x[0]
        )
        current: dict[int, NodeState] = {}
        found: list[Violation] = []
        seen: set[tuple[frozenset[int], frozenset[int]]] = set()
        i = 0
        while i < len(changes):
            now = changes[i][0]
            touched = []
            while i < len(changes) and changes[i][0] == now:
                _, node, state = changes[i]
                if state is None:
                    current.pop(node, None)
                else:
                    current[node] = state
                touched.append(node)
                i += 1
            counted = {
                n: s.counts
                for n, s in current.items()
                if s.quorate and s.expected >= self._total_at(n, now)
            }
            for a in touched:
                for b, members in counted.items():
                    if a in counted and a != b and not counted[a] & members:
                        key = (counted[a], members)
                        if key not in seen:
                            seen.add(key)
                            found.append(
                                Violation(
                                    "S1",
                                    now,
                                    f"n{a} quorate with {sorted(counted[a])} and n{b} quorate "
                                    f"with {sorted(members)}: disjoint",
                                )
                            )
        return found

    def silent(self) -> list[Violation]:
        """No silent failure: every change of view, quorum or expected votes is an event."""
        return [
            Violation("EVENTS", t, f"n{node}'s status changed without a state event")
            for t, node in self.net.silent_changes[:3]
        ]

    def s2(self) -> list[Violation]:
        """S2: the same ring id always names the same member set."""
        named: dict[tuple[int, int], tuple[frozenset[int], int, float]] = {}
        found: list[Violation] = []
        for node, history in self.net.history.items():
            for t, state in history:
                if state is None or state.ring is None:
                    continue
                first = named.setdefault(state.ring, (state.members, node, t))
                if first[0] != state.members:
                    found.append(
                        Violation(
                            "S2",
                            t,
                            f"ring {state.ring} is {sorted(state.members)} on n{node} but "
                            f"{sorted(first[0])} on n{first[1]} (t={first[2]:.4f})",
                        )
                    )
        return found

    def s3_l1(self, end: float) -> list[Violation]:
        """S3 and L1 over every stretch of unchanged topology."""
        found: list[Violation] = []
        in_flight_until = 0.0  # the last arrival of a datagram sent under an earlier topology
        segments = self._segments(end)
        if not self.stable_checks:
            return []
        for i, (topo, first, stop) in enumerate(segments):
            start = max(first, self.quiet_from)  # after run-time configuration changes only
            if stop <= start:
                in_flight_until = max(in_flight_until, stop + self._slowest(topo, topo.alive))
                continue
            slowest = self._slowest(topo, topo.alive - topo.paused)
            carried = max(0.0, in_flight_until - start) + self._stretch(segments, i)
            found += self._minority(topo, start, stop, slowest, carried)
            found += self._one_device_side(topo, start, stop, slowest, carried)
            if stop - start >= self.settle + carried and topo.benign():
                found += self._stable(topo, start + self.settle + carried, stop)
            in_flight_until = max(in_flight_until, stop + slowest)
        return found

    def _stretch(self, segments: list[tuple[Topology, float, float]], i: int) -> float:
        """Extra failure timeout that may be in effect when segment i starts: the longest one
        minus the plain one if, within loss_memory before it, the topology changed or was not
        benign; else 0."""
        start = segments[i][1]
        memory = start - loss_memory(self.timing)
        for topo, s, e in segments[:i]:
            if e > memory and (s > memory or not topo.benign()):
                return self.timing.max_failure_timeout - self.timing.failure_timeout
        return 0.0

    def _minority(
        self, topo: Topology, start: float, stop: float, slowest: float, carried: float
    ) -> list[Violation]:
        running = topo.alive - topo.paused
        bound = minority_bound(self.timing, max(slowest, 0.0167)) + carried + self.hold
        if not self.generic_l1 or stop - start <= bound:
            return []
        found = []
        for node in sorted(running):
            hears = {node} | {p for p in running if p != node and topo.mutual(node, p)}
            if self.quorum_capable(hears, tie=True, device=bool(self.device)):
                continue
            checkpoints = [start + bound, *self._changes(start + bound, stop)]
            for t in checkpoints:
                state = self.state_at(node, t)
                if state is not None and state.quorate:
                    found.append(
                        Violation(
                            "L1",
                            t,
                            f"n{node} hears only {sorted(hears)} since t={start:.4f} but is "
                            f"quorate ({state.describe()})",
                        )
                    )
                    break
        return found

    def _one_device_side(
        self, topo: Topology, start: float, stop: float, slowest: float, carried: float
    ) -> list[Violation]:
        """With a qnetd: once the minority bound (with the hold span) has passed, nodes that
        need the device's votes for quorum are quorate in one group at most (the qnetd gave
        its vote to one side; the others' held ACK has expired or was revoked)."""
        bound = minority_bound(self.timing, max(slowest, 0.0167)) + carried + self.hold
        if not self.device or not self.generic_l1 or stop - start <= bound:
            return []
        running = sorted(topo.alive - topo.paused)
        groups = [
            g
            for g in self._components(topo, running)
            if not self.quorum_capable(g, tie=True)
            and self.quorum_capable(g, tie=False, device=True)
        ]
        if len(groups) < 2:
            return []
        for t in [start + bound, *self._changes(start + bound, stop)]:
            sides = [g for g in groups if any((s := self.state_at(n, t)) and s.quorate for n in g)]
            if len(sides) > 1:
                shown = " and ".join(str(sorted(g)) for g in sides)
                return [Violation("L1", t, f"groups {shown} are both quorate with the device")]
        return []

    @staticmethod
    def _slowest(topo: Topology, running: frozenset[int]) -> float:
        """The longest one-way delay a datagram between running nodes can take."""
        worst = 0.0
        for a in running:
            for b in running:
                if a != b:
                    m = topo.link(a, b)
                    worst = max(worst, m.delay + m.jitter + (m.reorder_delay if m.reorder else 0))
        return worst

    def _stable(self, topo: Topology, start: float, stop: float) -> list[Violation]:
        running = sorted(topo.alive - topo.paused)
        groups = self._cliques(topo, running) if self.generic_l1 else []
        found: list[Violation] = []
        for t in [start, *self._changes(start, stop)]:
            states = {n: self.state_at(n, t) for n in running}
            views = {(s.ring, s.members) for s in states.values() if s is not None and s.quorate}
            if len(views) > 1:
                shown = "; ".join(
                    f"n{n}: {s.describe()}" for n, s in states.items() if s and s.quorate
                )
                found.append(Violation("S3", t, f"quorate nodes in different views: {shown}"))
                break
            for group in groups:
                bad = [n for n in group if not ((s := states[n]) and s.quorate)]
                if bad:
                    found.append(
                        Violation(
                            "L1",
                            t,
                            f"connected group {sorted(group)} holds quorum since "
                            f"t={start - self.settle:.4f} but n{bad[0]} is inquorate "
                            f"({_desc(states[bad[0]])})",
                        )
                    )
            if found:
                break
        return found

    def _cliques(self, topo: Topology, running: list[int]) -> list[frozenset[int]]:
        """Components of the mutual graph that are complete and hold quorum votes."""
        out = []
        for comp in self._components(topo, running):
            complete = all(topo.mutual(a, b) for a in comp for b in comp if a < b)
            if complete and self.quorum_capable(comp, tie=False):
                out.append(comp)
        return out

    def f1(self, end: float) -> list[Violation]:
        """F1: no node of a group that keeps quorum across a settled split reports inquorate."""
        found: list[Violation] = []
        segments = self._segments(end)
        if not self.stable_checks:
            return []
        for i in range(1, len(segments)):
            before, b_start, b_stop = segments[i - 1]
            if b_start < self.quiet_from:
                continue  # F1 is about splits after the last configuration change
            topo, start, stop = segments[i]
            if not self._settled_split(before, b_start, b_stop, topo, start, stop):
                continue
            running = sorted(topo.alive)
            for group in self._components(topo, running):
                kept = all((s := self.state_at(n, stop)) and s.quorate for n in group)
                if not kept:
                    continue
                for node in sorted(group):
                    for t in [start, *(t for t, _ in self.net.history[node] if start < t < stop)]:
                        state = self.state_at(node, t)
                        if state is None or not state.quorate:
                            found.append(
                                Violation(
                                    "F1",
                                    t,
                                    f"n{node} of {sorted(group)}, which kept quorum across the "
                                    f"split at t={start:.4f}, reported {_desc(state)}",
                                )
                            )
                            break
        return found

    def _settled_split(  # noqa: PLR0917 (two segments: topology, start, stop each)
        self,
        before: Topology,
        b_start: float,
        b_stop: float,
        topo: Topology,
        start: float,
        stop: float,
    ) -> bool:
        """`topo` splits a settled, whole cluster into complete groups, benign, for long enough."""
        whole = not before.cuts and not before.paused and before.benign() and _lossless(before)
        if not whole or b_stop - b_start < self.settle or stop - start < self.settle:
            return False
        if topo.paused or topo.alive != before.alive or not topo.cuts or not topo.benign():
            return False
        if any((b, a) not in topo.cuts for a, b in topo.cuts):
            return False  # a one-way cut is no clean split
        if topo.links != before.links or topo.default != before.default:
            return False
        states = [self.state_at(n, start) for n in topo.alive]
        views = {(s.ring, s.members) for s in states if s is not None}
        settled = all(s is not None and s.quorate for s in states) and len(views) == 1
        groups = self._components(topo, sorted(topo.alive))
        complete = all(topo.mutual(a, b) for g in groups for a in g for b in g if a < b)
        return settled and complete

    @staticmethod
    def _components(topo: Topology, running: list[int]) -> list[frozenset[int]]:
        out, left = [], set(running)
        while left:
            seed = left.pop()
            comp, todo = {seed}, [seed]
            while todo:
                a = todo.pop()
                for b in list(left):
                    if topo.mutual(a, b):
                        left.discard(b)
                        comp.add(b)
                        todo.append(b)
            out.append(frozenset(comp))
        return out

    def l2_applies(self) -> bool:
        """Only benign link impairments: no cut, pause, crash or harsh link model ever."""
        if self.net.reconfigured:
            return False  # nodes come and go by configuration
        return all(
            not t.cuts and not t.paused and t.benign() for t in self.net.topologies
        ) and not any(s is None for h in self.net.history.values() for _, s in h)

    def formation(self) -> float | None:
        """First time every configured node reports one and the same full view."""
        everyone = frozenset(self.net.configs)
        for t in sorted({t for ts in self._times.values() for t in ts}):
            states = [self.state_at(n, t) for n in everyone]
            if all(s is not None and s.members == everyone for s in states):
                rings = {s.ring for s in states if s is not None}
                if len(rings) == 1:
                    return t
        return None

    def view_changes(self) -> int:
        """Ring id changes, summed over nodes, after the initial formation."""
        formed = self.formation()
        if formed is None:
            return -1
        changes = 0
        for node, history in self.net.history.items():
            ring = self.state_at(node, formed)
            last = ring.ring if ring else None
            for t, state in history:
                if t > formed and state is not None and state.ring != last:
                    changes += 1
                    last = state.ring
        return changes

    def l2(self) -> list[Violation]:
        """L2: under benign impairments the view never changes after formation."""
        formed = self.formation()
        if formed is None:
            return [Violation("L2", self.net.now, "the nodes never formed one full view")]
        changes = self.view_changes()
        if changes:
            return [
                Violation("L2", formed, f"{changes} view changes after formation at {formed:.4f}")
            ]
        return []


def _lossless(topo: Topology) -> bool:
    """No link loses datagrams. F1 is checked on lossless splits only: with loss, failure
    timeouts stretch per peer (design §3.3), and a node that still hears a departed peer (its
    longer timeout) can prefer a clique with it; the "peer gone to a better clique" rule then
    leaves another node alone for a few rounds (seed 131). A membership matter, left open."""
    return topo.default.loss == 0 and all(m.loss == 0 for m in topo.links.values())


def _device_votes(config: AgentConfig) -> int:
    """The device's votes as the node counts them (0: none, or disabled by LMS/ATB)."""
    q, opts = config.qdevice, config.quorum
    if q is None or opts.last_man_standing or opts.auto_tie_breaker:
        return 0
    if q.votes is not None:
        return q.votes
    if q.algorithm == "lms":
        return max(1, sum(config.configured_votes().values()) - 1)
    return 1


def _hold_span(config: AgentConfig) -> float:
    """How long a node may count a held device ACK (design §3.4)."""
    q, t = config.qdevice, config.timing
    if q is None:
        return 0.0
    return (t.agreement_rounds + 1) * t.heartbeat_interval + q.sync_timeout


def _desc(state: NodeState | None) -> str:
    return state.describe() if state else "down"
