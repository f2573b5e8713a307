"""The sub-cores' halves of a run-time configuration change (design §3.9 "Run-time changes"):
`Links.set_local` / `set_timing`, `Membership.set_timing`, `Votequorum.reconfigure` with options,
device votes and the transition constraint, `runtime_options`, `Votequorum.disable`."""

from __future__ import annotations

import itertools

from agent.config import LinkConfig, QuorumOptions, Timing
from agent.links import ActiveLinkChanged, LinkDown, Links
from agent.membership import Membership, MemberView, PeerReport, RingId
from agent.votequorum import QuorumGained, QuorumLost, Votequorum, runtime_options
from tests.agent.test_votequorum import cluster, kinds, view

PEER = 2


def links_with(*priorities: int) -> Links:
    local = tuple(LinkConfig(i, f"10.0.{i}.1", priority=p) for i, p in enumerate(priorities))
    links = Links(1, local, Timing())
    links.set_peer(PEER, frozenset(range(len(priorities))))
    return links


def test_a_new_local_priority_moves_the_active_link_at_once() -> None:
    """Two up links, link0 active (priority 2 > 1). Raising link1 to 3 makes it active at the
    next tick, without failback rounds (link1 never failed)."""
    links = links_with(2, 1)
    links.received(PEER, 0, 0.0)
    links.received(PEER, 1, 0.0)
    assert links.active_link(PEER) == 0
    links.set_local((LinkConfig(0, "10.0.0.1", priority=2), LinkConfig(1, "10.0.1.1", priority=3)))
    changes = links.tick(0.01)
    moves = [(c.old, c.new) for c in changes if isinstance(c, ActiveLinkChanged)]
    assert moves == [(0, 1)]
    assert links.active_link(PEER) == 1


def test_a_local_link_removed_goes_down_for_every_peer() -> None:
    """Removing link1 locally: an up link1 goes down (one LinkDown) and is no longer tracked."""
    links = links_with(2, 1)
    links.received(PEER, 0, 0.0)
    links.received(PEER, 1, 0.0)
    links.set_local((LinkConfig(0, "10.0.0.1", priority=2),))
    changes = links.tick(0.01)
    assert [c for c in changes if isinstance(c, LinkDown)] == [
        LinkDown(PEER, 1, "link1 removed locally")
    ]
    assert links.peer_links(PEER) == [0]


def test_new_timing_moves_the_heartbeat_rounds() -> None:
    """After set_timing(lab), heartbeats to a peer are due every 0.2 s instead of 0.1 s."""
    links = links_with(1)
    links.received(PEER, 0, 0.0)
    links.set_timing(Timing.lab())
    sent = []
    t = 0.0
    while t < 2.0:
        sent += [t for d in links.due_sends(t) if d.kind == "heartbeat"]
        links.received(PEER, 0, t)  # keep the link up
        t = round(t + 0.01, 6)
    gaps = {round(b - a, 2) for a, b in itertools.pairwise(sent[1:])}
    assert gaps == {0.2}


def test_membership_takes_new_report_lifetimes() -> None:
    """A peer report 2.0 s old is fresh under the lab timing (reports live 3.4 s) and stale
    under the LAN one (1.25 s): set_timing switches at once."""
    m = Membership(1, Timing.lan())
    view2 = MemberView(RingId(1, 5), frozenset({1, 2}))
    m.set_heard(frozenset({2}), 0.0)
    m.peer_report(2, PeerReport(frozenset({1}), None, view2), 0.0)
    m.set_timing(Timing.lab())
    m.set_heard(frozenset({2}), 2.0)
    m.evaluate(2.0)
    assert m.proposal.members == frozenset({1, 2})
    lan = Membership(1, Timing.lan())
    lan.set_heard(frozenset({2}), 0.0)
    lan.peer_report(2, PeerReport(frozenset({1}), None, view2), 0.0)
    lan.set_heard(frozenset({2}), 2.0)
    lan.evaluate(2.0)
    assert lan.proposal.members == frozenset({1})


def test_runtime_options_keep_what_needs_a_restart() -> None:
    """expected_votes and two_node apply; wait_for_all (explicit), last_man_standing (+window)
    and auto_tie_breaker keep the running values and are named; wait_for_all that follows
    two_node follows it."""
    running = QuorumOptions()
    wanted = QuorumOptions(
        expected_votes=7, last_man_standing=True, last_man_standing_window=5.0, wait_for_all=True
    )
    options, restart = runtime_options(running, wanted)
    assert options == QuorumOptions(expected_votes=7)
    assert restart == (
        "quorum.wait_for_all",
        "quorum.last_man_standing",
        "quorum.last_man_standing_window",
    )
    options, restart = runtime_options(running, QuorumOptions(two_node=True))
    assert options.two_node
    assert options.effective_wait_for_all
    assert restart == ()


def test_reconfigure_applies_expected_votes_option_and_two_node() -> None:
    """A new expected_votes applies at once; turning two_node off (a third node added) ends
    its quorum of 1."""
    vq = Votequorum(1, QuorumOptions(two_node=True), {1: 1, 2: 1})
    vq.update(view([1, 2]), 0.0)
    vq.update(view([1]), 1.0)
    before = vq.status
    assert before.quorate  # two_node: 1 of 2 with quorum 1
    changes = vq.reconfigure({1: 1, 2: 1, 3: 1}, 2.0, options=QuorumOptions())
    after = vq.status
    assert not after.quorate
    assert QuorumLost in kinds(changes)
    vq.reconfigure({1: 1, 2: 1, 3: 1}, 3.0, options=QuorumOptions(expected_votes=1))
    assert vq.status.expected_votes == 1


def test_the_replaced_configuration_is_a_constraint_until_the_span_ends() -> None:
    """Node 4 alone; a change gives it 5 of 8 votes. Within the transition it must also hold
    the old quorum (3 of 4 with the old votes): inquorate, with the reason; the deadline is the
    span's end; at it, quorate by the new configuration alone."""
    vq = cluster(4, me=4)
    vq.update(view([4]), 0.0)
    changes = vq.reconfigure(
        {1: 1, 2: 1, 3: 1, 4: 5}, 1.0, transition_until=3.0, inp=view([4], votes=5)
    )
    assert not vq.status.quorate
    assert QuorumGained not in kinds(changes)
    assert "1 of the previous configuration's 4 expected votes (need 3)" in vq.status.reason
    assert vq.next_deadline() == 3.0
    assert kinds(vq.tick(3.0)) == [QuorumGained]
    assert vq.next_deadline() is None


def test_a_change_that_keeps_a_majority_of_both_changes_no_verdict() -> None:
    """{1,2,3} of 4 present, node 4 deleted: quorate by the old (3 of 4) and the new (3 of 3)
    configurations: no quorum change, expected votes 3 at once."""
    vq = cluster(4)
    vq.update(view([1, 2, 3]), 0.0)
    changes = vq.reconfigure({1: 1, 2: 1, 3: 1}, 1.0, transition_until=3.0, inp=view([1, 2, 3]))
    assert vq.status.quorate
    assert vq.status.expected_votes == 3
    assert QuorumLost not in kinds(changes)


def test_a_jump_is_never_satisfied_until_the_span_ends() -> None:
    """`jump`: the configurations in between are unknown: inquorate until the span ends."""
    vq = cluster(3)
    vq.update(view([1, 2, 3]), 0.0)
    vq.reconfigure({1: 1, 2: 1, 3: 1}, 1.0, transition_until=2.0, jump="version 7 after 5")
    assert not vq.status.quorate
    assert "version 7 after 5" in vq.status.reason
    assert kinds(vq.tick(2.0)) == [QuorumGained]


def test_disable_ends_quorum_for_good() -> None:
    """A node removed from the configuration: inquorate with the reason, whatever it counts."""
    vq = cluster(3)
    vq.update(view([1, 2, 3]), 0.0)
    assert kinds(vq.disable("removed from the cluster configuration", 1.0)) == [QuorumLost]
    vq.update(view([1, 2, 3], key=(1, 2)), 2.0)
    assert not vq.status.quorate
    assert vq.status.reason == "removed from the cluster configuration"
