"""The "test" algorithm (code 0), reference 7.5: ACK to every membership list and ASK_FOR_VOTE.

Owns nothing: no private state, never sends VOTE_INFO. It can make several partitions quorate at
once (qnetd warns about it); qdevice refuses it unless `net_test_algorithm_enabled` is on. No
clock, sockets or logging.
"""

from __future__ import annotations

from proto.qnetd_enums import DecisionAlgorithm, Heuristics, Vote
from proto.qnetd_options import RingId
from qnetd.algorithms.common import AlgorithmDefaults
from qnetd.model import AlgoResult, ClientState, Cluster

_ACK = AlgoResult(reply_vote=Vote.ACK, decision="test algorithm: ACK to everyone")


class TestAlgorithm(AlgorithmDefaults):
    """ACK for membership lists and ASK_FOR_VOTE, NO_CHANGE for everything else."""

    __test__ = False  # not a pytest test class, despite the name
    code = DecisionAlgorithm.TEST

    def membership_node_list(
        self,
        cluster: Cluster,  # noqa: ARG002 - interface argument
        client: ClientState,  # noqa: ARG002 - interface argument
        ring_id: RingId,  # noqa: ARG002 - interface argument
        nodes: tuple[int, ...],  # noqa: ARG002 - interface argument
        heuristics: Heuristics | None,  # noqa: ARG002 - interface argument
    ) -> AlgoResult:
        """Every membership list gets [ACK]."""
        return _ACK

    def ask_for_vote(
        self,
        cluster: Cluster,  # noqa: ARG002 - interface argument
        client: ClientState,  # noqa: ARG002 - interface argument
    ) -> AlgoResult:
        """ASK_FOR_VOTE gets [ACK]."""
        return _ACK
