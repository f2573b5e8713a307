"""The test algorithm (reference 7.5): ACK to membership and ASK_FOR_VOTE, NO_CHANGE otherwise."""

from __future__ import annotations

from proto.qnetd_enums import Heuristics, Vote
from proto.qnetd_options import RingId
from qnetd.algorithms.registry import ALGORITHMS
from qnetd.algorithms.test import TestAlgorithm
from tests.qnetd.algo_harness import AlgoHarness

RING = RingId(1, 4)


def test_membership_list_is_ack_for_every_partition() -> None:
    """Every membership list gets ACK, so two disjoint partitions can both be quorate."""
    h = AlgoHarness(TestAlgorithm())
    h.start([1, 2], RING)
    assert h.membership(1, RingId(1, 8), [1]).reply_vote is Vote.ACK
    assert h.membership(2, RingId(2, 8), [2], Heuristics.FAIL).reply_vote is Vote.ACK


def test_ask_for_vote_is_ack() -> None:
    """ASK_FOR_VOTE => ACK."""
    h = AlgoHarness(TestAlgorithm())
    h.connect(1)
    assert h.ask_for_vote(1).reply_vote is Vote.ACK


def test_everything_else_is_no_change_and_no_vote_info() -> None:
    """Config and quorum lists and HEURISTICS_CHANGE => NO_CHANGE; never a VOTE_INFO or timer."""
    h = AlgoHarness(TestAlgorithm())
    h.connect(1)
    h.connect(2)
    results = [
        h.config(1, [1, 2]),
        h.config(1, [1, 2, 3], initial=False),
        h.quorum(1, quorate=False),
        h.heuristics_change(1, Heuristics.PASS),
    ]
    assert {r.reply_vote for r in results} == {Vote.NO_CHANGE}
    assert all(r.sends == () and r.timer is None for r in results)
    assert h.ack(1) == ()
    h.disconnect(2)
    assert [s.kind for s in h.take()] == ["node_list_reply"] * 3 + ["heuristics_change_reply"]


def test_registry_maps_every_wire_code_to_its_algorithm() -> None:
    """ALGORITHMS holds one algorithm per wire code 0-3, each reporting its own code."""
    assert sorted(ALGORITHMS) == [0, 1, 2, 3]
    assert all(algorithm.code == code for code, algorithm in ALGORITHMS.items())
