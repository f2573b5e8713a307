"""lms (reference 7.3): one test per row of the message table and per step of *LMS(R)*."""

from __future__ import annotations

import pytest

from proto.qnetd_enums import Heuristics, Vote
from proto.qnetd_options import RingId, TieBreaker
from qnetd.algorithms.lms import LOWEST_SEARCH_START, Lms, last_result, tie_breaker
from qnetd.model import ArmTimer, CancelTimer
from tests.qnetd.algo_harness import HIGHEST, LOWEST, AlgoHarness, node_id_tb

ACK, NACK, WAIT = Vote.ACK, Vote.NACK, Vote.WAIT_FOR_REPLY
PASS, FAIL = Heuristics.PASS, Heuristics.FAIL
RING_A = RingId(1, 4)
QUARTER = 2000  # ms: heartbeat 8000 / 4


def ring(leader: int) -> RingId:
    """A fresh ring id led by `leader`."""
    return RingId(leader, 8)


def cluster(
    nodes: int, tb: TieBreaker = LOWEST, heuristics: dict[int, Heuristics] | None = None
) -> AlgoHarness:
    """Nodes 1..n all on RING_A with everything stored (each got ACK: one partition)."""
    h = AlgoHarness(Lms())
    h.start(range(1, nodes + 1), RING_A, tie_breaker=tb, heuristics=heuristics)
    return h


def split(
    h: AlgoHarness, *groups: list[int], heuristics: dict[int, Heuristics] | None = None
) -> list[Vote]:
    """Every group reports its own ring (led by its lowest node); the replies, in order."""
    return [r.reply_vote for g in groups for r in h.report(ring(g[0]), g, heuristics=heuristics)]


def timer_votes(h: AlgoHarness) -> dict[int, Vote]:
    """Let the heartbeat/4 timers fire, acknowledging every VOTE_INFO (revocations included)
    before the next round; the last VOTE_INFO each node got."""
    h.take()
    votes: dict[int, Vote] = {}
    for _ in range(3):
        h.advance(QUARTER)
        votes.update(h.take_vote_infos())
        h.ack_all()
    return votes


def settle(h: AlgoHarness) -> None:
    """Timers fire and every VOTE_INFO (revocations included) is acknowledged, until quiet."""
    for _ in range(3):
        h.advance(QUARTER)
        h.ack_all()


# ---------------------------------------------------------------- message table


def test_config_list_stores_the_node_count_and_is_no_change() -> None:
    """Config list => node count remembered, [NO_CHANGE], timer untouched."""
    h = AlgoHarness(Lms())
    h.connect(1)
    result = h.config(1, [1, 2, 3])
    assert (result.reply_vote, result.timer) == (Vote.NO_CHANGE, None)
    assert h.client(1).algo["LmsClient"].config_node_count == 3


def test_verified_split_with_node_4_heuristics_pass() -> None:
    """[verified] 4 nodes split {1,2}/{3,4}, node 4 heuristics pass: every membership reply is
    WAIT; after heartbeat/4 the timers send VOTE_INFO ACK to 3,4 and NACK to 1,2; later quorum
    lists are answered ACK/NACK directly."""
    h = cluster(4)
    assert split(h, [1, 2], [3, 4], heuristics={4: PASS}) == [WAIT] * 4
    assert all(h.timer_at(n) == QUARTER / 1000 for n in (1, 2, 3, 4))
    assert timer_votes(h) == {1: NACK, 2: NACK, 3: ACK, 4: ACK}
    assert [h.quorum(n).reply_vote for n in (1, 2, 3, 4)] == [NACK, NACK, ACK, ACK]
    assert h.timers == {}


def test_membership_uses_the_previous_stored_lists_and_the_message_ring() -> None:
    """Membership => *LMS(message ring)*, but 'our partition' comes from the stored old list."""
    h = cluster(2)
    result = h.membership(1, ring(1), [1])  # node 2 is still in node 1's stored list
    assert result.reply_vote is WAIT
    assert result.decision == f"node 1 WAIT_FOR_REPLY: waiting: node 2 is not on ring {ring(1)} yet"


def test_quorum_list_runs_lms_with_the_stored_ring_id() -> None:
    """Quorum list => *LMS(stored ring id)*: the quorate flag itself changes nothing."""
    h = cluster(3)
    split(h, [1, 2], [3])
    settle(h)
    assert h.quorum(1, quorate=False).reply_vote is ACK
    assert h.quorum(3, quorate=True).reply_vote is NACK


def test_ask_for_vote_runs_lms_with_the_stored_ring_id() -> None:
    """ASK_FOR_VOTE => *LMS(stored ring id)*."""
    h = cluster(3)
    split(h, [1, 2], [3])
    settle(h)
    assert [h.ask_for_vote(n).reply_vote for n in (1, 2, 3)] == [ACK, ACK, NACK]


def test_heuristics_change_is_no_change_but_counts_later() -> None:
    """HEURISTICS_CHANGE => [NO_CHANGE]; the stored value weighs in the next *LMS*."""
    h = cluster(4)
    split(h, [1, 2], [3, 4], heuristics={4: PASS})
    settle(h)
    assert h.heuristics_change(1, PASS).reply_vote is Vote.NO_CHANGE
    assert h.heuristics_change(2, PASS).reply_vote is Vote.NO_CHANGE
    assert h.quorum(1).reply_vote is WAIT  # [1,2] now scores 4 against 3, but 3,4 hold ACK
    assert h.quorum(3).reply_vote is NACK
    h.ack_all()
    assert h.quorum(1).reply_vote is ACK


def test_vote_info_reply_does_nothing() -> None:
    """VOTE_INFO_REPLY => nothing."""
    h = cluster(4)
    split(h, [1, 2], [3, 4])
    settle(h)
    h.take()
    assert h.ack(1) == ()


def test_disconnect_does_not_reevaluate_the_others() -> None:
    """A client leaving re-evaluates nobody; the others find out at their next message."""
    h = cluster(4)
    split(h, [1, 2], [3, 4], heuristics={4: PASS})
    settle(h)
    h.take()
    h.disconnect(3)
    assert h.take() == []
    assert last_result(h.client(1)) is NACK
    result = h.quorum(1)  # 2 : 2 on score, [1,2] is larger, but node 4 still holds ACK
    assert (result.reply_vote, [(s.client.node_id, s.vote) for s in result.sends]) == (
        WAIT,
        [(4, NACK)],
    )
    h.ack_all()
    assert h.quorum(1).reply_vote is ACK


# ---------------------------------------------------------------- timer


def test_wait_arms_the_timer_at_a_quarter_heartbeat_and_decisions_cancel_it() -> None:
    """WAIT => ArmTimer(heartbeat/4); a decided answer => CancelTimer (step 1)."""
    h = cluster(2)
    h.client(1).heartbeat_interval_ms = 1000
    assert h.membership(1, ring(1), [1, 2]).timer == ArmTimer(delay_ms=250)
    assert h.membership(2, ring(1), [1, 2]).timer == CancelTimer()
    assert h.quorum(1).timer == CancelTimer()
    assert h.timers == {}


def test_timer_keeps_waiting_every_quarter_heartbeat() -> None:
    """Timer with a WAIT outcome => no VOTE_INFO, runs again after another heartbeat/4."""
    h = cluster(2)
    h.membership(1, ring(1), [1, 2])
    h.take()
    h.advance(QUARTER)
    assert h.take() == []
    assert h.timer_at(1) == 2 * QUARTER / 1000


def test_timer_vote_info_carries_the_stored_ring_and_a_fresh_seq() -> None:
    """Timer ACK/NACK => one VOTE_INFO with the stored ring id and the next seq, then stop."""
    h = cluster(3)
    split(h, [1, 2], [3])
    h.take()
    settle(h)
    sent = {s.node_id: (s.vote, s.ring_id, s.seq) for s in h.take()}
    # node 3: seq 1 was the revocation NACK (node 1's timer), seq 2 its own timer's NACK
    assert sent == {1: (ACK, ring(1), 1), 2: (ACK, ring(1), 1), 3: (NACK, ring(3), 2)}
    assert h.timers == {}


# ---------------------------------------------------------------- LMS steps


def test_no_partition_while_every_ring_seq_is_zero() -> None:
    """Step 4: no client with a ring seq != 0 => WAIT and the timer."""
    h = AlgoHarness(Lms())
    h.connect(1)  # INIT ring id 1.0
    result = h.quorum(1)
    assert (result.reply_vote, result.timer) == (WAIT, ArmTimer(delay_ms=2000))
    assert last_result(h.client(1)) is WAIT


def test_one_partition_is_votequorums_problem_ack() -> None:
    """Step 4: exactly one partition => ACK (stored)."""
    h = AlgoHarness(Lms())
    h.connect(1, ring_id=RING_A)
    assert h.quorum(1).reply_vote is ACK
    assert last_result(h.client(1)) is ACK


def test_newcomer_gets_nack_while_another_partition_holds_ack_not_stored() -> None:
    """Step 5: an undecided client on another ring than an ACK holder => NACK, not stored, so
    it applies again (tie-breaker highest would otherwise favour node 2)."""
    h = AlgoHarness(Lms())
    h.connect(1, tie_breaker=HIGHEST, ring_id=RING_A)
    h.membership(1, RING_A, [1])
    h.connect(2, tie_breaker=HIGHEST, ring_id=ring(2))
    assert h.membership(2, ring(2), [2]).reply_vote is NACK
    assert last_result(h.client(2)) is None
    assert h.quorum(2).reply_vote is NACK


def test_a_previous_wait_counts_as_decided_for_the_newcomer_rule() -> None:
    """[quirk] Node 2 got WAIT before, so the newcomer rule skips it (ACK on score) while its
    partition peer node 3, never decided, still gets the newcomer NACK."""
    h = AlgoHarness(Lms())
    h.connect(1, ring_id=RING_A)
    h.membership(1, RING_A, [1])
    h.connect(3, ring_id=RingId(3, 6))
    h.membership(3, RingId(3, 6), [2, 3])
    h.connect(2, ring_id=RingId(3, 6))
    assert h.membership(2, ring(3), [2, 3], PASS).reply_vote is WAIT
    assert h.membership(3, ring(3), [2, 3]).reply_vote is NACK
    assert h.quorum(2).reply_vote is WAIT  # revoke before grant: node 1 holds ACK
    h.ack_all()
    assert h.quorum(2).reply_vote is ACK
    assert h.quorum(3).reply_vote is ACK  # node 1's ACK is revoked: no longer a newcomer NACK


def test_split_2_1_larger_side_wins() -> None:
    """lms 2|1: the two-node partition scores 2 against 1 => 1,2 ACK, 3 NACK."""
    h = cluster(3)
    assert timer_votes(h) == {}
    split(h, [1, 2], [3])
    assert timer_votes(h) == {1: ACK, 2: ACK, 3: NACK}


def test_split_3_2_larger_side_wins() -> None:
    """lms 3|2: 1,2,3 ACK, 4,5 NACK."""
    h = cluster(5)
    split(h, [1, 2, 3], [4, 5])
    assert timer_votes(h) == {1: ACK, 2: ACK, 3: ACK, 4: NACK, 5: NACK}


def test_split_2_2_1_tie_breaker_lowest() -> None:
    """lms 2|2|1: scores 2,2,1 tie; sizes 2,2,1 tie; lowest node 1's partition wins."""
    h = cluster(5)
    split(h, [1, 2], [3, 4], [5])
    assert timer_votes(h) == {1: ACK, 2: ACK, 3: NACK, 4: NACK, 5: NACK}
    assert "node 5 NACK (timer): tie-breaker lowest (node 1)" in h.decisions


def test_highest_score_beats_size() -> None:
    """Step 6: a unique highest score wins even against a larger partition."""
    h = cluster(5, heuristics={4: PASS, 5: PASS})
    split(h, [1, 2, 3], [4, 5], heuristics={1: FAIL, 4: PASS, 5: PASS})
    assert timer_votes(h) == {1: NACK, 2: NACK, 3: NACK, 4: ACK, 5: ACK}


def test_score_tie_goes_to_the_largest_partition_over_all() -> None:
    """[quirk] Scores 2,2,1: the top two tie, so the largest partition of ALL wins - the
    three-node one that scored lowest."""
    h = cluster(6)
    split(h, [1, 2], [3], [4, 5, 6], heuristics={3: PASS, 4: FAIL, 5: FAIL})
    assert timer_votes(h) == {1: NACK, 2: NACK, 3: NACK, 4: ACK, 5: ACK, 6: ACK}


def test_tie_breaker_highest() -> None:
    """Step 8, highest: the partition of the highest connected node id wins."""
    h = cluster(4, tb=HIGHEST)
    split(h, [1, 2], [3, 4])
    assert timer_votes(h) == {1: NACK, 2: NACK, 3: ACK, 4: ACK}


def test_tie_breaker_node_id_acks_only_that_node() -> None:
    """[quirk] Step 8, node id 1: only node 1 gets ACK, its partition peer 2 gets NACK."""
    h = cluster(4, tb=node_id_tb(1))
    split(h, [1, 2], [3, 4])
    assert timer_votes(h) == {1: ACK, 2: NACK, 3: NACK, 4: NACK}


def test_tie_breaker_lowest_ignores_ids_from_0x7fffffff_up() -> None:
    """Step 8, lowest: only ids below 0x7FFFFFFF qualify; with none, nobody's ring matches."""
    big = [2**31 + i for i in range(4)]
    h = AlgoHarness(Lms())
    h.start(big, RING_A)
    split(h, big[:2], big[2:])
    assert timer_votes(h) == dict.fromkeys(big, NACK)


def test_tie_breaker_lowest_sentinel_node_is_the_tie_breaker() -> None:
    """[quirk] No qualifying id: a client whose id equals the 0x7FFFFFFF start value gets ACK."""
    h = AlgoHarness(Lms())
    h.start([LOWEST_SEARCH_START, 2**31], RING_A)
    vote, why = tie_breaker(h.cluster, h.client(LOWEST_SEARCH_START), ring(1))
    assert vote is ACK
    assert why == f"tie-breaker lowest (node {LOWEST_SEARCH_START})"
    assert tie_breaker(h.cluster, h.client(2**31), ring(1))[0] is NACK


@pytest.mark.parametrize("leaving", [1, 2])
def test_clients_leaving_and_the_rest_asking_again(leaving: int) -> None:
    """After a 2|1 split decided, a client of the winning side leaves; the remaining
    1|1 answers by tie-breaker lowest at the next quorum list."""
    h = cluster(3)
    split(h, [1, 2], [3])
    settle(h)
    h.disconnect(leaving)
    stays = 3 - leaving
    assert h.quorum(stays).reply_vote is ACK  # 1 : 1, lowest remaining id is in [1, 2]
    assert h.quorum(3).reply_vote is NACK


# ---------------------------------------------------------------- revoke before grant


def test_revoke_before_grant_sim_seed_5135() -> None:
    """Deliberate difference from 3.0.3 (sim seed 5135): node 1 alone holds ACK by tie-breaker
    when {2,3} wins on score; 3.0.3 ACKs node 2 at once (two disjoint rings hold ACK). Ours NACKs
    node 1 by VOTE_INFO, answers node 2 WAIT, and grants only after node 1 acknowledged."""
    h = cluster(3)
    h.membership(2, RingId(2, 6), [2])
    h.membership(1, RingId(1, 5), [1, 3])
    h.membership(3, RingId(1, 5), [1, 3])
    settle(h)
    assert [h.client(n).last_ack_nack for n in (1, 2, 3)] == [ACK, NACK, ACK]
    assert h.membership(1, RingId(1, 6), [1]).reply_vote is WAIT
    assert h.membership(3, RingId(2, 8), [2, 3]).reply_vote is WAIT
    h.take()
    h.advance(QUARTER)  # node 1 wins by tie-breaker, but node 3 still holds its ring-1.5 ACK
    assert dict(h.take_vote_infos()) == {3: NACK}
    h.ack(3)
    h.advance(QUARTER)
    assert dict(h.take_vote_infos()) == {1: ACK}  # 3 rings score 1 each: tie-breaker node 1
    assert h.membership(2, RingId(2, 8), [2, 3]).reply_vote is NACK
    result = h.quorum(2)  # {2,3} scores 2 against 1
    assert result.reply_vote is WAIT
    assert [(s.client.node_id, s.vote) for s in result.sends] == [(1, NACK)]
    h.take()
    h.advance(QUARTER)
    assert ACK not in dict(h.take_vote_infos()).values()  # node 1 has not acknowledged yet
    h.ack(1)
    h.advance(QUARTER)
    assert dict(h.take_vote_infos()) == {2: ACK, 3: ACK}
    assert h.client(1).last_ack_nack is NACK


def test_a_reply_nack_to_an_ack_holder_is_confirmed_by_vote_info() -> None:
    """A NACK in a reply is never acknowledged: when it takes an ACK back, a VOTE_INFO NACK goes
    too, and another ring's ACK waits for its VOTE_INFO_REPLY (the reply could arrive after it)."""
    h = cluster(3)
    split(h, [1, 2], [3])
    assert h.client(3).last_ack_nack is ACK
    result = h.quorum(3)
    assert result.reply_vote is NACK
    assert [(s.client.node_id, s.vote, s.ring_id) for s in result.sends] == [(3, NACK, ring(3))]
    assert h.quorum(1).reply_vote is WAIT  # node 3 has not acknowledged yet
    h.ack(3)
    assert h.quorum(1).reply_vote is ACK
