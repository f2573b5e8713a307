"""The checker of DESIGN §3's properties over one run's timeline (design §4.6, §4.7).

Input: a `Timeline` (votemesh_lab.timeline), from a lab run (collect.py) or from the simulator
(`SimNetwork.timeline()`): every node's reported states over time (`state` records: installed
view, quorate flag, expected votes, the members quorum counts; `proc` records: down while
killed or exited), the network over time (`net` and `proc` records: who runs, who is paused,
which directions are cut, the link impairments), the configurations nodes applied (`config`
records) and the run record (timing, quorum options, votes, qdevice). Output: a `Verdict`.

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
* **silent** (no silent failure) — a view, quorum or expected-votes change that the node's
  status showed (a `state` record with `src` "status": the simulator's once-a-second audit, the
  lab's polling) but no event announced: no event-made `state` record of that node shows the
  same within `SILENT_GRACE` (the event may still have been on its way).
* **L2 stability** — in a run whose only faults are loss <= 5 % and jitter <= 20 ms, no node
  changes its view after the initial formation (all nodes in one view).
* **F1 no flicker** — a settled split: the running nodes were quorate in one view, the network
  had been benign and whole for the settle time, then it splits into complete groups (benign
  links, nothing else changes) for at least the settle time. Every node of a group that is
  quorate at the end of that stretch (it kept quorum: by majority, tie-breaker or the qnetd's
  vote) reported quorate at every moment of it (design §3.4).
* **S4 one configuration per version** (where `config` records exist) — nodes that applied one
  `config_version` applied one configuration (its `digest`, else its votes and expected votes);
  a change a node `accepted` (the operator's command ran there) was accepted while it was
  quorate.

With a qnetd (the run record's `qdevice`), the device's votes count in the total; the minority
rule of L1 applies to nodes that cannot reach quorum even with the device, and its bound grows
by the hold span (design §3.4), and the stable rule to groups that hold quorum without it (which
group the qnetd picks is the algorithm's business; S3 and F1 check the outcome).

Exempt from the generic L1 rules: clusters with two_node, wait_for_all or last_man_standing, and
runs with operator-set expected votes (their outcomes are pinned by the specific case tests).

With configuration changes at run time (`config` records after t = 0), S1 uses each node's own
configured total at that moment (a node is exempt only while its expected votes are below it),
and S3, L1 and F1 apply from `quiet_from` on: the last configuration applied anywhere plus the
transition span (design §3.9), with the votes of the final configuration, and only if every
running node holds the final version by then (`stable_checks`; a node that never shared a view
with an updated one stays behind, and nothing is checked of the stable rules in that run).

**unknown** (never silently valid): a node of the run recorded nothing, or a gap in a node's
event `seq` numbers; a `verify_failed` record or a `verify` record with mismatches (the lab could
not make a fault); the cluster never formed one full view (or not within the run's
`form_within`); the run aborted; clock uncertainty above the settle time.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from agent.config import QuorumOptions, TieBreaker, Timing
from agent.link_loss import WINDOW_INTERVALS
from agent.node import TIMEOUT_REFRESH, transition_span
from votemesh_lab.timeline import (
    DOWN_STATES,
    Network,
    Timeline,
    TimelineError,
    networks,
)

PROPERTIES = ("S1", "S2", "S3", "L1", "F1", "L2", "S4", "silent")
"""Every property the checker knows, in the order it reports them."""
AGENT_SOURCES = frozenset({"log", "mqtt", "status", "sim"})
"""Where a node's own records come from (the lab's `lab` records say nothing of the agent)."""
MAX_L2 = 20
"""L2 violations reported at most (a flapping view makes many)."""
SILENT_GRACE = 2.0
"""Seconds an event may trail the polled status that showed its change (the lab polls once a
second; an event goes through the log or MQTT)."""


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken property: which, when, the nodes involved, and what was seen."""

    prop: str
    t: float
    nodes: tuple[int, ...]
    detail: str

    def __str__(self) -> str:
        return f"{self.prop} at t={self.t:.4f}: {self.detail}"

    def as_dict(self) -> dict[str, Any]:
        return {"prop": self.prop, "t": self.t, "nodes": list(self.nodes), "detail": self.detail}


@dataclass(slots=True)
class Verdict:
    """The checker's answer: valid, invalid (violations, by time) or unknown (reasons)."""

    status: str
    violations: list[Violation] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    properties: dict[str, str] = field(default_factory=dict)
    """Each property checked: "" when it applied, else why not (not applicable)."""

    @property
    def ok(self) -> bool:
        return self.status == "valid"


@dataclass(frozen=True, slots=True)
class NodeView:
    """What a node reported: installed view, quorate flag, expected votes, and the members its
    quorum counts (design §3.4: the installed view's heard members, or a held view)."""

    ring: str | None
    members: frozenset[int]
    quorate: bool
    expected: int
    counted: frozenset[int] | None = None
    """None: the same as `members` (a status without "counted")."""

    @property
    def counts(self) -> frozenset[int]:
        """The member set quorum counts."""
        return self.members if self.counted is None else self.counted

    def describe(self) -> str:
        q = "QUORATE" if self.quorate else "inquorate"
        counted = "" if self.counts == self.members else f" counting={sorted(self.counts)}"
        return (
            f"ring={self.ring or '-'} members={sorted(self.members)} {q} "
            f"expected={self.expected}{counted}"
        )

    def record_fields(self) -> dict[str, Any]:
        """The fields of a `state` record showing this view."""
        return {
            "ring": self.ring,
            "members": sorted(self.members),
            "counted": None if self.counted is None else sorted(self.counted),
            "quorate": self.quorate,
            "expected": self.expected,
        }

    @classmethod
    def of(cls, r: Mapping[str, Any]) -> NodeView:
        counted = r.get("counted")
        return cls(
            r.get("ring"),
            frozenset(r["members"]),
            bool(r["quorate"]),
            int(r.get("expected") or 0),
            None if counted is None else frozenset(counted),
        )


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


# ---- the cluster as the run record describes it ---------------------------------------------


def timing_of(value: object) -> Timing:
    """Timing from a run record's `timing` (Timing's fields; `preset` "lan" or "lab" as base)."""
    if not isinstance(value, Mapping):
        return Timing.lan()
    base = Timing.lab() if value.get("preset") == "lab" else Timing.lan()
    names = {f.name for f in fields(Timing)}
    try:
        timing = Timing(**{**_fields_of(base), **{k: v for k, v in value.items() if k in names}})
        timing.validate()
    except (TypeError, ValueError) as exc:
        raise TimelineError(f"run record: timing: {exc}") from None
    return timing


def quorum_of(value: object) -> QuorumOptions:
    """QuorumOptions from a run record's `quorum` (its fields; unknown keys ignored)."""
    if not isinstance(value, Mapping):
        return QuorumOptions()
    names = {f.name for f in fields(QuorumOptions)}
    given = {k: v for k, v in value.items() if k in names}
    try:
        if "auto_tie_breaker_node" in given:
            given["auto_tie_breaker_node"] = TieBreaker(given["auto_tie_breaker_node"])
        if "tie_breaker_nodes" in given:
            given["tie_breaker_nodes"] = tuple(given["tie_breaker_nodes"])
        return QuorumOptions(**given)
    except (TypeError, ValueError) as exc:
        raise TimelineError(f"run record: quorum: {exc}") from None


def _fields_of(obj: object) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}  # type: ignore[arg-type]


def _votes_of(value: object, default: Iterable[int]) -> dict[int, int]:
    """Votes per node from a `nodes` map ({id: {votes}}) or a `votes` map ({id: votes})."""
    if not isinstance(value, Mapping):
        return dict.fromkeys(default, 1)
    out = {}
    for key, entry in value.items():
        votes = entry.get("votes", 1) if isinstance(entry, Mapping) else entry
        out[int(key)] = int(votes)
    return out


def device_votes(qdevice: object, options: QuorumOptions, votes: Mapping[int, int]) -> int:
    """The device's votes as the nodes count them (0: none, or disabled by LMS/ATB)."""
    if not isinstance(qdevice, Mapping) or options.last_man_standing or options.auto_tie_breaker:
        return 0
    if qdevice.get("votes") is not None:
        return int(qdevice["votes"])
    if qdevice.get("algorithm", "ffsplit") == "lms":
        return max(1, sum(votes.values()) - 1)
    return 1


def hold_span(qdevice: object, timing: Timing) -> float:
    """How long a node may count a held device ACK (design §3.4)."""
    if not isinstance(qdevice, Mapping):
        return 0.0
    sync = float(qdevice.get("sync_timeout", 0.5))
    return (timing.agreement_rounds + 1) * timing.heartbeat_interval + sync


@dataclass(frozen=True, slots=True)
class Cluster:
    """What one configuration says about quorum: the votes, the options, the device."""

    votes: Mapping[int, int]
    options: QuorumOptions
    device: int
    key: str
    """What two configurations with one version must share (S4): a digest, or the votes."""

    @property
    def total(self) -> int:
        """The expected votes this configuration starts from (nodes' votes and the device's)."""
        return self.options.expected_votes or sum(self.votes.values()) + self.device

    @classmethod
    def of(cls, r: Mapping[str, Any], nodes: Iterable[int], qnetd: bool) -> Cluster:
        votes = _votes_of(r.get("votes", r.get("nodes")), nodes)
        options = quorum_of(r.get("quorum"))
        device = device_votes(r.get("qdevice"), options, votes) if qnetd else 0
        key = str(r.get("digest") or (sorted(votes.items()), options.expected_votes))
        return cls(votes, options, device, key)


class Checker:
    """Checks one finished run's timeline; `check()` returns the verdict."""

    def __init__(
        self,
        timeline: Timeline,
        *,
        settle: float | None = None,
        properties: Iterable[str] | None = None,
    ) -> None:
        self.timeline = timeline
        run = timeline.run
        self.end = timeline.end
        self.nodes = timeline.nodes()
        self.held = frozenset(n for n in self.nodes if timeline.node_info(n).get("held"))
        """Nodes that did not run from the start (added later, or never started)."""
        self.qnetd = isinstance(run.get("qdevice"), Mapping)
        votes = [r.get("votes") for r in timeline.of_kind("config")]
        sizes = [len(self.nodes), *(len(v) for v in votes if isinstance(v, Mapping))]
        self.timing = timing_of(run.get("timing")).sized_for(max(sizes))
        """The timing of the largest configuration in the run (design §3.14: the interval grows
        with the cluster, and every bound below only loosens with it)."""
        first = Cluster.of(run, self.nodes, self.qnetd)
        self.options: QuorumOptions = first.options
        self.votes = dict(first.votes)
        self.device = first.device
        self.total = first.total
        self.hold = hold_span(run.get("qdevice"), self.timing) if self.device else 0.0
        self.settle = settle if settle is not None else settle_time(self.timing)
        self.wanted = tuple(properties) if properties is not None else PROPERTIES
        self.history = self._histories()
        self._times = {n: [t for t, _ in h] for n, h in self.history.items()}
        self.topologies: list[Network] = networks(timeline)
        self.operator_lowered = any(map(_operator_expected, timeline.records))
        """An operator changed expected votes (S1 does not apply afterwards)."""
        self.configs = self._configs()
        self.removed_at = {
            r["node"]: float(r["t"])
            for r in timeline.of_kind("proc")
            if r.get("reason") == "removed" and isinstance(r["node"], int)
        }
        self.reconfigured = bool(self.removed_at) or any(
            t > 0 for h in self.configs.values() for t, _, _ in h
        )
        """Some node applied a configuration at run time."""
        self._totals = {
            n: ([t for t, _, _ in h], [c.total for _, _, c in h]) for n, h in self.configs.items()
        }
        self.quiet_from = 0.0
        """S3, L1 and F1 apply from here on (after the last run-time configuration change)."""
        self.stable_checks = True
        """False when a running node still ran an older configuration at `quiet_from`."""
        if self.reconfigured:
            self._after_changes()

    # ---- reading the timeline ----------------------------------------------------------------

    def _histories(self) -> dict[int, list[tuple[float, NodeView | None]]]:
        """Per node, every reported state in order (None while down)."""
        out: dict[int, list[tuple[float, NodeView | None]]] = {n: [] for n in self.nodes}
        for r in self.timeline.records:
            node = r["node"]
            if not isinstance(node, int):
                continue
            if r["kind"] == "state":
                view: NodeView | None = NodeView.of(r)
            elif r["kind"] == "proc" and r["state"] in DOWN_STATES:
                view = None
            else:
                continue
            history = out.setdefault(node, [])
            if history and history[-1][1] == view:
                continue  # a poll that saw what was known
            history.append((float(r["t"]), view))
        return out

    def _configs(self) -> dict[int, list[tuple[float, int, Cluster]]]:
        """Per node, (time, version, configuration) it applied (`config` records)."""
        out: dict[int, list[tuple[float, int, Cluster]]] = {}
        for r in self.timeline.of_kind("config"):
            if isinstance(r["node"], int):
                cluster = Cluster.of(r, self.nodes, self.qnetd)
                out.setdefault(r["node"], []).append(
                    (float(r["t"]), int(r["config_version"]), cluster)
                )
        return out

    def _total_at(self, node: int, at: float) -> int:
        """The configured total of the configuration `node` ran at `at`."""
        if node not in self._totals:
            return self.total
        times, totals = self._totals[node]
        return totals[max(0, bisect.bisect_right(times, at) - 1)]

    def _after_changes(self) -> None:
        """Run-time configuration changes: where the stable rules start, with which votes."""
        history = self.configs
        last = max(t for h in history.values() for t, _, _ in h)
        last = max([last, *self.removed_at.values()])
        self.quiet_from = last + transition_span(self.timing)
        top = max(v for h in history.values() for _, v, _ in h)
        final = next(c for h in history.values() for _, v, c in reversed(h) if v == top)
        self.votes = dict(final.votes)
        self.total = final.total
        topo = self._topology_at(self.quiet_from)
        for node in topo.alive if topo else ():
            times = [t for t, _, _ in history.get(node, [])]
            if not times:
                continue
            version = history[node][max(0, bisect.bisect_right(times, self.quiet_from) - 1)][1]
            if version != top:
                self.stable_checks = False

    def _topology_at(self, at: float) -> Network | None:
        starts = [x.at for x in self.topologies]
        return self.topologies[max(0, bisect.bisect_right(starts, at) - 1)] if starts else None

    # ---- helpers ---------------------------------------------------------------------------

    def state_at(self, node: int, at: float) -> NodeView | None:
        """The node's state after every change at or before `at`."""
        i = bisect.bisect_right(self._times.get(node, []), at)
        return self.history[node][i - 1][1] if i else None

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

    def _segments(self, end: float) -> list[tuple[Network, float, float]]:
        topos = self.topologies
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
            or self.operator_lowered
        )

    # ---- the verdict -----------------------------------------------------------------------

    def check(self) -> Verdict:
        """Every property that applies to this run, and why the verdict would be unknown."""
        why = self.not_applicable()
        runs = {
            "S1": self.s1,
            "S2": self.s2,
            "S3": lambda: self.s3_l1(self.end),
            "silent": self.silent,
            "F1": lambda: self.f1(self.end),
            "L2": self.l2,
            "S4": self.s4,
        }
        found: list[Violation] = []
        for prop, run in runs.items():
            if prop in self.wanted and not why.get(prop):
                found += run()
        if "L1" not in self.wanted:
            found = [v for v in found if v.prop != "L1"]
        if "S3" not in self.wanted and "L1" in self.wanted and not why.get("L1"):
            found += [v for v in self.s3_l1(self.end) if v.prop == "L1"]
        found.sort(key=lambda v: v.t)
        unknown = self.unknown()
        status = "invalid" if found else "unknown" if unknown else "valid"
        properties = {p: why.get(p, "") for p in PROPERTIES if p in self.wanted}
        return Verdict(status, found, unknown, properties)

    def not_applicable(self) -> dict[str, str]:
        """Properties that do not apply to this run, with why."""
        why: dict[str, str] = {}
        if self.options.two_node:
            why["S1"] = "two_node: one node alone is quorate by design"
        elif self.operator_lowered:
            why["S1"] = "an operator lowered expected votes"
        if not self.topologies:
            for prop in ("S3", "L1", "F1", "L2"):
                why[prop] = "no net records: the network over the run is unknown"
        elif not self.stable_checks:
            for prop in ("S3", "L1", "F1"):
                why[prop] = "a running node still ran an older configuration"
        if "L2" not in why and not self.l2_applies():
            why["L2"] = "faults beyond loss <= 5 % and jitter <= 20 ms"
        if not self.configs:
            why["S4"] = "no config records"
        return why

    def unknown(self) -> list[str]:
        """Why the run cannot be judged valid (empty: it can)."""
        out = self._missing()
        for r in self.timeline.of_kind("verify_failed", "verify"):
            if r["kind"] == "verify_failed" or r.get("mismatches"):
                shown = r.get("text") or "; ".join(map(str, r.get("mismatches") or ()))
                out.append(f"the lab could not make the fault at {float(r['t']):.2f} s: {shown}")
        formed = self.formation()
        limit = self.timeline.run.get("form_within")
        if formed is None:
            out.append("the cluster never formed one full view")
        elif isinstance(limit, int | float) and formed > limit:
            out.append(f"the cluster formed at {formed:.2f} s, after form_within {limit} s")
        if self.timeline.aborted:
            out.append(f"the run aborted at {self.end:.2f} s")
        uncertainty = sum(
            float(h.get("uncertainty_ms", 0)) / 1000
            for h in (self.timeline.run.get("hosts") or {}).values()
            if isinstance(h, Mapping)
        )
        if uncertainty > self.settle:
            out.append(f"clock uncertainty {uncertainty:.2f} s is above the settle time")
        return out

    def _missing(self) -> list[str]:
        """Nodes that recorded nothing, and gaps in a node's event seq numbers."""
        out = []
        for node in self.nodes:
            records = self.timeline.of_node(node)
            own = [r for r in records if r["src"] in AGENT_SOURCES]
            if not own and node not in self.held:
                out.append(f"n{node}'s events missing (nothing recorded)")
                continue
            seen: dict[object, dict[int, float]] = {}
            for r in records:
                if isinstance(r.get("seq"), int) and r["kind"] not in {"state", "proc"}:
                    seen.setdefault(r.get("incarnation"), {}).setdefault(r["seq"], float(r["t"]))
            for seqs in seen.values():
                ordered = sorted(seqs)
                for a, b in itertools.pairwise(ordered):
                    if b > a + 1:
                        lost = f"{a + 1}" if b == a + 2 else f"{a + 1}-{b - 1}"
                        out.append(f"n{node}'s events missing after {seqs[a]:.2f} s (seq {lost})")
        return out

    # ---- the properties --------------------------------------------------------------------

    def s1(self) -> list[Violation]:
        """S1: quorate nodes at the same instant count intersecting member sets."""
        changes = sorted(
            ((t, n, s) for n, h in self.history.items() for t, s in h), key=lambda x: x[0]
        )
        current: dict[int, NodeView] = {}
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
            # The distinct counted sets (a few, also at 256 nodes), each with its first two
            # nodes: O(sets) per touched node instead of O(N) set intersections.
            holders: dict[frozenset[int], list[int]] = {}
            for n, members in counted.items():
                first = holders.setdefault(members, [])
                if len(first) < 2:
                    first.append(n)
            for a in touched:
                if a not in counted:
                    continue
                mine = counted[a]
                for members, nodes in holders.items():
                    b = next((n for n in nodes if n != a), None)
                    if b is None or not mine.isdisjoint(members):
                        continue
                    key = (mine, members)
                    if key not in seen:
                        seen.add(key)
                        found.append(
                            Violation(
                                "S1",
                                now,
                                (a, b),
                                f"n{a} quorate with {sorted(mine)} and n{b} quorate "
                                f"with {sorted(members)}: disjoint",
                            )
                        )
        return found

    def silent(self) -> list[Violation]:
        """No silent failure: every change of view, quorum or expected votes is an event."""
        found = []
        known: dict[int, NodeView | None] = {}
        records = self.timeline.records
        for i, r in enumerate(records):
            node = r["node"]
            if not isinstance(node, int):
                continue
            if r["kind"] == "proc" and r["state"] in DOWN_STATES:
                known[node] = None
                continue
            if r["kind"] != "state":
                continue
            view = NodeView.of(r)
            if r["src"] != "status":
                known[node] = view
                continue
            if known.get(node) == view or self._announced(records, i, node, view):
                continue
            known[node] = view
            found.append(
                Violation(
                    "silent",
                    float(r["t"]),
                    (node,),
                    f"n{node}'s status changed without a state event ({view.describe()})",
                )
            )
        return found[:3]

    @staticmethod
    def _announced(records: tuple[dict[str, Any], ...], i: int, node: int, view: NodeView) -> bool:
        """An event-made state record of `node` right after record i shows `view` (the event
        trailed the poll)."""
        until = float(records[i]["t"]) + SILENT_GRACE
        for r in records[i + 1 :]:
            if float(r["t"]) > until:
                return False
            if r["node"] == node and r["kind"] == "state" and r["src"] != "status":
                return NodeView.of(r) == view
        return False

    def s2(self) -> list[Violation]:
        """S2: the same ring id always names the same member set."""
        named: dict[str, tuple[frozenset[int], int, float]] = {}
        found: list[Violation] = []
        for node, history in self.history.items():
            for t, state in history:
                if state is None or state.ring is None:
                    continue
                first = named.setdefault(state.ring, (state.members, node, t))
                if first[0] != state.members:
                    found.append(
                        Violation(
                            "S2",
                            t,
                            (node, first[1]),
                            f"ring {state.ring} is {sorted(state.members)} on n{node} but "
                            f"{sorted(first[0])} on n{first[1]} (t={first[2]:.4f})",
                        )
                    )
        return found

    def s4(self) -> list[Violation]:
        """S4: one configuration per version; a change accepted only on a quorate node."""
        found: list[Violation] = []
        first: dict[int, tuple[str, int, float]] = {}
        for r in self.timeline.of_kind("config"):
            node, t = r["node"], float(r["t"])
            if not isinstance(node, int):
                continue
            version = int(r["config_version"])
            key = Cluster.of(r, self.nodes, self.qnetd).key
            seen = first.setdefault(version, (key, node, t))
            if seen[0] != key:
                found.append(
                    Violation(
                        "S4",
                        t,
                        (node, seen[1]),
                        f"n{node} applied configuration version {version} different from "
                        f"n{seen[1]}'s (t={seen[2]:.4f})",
                    )
                )
            state = self.state_at(node, t)
            if r.get("accepted") and not (state and state.quorate):
                found.append(
                    Violation(
                        "S4",
                        t,
                        (node,),
                        f"n{node} accepted configuration version {version} while {_desc(state)}",
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

    def _stretch(self, segments: list[tuple[Network, float, float]], i: int) -> float:
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
        self, topo: Network, start: float, stop: float, slowest: float, carried: float
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
                            (node,),
                            f"n{node} hears only {sorted(hears)} since t={start:.4f} but is "
                            f"quorate ({state.describe()})",
                        )
                    )
                    break
        return found

    def _one_device_side(
        self, topo: Network, start: float, stop: float, slowest: float, carried: float
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
                nodes = tuple(sorted(n for g in sides for n in g))
                return [
                    Violation("L1", t, nodes, f"groups {shown} are both quorate with the device")
                ]
        return []

    @staticmethod
    def _slowest(topo: Network, running: frozenset[int]) -> float:
        """The longest one-way delay a datagram between running nodes can take."""
        return max([0.0, *(link.slowest for link in topo.between(running))])

    def _stable(self, topo: Network, start: float, stop: float) -> list[Violation]:
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
                quorate = tuple(n for n, s in states.items() if s and s.quorate)
                found.append(
                    Violation("S3", t, quorate, f"quorate nodes in different views: {shown}")
                )
                break
            for group in groups:
                bad = [n for n in group if not ((s := states[n]) and s.quorate)]
                if bad:
                    found.append(
                        Violation(
                            "L1",
                            t,
                            tuple(bad),
                            f"connected group {sorted(group)} holds quorum since "
                            f"t={start - self.settle:.4f} but n{bad[0]} is inquorate "
                            f"({_desc(states[bad[0]])})",
                        )
                    )
            if found:
                break
        return found

    def _cliques(self, topo: Network, running: list[int]) -> list[frozenset[int]]:
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
                    for t in [start, *(t for t, _ in self.history[node] if start < t < stop)]:
                        state = self.state_at(node, t)
                        if state is None or not state.quorate:
                            found.append(
                                Violation(
                                    "F1",
                                    t,
                                    (node,),
                                    f"n{node} of {sorted(group)}, which kept quorum across the "
                                    f"split at t={start:.4f}, reported {_desc(state)}",
                                )
                            )
                            break
        return found

    def _settled_split(  # noqa: PLR0917 (two segments: topology, start, stop each)
        self,
        before: Network,
        b_start: float,
        b_stop: float,
        topo: Network,
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
    def _components(topo: Network, running: list[int]) -> list[frozenset[int]]:
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
        if self.reconfigured:
            return False  # nodes come and go by configuration
        return all(not t.cuts and not t.paused and t.benign() for t in self.topologies) and not any(
            s is None for h in self.history.values() for _, s in h
        )

    def formation(self) -> float | None:
        """First time every node of the run (but those held back) reports one and the same
        full view."""
        everyone = frozenset(self.nodes) - self.held
        if not everyone:
            return None
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
        for node, history in self.history.items():
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
            return []  # an unknown verdict (`unknown`)
        found = []
        for node, history in self.history.items():
            start = self.state_at(node, formed)
            ring = start.ring if start else None
            for t, state in history:
                if t > formed and state is not None and state.ring != ring:
                    found.append(
                        Violation(
                            "L2",
                            t,
                            (node,),
                            f"n{node} changed its view from ring {ring} to {state.ring} "
                            f"(members {sorted(state.members)}) after formation at "
                            f"{formed:.4f} under benign faults",
                        )
                    )
                    ring = state.ring
        return found[:MAX_L2]


def _lossless(topo: Network) -> bool:
    """No link loses datagrams. F1 is checked on lossless splits only: with loss, failure
    timeouts stretch per peer (design §3.3), and a node that still hears a departed peer (its
    longer timeout) can prefer a clique with it; the "peer gone to a better clique" rule then
    leaves another node alone for a few rounds (seed 131). A membership matter, left open."""
    return topo.default.loss == 0 and all(m.loss == 0 for m in topo.links.values())


def _operator_expected(r: Mapping[str, Any]) -> bool:
    """An operator set expected votes (`votemesh expected N`): a note with `operator` =
    "expected" (the simulator), or an `exec` fault running `votemesh expected` (the lab)."""
    if r["kind"] == "note":
        return bool(r.get("operator") == "expected")
    if r["kind"] == "fault" and r.get("f") == "exec":
        argv = (r.get("params") or {}).get("argv") or (r.get("params") or {}).get("command")
        words = argv.split() if isinstance(argv, str) else list(argv or ())
        return "expected" in words
    return False


def _desc(state: NodeView | None) -> str:
    return state.describe() if state else "down"
