"""agent/votequorum.py: the quorum verdict, option by option, with votequorum(5)'s examples."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import ConfigError, QuorumOptions, TieBreaker
from agent.votequorum import (
    ExpectedRefused,
    ExpectedSet,
    ExpectedVotesChanged,
    QuorumChange,
    QuorumGained,
    QuorumInput,
    QuorumLost,
    Votequorum,
)

WINDOW = 10.0


def view(
    members: Iterable[int],
    *,
    expected: int = 0,
    key: tuple[int, int] = (1, 1),
    qdevice: int = 0,
    votes: int = 1,
    quorate: Iterable[int] = (),
    tie: int = 0,
) -> QuorumInput:
    """A view whose members each report `votes` votes, `expected` expected votes and `tie` as
    their tie-breaker node."""
    ids = frozenset(members)
    return QuorumInput(
        ids,
        dict.fromkeys(ids, votes),
        dict.fromkeys(ids, expected),
        qdevice,
        key,
        frozenset(quorate),
        member_tie_breakers=dict.fromkeys(ids, tie),
    )


def cluster(
    n: int, opts: QuorumOptions | None = None, *, me: int = 1, qdevice_votes: int = 0
) -> Votequorum:
    """Node `me` of a cluster of nodes 1..n with one vote each."""
    return Votequorum(
        me, opts or QuorumOptions(), dict.fromkeys(range(1, n + 1), 1), qdevice_votes=qdevice_votes
    )


def kinds(changes: list[QuorumChange]) -> list[type]:
    """The change types, in order."""
    return [type(c) for c in changes]


# -- basics ---------------------------------------------------------------------------------


def test_before_any_view_not_quorate() -> None:
    """Until a view is installed the node is not quorate and says why."""
    vq = cluster(3)
    assert not vq.status.quorate
    assert (vq.status.expected_votes, vq.status.quorum, vq.status.total_votes) == (3, 2, 0)
    assert vq.status.reason == "no view installed yet"
    assert vq.next_deadline() is None


@pytest.mark.parametrize(
    ("nodes", "present", "quorum", "quorate"),
    [
        (1, 1, 1, True),
        (2, 1, 2, False),
        (3, 2, 2, True),
        (4, 2, 3, False),
        (5, 3, 3, True),
        (5, 2, 3, False),
        (8, 5, 5, True),
        (8, 4, 5, False),
    ],
)
def test_quorum_is_half_expected_plus_one(
    nodes: int, present: int, quorum: int, quorate: bool
) -> None:
    """votequorum(5): quorum = floor(expected / 2) + 1; quorate when the votes present reach it."""
    vq = cluster(nodes)
    vq.update(view(range(1, present + 1)), 0.0)
    assert vq.status.quorum == quorum
    assert vq.status.quorate is quorate
    assert ("Quorate" in vq.status.flags) is quorate


def test_five_nodes_split_three_two() -> None:
    """5 nodes, quorum 3: after a 3|2 split the 3-side stays quorate, the 2-side loses quorum."""
    big, small = cluster(5, me=1), cluster(5, me=5)
    assert big.update(view(range(1, 6)), 0.0) == [QuorumGained(big.status.reason)]
    small.update(view(range(1, 6)), 0.0)
    assert big.update(view([1, 2, 3], key=(1, 2)), 1.0) == []
    assert big.status.quorate
    assert small.update(view([4, 5], key=(4, 2)), 1.0) == [QuorumLost(small.status.reason)]
    assert small.status.reason == "not quorate: 2 of 5 expected votes present, quorum is 3"


def test_no_blip_when_majority_survives() -> None:
    """5 members -> 4 members: quorate before and after, and no QuorumLost is emitted."""
    vq = cluster(5)
    vq.update(view(range(1, 6)), 0.0)
    assert vq.update(view(range(1, 5), key=(1, 2)), 0.5) == []
    assert vq.status.quorate
    assert vq.status.total_votes == 4


def test_votes_from_heartbeats_then_configuration() -> None:
    """A member counts the votes it reports, else its configured votes, else 1."""
    vq = Votequorum(1, QuorumOptions(), {1: 1, 2: 3, 3: 1})
    inp = QuorumInput(frozenset({1, 2, 9}), {1: 1}, {})
    vq.update(inp, 0.0)
    assert vq.status.total_votes == 1 + 3 + 1
    vq.update(QuorumInput(frozenset({1, 2}), {1: 1, 2: 0}, {}), 1.0)
    assert vq.status.total_votes == 1


def test_weighted_votes_decide() -> None:
    """A node with 3 of 5 votes is quorate alone; the other two nodes together are not."""
    votes = {1: 3, 2: 1, 3: 1}
    heavy, light = (
        Votequorum(1, QuorumOptions(votes=3), votes),
        Votequorum(2, QuorumOptions(), votes),
    )
    heavy.update(QuorumInput(frozenset({1}), {1: 3}, {}), 0.0)
    light.update(QuorumInput(frozenset({2, 3}), {2: 1, 3: 1}, {}), 0.0)
    assert heavy.status.quorate
    assert not light.status.quorate


# -- expected votes -------------------------------------------------------------------------


def test_highest_reported_expected_wins_and_sticks() -> None:
    """A quorate member reporting more expected votes raises ours (with an event), even after it
    left."""
    vq = cluster(5)
    vq.update(view(range(1, 6)), 0.0)
    changes = vq.update(view(range(1, 6), expected=7, quorate=[5]), 1.0)
    assert changes == [ExpectedVotesChanged(5, 7, "node 5 reports expected votes 7")]
    assert (vq.status.quorum, vq.reported_expected) == (4, 7)
    assert vq.update(view([1, 2, 3], key=(1, 2)), 2.0) == [QuorumLost(vq.status.reason)]
    assert vq.status.expected_votes == 7


def test_inquorate_member_cannot_raise_expected() -> None:
    """corosync counts an inquorate member's expected votes as our own: a node that was told
    `expected 9` alone cannot drag a quorate partition down when it rejoins."""
    vq = cluster(3)
    vq.update(view([1, 2]), 0.0)
    rejoin = replace(view([1, 2, 3], key=(1, 2), quorate=[2]), member_expected={2: 3, 3: 9})
    assert vq.update(rejoin, 1.0) == []
    assert (vq.status.expected_votes, vq.status.quorate) == (3, True)


def test_lower_reports_do_not_lower_expected() -> None:
    """Members reporting fewer expected votes than ours change nothing while we are quorate."""
    vq = cluster(5)
    assert vq.update(view(range(1, 6), expected=3), 0.0) == [QuorumGained(vq.status.reason)]
    vq.update(view(range(1, 6), expected=3, quorate=range(1, 6)), 1.0)
    assert vq.status.expected_votes == 5


def test_rejoining_inquorate_node_takes_a_quorate_members_lower_expected() -> None:
    """Issue 12 item 6: a node that is not quorate takes a quorate member's expected votes even
    when lower (corosync's allow_downgrade), so expected and quorum agree in the partition."""
    vq = cluster(3, me=3)
    vq.update(view([3], key=(3, 1)), 0.0)
    vq.set_expected(9, 1.0)
    assert (vq.status.expected_votes, vq.status.quorate) == (9, False)
    changes = vq.update(view([1, 2, 3], key=(1, 5), expected=3, quorate=[1, 2]), 2.0)
    assert changes == [
        ExpectedVotesChanged(9, 3, "quorate node 2 has expected votes 3"),
        QuorumGained("quorate: 3 of 3 expected votes present, quorum is 2"),
    ]


def test_more_votes_present_than_expected_raise_expected() -> None:
    """A node found by discovery adds votes: expected rises to the votes present."""
    vq = cluster(3)
    changes = vq.update(view(range(1, 5)), 0.0)
    assert changes[0] == ExpectedVotesChanged(3, 4, "4 votes present exceed expected votes")
    assert vq.status.quorum == 3


def test_configured_expected_votes_is_the_start() -> None:
    """quorum.expected_votes overrides the sum of the configured nodes' votes (votequorum(5))."""
    vq = cluster(3, QuorumOptions(expected_votes=8))
    vq.update(view(range(1, 4)), 0.0)
    assert (vq.status.expected_votes, vq.status.quorum, vq.status.quorate) == (8, 5, False)


# -- the runtime override (votemesh expected N) ---------------------------------------------


def test_override_lowers_expected_and_is_published() -> None:
    """`votemesh expected 2` on a 5-node cluster's 2 survivors: quorate, published for the
    view with a generation, reason given; a stale report does not raise it again."""
    vq = cluster(5)
    vq.update(view(range(1, 6)), 0.0)
    vq.update(view([1, 2], key=(1, 2), expected=5), 1.0)
    changes = vq.set_expected(2, 2.0)
    assert changes == [
        ExpectedVotesChanged(5, 2, "operator set expected votes 2"),
        QuorumGained("quorate: 2 of 2 expected votes present, quorum is 2"),
    ]
    assert vq.reported_expected == 2
    assert vq.expected_set == ExpectedSet(1, 1, 2, (1, 2))
    stale = view([1, 2], key=(1, 2), expected=5, quorate=[2])
    assert vq.update(stale, 3.0) == []  # node 2 has not applied generation 1 yet
    fresh = replace(stale, member_set_keys={2: (1, 1)}, member_expected={2: 2})
    assert vq.update(fresh, 4.0) == []


@pytest.mark.parametrize(
    ("present", "value", "why"),
    [
        ([1, 2, 3], 2, "2 is below the 3 votes present; use at least 3"),
        ([1, 2, 3], 9, "the partition is quorate and 9 would need 5 votes"),
        ([1, 2, 3], 0, "expected votes must be between 1 and 1024000"),
        ([1, 2, 3], 2**64, "expected votes must be between 1 and 1024000"),
    ],
)
def test_override_refused_with_a_reason(present: list[int], value: int, why: str) -> None:
    """Issue 12 item 6: like corosync's setexpected, refused below the votes present and when it
    would make a quorate partition inquorate (`expected 9` on one of three live nodes); nothing
    changes and nothing is published."""
    vq = cluster(3)
    vq.update(view(present), 0.0)
    before = vq.status
    (refused,) = vq.set_expected(value, 1.0)
    assert isinstance(refused, ExpectedRefused)
    assert refused.reason.startswith(why)
    assert vq.status == before
    assert vq.expected_set is None


def test_override_applies_once_to_the_whole_view() -> None:
    """Another member applies a newer set for its installed view once, after the same checks;
    a set for another ring, from a non-member, or not newer is ignored."""
    vq = cluster(5, me=2)
    vq.update(view([1, 2], key=(1, 2)), 0.0)
    assert vq.receive_expected_set(ExpectedSet(1, 1, 2, (1, 1)), 1, 1.0) == []  # old ring
    assert vq.receive_expected_set(ExpectedSet(1, 4, 2, (1, 2)), 4, 1.0) == []  # not a member
    changes = vq.receive_expected_set(ExpectedSet(1, 1, 2, (1, 2)), 1, 1.0)
    assert changes == [
        ExpectedVotesChanged(5, 2, "node 1 set expected votes 2"),
        QuorumGained("quorate: 2 of 2 expected votes present, quorum is 2"),
    ]
    assert vq.receive_expected_set(ExpectedSet(1, 1, 2, (1, 2)), 1, 2.0) == []  # once
    # one-shot: afterwards votes present raise it again as usual
    vq.update(view([1, 2, 3], key=(1, 3)), 3.0)
    assert vq.status.expected_votes == 3


def test_override_from_a_peer_rechecked() -> None:
    """A hostile or confused member's set that would make us inquorate is refused here too."""
    vq = cluster(3, me=2)
    vq.update(view([1, 2, 3]), 0.0)
    (refused,) = vq.receive_expected_set(ExpectedSet(7, 1, 9, (1, 1)), 1, 1.0)
    assert isinstance(refused, ExpectedRefused)
    assert refused.reason.startswith("node 1's override: the partition is quorate")
    assert (vq.status.expected_votes, vq.status.quorate) == (3, True)


def test_override_ends_wait_for_all_when_votes_present_equal_it() -> None:
    """Issue 12 item 6: the main use of `pvecm expected` -- a wait_for_all cluster missing a node
    comes up once expected votes equal the votes present."""
    vq = cluster(3, QuorumOptions(wait_for_all=True))
    vq.update(view([1, 2]), 0.0)
    assert "WaitForAllStatus" in vq.status.flags
    changes = vq.set_expected(2, 1.0)
    assert kinds(changes) == [ExpectedVotesChanged, QuorumGained]
    assert "WaitForAllStatus" not in vq.status.flags


def test_reset_returns_to_the_configured_value() -> None:
    """`expected reset` is an override to the configured expected votes, with the same checks."""
    vq = cluster(5)
    vq.update(view([1, 2]), 0.0)
    vq.set_expected(2, 1.0)
    (refused,) = vq.set_expected(None, 2.0)  # 5 would make the quorate pair inquorate
    assert isinstance(refused, ExpectedRefused)
    vq.update(view([1], key=(1, 3)), 3.0)
    assert kinds(vq.set_expected(None, 4.0)) == [ExpectedVotesChanged]
    assert vq.status.expected_votes == 5


def test_heavy_member_does_not_pin_expected_for_ever() -> None:
    """Issue 12 item 6: a member with many votes raised expected votes; once it is gone the
    inquorate survivors are brought back by an override (accepted: they are not quorate)."""
    votes = {1: 1, 2: 1, 3: 255}
    vq = Votequorum(1, QuorumOptions(), votes)
    vq.update(QuorumInput(frozenset(votes), votes, {}), 0.0)
    vq.update(QuorumInput(frozenset({1, 2}), votes, {}, 0, (1, 2)), 1.0)
    assert (vq.status.expected_votes, vq.status.quorate) == (257, False)
    assert kinds(vq.set_expected(2, 2.0)) == [ExpectedVotesChanged, QuorumGained]


def test_reconfigure_lowers_expected_votes() -> None:
    """Removing a node (a later `delnode`): expected votes are recomputed from the configured
    nodes and may fall, so the remaining pair of a 3-node cluster keeps quorum at 2 of 2."""
    vq = cluster(3)
    vq.update(view([1, 2, 3]), 0.0)
    vq.update(view([1, 2], key=(1, 2)), 1.0)
    assert (vq.status.expected_votes, vq.status.quorum) == (3, 2)
    changes = vq.reconfigure({1: 1, 2: 1}, 2.0)
    assert changes == [ExpectedVotesChanged(3, 2, "configuration changed: 2 nodes")]
    assert (vq.status.expected_votes, vq.status.quorum, vq.status.quorate) == (2, 2, True)
    vq.update(view([1, 2], key=(1, 2), expected=3, quorate=[2]), 3.0)
    assert vq.status.expected_votes == 2  # stale reports of the old size do not raise it


def test_reconfigure_never_below_the_votes_present() -> None:
    """A new configuration smaller than the votes present counts the votes present."""
    vq = cluster(3)
    vq.update(view([1, 2, 3]), 0.0)
    vq.reconfigure({1: 1}, 1.0)
    assert vq.status.expected_votes == 3


# -- two_node -------------------------------------------------------------------------------

TWO_NODE = QuorumOptions(two_node=True)


def test_two_node_quorum_is_one() -> None:
    """two_node: quorum 1, so the survivor of a 2-node cluster stays quorate (needs fencing)."""
    vq = cluster(2, TWO_NODE)
    vq.update(view([1, 2]), 0.0)
    assert vq.update(view([1], key=(1, 2)), 1.0) == []
    assert (vq.status.quorate, vq.status.quorum, vq.status.expected_votes) == (True, 1, 2)
    assert {"TwoNode", "WaitForAll", "Quorate"} <= vq.status.flags


def test_two_node_cold_start_waits_for_the_peer() -> None:
    """two_node implies wait_for_all: node 1 alone after start is not quorate until node 2 shows
    up; once both were seen, losing node 2 keeps quorum."""
    vq = cluster(2, TWO_NODE)
    assert vq.update(view([1]), 0.0) == []
    assert {"WaitForAllStatus", "WaitForAll", "TwoNode"} <= vq.status.flags
    assert vq.status.reason == "wait_for_all: not all nodes seen together yet (missing: [2])"
    for t in range(1, 100):
        assert vq.update(view([1]), float(t)) == []
    assert vq.update(view([1, 2], key=(1, 2)), 100.0) == [QuorumGained(vq.status.reason)]
    assert "WaitForAllStatus" not in vq.status.flags
    assert vq.update(view([1], key=(1, 3)), 101.0) == []
    assert vq.status.quorate


def test_two_node_without_wait_for_all_is_quorate_alone() -> None:
    """two_node with wait_for_all explicitly off: a lone node is quorate at once."""
    vq = cluster(2, QuorumOptions(two_node=True, wait_for_all=False))
    assert kinds(vq.update(view([1]), 0.0)) == [QuorumGained]
    assert "WaitForAll" not in vq.status.flags


def test_two_node_off_when_a_third_node_joins() -> None:
    """votequorum(5): if more than 2 nodes join, two_node is disabled (quorum 2 of 3)."""
    vq = Votequorum(1, TWO_NODE, {1: 1, 2: 1})
    vq.update(view([1, 2, 3]), 0.0)
    assert (vq.status.expected_votes, vq.status.quorum) == (3, 2)
    assert "TwoNode" not in vq.status.flags
    vq.update(view([1], key=(1, 2)), 1.0)
    assert not vq.status.quorate


def test_two_node_split_leaves_both_quorate() -> None:
    """two_node trades S1 for availability: after a split both nodes are quorate (votequorum(5):
    it relies on fencing), which is why the S1 property excludes it."""
    one, two = cluster(2, TWO_NODE, me=1), cluster(2, TWO_NODE, me=2)
    for vq, me in ((one, 1), (two, 2)):
        vq.update(view([1, 2]), 0.0)
        vq.update(view([me], key=(me, 2)), 1.0)
    assert one.status.quorate
    assert two.status.quorate


# -- wait_for_all ---------------------------------------------------------------------------

WFA = QuorumOptions(wait_for_all=True)


def test_wait_for_all_eight_nodes() -> None:
    """votequorum(5) WFA example: 5 of 8 are not enough after start; all 8 once, then 5 are."""
    vq = cluster(8, WFA)
    vq.update(view(range(1, 6)), 0.0)
    assert not vq.status.quorate
    assert "WaitForAllStatus" in vq.status.flags
    assert kinds(vq.update(view(range(1, 9), key=(1, 2)), 1.0)) == [QuorumGained]
    assert vq.update(view(range(1, 6), key=(1, 3)), 2.0) == []
    assert vq.status.quorate


def test_wait_for_all_needs_one_view_with_everyone() -> None:
    """Seeing every node, but never all in one view, does not end the wait."""
    vq = cluster(4, WFA)
    vq.update(view([1, 2, 3]), 0.0)
    vq.update(view([1, 4], key=(1, 2)), 1.0)
    vq.update(view([1, 2, 3], key=(1, 3)), 2.0)
    assert not vq.status.quorate
    assert "missing: [4]" in vq.status.reason


def test_wait_for_all_ends_on_joining_quorate_members() -> None:
    """A restarted node joining members that report quorate stops waiting (as votequorum)."""
    vq = cluster(5, WFA)
    vq.update(view([1, 2, 3]), 0.0)
    assert not vq.status.quorate
    assert kinds(vq.update(view([1, 2, 3], quorate=[2, 3]), 1.0)) == [QuorumGained]


def test_wait_for_all_not_ended_by_own_quorate_report() -> None:
    """Only other members' quorate reports end the wait, not this node's own."""
    vq = cluster(3, WFA)
    vq.update(view([1, 2], quorate=[1]), 0.0)
    assert not vq.status.quorate


def test_wait_for_all_ignores_quorate_reports_from_non_members() -> None:
    """A quorate report from a node outside the installed view does not end the wait."""
    vq = cluster(3, WFA)
    vq.update(view([1, 2], quorate=[3]), 0.0)
    assert "WaitForAllStatus" in vq.status.flags


def test_wait_for_all_with_explicit_expected_votes_needs_the_votes() -> None:
    """With expected_votes above the configured nodes' votes, the wait also needs those votes."""
    vq = cluster(2, QuorumOptions(wait_for_all=True, expected_votes=3))
    vq.update(view([1, 2]), 0.0)
    assert "WaitForAllStatus" in vq.status.flags
    vq.update(view([1, 2, 3], key=(1, 2)), 1.0)
    assert vq.status.quorate


# -- last_man_standing ----------------------------------------------------------------------

LMS = QuorumOptions(last_man_standing=True, last_man_standing_window=WINDOW)


def shrink(vq: Votequorum, members: list[int], seq: int, at: float) -> list[QuorumChange]:
    """Install view (1, seq) with `members` at `at`, then tick at the window's end."""
    assert vq.update(view(members, key=(1, seq)), at) == []
    assert vq.next_deadline() == at + WINDOW
    assert vq.tick(at + WINDOW - 0.001) == []
    return vq.tick(at + WINDOW)


def test_lms_five_to_two_step_by_step() -> None:
    """LMS: 5 -> 4 -> 3 -> 2 nodes, each loss followed by a full window, keeps quorum; expected
    follows the survivors down to 2 (never below 2 without auto_tie_breaker)."""
    vq = cluster(5, LMS)
    vq.update(view(range(1, 6)), 0.0)
    assert vq.tick(WINDOW) == []  # nothing to lower
    assert vq.next_deadline() is None
    for seq, (members, new) in enumerate([([1, 2, 3, 4], 4), ([1, 2, 3], 3)], start=2):
        old = vq.status.expected_votes
        (change,) = shrink(vq, members, seq, 100.0 * seq)
        assert change == ExpectedVotesChanged(
            old, new, f"last_man_standing: 10 s since members left, view 1/{seq} with {new} votes"
        )
        assert vq.status.quorate
    (change,) = shrink(vq, [1, 2], 4, 400.0)
    assert isinstance(change, ExpectedVotesChanged)
    assert (change.old, change.new, vq.status.quorum) == (3, 2, 2)
    assert kinds(vq.update(view([1], key=(1, 5)), 500.0)) == [QuorumLost]
    assert vq.tick(500.0 + WINDOW) == []
    assert vq.status.expected_votes == 2


def test_lms_man_page_chain_eight_nodes() -> None:
    """votequorum(5) chain: 8 (q5) -> 5 nodes, window -> 5 (q3) -> 3 nodes, window -> 3 (q2)
    -> 2 nodes, window -> expected 2, quorum 2."""
    vq = cluster(8, LMS)
    vq.update(view(range(1, 9)), 0.0)
    assert (vq.status.expected_votes, vq.status.quorum) == (8, 5)
    for seq, (alive, expected, quorum) in enumerate([(5, 5, 3), (3, 3, 2), (2, 2, 2)], start=2):
        shrink(vq, list(range(1, alive + 1)), seq, 100.0 * seq)
        assert (vq.status.expected_votes, vq.status.quorum) == (expected, quorum)
        assert vq.status.quorate


def test_lms_with_atb_goes_down_to_one_node() -> None:
    """votequorum(5): with auto_tie_breaker, LMS can downgrade from 2 nodes to 1: the survivor
    holding the tie-breaker (lowest id) keeps quorum, and the window lowers expected to 1."""
    opts = QuorumOptions(last_man_standing=True, auto_tie_breaker=True)
    vq = cluster(3, opts)
    vq.update(view([1, 2, 3]), 0.0)
    shrink(vq, [1, 2], 2, 100.0)
    assert vq.status.expected_votes == 2
    assert vq.update(view([1], key=(1, 3)), 200.0) == []
    assert vq.status.quorate
    assert "holds tie-breaker node 1" in vq.status.reason
    (change,) = vq.tick(200.0 + WINDOW)
    assert isinstance(change, ExpectedVotesChanged)
    assert (change.old, change.new, vq.status.quorum) == (2, 1, 1)


def test_lms_window_restarts_on_view_change() -> None:
    """A view change before the window ends restarts the window."""
    vq = cluster(5, LMS)
    vq.update(view(range(1, 6)), 0.0)
    vq.update(view(range(1, 5), key=(1, 2)), 1.0)
    vq.update(view(range(1, 4), key=(1, 3)), 5.0)
    assert vq.tick(11.0) == []
    assert vq.next_deadline() == 15.0
    assert kinds(vq.tick(15.0)) == [ExpectedVotesChanged]
    assert vq.status.expected_votes == 3


def test_lms_not_when_inquorate() -> None:
    """LMS never lowers expected for a partition that is not quorate."""
    vq = cluster(5, LMS)
    vq.update(view([1, 2]), 0.0)
    assert vq.tick(WINDOW) == []
    assert vq.status.expected_votes == 5
    assert vq.next_deadline() is None  # evaluated once: no busy loop on a past deadline


def test_lms_stale_reports_do_not_undo_the_drop() -> None:
    """Peers still reporting the old expected (their window not yet over) do not raise it back;
    a node rejoining with its configured expected does not either, but adds its vote."""
    vq = cluster(5, LMS)
    vq.update(view(range(1, 6)), 0.0)
    vq.update(view([1, 2, 3], key=(1, 2), expected=5), 1.0)
    vq.tick(1.0 + WINDOW)
    assert vq.update(view([1, 2, 3], key=(1, 2), expected=5), 12.0) == []
    assert vq.status.expected_votes == 3
    assert kinds(vq.update(view([1, 2, 3, 4], key=(1, 3), expected=5), 13.0)) == [
        ExpectedVotesChanged
    ]
    assert (vq.status.expected_votes, vq.status.quorate) == (4, True)


def test_lms_ignores_qdevice_and_acts_after_an_override() -> None:
    """LMS disables the quorum device (votequorum(5)); an override is one-shot, so the window
    still lowers expected votes afterwards."""
    vq = cluster(5, LMS, qdevice_votes=4)
    vq.update(view(range(1, 6), qdevice=4), 0.0)
    vq.update(view([1, 2, 3], key=(1, 2), qdevice=4), 1.0)
    assert (vq.status.total_votes, vq.status.expected_votes) == (3, 5)
    assert "Qdevice" not in vq.status.flags
    vq.set_expected(4, 2.0)
    assert vq.status.expected_votes == 4
    vq.tick(100.0)
    assert vq.status.expected_votes == 3


def test_lms_window_starts_only_when_members_left() -> None:
    """corosync (vqsim scenario lms-cold-three): 3 of 5 nodes cold-started (no wait_for_all)
    never lower expected votes -- no member left, so no window; after one leaves, it runs, and
    a join does not stop it."""
    vq = cluster(5, LMS)
    vq.update(view([1]), 0.0)
    vq.update(view([1, 2, 3], key=(1, 2)), 1.0)
    assert vq.next_deadline() is None
    assert vq.tick(100.0) == []
    assert vq.status.expected_votes == 5
    vq.update(view(range(1, 6), key=(1, 3)), 101.0)
    vq.update(view([1, 2, 3, 4], key=(1, 4)), 102.0)
    assert vq.next_deadline() == 102.0 + WINDOW
    vq.update(view([1, 2, 3, 4, 5], key=(1, 5)), 103.0)  # a join: the window keeps running
    assert vq.next_deadline() == 102.0 + WINDOW


def test_no_deadline_without_lms() -> None:
    """Without last_man_standing nothing is ever due."""
    vq = cluster(5)
    vq.update(view([1, 2, 3]), 0.0)
    assert vq.next_deadline() is None
    assert vq.tick(1e9) == []


# -- auto_tie_breaker -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "listed", "winners"),
    [
        (TieBreaker.LOWEST, (), {1, 2}),
        (TieBreaker.HIGHEST, (), {3, 4}),
        (TieBreaker.LIST, (3, 1), {3, 4}),
        (TieBreaker.LIST, (9, 2, 4), {1, 2}),  # 9 is not a node: the next listed id decides
    ],
)
def test_atb_four_nodes_two_two(
    mode: TieBreaker, listed: tuple[int, ...], winners: set[int]
) -> None:
    """4 nodes split 2|2 with auto_tie_breaker: exactly the half holding the tie-breaker node is
    quorate (lowest id, highest id, or the first listed id that is a node)."""
    opts = QuorumOptions(
        auto_tie_breaker=True, auto_tie_breaker_node=mode, tie_breaker_nodes=listed
    )
    opts.validate()
    for half in ({1, 2}, {3, 4}):
        for me in half:
            vq = cluster(4, opts, me=me)
            vq.update(view(range(1, 5)), 0.0)
            vq.update(view(half, key=(min(half), 2), tie=vq.tie_breaker), 1.0)
            assert vq.status.quorate is (half == winners)
            assert "AutoTieBreaker" in vq.status.flags
            assert "by auto_tie_breaker" in vq.status.reason


@pytest.mark.parametrize(
    ("mode", "down", "halves"),
    [
        (TieBreaker.LOWEST, 1, ({2, 3, 4}, {5, 6})),
        (TieBreaker.HIGHEST, 6, ({3, 4, 5}, {1, 2})),
    ],
)
def test_atb_tie_breaker_is_from_the_last_quorate_view(
    mode: TieBreaker, down: int, halves: tuple[set[int], set[int]]
) -> None:
    """Issue 12 item 7 (corosync's rule): 6 nodes, node 1 down, the other five split
    {2,3,4}|{5,6}: the first side holds exactly half of 6 votes and node 2, the lowest id of the
    last quorate view {2..6}; corosync keeps it quorate, so must we (the configured lowest id 1
    is down). Mirrored for highest."""
    opts = QuorumOptions(auto_tie_breaker=True, auto_tie_breaker_node=mode)
    up = set(range(1, 7)) - {down}
    for half in halves:
        for me in half:
            vq = cluster(6, opts, me=me)
            vq.update(view(up, key=(min(up), 2)), 0.0)
            assert vq.status.quorate
            vq.update(view(half, key=(min(half), 3), tie=vq.tie_breaker), 1.0)
            assert vq.status.quorate is (half == halves[0]), (mode, half, me)


def test_atb_never_quorate_node_breaks_no_tie() -> None:
    """corosync: the tie-breaker is known only after this node was quorate by votes once; two
    nodes of four that boot alone stay inquorate."""
    vq = cluster(4, QuorumOptions(auto_tie_breaker=True))
    vq.update(view([1, 2]), 0.0)
    assert not vq.status.quorate
    assert "no tie-breaker node known" in vq.status.reason


def test_atb_not_when_the_other_part_may_be_quorate() -> None:
    """corosync's guard: when the previous view had at least quorum-many more members than this
    one, no tie is broken (here zero-vote members make it reachable: votes 2, 2, 0, 0)."""
    votes = {1: 2, 2: 2, 3: 0, 4: 0}
    everyone = frozenset(votes)
    for part, previous, quorate in (({1}, everyone, False), ({1}, {1, 2}, True)):
        vq = Votequorum(1, QuorumOptions(auto_tie_breaker=True), votes)
        vq.update(QuorumInput(everyone, votes, {}), 0.0)
        vq.update(QuorumInput(frozenset(previous), votes, {}, 0, (1, 2)), 1.0)
        vq.update(QuorumInput(frozenset(part), votes, {}, 0, (1, 3)), 2.0)
        assert vq.status.quorate is quorate, previous


@pytest.mark.parametrize(("listed", "wins"), [((1, 6), True), ((1, 4), False)])
def test_atb_list_uses_the_last_quorate_view(listed: tuple[int, ...], wins: bool) -> None:
    """list: the first listed node of the last quorate view decides; a listed node that was
    not in it is skipped (votequorum(5): nodes not in the cluster before the split). 6 nodes,
    node 1 down, split {2,3,6}|{4,5}."""
    opts = QuorumOptions(
        auto_tie_breaker=True, auto_tie_breaker_node=TieBreaker.LIST, tie_breaker_nodes=listed
    )
    for me in (2, 3, 6):
        vq = cluster(6, opts, me=me)
        vq.update(view(range(2, 7), key=(2, 2)), 0.0)
        vq.update(view([2, 3, 6], key=(2, 3), tie=vq.tie_breaker), 1.0)
        assert vq.status.quorate is wins
        assert f"tie-breaker node {listed[1]}" in vq.status.reason


def test_atb_needs_every_member_to_name_the_same_tie_breaker() -> None:
    """Found by the simulator (seed 20) and reproduced with corosync-vqsim: 4 nodes, highest;
    {1,2,3}|{4} then {1,3}|{2,4}. Node 4's last quorate view is {1,2,3,4} (tie-breaker 4),
    node 2's is {1,2,3} (tie-breaker 3): corosync makes node 4 and {1,3} quorate at once. We
    break the tie only when every member names the same node, so {2,4} stays inquorate."""
    opts = QuorumOptions(auto_tie_breaker=True, auto_tie_breaker_node=TieBreaker.HIGHEST)
    cores = {n: cluster(4, opts, me=n) for n in range(1, 5)}
    for vq in cores.values():
        vq.update(view(range(1, 5)), 0.0)
    for n in (1, 2, 3):
        cores[n].update(view([1, 2, 3], key=(1, 2)), 1.0)
    cores[4].update(view([4], key=(4, 3)), 1.0)
    assert [cores[n].tie_breaker for n in range(1, 5)] == [3, 3, 3, 4]
    for part in ({1, 3}, {2, 4}):
        for n in part:
            ties = {m: cores[m].tie_breaker for m in part}
            cores[n].update(replace(view(part, key=(min(part), 4)), member_tie_breakers=ties), 2.0)
    assert [cores[n].status.quorate for n in range(1, 5)] == [True, False, True, False]
    assert "do not name tie-breaker node 4" in cores[4].status.reason


def test_atb_no_tie_breaker_after_proposing_a_later_majority() -> None:
    """Found by the simulator (seed 20): node 2 proposed {1,2,3} (a majority) but moved on
    before installing it, while 1 and 3 installed it. Node 2 must not name the tie-breaker of
    its older quorate view {1,2,3,4} (4), which node 4 also names: {2,4} would be quorate
    beside {1,3}."""
    opts = QuorumOptions(auto_tie_breaker=True, auto_tie_breaker_node=TieBreaker.HIGHEST)
    n2, n4 = cluster(4, opts, me=2), cluster(4, opts, me=4)
    for vq in (n2, n4):
        vq.update(view(range(1, 5), key=(1, 5)), 0.0)
    assert (n2.tie_breaker, n4.tie_breaker) == (4, 4)
    n2.proposed((1, 8), frozenset({1, 2, 3}))
    n4.proposed((4, 9), frozenset({4}))  # not a majority: changes nothing
    assert (n2.tie_breaker, n4.tie_breaker) == (0, 4)
    part = view([2, 4], key=(2, 12))
    for vq in (n2, n4):
        ties = {2: n2.tie_breaker, 4: n4.tie_breaker}
        vq.update(replace(part, member_tie_breakers=ties), 1.0)
    assert not n2.status.quorate
    assert not n4.status.quorate


def test_atb_only_for_exactly_half() -> None:
    """With 5 nodes no split is exactly half: the 2-side with node 1 stays inquorate."""
    vq = cluster(5, QuorumOptions(auto_tie_breaker=True))
    vq.update(view([1, 2]), 0.0)
    assert not vq.status.quorate
    assert "auto_tie_breaker" not in vq.status.reason


def test_atb_list_without_any_node_decides_for_nobody() -> None:
    """A tie-breaker list naming no configured node leaves both halves inquorate."""
    opts = QuorumOptions(
        auto_tie_breaker=True, auto_tie_breaker_node=TieBreaker.LIST, tie_breaker_nodes=(7,)
    )
    for half in ({1, 2}, {3, 4}):
        vq = cluster(4, opts, me=min(half))
        vq.update(view(half), 0.0)
        assert not vq.status.quorate


def test_atb_disables_qdevice() -> None:
    """votequorum(5): auto_tie_breaker disables the quorum device; its votes do not count."""
    vq = cluster(4, QuorumOptions(auto_tie_breaker=True), me=3, qdevice_votes=1)
    vq.update(view([3, 4], qdevice=1), 0.0)
    assert (vq.status.total_votes, vq.status.expected_votes, vq.status.quorate) == (2, 4, False)


# -- qdevice --------------------------------------------------------------------------------


def test_qdevice_ffsplit_two_nodes() -> None:
    """2 nodes + a 1-vote device: expected 3, quorum 2; the node with the device's vote is
    quorate, the node without it is not."""
    with_vote, without = cluster(2, qdevice_votes=1), cluster(2, me=2, qdevice_votes=1)
    with_vote.update(view([1], qdevice=1), 0.0)
    without.update(view([2]), 0.0)
    assert (with_vote.status.expected_votes, with_vote.status.quorum) == (3, 2)
    assert with_vote.status.quorate
    assert {"Qdevice", "Quorate"} <= with_vote.status.flags
    assert not without.status.quorate


def test_qdevice_lms_algorithm_n_minus_one_votes() -> None:
    """4 nodes + a 3-vote device (qnetd lms): one node with the device's votes is quorate, the
    other three without it are not (expected 7, quorum 4)."""
    lone, rest = cluster(4, qdevice_votes=3), cluster(4, me=2, qdevice_votes=3)
    lone.update(view([1], qdevice=3), 0.0)
    rest.update(view([2, 3, 4]), 0.0)
    assert (lone.status.quorate, rest.status.quorate, rest.status.quorum) == (True, False, 4)


def test_qdevice_vote_lost_is_quorum_lost() -> None:
    """When the device's vote goes away the node that relied on it loses quorum, with a reason."""
    vq = cluster(2, qdevice_votes=1)
    vq.update(view([1], qdevice=1), 0.0)
    assert vq.update(view([1]), 1.0) == [
        QuorumLost("not quorate: 1 of 3 expected votes present, quorum is 2")
    ]
    assert "Qdevice" not in vq.status.flags


def test_unconfigured_qdevice_votes_raise_expected() -> None:
    """Device votes beyond the configured expected raise it (highest seen wins) and stick."""
    vq = cluster(2)
    vq.update(view([1, 2], qdevice=1), 0.0)
    vq.update(view([1], key=(1, 2)), 1.0)
    assert (vq.status.expected_votes, vq.status.quorate) == (3, False)


# -- properties -----------------------------------------------------------------------------

node_votes = st.dictionaries(st.integers(1, 9), st.integers(0, 3), min_size=1, max_size=9)


@st.composite
def disjoint_halves(draw: st.DrawFn) -> tuple[dict[int, int], frozenset[int], frozenset[int]]:
    """Configured votes and two disjoint, non-empty member sets of configured nodes."""
    votes = draw(node_votes.filter(lambda v: len(v) >= 2))
    ids = sorted(votes)
    sides = draw(st.lists(st.sampled_from("ab-"), min_size=len(ids) - 2, max_size=len(ids) - 2))
    sides = ["a", *sides, "b"]
    a = frozenset(n for n, s in zip(ids, sides, strict=True) if s == "a")
    b = frozenset(n for n, s in zip(ids, sides, strict=True) if s == "b")
    return votes, a, b


@st.composite
def safe_options(draw: st.DrawFn) -> QuorumOptions:
    """Options without override, two_node or last_man_standing (S1 holds for these)."""
    mode = draw(st.sampled_from(TieBreaker))
    return QuorumOptions(
        wait_for_all=draw(st.booleans()),
        auto_tie_breaker=draw(st.booleans()),
        auto_tie_breaker_node=mode,
        tie_breaker_nodes=tuple(draw(st.lists(st.integers(1, 9), min_size=1, max_size=3))),
    )


@given(
    disjoint_halves(),
    safe_options(),
    st.none() | st.integers(0, 10),
    st.integers(0, 30),
    st.tuples(st.integers(0, 3), st.booleans()),
)
@settings(max_examples=300)
def test_s1_disjoint_partitions_never_both_quorate(
    halves: tuple[dict[int, int], frozenset[int], frozenset[int]],
    opts: QuorumOptions,
    extra_expected: int | None,
    reported: int,
    qdevice: tuple[int, bool],
) -> None:
    """S1: two disjoint partitions with the same configuration and expected votes reports (and
    the device's votes for at most one of them) are never both quorate, also after each saw the
    whole cluster together first. A configured expected_votes below the configured votes is an
    operator's lowering, so it is drawn at or above them."""
    votes, a, b = halves
    device, device_to_a = qdevice
    if extra_expected is not None:
        opts = replace(opts, expected_votes=max(1, sum(votes.values()) + device + extra_expected))
    verdicts = []
    for part, has_device in ((a, device_to_a), (b, not device_to_a)):
        vq = Votequorum(min(part), opts, votes, qdevice_votes=device)
        everyone = frozenset(votes)
        vq.update(QuorumInput(everyone, votes, dict.fromkeys(everyone, reported)), 0.0)
        dev = device if has_device else 0
        ties = dict.fromkeys(part, vq.tie_breaker)  # all saw the same history
        inp = QuorumInput(
            part, votes, dict.fromkeys(part, reported), dev, (min(part), 2), frozenset(), {}, ties
        )
        vq.update(inp, 1.0)
        verdicts.append(vq.status.quorate)
    assert not all(verdicts)


@st.composite
def any_options(draw: st.DrawFn) -> QuorumOptions:
    """Any valid QuorumOptions."""
    opts = QuorumOptions(
        votes=draw(st.integers(0, 3)),
        expected_votes=draw(st.none() | st.integers(1, 40)),
        two_node=draw(st.booleans()),
        wait_for_all=draw(st.none() | st.booleans()),
        last_man_standing=draw(st.booleans()),
        last_man_standing_window=draw(st.floats(0.01, 100)),
        auto_tie_breaker=draw(st.booleans()),
        auto_tie_breaker_node=draw(st.sampled_from(TieBreaker)),
        tie_breaker_nodes=tuple(draw(st.lists(st.integers(1, 9), min_size=1, max_size=3))),
    )
    try:
        opts.validate()
    except ConfigError:
        return QuorumOptions()
    return opts


members_st = st.frozensets(st.integers(1, 9), max_size=9)
inputs = st.builds(
    QuorumInput,
    members_st,
    st.dictionaries(st.integers(1, 9), st.integers(0, 1000)),
    st.dictionaries(st.integers(1, 9), st.integers(0, 100)),
    st.integers(0, 10),
    st.tuples(st.integers(0, 3), st.integers(0, 3)),
    members_st,
)
steps = st.one_of(
    st.tuples(st.just("update"), inputs),
    st.tuples(st.just("override"), st.none() | st.integers(1, 50)),
    st.tuples(st.just("tick"), st.none()),
)


@given(any_options(), node_votes, st.integers(0, 5), st.lists(steps, max_size=25))
@settings(max_examples=300)
def test_events_exactly_when_status_changes(
    opts: QuorumOptions,
    votes: dict[int, int],
    device: int,
    script: list[tuple[str, object]],
) -> None:
    """For any inputs in range: nothing raises; QuorumGained / QuorumLost come exactly when
    `quorate` flips, ExpectedVotesChanged exactly when expected votes change (old and new
    right, and before the quorum change); the status is self-consistent."""
    vq = Votequorum(min(votes), opts, votes, qdevice_votes=device)
    now = 0.0
    for op, arg in script:
        now += 3.0
        before = vq.status
        if op == "update":
            assert isinstance(arg, QuorumInput)
            changes = vq.update(arg, now)
        elif op == "override":
            assert arg is None or isinstance(arg, int)
            changes = vq.set_expected(arg, now)
            if changes and isinstance(changes[0], ExpectedRefused):
                assert vq.status == before
                assert changes[0].reason
                continue
        else:
            changes = vq.tick(now)
        after = vq.status
        expect: list[type] = []
        if after.expected_votes != before.expected_votes:
            expect.append(ExpectedVotesChanged)
            first = changes[0]
            assert isinstance(first, ExpectedVotesChanged)
            assert (first.old, first.new) == (before.expected_votes, after.expected_votes)
        if after.quorate != before.quorate:
            expect.append(QuorumGained if after.quorate else QuorumLost)
        assert kinds(changes) == expect
        assert all(c.reason for c in changes)
        assert ("Quorate" in after.flags) is after.quorate
        assert after.quorum in {1, after.expected_votes // 2 + 1}
        assert after.reason
        assert vq.reported_expected == after.expected_votes >= 1
        deadline = vq.next_deadline()
        assert deadline is None or opts.last_man_standing


@given(st.integers(1, 9), st.data())
def test_no_blip_for_any_surviving_majority(n: int, data: st.DataObject) -> None:
    """From the full view to any sub-view holding a majority of the votes: no event at all, and
    quorate before and after (the verdict follows the installed view in one step)."""
    survivors = data.draw(st.sets(st.integers(1, n), min_size=n // 2 + 1))
    me = data.draw(st.sampled_from(sorted(survivors)))
    vq = cluster(n, me=me)
    vq.update(view(range(1, n + 1), expected=n), 0.0)
    assert vq.update(view(survivors, key=(min(survivors), 2), expected=n), 1.0) == []
    assert vq.status.quorate
