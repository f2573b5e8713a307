"""agent/membership.py: cliques under one-way and non-transitive failures, agreement, ring ids.

Scenario tests drive several `Membership` instances through `tests/agent/membership_net.py`;
unit tests poke one instance with hand-written reports; the Hypothesis properties at the end
check S2 under loss, delay, reordering and restarts, and convergence on a stable matrix.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import Timing
from agent.membership import (
    Membership,
    MemberView,
    PeerReport,
    ProposalChanged,
    RingId,
    ViewInstalled,
)
from tests.agent.membership_net import MembershipNet, full_mesh, without

T = Timing()
SETTLE = 15  # rounds: stale hearing expires (7 rounds) and a few agreement rounds follow


def net_with(ids: list[int], links: set[tuple[int, int]], rounds: int = SETTLE) -> MembershipNet:
    """A network with these links, run for `rounds`, checked for S2."""
    net = MembershipNet(ids, links=links)
    net.run(rounds)
    assert net.s2_violations() == []
    return net


def members(net: MembershipNet) -> dict[int, set[int]]:
    """Each node's installed member set."""
    return {n: set(v.members) for n, v in net.views().items()}


def mv(rep: int, seq: int, *ids: int) -> MemberView:
    """A MemberView literal."""
    return MemberView(RingId(rep, seq), frozenset(ids))


def test_start_installs_a_singleton_with_a_fresh_seq() -> None:
    """At start the singleton view is installed and proposed, with the seq after the persisted
    one (which may name an older multi-node view)."""
    m = Membership(4, T, max_seq=41)
    assert m.view == m.proposal == mv(4, 42, 4)
    assert m.max_seq == 42
    assert m.evaluate(0.0) == []


def test_full_mesh_installs_one_view() -> None:
    """Five nodes that all hear each other install one view with one ring id."""
    net = net_with([1, 2, 3, 4, 5], full_mesh([1, 2, 3, 4, 5]))
    assert len(set(net.views().values())) == 1
    assert net.views()[3].members == {1, 2, 3, 4, 5}
    assert net.views()[3].ring_id.representative == 1


def test_one_way_cut_splits_the_pair() -> None:
    """A hears B but B does not hear A: no edge, so each is its own view."""
    net = net_with([1, 2], {(2, 1)})
    assert members(net) == {1: {1}, 2: {2}}


def test_one_way_cut_in_three_resolves_to_a_clique() -> None:
    """Full mesh of three with 1->2 cut one way: {1,3} (smallest ids) and {2}, on every node."""
    net = net_with([1, 2, 3], full_mesh([1, 2, 3]) - {(1, 2)})
    assert members(net) == {1: {1, 3}, 2: {2}, 3: {1, 3}}
    assert net.converged()


def test_non_transitive_gives_a_pair_and_a_singleton() -> None:
    """A-B and B-C but no A-C: {A,B} and {C} on every node, even though C cannot see that A and B
    hear each other (it learns it from B's proposal)."""
    net = net_with([1, 2, 3], without(full_mesh([1, 2, 3]), (1, 3)))
    assert members(net) == {1: {1, 2}, 2: {1, 2}, 3: {3}}
    assert net.views()[1] == net.views()[2]


def test_non_transitive_after_a_full_view_leaves_nobody_in_the_old_view() -> None:
    """From an installed view of three, cutting A-C moves every node out of the old view."""
    net = net_with([1, 2, 3], full_mesh([1, 2, 3]))
    old = net.views()[1]
    net.links = without(net.links, (1, 3))
    net.run(SETTLE)
    assert members(net) == {1: {1, 2}, 2: {1, 2}, 3: {3}}
    assert old not in net.views().values()
    assert net.s2_violations() == []


def test_majorities_ring_forms_no_majority() -> None:
    """Five nodes, each cut from a different pair (its two non-neighbours on a ring): every node
    hears a majority, yet no clique of three exists: {1,2}, {3,4}, {5}."""
    ids = [1, 2, 3, 4, 5]
    cuts = [(n, (n + 1) % 5 + 1) for n in ids]  # 1-3, 2-4, 3-5, 4-1, 5-2
    net = net_with(ids, without(full_mesh(ids), *cuts), rounds=2 * SETTLE)
    assert members(net) == {1: {1, 2}, 2: {1, 2}, 3: {3, 4}, 4: {3, 4}, 5: {5}}
    assert net.converged()


def test_bridge_node_goes_with_one_half() -> None:
    """Node 7 hears both halves {1,2,3} and {4,5,6}, which do not hear each other: it joins the
    half with the smaller ids, and the other half forms its own view without it."""
    ids = [1, 2, 3, 4, 5, 6, 7]
    links = full_mesh([1, 2, 3, 7]) | full_mesh([4, 5, 6, 7])
    net = net_with(ids, links, rounds=2 * SETTLE)
    assert members(net)[7] == {1, 2, 3, 7}
    assert members(net)[4] == {4, 5, 6}
    assert net.converged()


def test_symmetric_partition_gives_each_side_its_view() -> None:
    """A clean 12 | 18 split of a 30-node full mesh: each side installs its own view, with its
    lowest id as representative, and the old view of 30 is gone everywhere."""
    ids = list(range(1, 31))
    net = net_with(ids, full_mesh(ids))
    net.links = full_mesh(ids[:12]) | full_mesh(ids[12:])
    net.run(SETTLE)
    views = net.views()
    assert {views[n] for n in ids[:12]} == {views[1]}
    assert {views[n] for n in ids[12:]} == {views[13]}
    assert views[1].members == set(ids[:12])
    assert views[13].members == set(ids[12:])
    assert views[13].ring_id.representative == 13
    assert net.s2_violations() == []


def test_settled_view_survives_loss_and_jitter() -> None:
    """L2 at this level: 5 nodes under 5 % loss and up to one round of extra delay keep one view
    for 60 s of heartbeats."""
    ids = [1, 2, 3, 4, 5]
    net = MembershipNet(ids, rng=random.Random(5), links=full_mesh(ids))
    net.run(SETTLE)
    settled = net.views()
    net.loss, net.max_delay = 0.05, 1
    net.run(600)
    assert net.views() == settled
    assert len(set(settled.values())) == 1


def test_stale_heard_counts_as_hearing_nobody() -> None:
    """If the link layer's heard set is older than the failure timeout, nobody is a candidate."""
    m = Membership(1, T)
    m.set_heard(frozenset({2}), 0.0)
    late = T.max_failure_timeout + 0.1
    m.peer_report(2, PeerReport(frozenset({1}), None, None), late)
    m.evaluate(late)
    assert m.proposal.members == {1}
    assert m.matrix()[1] == frozenset()


def test_inputs_report_whether_evaluate_may_decide_differently() -> None:
    """peer_report is True for a new, changed or formerly stale report and False for a repeat;
    set_heard is True only when the set changes. A repeated evaluate changes nothing."""
    m = Membership(1, T)
    report = PeerReport(frozenset({1}), None, None)
    assert m.set_heard(frozenset({2}), 0.0) is True
    assert m.set_heard(frozenset({2}), 0.1) is False
    assert m.peer_report(2, report, 0.1) is True
    assert m.peer_report(2, report, 0.2) is False
    assert m.peer_report(2, PeerReport(frozenset({1, 3}), None, None), 0.3) is True
    assert m.peer_report(
        2, PeerReport(frozenset({1, 3}), None, None), 0.3 + T.max_failure_timeout + 0.01
    )
    assert m.peer_report(1, report, 2.0) is False  # our own echo is ignored
    assert m.refresh(3, 0.4) is None  # nothing kept for node 3: the caller must send the report
    assert m.refresh(2, 0.4 + T.failure_timeout) is False  # a repeat only moves the time
    assert m.refresh(2, 0.5 + 2 * T.max_failure_timeout) is True  # ...unless it had gone stale
    m.set_heard(frozenset({2}), 1.0)
    first = m.evaluate(1.0)
    assert [type(c) for c in first] == [ProposalChanged]
    assert m.proposal.members == {1, 2}
    assert m.evaluate(1.0) == []


def test_restart_keeps_ring_ids_unique() -> None:
    """The representative restarts with its persisted max_seq: its boot view and the views after
    the rejoin use fresh seqs, and no ring id is installed with two member sets."""
    net = net_with([1, 2, 3], full_mesh([1, 2, 3]))
    before = net.views()[1]
    net.restart(1)
    assert net.views()[1].ring_id.seq > before.ring_id.seq
    assert net.views()[1].members == {1}
    net.run(SETTLE)
    assert len(set(net.views().values())) == 1
    assert net.views()[2].members == {1, 2, 3}
    assert net.s2_violations() == []


def test_representative_never_reuses_a_ring_id_for_another_set() -> None:
    """Node 2 mints (1, 6) for {1,2} while node 1 proposes (1, 6) for {1,3}: when node 1 then
    picks {1,2} it mints a new ring id instead of taking 2's, so (1, 6) keeps one meaning."""
    m = Membership(1, T, max_seq=5)  # boot view (1, 6)
    m.set_heard(frozenset({3}), 0.0)
    m.peer_report(3, PeerReport(frozenset({1}), None, None), 0.0)
    m.evaluate(0.0)
    assert m.proposal == mv(1, 7, 1, 3)
    m.set_heard(frozenset({2}), 0.1)
    m.forget(3)
    m.peer_report(2, PeerReport(frozenset({1}), mv(2, 1, 2), mv(1, 7, 1, 2)), 0.1)
    (changed,) = m.evaluate(0.1)
    assert isinstance(changed, ProposalChanged)
    assert changed.proposal == mv(1, 8, 1, 2)


def test_non_representative_follows_the_representative_ring_id() -> None:
    """A member that minted a placeholder takes the representative's ring id and installs once
    every member proposes it."""
    m = Membership(2, T)
    m.set_heard(frozenset({1}), 0.0)
    m.peer_report(1, PeerReport(frozenset({2}), mv(1, 1, 1), mv(1, 9, 1, 2)), 0.0)
    changes = m.evaluate(0.0)
    assert [type(c) for c in changes] == [ProposalChanged, ViewInstalled]
    assert m.view == mv(1, 9, 1, 2)
    installed = changes[1]
    assert isinstance(installed, ViewInstalled)
    assert installed.joined == {1}
    assert installed.left == frozenset()
    assert installed.previous == mv(2, 1, 2)


def test_a_member_refuses_a_view_below_its_installed_one() -> None:
    """Node 2 installed (2, s) {2,3} while node 1 kept its proposal (1, s) {1,2,3}: node 2
    follows it but does not install it (its replica would take no part, design §3.9 rule c);
    it installs the ring id the representative mints above."""
    m = Membership(2, T)
    m.set_heard(frozenset({3}), 0.0)
    m.peer_report(3, PeerReport(frozenset({2}), None, None), 0.0)
    m.evaluate(0.0)
    m.peer_report(3, PeerReport(frozenset({2}), None, m.proposal), 0.0)
    m.evaluate(0.0)
    high = m.view
    assert high.members == {2, 3}
    low = mv(1, high.ring_id.seq, 1, 2, 3)
    m.set_heard(frozenset({1, 3}), 0.1)
    m.peer_report(1, PeerReport(frozenset({2, 3}), mv(1, 1, 1), low), 0.1)
    m.peer_report(3, PeerReport(frozenset({1, 2}), high, low), 0.1)
    changes = m.evaluate(0.1)
    assert m.proposal == low
    assert m.view == high
    assert not any(isinstance(c, ViewInstalled) for c in changes)
    top = mv(1, high.ring_id.seq + 1, 1, 2, 3)
    m.peer_report(1, PeerReport(frozenset({2, 3}), mv(1, 1, 1), top), 0.2)
    m.peer_report(3, PeerReport(frozenset({1, 2}), high, top), 0.2)
    m.evaluate(0.2)
    assert m.view == top


def proposing_1_2_3() -> Membership:
    """Node 1, hearing nodes 2 and 3 (who hear it), proposing {1,2,3} under a ring id of its
    own; nothing installed yet."""
    m = Membership(1, T)
    m.set_heard(frozenset({2, 3}), 0.0)
    m.peer_report(2, PeerReport(frozenset({1, 3}), None, None), 0.0)
    m.peer_report(3, PeerReport(frozenset({1, 2}), None, None), 0.0)
    m.evaluate(0.0)
    return m


def test_the_representative_mints_above_a_members_newer_view() -> None:
    """Node 1 proposes (1, s) {1,2,3}; nodes 2 and 3 meanwhile installed (2, s) {2,3}, above it
    in (sequence, representative) order, and now propose node 1's: node 1 mints (1, s + 1)
    instead of installing (1, s), which they would refuse."""
    m = proposing_1_2_3()
    low = m.proposal
    assert low.members == {1, 2, 3}
    high = mv(2, low.ring_id.seq, 2, 3)
    m.peer_report(2, PeerReport(frozenset({1, 3}), high, low), 0.1)
    m.peer_report(3, PeerReport(frozenset({1, 2}), high, low), 0.1)
    (changed,) = m.evaluate(0.1)
    assert isinstance(changed, ProposalChanged)
    assert changed.proposal == mv(1, low.ring_id.seq + 1, 1, 2, 3)
    assert m.view == mv(1, 1, 1)


def test_an_overtaken_representative_adopts_a_members_view_of_the_same_set() -> None:
    """Node 1 keeps (1, s) {1,2,3} while its members report {1,2,3} installed under the higher
    (1, s + 3): overtaken, it takes rule (c), that installed ring id, before minting (d)."""
    m = proposing_1_2_3()
    low = m.proposal
    installed = mv(1, low.ring_id.seq + 3, 1, 2, 3)
    m.peer_report(2, PeerReport(frozenset({1, 3}), installed, installed), 0.1)
    m.peer_report(3, PeerReport(frozenset({1, 2}), installed, installed), 0.1)
    changes = m.evaluate(0.1)
    assert m.proposal == m.view == installed
    assert [type(c) for c in changes] == [ProposalChanged, ViewInstalled]


def test_install_waits_for_every_member() -> None:
    """A view is installed only when every member's proposal equals mine."""
    m = Membership(1, T)
    m.set_heard(frozenset({2, 3}), 0.0)
    m.peer_report(2, PeerReport(frozenset({1, 3}), None, mv(1, 2, 1, 2, 3)), 0.0)
    m.peer_report(3, PeerReport(frozenset({1, 2}), None, mv(3, 1, 3)), 0.0)
    m.evaluate(0.0)
    assert m.proposal == mv(1, 3, 1, 2, 3)
    assert m.view == mv(1, 1, 1)
    m.peer_report(2, PeerReport(frozenset({1, 3}), None, mv(1, 3, 1, 2, 3)), 0.1)
    assert m.evaluate(0.1) == []
    m.peer_report(3, PeerReport(frozenset({1, 2}), None, mv(1, 3, 1, 2, 3)), 0.2)
    (installed,) = m.evaluate(0.2)
    assert isinstance(installed, ViewInstalled)
    assert installed.view == m.view == mv(1, 3, 1, 2, 3)


def test_stale_reports_and_unheard_peers_are_not_candidates() -> None:
    """A peer whose report is older than the longest failure timeout, or that I do not hear, is
    left out even though it reports hearing me."""
    m = Membership(1, T)
    later = T.max_failure_timeout + 0.05
    m.peer_report(2, PeerReport(frozenset({1, 3}), None, None), 0.0)
    m.peer_report(3, PeerReport(frozenset({1, 2}), None, None), later - 0.2)
    m.set_heard(frozenset({2}), later)
    m.evaluate(later)
    assert m.proposal.members == {1}
    assert m.matrix() == {1: {2}, 3: {1, 2}}


def test_stale_matching_proposal_does_not_install() -> None:
    """A member's matching proposal counts while it is fresh; older than proposal_ttl it does not
    (and the member is no candidate any more): the node stays alone."""
    for later, installs in ((0.1, True), (T.proposal_ttl + 0.01, False)):
        m = Membership(1, T)
        m.set_heard(frozenset({2}), 0.0)
        m.peer_report(2, PeerReport(frozenset({1}), None, None), 0.0)
        m.evaluate(0.0)
        m.peer_report(2, PeerReport(frozenset({1}), None, m.proposal), 0.0)
        m.set_heard(frozenset({2}), later)
        m.evaluate(later)
        assert (m.view.members == {1, 2}) is installs


def test_max_seq_follows_what_peers_report() -> None:
    """max_seq is the highest seq seen in any view or proposal, and new ring ids exceed it."""
    m = Membership(1, T)
    m.peer_report(2, PeerReport(frozenset(), mv(2, 30, 2), mv(2, 31, 2, 3)), 0.0)
    assert m.max_seq == 31
    m.set_heard(frozenset({2}), 0.0)
    m.peer_report(2, PeerReport(frozenset({1}), mv(2, 30, 2), mv(2, 31, 2, 3)), 0.0)
    m.evaluate(0.0)
    assert m.proposal == mv(1, 32, 1, 2)


def test_flap_readopts_the_installed_ring_id() -> None:
    """After a member drops out of my clique and comes back before anyone installed a new view,
    I propose the still-installed ring id again: no view change."""
    net = net_with([1, 2, 3], full_mesh([1, 2, 3]))
    view = net.views()[1]
    m = net.nodes[2]
    m.set_heard(frozenset({1}), net.now)
    m.evaluate(net.now)
    assert m.proposal.members == {1, 2}
    net.run(1)
    assert m.proposal == view
    assert net.views()[2] == view


def test_forget_drops_the_peer_report() -> None:
    """After forget, a restarted peer's old report no longer makes it a candidate."""
    m = Membership(1, T)
    m.set_heard(frozenset({2}), 0.0)
    m.peer_report(2, PeerReport(frozenset({1}), None, None), 0.0)
    m.forget(2)
    m.evaluate(0.0)
    assert m.proposal.members == {1}
    assert 2 not in m.matrix()


@dataclass(frozen=True)
class Phase:
    """A stretch of rounds with one set of links up, loss, delay, and restarts at its start."""

    links: frozenset[tuple[int, int]]
    rounds: int
    loss: float
    max_delay: int
    restarts: frozenset[int]


@st.composite
def schedules(draw: st.DrawFn) -> tuple[list[int], list[Phase], int]:
    """2-6 nodes, 1-5 chaotic phases, and a seed for the network's random.Random."""
    ids = list(range(1, draw(st.integers(2, 6)) + 1))
    pairs = sorted(full_mesh(ids))
    phase = st.builds(
        Phase,
        links=st.frozensets(st.sampled_from(pairs)),
        rounds=st.integers(1, 12),
        loss=st.sampled_from([0.0, 0.1, 0.3, 0.6]),
        max_delay=st.integers(0, 3),
        restarts=st.frozensets(st.sampled_from(ids), max_size=2),
    )
    return ids, draw(st.lists(phase, min_size=1, max_size=5)), draw(st.integers(0, 2**32 - 1))


def run_chaos(ids: list[int], phases: list[Phase], seed: int) -> MembershipNet:
    """Run the phases on a fresh network seeded with `seed`."""
    net = MembershipNet(ids, rng=random.Random(seed))
    for phase in phases:
        for node in sorted(phase.restarts):
            net.restart(node)
        net.links, net.loss, net.max_delay = set(phase.links), phase.loss, phase.max_delay
        net.run(phase.rounds)
    return net


@settings(max_examples=600, deadline=None)
@given(schedules())
def test_s2_holds_under_loss_delay_reordering_and_restarts(
    schedule: tuple[list[int], list[Phase], int],
) -> None:
    """S2: across all nodes and all their lives (boot views included), a ring id is installed
    with one member set only; its representative never proposed two sets under it (I); and the
    ring ids each node installs rise (the configuration replica takes part in each view)."""
    net = run_chaos(*schedule)
    assert net.representative_reuse() == []
    assert net.s2_violations() == []
    assert net.ring_regressions() == []


@settings(max_examples=150, deadline=None)
@given(schedules(), st.data())
def test_stable_matrix_converges_to_the_clique_partition(
    schedule: tuple[list[int], list[Phase], int], data: st.DataObject
) -> None:
    """After any chaos, once the links stay fixed and lossless, every node installs its part of
    the greedy clique partition with one ring id per part, within 12 + 4n rounds, and nothing
    changes afterwards."""
    ids = schedule[0]
    net = run_chaos(*schedule)
    net.links = set(data.draw(st.frozensets(st.sampled_from(sorted(full_mesh(ids))))))
    net.loss, net.max_delay = 0.0, 0
    net.run(12 + 4 * len(ids))
    assert net.converged(), (net.expected_partition(), net.views())
    settled = net.views()
    net.run(10)
    assert net.views() == settled
    assert net.s2_violations() == []


@st.composite
def node_inputs(draw: st.DrawFn) -> list[tuple[str, int, frozenset[int], int, int]]:
    """Arbitrary inputs to node 1: reports with any heard set and proposals minted in anyone's
    name (node 1's too), forgets, restarts, evaluations, time steps."""
    step = st.tuples(
        st.sampled_from(["report", "report", "report", "heard", "forget", "restart", "eval"]),
        st.integers(2, 5),
        st.frozensets(st.integers(1, 5)),
        st.integers(1, 5),
        st.integers(0, 12),
    )
    return draw(st.lists(step, max_size=60))


@settings(max_examples=400, deadline=None)
@given(node_inputs(), st.data())
def test_one_node_never_reuses_its_own_ring_id(
    inputs: list[tuple[str, int, frozenset[int], int, int]], data: st.DataObject
) -> None:
    """Whatever peers report (proposals under node 1's name included; installed views only of
    proposals node 1 really made, as an install requires), node 1 across restarts: proposes one
    member set per ring id of its own, always contains itself with representative = lowest
    member, installs only its proposal, and max_seq never goes down or below what it proposed."""
    m, persisted, now = Membership(1, T), 0, 0.0
    mine: dict[RingId, frozenset[int]] = {m.view.ring_id: m.view.members}
    for kind, peer, ids, rep, seq in inputs:
        now += 0.05
        proposal = MemberView(RingId(rep, seq), ids | {rep})
        if kind == "report":
            real = data.draw(st.sampled_from([None, *(MemberView(*own) for own in mine.items())]))
            m.peer_report(peer, PeerReport(ids, real, proposal), now)
        elif kind == "heard":
            m.set_heard(ids, now)
        elif kind == "forget":
            m.forget(peer)
        elif kind == "restart":
            m = Membership(1, T, persisted)
        else:
            before = m.max_seq
            for change in m.evaluate(now):
                if isinstance(change, ViewInstalled):
                    assert change.view == m.proposal
            assert m.max_seq >= before
        view = m.proposal
        assert 1 in view.members
        assert view.ring_id.representative == min(view.members)
        assert m.max_seq >= view.ring_id.seq
        if view.ring_id.representative == 1:
            assert mine.setdefault(view.ring_id, view.members) == view.members
        persisted = max(persisted, m.max_seq)
