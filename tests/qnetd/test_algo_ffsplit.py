"""ffsplit (reference 7.2): one test per row of the message table and per step of *Decide*."""

from __future__ import annotations

import pytest

from proto.qnetd_enums import Heuristics, ReplyErrorCode, Vote
from proto.qnetd_options import RingId, TieBreaker
from qnetd.algorithms.ffsplit import (
    ClusterPhase,
    Ffsplit,
    last_quorate_partition,
    phase_of,
    preferred_node,
)
from tests.qnetd.algo_harness import HIGHEST, LOWEST, AlgoHarness, node_id_tb

ACK, NACK = Vote.ACK, Vote.NACK
PASS, FAIL = Heuristics.PASS, Heuristics.FAIL
RING_A = RingId(1, 4)
RING_B = RingId(1, 8)
RING_C = RingId(3, 8)
RING_D = RingId(1, 12)
RING_E = RingId(2, 12)


def harness() -> AlgoHarness:
    """A harness driving ffsplit."""
    return AlgoHarness(Ffsplit())


def four_nodes(tb: TieBreaker = LOWEST, kap: bool = False) -> AlgoHarness:
    """Nodes 1-4 configured and all members of RING_A, everything acknowledged."""
    h = harness()
    h.start([1, 2, 3, 4], RING_A, tie_breaker=tb, kap=kap)
    return h


def split_12_34(h: AlgoHarness, heuristics: dict[int, Heuristics] | None = None) -> None:
    """The 2|2 split: {1,2} on RING_B, {3,4} on RING_C, reported in node-id order."""
    h.report(RING_B, [1, 2], heuristics=heuristics)
    h.report(RING_C, [3, 4], heuristics=heuristics)


def settle(h: AlgoHarness) -> list[tuple[int, Vote]]:
    """Acknowledge everything; all VOTE_INFOs sent since the last take, in order."""
    h.ack_all()
    return h.take_vote_infos()


# ---------------------------------------------------------------- message table


@pytest.mark.parametrize("nodes", [[], [2, 3]], ids=["empty", "without-sender"])
def test_config_list_empty_or_without_sender_is_error_18(nodes: list[int]) -> None:
    """Config list: empty or lacking the sender's node id => error 18, nothing stored."""
    h = harness()
    h.connect(1)
    result = h.config(1, nodes)
    assert result.error is ReplyErrorCode.INVALID_CONFIG_NODE_LIST
    assert h.client(1).config_nodes == ()


def test_initial_config_list_is_ask_later_even_with_membership() -> None:
    """Config list type 0 => [ASK_LATER] and no Decide, even when membership is stored."""
    h = four_nodes()
    result = h.config(1, [1, 2, 3, 4, 5], initial=True)
    assert result.reply_vote is Vote.ASK_LATER
    assert result.sends == ()


def test_changed_config_without_membership_is_ask_later() -> None:
    """Config list type 1 while no membership is stored => [ASK_LATER]."""
    h = harness()
    h.connect(1)
    assert h.config(1, [1, 2], initial=False).reply_vote is Vote.ASK_LATER


def test_changed_config_runs_decide_with_the_new_list() -> None:
    """Config list type 1 with membership stored => *Decide* with the new (not stored) list."""
    h = four_nodes()
    result = h.config(1, [1, 2, 3, 4, 5], initial=False)
    assert result.reply_vote is Vote.WAIT_FOR_REPLY
    assert "config lists of nodes 1 and 2 differ" in result.decision


@pytest.mark.parametrize("nodes", [[], [2]], ids=["empty", "without-sender"])
def test_membership_empty_or_without_sender_is_error_19(nodes: list[int]) -> None:
    """Membership list: empty or lacking the sender's node id => error 19, nothing stored."""
    h = harness()
    h.connect(1)
    h.config(1, [1, 2])
    result = h.membership(1, RING_B, nodes)
    assert result.error is ReplyErrorCode.INVALID_MEMBERSHIP_NODE_LIST
    assert h.client(1).membership_nodes == ()
    assert h.client(1).ring_id == RingId(1, 0)


def test_membership_without_config_is_ask_later() -> None:
    """Membership list before any config list => [ASK_LATER] (the list is still stored)."""
    h = harness()
    h.connect(1)
    result = h.membership(1, RING_B, [1])
    assert result.reply_vote is Vote.ASK_LATER
    assert h.client(1).membership_nodes == (1,)


def test_membership_runs_decide_and_votes_come_before_the_reply() -> None:
    """Membership with config stored => *Decide*; VOTE_INFOs are queued before the reply."""
    h = harness()
    h.connect(1, ring_id=RING_A)
    h.config(1, [1, 2])
    h.take()
    result = h.membership(1, RING_B, [1, 2])
    assert result.reply_vote is Vote.NO_CHANGE
    assert [(s.kind, s.vote) for s in h.take()] == [
        ("vote_info", ACK),
        ("node_list_reply", Vote.NO_CHANGE),
    ]


def test_vote_info_ring_ids_trigger_gets_message_ring_others_stored() -> None:
    """VOTE_INFO RING_ID is R (the message's, not yet stored) for the trigger, stored for others."""
    h = harness()
    h.start([1, 2], RING_A)
    h.membership(1, RING_B, [1, 2])
    h.take()
    h.membership(2, RING_B, [1, 2])  # node 2 still has RING_A stored while deciding
    sent = [(s.node_id, s.ring_id) for s in h.take() if s.kind == "vote_info"]
    assert sent == [(1, RING_B), (2, RING_B)]


def test_quorum_list_is_no_change() -> None:
    """Quorum list => [NO_CHANGE] and nothing else."""
    h = four_nodes()
    result = h.quorum(1, quorate=False)
    assert (result.reply_vote, result.sends, result.decision) == (Vote.NO_CHANGE, (), "")


@pytest.mark.parametrize("lists", ["none", "config-only"])
def test_heuristics_change_without_both_lists_is_ask_later(lists: str) -> None:
    """HEURISTICS_CHANGE while config or membership is missing => [ASK_LATER]."""
    h = harness()
    h.connect(1)
    if lists == "config-only":
        h.config(1, [1, 2])
    assert h.heuristics_change(1, PASS).reply_vote is Vote.ASK_LATER


def test_heuristics_change_runs_decide_with_the_new_value() -> None:
    """HEURISTICS_CHANGE => *Decide* with the new heuristics: a pass flips a 50:50 split."""
    h = four_nodes()
    split_12_34(h)
    assert settle(h) == [(3, NACK), (4, NACK), (1, ACK), (2, ACK)]
    result = h.heuristics_change(3, PASS)
    assert result.reply_vote is Vote.NO_CHANGE
    assert settle(h) == [(1, NACK), (2, NACK), (3, ACK), (4, ACK)]


def test_ask_for_vote_is_error_14() -> None:
    """ASK_FOR_VOTE under ffsplit => SERVER_ERROR 14."""
    h = four_nodes()
    assert h.ask_for_vote(1).error is ReplyErrorCode.UNSUPPORTED_DECISION_ALGORITHM_MESSAGE


def test_timer_does_nothing() -> None:
    """ffsplit has no algorithm timer: a timer call produces nothing."""
    h = four_nodes()
    result = Ffsplit().timer(h.cluster, h.client(1))
    assert (result.sends, result.timer) == ((), None)


# ---------------------------------------------------------------- verified flow, release


def test_verified_2_2_split_lowest_nacks_first_then_acks() -> None:
    """[verified] 4 nodes split {1,2}/{3,4}, lowest: NACK to 3,4; after both replies ACK 1,2."""
    h = four_nodes()
    h.report(RING_B, [1, 2])
    results = h.report(RING_C, [3, 4])
    assert [r.reply_vote for r in results] == [Vote.WAIT_FOR_REPLY, Vote.NO_CHANGE]
    assert h.take_vote_infos() == [(3, NACK), (4, NACK)]
    assert h.ack(3) == ()
    assert h.take_vote_infos() == []
    h.ack(4)
    assert h.take_vote_infos() == [(1, ACK), (2, ACK)]
    assert phase_of(h.cluster) is ClusterPhase.SENDING_ACKS
    h.ack_all()
    assert phase_of(h.cluster) is ClusterPhase.WAITING_FOR_CHANGE
    assert h.decisions[-1] == "partition [1, 2] wins: 50:50 split, tie-breaker lowest (node 1)"


def test_ack_with_an_old_seq_is_ignored() -> None:
    """A VOTE_INFO_REPLY whose seq is not the client's latest VOTE_INFO seq is ignored."""
    h = four_nodes()
    split_12_34(h)
    h.take()
    h.ack(3)
    h.ack(4, seq=h.client(4).vote_info_seq - 1)
    assert h.take_vote_infos() == []
    assert phase_of(h.cluster) is ClusterPhase.SENDING_NACKS


def test_unresponsive_nacked_client_holds_acks_until_it_disconnects() -> None:
    """ACKs wait for every NACKed client; dropping the silent one re-decides and releases them."""
    h = four_nodes()
    split_12_34(h)
    h.take()
    h.ack(3)
    assert h.take_vote_infos() == []
    h.disconnect(4)
    assert h.take_vote_infos() == [(3, NACK)]
    h.ack(3)
    assert h.take_vote_infos() == [(1, ACK), (2, ACK)]


def test_ack_side_client_acknowledging_its_previous_vote_info_misses_the_ack() -> None:
    """[quirk] A SENDING_ACK client whose latest seq is acknowledged leaves the ACK round."""
    h = four_nodes()
    split_12_34(h)
    settle(h)
    h.heuristics_change(3, PASS)  # NACK to 1,2 first; 3,4 wait for their ACK
    assert h.take_vote_infos() == [(1, NACK), (2, NACK)]
    h.ack(4, seq=h.client(4).vote_info_seq)  # replays its last (earlier) VOTE_INFO seq
    h.ack(1)
    h.ack(2)
    assert h.take_vote_infos() == [(3, ACK)]


def test_every_client_is_revoted_on_each_decide() -> None:
    """Each *Decide* re-votes everyone: with no loser the winners get ACK again at once."""
    h = four_nodes()
    h.heuristics_change(1, PASS)
    assert h.take_vote_infos() == [(1, ACK), (2, ACK), (3, ACK), (4, ACK)]


def test_decide_with_nobody_to_vote_returns_to_waiting_for_change() -> None:
    """Nobody gets NACK or ACK (the last client leaves) => WAITING_FOR_CHANGE, no sends."""
    h = harness()
    h.start([1, 2], RING_A)
    h.disconnect(2)
    settle(h)
    h.disconnect(1)
    assert h.take_vote_infos() == []
    assert phase_of(h.cluster) is ClusterPhase.WAITING_FOR_CHANGE


def test_server_going_down_skips_decide() -> None:
    """A disconnect during server shutdown runs no *Decide*."""
    h = four_nodes()
    h.disconnect(1, server_going_down=True)
    assert h.take_vote_infos() == []


# ---------------------------------------------------------------- stability check


def test_unstable_while_a_member_has_not_reported_the_ring() -> None:
    """Stability 2b: a member still on the old ring => [WAIT_FOR_REPLY], no votes."""
    h = four_nodes()
    result = h.membership(1, RING_B, [1, 2])
    assert result.reply_vote is Vote.WAIT_FOR_REPLY
    assert result.sends == ()
    assert result.decision == f"unstable: waiting for node 2's membership of ring {RING_B}"
    assert phase_of(h.cluster) is ClusterPhase.WAITING_FOR_STABLE_MEMBERSHIP


def test_unstable_when_same_ring_but_different_member_lists() -> None:
    """Stability 2b: same ring id but a member's list lacks one of ours => unstable."""
    h = four_nodes()
    h.membership(2, RING_B, [2])
    result = h.membership(1, RING_B, [1, 2])
    assert result.decision == "unstable: nodes 1 and 2 report different memberships"


def test_unstable_while_a_client_has_no_config_list() -> None:
    """Stability 2a: a connected client without a config list keeps the cluster unstable."""
    h = harness()
    h.connect(1)
    h.connect(2)
    h.config(1, [1, 2])
    result = h.membership(1, RING_B, [1])
    assert result.reply_vote is Vote.WAIT_FOR_REPLY
    assert result.decision == "unstable: config lists of nodes 1 and 2 differ"


def test_leaving_client_is_ignored_by_the_stability_check() -> None:
    """A leaving client's own (stale) lists and ring do not make the cluster unstable."""
    h = four_nodes()
    h.report(RING_B, [1, 2, 3])  # node 4 never reports, then goes away
    assert h.take_vote_infos() == []
    h.disconnect(4)
    assert settle(h) == [(1, ACK), (2, ACK), (3, ACK)]


# ---------------------------------------------------------------- selection


def test_odd_cluster_majority_wins_whatever_the_tie_breaker() -> None:
    """Better, odd config: 2 of 3 wins even with tie-breaker highest favouring node 3."""
    h = harness()
    h.start([1, 2, 3], RING_A, tie_breaker=HIGHEST)
    h.report(RING_B, [1, 2])
    h.report(RING_C, [3])
    assert settle(h) == [(3, NACK), (1, ACK), (2, ACK)]
    assert h.decisions[-1] == "partition [1, 2] wins: majority (2 of 3 configured nodes)"


def test_odd_cluster_minority_alone_gets_nack() -> None:
    """Better, odd config: 1 of 3 is never better, so a lone survivor is NACKed."""
    h = harness()
    h.start([1, 2, 3], RING_A)
    h.disconnect(2)
    h.disconnect(3)
    settle(h)
    h.membership(1, RING_B, [1])
    assert settle(h) == [(1, NACK)]
    assert h.decisions[-1] == "no partition is quorate: NACK to every client"


def test_even_cluster_more_than_half_wins() -> None:
    """Better, even config: 3 of 4 beats 1 of 4, tie-breaker irrelevant."""
    h = four_nodes(tb=node_id_tb(4))
    h.report(RING_B, [1, 2, 3])
    h.report(RING_C, [4])
    assert settle(h) == [(4, NACK), (1, ACK), (2, ACK), (3, ACK)]


def test_fifty_fifty_heuristics_pass_beats_tie_breaker() -> None:
    """50:50: a partition with a heuristics pass scores higher than the tie-breaker's choice."""
    h = four_nodes()
    split_12_34(h, heuristics={4: PASS})
    assert settle(h) == [(1, NACK), (2, NACK), (3, ACK), (4, ACK)]
    assert h.decisions[-1] == "partition [3, 4] wins: 50:50 split, heuristics score 3 > 2"


def test_fifty_fifty_heuristics_fail_loses() -> None:
    """50:50: a failed heuristics lowers the score (active + pass - fail)."""
    h = four_nodes()
    split_12_34(h, heuristics={1: FAIL})
    assert settle(h) == [(1, NACK), (2, NACK), (3, ACK), (4, ACK)]


def test_fifty_fifty_more_active_clients_wins_on_equal_score() -> None:
    """50:50, equal scores: the partition with more connected clients wins."""
    h = four_nodes(tb=HIGHEST)
    h.disconnect(4)
    settle(h)
    split_12_34(h, heuristics={1: FAIL})  # [1,2]: 2 - 1 = 1; [3]: 1 active, score 1
    assert settle(h) == [(3, NACK), (1, ACK), (2, ACK)]
    assert h.decisions[-1] == "partition [1, 2] wins: 50:50 split, active clients 2 > 1"


@pytest.mark.parametrize(
    ("tb", "winner", "loser"),
    [(LOWEST, [1, 2], [3, 4]), (HIGHEST, [3, 4], [1, 2]), (node_id_tb(3), [3, 4], [1, 2])],
    ids=["lowest", "highest", "node-id-3"],
)
def test_fifty_fifty_tie_breaker_modes(tb: TieBreaker, winner: list[int], loser: list[int]) -> None:
    """50:50, all else equal: lowest / highest config id or the named node decides."""
    h = four_nodes(tb=tb)
    split_12_34(h)
    assert settle(h) == [(n, NACK) for n in loser] + [(n, ACK) for n in winner]


def test_tie_breaker_uses_the_config_list_not_the_connected_clients() -> None:
    """Lowest = lowest id of the config list (node 1, gone), not of the connected clients."""
    h = four_nodes()
    h.disconnect(1)
    h.disconnect(4)
    settle(h)
    h.membership(2, RING_E, [2, 4])
    h.membership(3, RingId(3, 12), [1, 3])
    assert settle(h) == [(2, NACK), (3, ACK)]
    assert h.decisions[-1] == "partition [1, 3] wins: 50:50 split, tie-breaker lowest (node 1)"


def test_first_client_of_a_tied_partition_keeps_it() -> None:
    """Replacement only when strictly better: the lowest-id representative is kept."""
    h = four_nodes()
    split_12_34(h)
    settle(h)
    assert last_quorate_partition(h.cluster) == (1, 2)


# ---------------------------------------------------------------- keep active partition


def test_kap_keeps_the_active_partition_across_successive_splits() -> None:
    """KAP: after [3,4] won on heuristics, later ties keep [3,4] over the tie-breaker."""
    h = four_nodes(kap=True)
    split_12_34(h, heuristics={3: PASS})
    assert settle(h) == [(1, NACK), (2, NACK), (3, ACK), (4, ACK)]
    h.heuristics_change(1, PASS)  # now 3 : 3, equal active clients
    assert settle(h) == [(1, NACK), (2, NACK), (3, ACK), (4, ACK)]
    assert h.decisions[-1] == "partition [3, 4] wins: 50:50 split, KAP kept the active partition"
    h.report(RING_D, [1, 2], heuristics={1: PASS})  # the partitions flap onto new rings
    h.report(RingId(3, 12), [3, 4], heuristics={3: PASS})
    votes = settle(h)  # each side's stable view re-decides: 1,2 are NACKed twice
    assert votes == [(1, NACK), (2, NACK), (1, NACK), (2, NACK), (3, ACK), (4, ACK)]
    assert last_quorate_partition(h.cluster) == (3, 4)


def test_kap_forgets_after_a_merge_then_tie_breaker_decides() -> None:
    """KAP remembers only the last quorate partition: after a merge both sides were in it."""
    h = four_nodes(kap=True)
    split_12_34(h, heuristics={3: PASS})
    settle(h)
    h.report(RING_D, [1, 2, 3, 4], heuristics={1: PASS, 3: PASS})
    assert last_quorate_partition(h.cluster) == (1, 2, 3, 4)
    settle(h)
    h.report(RingId(1, 16), [1, 2], heuristics={1: PASS})
    h.report(RingId(3, 16), [3, 4], heuristics={3: PASS})
    assert settle(h) == [(3, NACK), (4, NACK), (1, ACK), (2, ACK)]
    assert h.decisions[-1].endswith("tie-breaker lowest (node 1)")


@pytest.mark.parametrize(
    ("tb", "winner"), [(LOWEST, [1, 2]), (HIGHEST, [3, 4])], ids=["lowest", "highest"]
)
def test_kap_compares_representatives_so_a_tie_of_two_holders_goes_to_tie_breaker(
    tb: TieBreaker, winner: list[int]
) -> None:
    """KAP tests the two representatives' ids only: last [2,3], split {1,2}/{3,4}; rep 2 beats
    rep 1 on KAP, then rep 3 vs rep 2 are both in it, so the tie-breaker decides."""
    h = four_nodes(tb=tb, kap=True)
    h.report(RING_E, [2, 3], heuristics={2: PASS, 3: PASS})
    h.report(RingId(1, 12), [1, 4])
    settle(h)
    assert last_quorate_partition(h.cluster) == (2, 3)
    h.report(RingId(1, 16), [1, 2], heuristics={2: PASS})
    h.report(RingId(3, 16), [3, 4], heuristics={3: PASS})
    assert [n for n, v in settle(h) if v is ACK] == winner


def test_kap_is_inactive_unless_every_client_enables_it() -> None:
    """KAP applies only when all clients have it on; one client off => the tie-breaker decides."""
    h = four_nodes(kap=True)
    split_12_34(h, heuristics={3: PASS})
    settle(h)
    h.client(2).keep_active_partition = False  # SET_OPTION changes only the stored flag
    h.heuristics_change(1, PASS)
    assert settle(h) == [(3, NACK), (4, NACK), (1, ACK), (2, ACK)]


@pytest.mark.parametrize(("leaver_kap", "winner"), [(True, [3, 4]), (False, [1])])
def test_kap_counts_the_leaving_client_and_so_does_the_score(
    leaver_kap: bool, winner: list[int]
) -> None:
    """The leaving client counts for KAP activity and as an active member of its partition.

    Last quorate [3,4], scores 3 : 3. Node 2 leaves: [1,2] still has 2 active clients, so the
    tie goes to KAP if node 2 had it on, else to the tie-breaker (lowest => [1,2]).
    """
    h = four_nodes(kap=True)
    split_12_34(h, heuristics={3: PASS})
    settle(h)
    h.heuristics_change(1, PASS)
    settle(h)
    h.client(2).keep_active_partition = leaver_kap
    h.disconnect(2)
    votes = settle(h)
    assert [n for n, v in votes if v is ACK] == winner


# ---------------------------------------------------------------- scoring quirks


def test_leaving_client_still_counts_as_active_in_its_own_disconnect() -> None:
    """[quirk] Node 4 leaving still makes [3,4] 2 active: tie-breaker highest keeps [3,4]."""
    h = four_nodes(tb=HIGHEST)
    split_12_34(h)
    assert settle(h) == [(1, NACK), (2, NACK), (3, ACK), (4, ACK)]
    h.disconnect(4)
    assert settle(h) == [(1, NACK), (2, NACK), (3, ACK)]
    # a later *Decide* (here: node 3's heuristics) no longer counts node 4
    h.heuristics_change(3, FAIL)
    assert settle(h) == [(3, NACK), (1, ACK), (2, ACK)]


def test_only_the_representatives_own_entry_uses_the_new_heuristics() -> None:
    """[quirk] Node 2 reports FAIL (stored PASS): rep 1 still counts node 2 as PASS, so [1,2]
    scores 3 and beats [3,4] (2) although with FAIL it would score 1."""
    h = four_nodes()
    h.report(RING_A, [1, 2, 3, 4], heuristics={2: PASS})
    settle(h)
    h.report(RING_C, [3, 4])
    h.membership(1, RING_B, [1, 2])
    h.membership(2, RING_B, [1, 2], FAIL)
    assert settle(h) == [(3, NACK), (4, NACK), (1, ACK), (2, ACK)]
    assert h.decisions[-1] == "partition [1, 2] wins: 50:50 split, heuristics score 3 > 2"


@pytest.mark.parametrize("tb", [LOWEST, HIGHEST, node_id_tb(1)], ids=["lowest", "highest", "id"])
def test_empty_config_list_at_the_tie_breaker_is_not_better(tb: TieBreaker) -> None:
    """[quirk, fixed] 3.0.3 segfaults when the tie-breaker meets an empty config list (a client
    leaves while another has no lists); here that partition is simply not better: NACK."""
    h = harness()
    h.connect(1, tie_breaker=tb, ring_id=RING_A)
    h.connect(2, tie_breaker=tb, ring_id=RING_A)
    h.config(1, [1, 2])
    h.membership(1, RING_A, [1, 2])
    h.take()
    h.disconnect(1)
    assert h.take_vote_infos() == [(2, NACK)]
    assert last_quorate_partition(h.cluster) == ()


def test_preferred_node_per_mode() -> None:
    """Tie-breaker node: lowest / highest of the config list, the named id, None if empty."""
    assert preferred_node(LOWEST, (3, 1, 2)) == 1
    assert preferred_node(HIGHEST, (3, 1, 2)) == 3
    assert preferred_node(node_id_tb(7), ()) == 7
    assert preferred_node(LOWEST, ()) is None
