"""Membership: the connectivity matrix, the best clique, proposals and installed views.

Owns docs/design.md §3.1. Sans-IO: time comes in as float seconds; it never reads a clock, sends,
persists or logs. The node (`agent/node.py`) feeds it heartbeats (`peer_report`), the link layer's
`heard` set, and calls `evaluate`; it sends `view`/`proposal` in heartbeats and persists `max_seq`.

Algorithm, per `evaluate(now)`:

1. *Matrix*: my `heard` plus the `heard` of every peer whose report is at most
   `timing.max_failure_timeout` old (the node decides who is heard, with a failure timeout that
   loss may stretch up to that; a heard peer's report is as old as its last heartbeat). Edge
   i-j when both report hearing each other. A candidate is a peer I hear, whose fresh report
   says it hears me.
2. *Members*: the best clique containing me (largest, then smallest sorted ids; `agent/clique.py`)
   among the candidates, minus the *taken* peers: j is taken when its fresh proposal does not
   contain me and outranks the clique I computed (j is going to a better clique without me). This
   refinement of §3.1 is what lets a node that cannot see the whole matrix (C in A-B-C, where C
   does not hear A) reach the same partition as everyone else: on a stable matrix all nodes
   converge to `clique.greedy_partition` of the mutual graph, level by level.
3. *Ring id*, with r = min(members):
   a. not r, and r's fresh proposal has exactly these members: take r's ring id;
   b. my current proposal has exactly these members: keep it (as r, only while no member's
      installed view has a higher ring id: else (c) or (d));
   c. the newest installed view (highest seq) among the members' and mine has exactly these
      members and representative r: adopt its ring id (no view change after a flap). §3.1 says
      "some member's"; taking only the newest keeps a returning node's old view from pulling
      the others back to an older ring id;
   d. otherwise a new ring id (r, max_seq + 1).
4. *Install* when every other member's latest proposal, at most `timing.proposal_ttl` old, equals
   mine, and its ring id is not below my installed view's. My proposal is always (best clique,
   ring id), so an install is always of it.

Rising ring ids (what the configuration replica needs, design §3.9 rule c): the ring ids a node
installs rise in the (sequence, representative) order; one below is refused. They may otherwise
go down: r keeps a proposal (r, s) it minted while some members install a view (q, s') above it
without r (two views formed at once at start, or a member restarted with a fresh boot view),
then follow r's (r, s). Such a member's replica would take no part in the view, so its
representative never converges and no configuration change is possible until the next view
change. So a member refuses the install (4); r sees the member's higher view in its report and
leaves rule (b) for (c) or (d), whose ring id is at or above every member's installed view, and
all install that one. r re-mints at most once per higher view a member installs.

Safety (S2: two nodes that installed the same ring id have the same member set).

Invariant I: for every ring id R = (r, s), node r proposes at most one member set under R over
its whole life, across restarts. Every proposal (M, R) also has R.representative = min(M) ∈ M.

* r proposes (r, s) only by (b) keeping its own proposal (same set), (c) adopting an installed
  view (M, (r, s)), or (d) minting s = max_seq + 1. Rule (a) never applies to r, so r never
  takes a ring id another node minted in r's name (non-representatives mint placeholders (r, s)
  in step (d); those are never binding). So I is weaker than §3.1's "a node never proposes two
  member sets with one sequence", which a non-representative can break harmlessly (a
  placeholder (r, s), then r's own (r, s) for another set); I is the part S2 rests on.
* (d): max_seq >= every seq r ever proposed (it is raised before a proposal is returned, and the
  runtime persists it before anything that carries the proposal leaves the node), so (r, s) is
  new. At start the node installs the singleton ({me}, (me, max_seq + 1)) and raises max_seq to
  it: the persisted value may be the seq of a multi-member view, so reusing it would break S2.
* (c): someone installed (M, (r, s)); an install needs every member's proposal to equal it and
  r ∈ M, so r itself proposed (M, (r, s)) before (in this life or an earlier one): same set.
* Install of (M, R) by node i needs i's own proposal to be (M, R) and, when i != r, r's reported
  proposal to be (M, R) (r ∈ M). Either way r proposed (M, R); by I, M is the only set r ever
  proposed under R. Hence every install of R, by anyone, has the same M.

Races do not matter for S2: a proposal that changes while others install the old one only means
some members never install it; an out-of-date or reordered report is still a genuine proposal.
What the runtime must do: persist `max_seq` (durably) after `evaluate` and before sending a
heartbeat or publishing an event from it, and never reuse a node id for a different machine
without carrying its `max_seq` over.

Liveness (S3 after the settle time): on a stable matrix every node's local graph is the true one
around it. The best clique overall, Q1, is picked by all its members (no clique outranks it, so
none of them is taken); its representative keeps one ring id (after re-minting at most once
above a member's newer installed view), the others follow it (a) and all
install within a few heartbeat rounds. Once Q1's proposals are stable, any clique a node of the
rest could prefer that touches Q1 contains a Q1 member whose proposal outranks it and excludes
the node, so that member is taken; the rest converge to Q2, the best clique without Q1, in two
more rounds, and so on: the greedy partition, whatever the transient. (Unless the clique search
hits its step budget on a pathological matrix: then safety holds but agreement may not.)
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.clique import MutualGraph, best_clique_containing, outranks
from agent.config import Timing
from agent.status import ring_text


@dataclass(frozen=True, slots=True, order=True)
class RingId:
    """Names a view: (lowest member, sequence). One ring id never names two member sets (S2)."""

    representative: int
    seq: int

    @property
    def rank(self) -> tuple[int, int]:
        """(sequence, representative): the order ring ids rise in (the configuration replica's
        `Ring` order). Not the dataclass order, which is by representative first."""
        return (self.seq, self.representative)


@dataclass(frozen=True, slots=True)
class MemberView:
    """A member set and its ring id; the form of both installed views and proposals."""

    ring_id: RingId
    members: frozenset[int]


@dataclass(frozen=True, slots=True)
class PeerReport:
    """What one peer's latest heartbeat said."""

    heard: frozenset[int]
    view: MemberView | None
    proposal: MemberView | None


@dataclass(frozen=True, slots=True)
class ProposalChanged:
    """This node now proposes `proposal`."""

    proposal: MemberView
    reason: str


@dataclass(frozen=True, slots=True)
class ViewInstalled:
    """Every member proposes `view`: it is installed (quorum counts it from now on)."""

    view: MemberView
    previous: MemberView
    joined: frozenset[int]
    left: frozenset[int]
    reason: str


MembershipChange = ProposalChanged | ViewInstalled


@dataclass(slots=True)
class _Received:
    report: PeerReport
    at: float
    """When it was last received (a repeat refreshes it in place: `refresh`)."""


def _ids(members: frozenset[int]) -> str:
    return "{" + ", ".join(str(m) for m in sorted(members)) + "}"


def _ring(view: MemberView) -> str:
    """The ring id as corosync prints it (hex `rep.seq`), like status and the qnetd."""
    return ring_text(view.ring_id.representative, view.ring_id.seq)


class Membership:
    """One node's membership state machine (see the module docstring)."""

    def __init__(self, node_id: int, timing: Timing, max_seq: int = 0) -> None:
        self._me = node_id
        self._timing = timing
        self._report_ttl = timing.max_failure_timeout  # properties: computed once
        self._proposal_ttl = timing.proposal_ttl
        self._stale_after = min(self._report_ttl, self._proposal_ttl)
        self._max_seq = max_seq + 1  # the boot view takes a fresh seq: see the S2 argument
        self._view = MemberView(RingId(node_id, self._max_seq), frozenset({node_id}))
        self._proposal = self._view
        self._heard: frozenset[int] = frozenset()
        self._heard_at = 0.0
        self._reports: dict[int, _Received] = {}
        self._matrix: dict[int, frozenset[int]] = {node_id: frozenset()}
        self._mutual = MutualGraph()
        self.durable_seq: int | None = None
        """Set by the node: a view under a ring id of this node's own above it is not installed
        (not yet durable, design §3.3 "Durable before announced"). None: no limit."""

    # ------------------------------------------------------------ inputs
    def peer_report(self, peer: int, report: PeerReport, now: float) -> bool:
        """Remember `peer`'s latest heartbeat contents, received at `now`.

        Returns whether `evaluate` may now decide differently: the report is new, differs from
        the previous one, or replaces one that had gone stale. A repeated report only refreshes
        its time, which cannot change a decision (see "When to evaluate" in the docstring of
        `evaluate`)."""
        if peer == self._me:
            return False
        previous = self._reports.get(peer)
        self._reports[peer] = _Received(report, now)
        for view in (report.view, report.proposal):
            if view is not None:
                self._max_seq = max(self._max_seq, view.ring_id.seq)
        if previous is None or previous.report != report:
            return True
        return self._was_stale(previous, now)

    def refresh(self, peer: int, now: float) -> bool | None:
        """`peer` repeated its last report at `now` (the caller compared the raw fields): the
        same as `peer_report` with an equal report, without building it. None when no report of
        it is kept (call `peer_report`)."""
        previous = self._reports.get(peer)
        if previous is None:
            return None
        stale = now - previous.at > self._stale_after
        previous.at = now
        return stale

    def _was_stale(self, previous: _Received, now: float) -> bool:
        """A repeated report counts as new when the one it repeats had expired."""
        return now - previous.at > self._stale_after

    def set_heard(self, heard: frozenset[int], now: float) -> bool:
        """The peers this node hears now (from the link layer). It expires like a report: a
        `heard` older than the failure timeout counts as hearing nobody. Returns whether the
        set changed."""
        heard = heard - {self._me}
        changed = heard != self._heard
        self._heard = heard
        self._heard_at = now
        return changed

    def set_timing(self, timing: Timing) -> None:
        """New timings at run time: reports and proposals expire by the new lifetimes from the
        next evaluation on (design §3.9, "Run-time changes")."""
        self._timing = timing
        self._report_ttl = timing.max_failure_timeout
        self._proposal_ttl = timing.proposal_ttl
        self._stale_after = min(self._report_ttl, self._proposal_ttl)

    def forget(self, peer: int) -> None:
        """Drop what `peer` reported (removed from the cluster, or restarted)."""
        self._reports.pop(peer, None)

    # ------------------------------------------------------------ outputs
    @property
    def view(self) -> MemberView:
        """The installed view."""
        return self._view

    @property
    def proposal(self) -> MemberView:
        """The view this node proposes."""
        return self._proposal

    @property
    def max_seq(self) -> int:
        """The highest seq seen or made; the runtime persists it before sending."""
        return self._max_seq

    def matrix(self) -> dict[int, frozenset[int]]:
        """Who hears whom, as used by the last `evaluate` (mine and the fresh reports)."""
        return dict(self._matrix)

    # ------------------------------------------------------------ the decision
    def evaluate(self, now: float) -> list[MembershipChange]:
        """Recompute the best clique and the proposal; install when every member agrees.

        When to evaluate: the result depends only on `heard`, the contents of the fresh reports
        and which of them are fresh, and a second call with the same inputs changes nothing (the
        proposal is kept by rule b or re-taken by rule a, and a failed install fails again). So a
        caller needs to evaluate only after `set_heard` or `peer_report` returned True, or when
        a report went stale: a heard peer's report is as old as its last heartbeat, so that is
        when the peer drops out of `heard` too. Reports of peers not heard never matter (they
        are not candidates, and only members' reports are read)."""
        ttl = self._report_ttl
        fresh = self._fresh(now, ttl)
        heard = self._heard if now - self._heard_at <= ttl else frozenset()
        self._matrix = {self._me: heard} | {p: r.heard for p, r in fresh.items()}
        members = self._members(fresh)
        changes: list[MembershipChange] = []
        proposal, why = self._proposal_for(members, fresh)
        if proposal != self._proposal:
            self._proposal = proposal
            self._max_seq = max(self._max_seq, proposal.ring_id.seq)
            changes.append(ProposalChanged(proposal, why))
        installed = self._try_install(now)
        if installed is not None:
            changes.append(installed)
        return changes

    def _fresh(self, now: float, ttl: float) -> dict[int, PeerReport]:
        return {p: r.report for p, r in self._reports.items() if now - r.at <= ttl}

    def _members(self, fresh: dict[int, PeerReport]) -> frozenset[int]:
        """Best clique with me, skipping peers taken by a better clique without me."""
        graph = self._mutual.update(self._matrix)  # mutual_graph(self._matrix), incremental
        candidates = set(graph.get(self._me, ()))  # mutual, so in my (fresh) heard
        while True:
            members = best_clique_containing(self._me, graph, candidates)
            taken = {p for p in members - {self._me} if self._taken(fresh[p], p, members)}
            if not taken:
                return members
            candidates -= taken

    def _taken(self, report: PeerReport, peer: int, members: frozenset[int]) -> bool:
        other = report.proposal
        if other is None or self._me in other.members or peer not in other.members:
            return False
        return outranks(other.members, members)

    def _proposal_for(
        self, members: frozenset[int], fresh: dict[int, PeerReport]
    ) -> tuple[MemberView, str]:
        rep = min(members)
        if rep != self._me:
            theirs = fresh[rep].proposal
            if theirs and theirs.members == members and theirs.ring_id.representative == rep:
                return theirs, f"{_ids(members)}: ring {_ring(theirs)} of representative {rep}"
        if self._proposal.members == members and (
            rep != self._me or not self._overtaken(self._proposal, members, fresh)
        ):
            return self._proposal, "unchanged"
        adopted = self._newest_installed(members, fresh)
        if adopted is not None:
            return adopted, f"{_ids(members)}: installed ring {_ring(adopted)} again"
        new = MemberView(RingId(rep, self._max_seq + 1), members)
        return new, f"best clique {_ids(members)}: new ring {_ring(new)}"

    def _overtaken(
        self, proposal: MemberView, members: frozenset[int], fresh: dict[int, PeerReport]
    ) -> bool:
        """A member installed a view with a higher ring id than my proposal (rule b): it would
        refuse to install my proposal (step 4)."""
        mine = proposal.ring_id.rank
        for p in members - {self._me}:
            view = fresh[p].view
            if view is not None and view.ring_id.rank > mine:
                return True
        return False

    def _newest_installed(
        self, members: frozenset[int], fresh: dict[int, PeerReport]
    ) -> MemberView | None:
        """The members' newest installed view, when it has exactly `members`."""
        views = [self._view] + [v for p in members - {self._me} if (v := fresh[p].view)]
        newest = max(views, key=lambda v: v.ring_id.rank)
        if newest.members == members and newest.ring_id.representative == min(members):
            return newest
        return None

    def _try_install(self, now: float) -> ViewInstalled | None:
        mine, view = self._proposal, self._view
        if mine == view:
            return None
        if mine.ring_id.rank < view.ring_id.rank:
            return None  # the representative mints a higher one (rising ring ids)
        own = mine.ring_id.representative == self._me
        if own and self.durable_seq is not None and mine.ring_id.seq > self.durable_seq:
            return None
        agreeing = self._fresh(now, self._proposal_ttl)
        if any(
            p not in agreeing or agreeing[p].proposal != mine for p in mine.members - {self._me}
        ):
            return None
        previous, self._view = self._view, mine
        return ViewInstalled(
            view=mine,
            previous=previous,
            joined=mine.members - previous.members,
            left=previous.members - mine.members,
            reason=f"all {len(mine.members)} members propose {_ids(mine.members)} "
            f"as ring {_ring(mine)}",
        )
