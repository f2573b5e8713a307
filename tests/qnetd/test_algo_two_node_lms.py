"""2nodelms (reference 7.4): one test per row of the message table and per membership rule."""

from __future__ import annotations

import pytest

from proto.qnetd_enums import Heuristics, ReplyErrorCode, Vote
from proto.qnetd_options import RingId, TieBreaker
from qnetd.algorithms.two_node_lms import TwoNodeLms, last_result
from tests.qnetd.algo_harness import HIGHEST, LOWEST, AlgoHarness, node_id_tb

ACK, NACK = Vote.ACK, Vote.NACK
PASS, FAIL = Heuristics.PASS, Heuristics.FAIL
RING_A = RingId(1, 4)
RING_1 = RingId(1, 8)
RING_2 = RingId(2, 8)


def pair(tb: TieBreaker = LOWEST) -> AlgoHarness:
    """Nodes 1 and 2, both members of RING_A, everything stored (both ACK)."""
    h = AlgoHarness(TwoNodeLms())
    h.start([1, 2], RING_A, tie_breaker=tb)
    return h


@pytest.mark.parametrize("nodes", [[1], [1, 2, 3]], ids=["one", "three"])
def test_config_list_not_of_two_nodes_is_error_12(nodes: list[int]) -> None:
    """Config list with a node count other than 2 => SERVER_ERROR 12, nothing stored."""
    h = AlgoHarness(TwoNodeLms())
    h.connect(1)
    assert h.config(1, nodes).error is ReplyErrorCode.UNSUPPORTED_DECISION_ALGORITHM
    assert h.client(1).config_nodes == ()


def test_config_list_of_two_nodes_is_no_change() -> None:
    """Config list of exactly 2 nodes => [NO_CHANGE]."""
    h = AlgoHarness(TwoNodeLms())
    h.connect(1)
    assert h.config(1, [1, 2]).reply_vote is Vote.NO_CHANGE


def test_quorum_and_heuristics_change_are_no_change() -> None:
    """Quorum list and HEURISTICS_CHANGE => [NO_CHANGE]."""
    h = pair()
    assert h.quorum(1).reply_vote is Vote.NO_CHANGE
    assert h.heuristics_change(1, FAIL).reply_vote is Vote.NO_CHANGE


def test_ask_for_vote_is_ask_later_until_decided_then_the_last_result() -> None:
    """ASK_FOR_VOTE => ASK_LATER if never decided, else the stored last result."""
    h = AlgoHarness(TwoNodeLms())
    h.connect(1, ring_id=RING_A)
    assert h.ask_for_vote(1).reply_vote is Vote.ASK_LATER
    h.membership(1, RING_A, [1, 2])
    assert h.ask_for_vote(1).reply_vote is ACK


def test_disconnect_ack_and_timer_do_nothing() -> None:
    """Disconnect, VOTE_INFO_REPLY and the timer => nothing; no VOTE_INFO ever."""
    h = pair()
    h.take()
    assert h.ack(1) == ()
    h.disconnect(2)
    assert TwoNodeLms().timer(h.cluster, h.client(1)).sends == ()
    assert h.take() == []


def test_rule_1_newcomer_nack_is_not_stored() -> None:
    """Rule 1: undecided, another client on another ring holds ACK => NACK, not stored."""
    h = AlgoHarness(TwoNodeLms())
    h.connect(1, ring_id=RING_1)
    h.membership(1, RING_1, [1])
    h.connect(2, ring_id=RING_2)
    assert h.membership(2, RING_2, [2], PASS).reply_vote is NACK
    assert last_result(h.client(2)) is None
    assert h.membership(2, RING_2, [2], PASS).reply_vote is NACK


def test_rule_2_both_nodes_members_ack() -> None:
    """Rule 2: a membership list of exactly 2 nodes => ACK (stored)."""
    h = pair()
    assert h.membership(1, RingId(1, 12), [1, 2]).reply_vote is ACK
    assert last_result(h.client(1)) is ACK


def test_rule_3_only_client_connected_ack() -> None:
    """Rule 3: the only connected client => ACK even alone in its membership."""
    h = pair()
    h.disconnect(2)
    assert h.membership(1, RING_1, [1], FAIL).reply_vote is ACK


@pytest.mark.parametrize(
    ("mine", "theirs", "vote"),
    [(PASS, None, ACK), (None, FAIL, ACK), (None, PASS, NACK), (FAIL, None, NACK)],
)
def test_rule_4_heuristics_pass_beats_undefined_beats_fail(
    mine: Heuristics | None, theirs: Heuristics | None, vote: Vote
) -> None:
    """Rule 4: our heuristics against the other's last heuristics, pass > undefined > fail."""
    h = pair(tb=node_id_tb(9))
    if theirs is not None:
        h.heuristics_change(2, theirs)
    assert h.membership(1, RING_1, [1], mine).reply_vote is vote


def test_rule_4_compares_with_the_last_other_client_in_node_id_order() -> None:
    """Rule 4 with more than one other client: the last one in node-id order counts."""
    h = AlgoHarness(TwoNodeLms())
    for n in (1, 2, 3):
        h.connect(n, ring_id=RING_A)
    h.heuristics_change(2, FAIL)
    h.heuristics_change(3, PASS)
    assert h.membership(1, RING_1, [1]).reply_vote is NACK


@pytest.mark.parametrize(
    ("tb", "votes"),
    [(LOWEST, (ACK, NACK)), (HIGHEST, (NACK, ACK)), (node_id_tb(2), (NACK, ACK))],
    ids=["lowest", "highest", "node-id-2"],
)
def test_rule_5_tie_breaker(tb: TieBreaker, votes: tuple[Vote, Vote]) -> None:
    """Rule 5: equal heuristics => the tie-breaker among connected clients decides."""
    h = pair(tb=tb)
    got = (h.membership(1, RING_1, [1]).reply_vote, h.membership(2, RING_2, [2]).reply_vote)
    assert got == votes


def test_verified_split_1_2_lowest() -> None:
    """[verified] 2nodelms split 1/2 with lowest => node 1 ACK, node 2 NACK (both stored)."""
    h = pair()
    assert h.membership(1, RING_1, [1]).reply_vote is ACK
    assert h.membership(2, RING_2, [2]).reply_vote is NACK
    assert (last_result(h.client(1)), last_result(h.client(2))) == (ACK, NACK)
    assert h.decisions[-1] == "node 2 NACK: tie-breaker lowest (node 1)"
