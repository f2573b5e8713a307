"""2nodelms ("2 Node LMS", code 2), reference 7.4: last man standing for two-node clusters.

Owns the membership rules (newcomer, both present, alone, heuristics, tie-breaker) and the
client's `last_result` in `ClientState.algo`. Answers directly in replies; never sends VOTE_INFO,
never arms a timer. Reads stored lists and ring ids only; no clock, sockets or logging.
"""

from __future__ import annotations

from dataclasses import dataclass

from proto.qnetd_enums import DecisionAlgorithm, Heuristics, ReplyErrorCode, TieBreakerMode, Vote
from proto.qnetd_options import NodeInfo, RingId
from qnetd.algorithms.common import HEURISTICS_RANK, AlgorithmDefaults, mode_text, private
from qnetd.model import AlgoResult, ClientState, Cluster

TWO_NODES = 2
"""2nodelms only serves clusters of exactly two configured nodes (else error 12)."""


@dataclass
class TwoNodeLmsClient:
    """2nodelms' memory for one client."""

    last_result: Vote | None = None
    """None = never decided (3.0.3's 0); a newcomer NACK is not stored here."""


def _client(client: ClientState) -> TwoNodeLmsClient:
    return private(client.algo, TwoNodeLmsClient)


def newcomer_blocked(cluster: Cluster, client: ClientState, ring_id: RingId) -> bool:
    """Rule 1: never decided, and a client on another ring already holds ACK."""
    if _client(client).last_result is not None:
        return False
    return any(c.ring_id != ring_id and _client(c).last_result is Vote.ACK for c in cluster.clients)


def _heuristics_verdict(
    cluster: Cluster, client: ClientState, heuristics: Heuristics | None
) -> tuple[Vote, str] | None:
    """Rule 4: our heuristics against the other client's (the last other in node-id order)."""
    others = [c for c in cluster.clients if c is not client]
    theirs = others[-1].last_heuristics
    mine, other = HEURISTICS_RANK[heuristics], HEURISTICS_RANK[theirs]
    if mine == other:
        return None
    vote = Vote.ACK if mine > other else Vote.NACK
    return vote, f"heuristics {_name(heuristics)} vs node {others[-1].node_id}'s {_name(theirs)}"


def _name(heuristics: Heuristics | None) -> str:
    return "undefined" if heuristics is None else heuristics.name.lower()


def _tie_breaker(cluster: Cluster, client: ClientState) -> tuple[Vote, str]:
    """Rule 5: lowest / highest connected node id, or the named node, gets ACK."""
    tb = client.tie_breaker
    ids = [c.node_id for c in cluster.clients]
    if tb.mode is TieBreakerMode.LOWEST:
        chosen = min(ids)
    elif tb.mode is TieBreakerMode.HIGHEST:
        chosen = max(ids)
    else:
        chosen = tb.node_id
    vote = Vote.ACK if client.node_id == chosen else Vote.NACK
    return vote, f"tie-breaker {mode_text(tb)} (node {chosen})"


def decide(
    cluster: Cluster, client: ClientState, nodes: tuple[int, ...], heuristics: Heuristics | None
) -> tuple[Vote, str]:
    """Rules 2-5, first match wins."""
    if len(nodes) == TWO_NODES:
        return Vote.ACK, "both nodes are members"
    if len(cluster.clients) == 1:
        return Vote.ACK, "the only connected client"
    return _heuristics_verdict(cluster, client, heuristics) or _tie_breaker(cluster, client)


class TwoNodeLms(AlgorithmDefaults):
    """Reference 7.4: config lists must have 2 nodes; membership lists get ACK or NACK."""

    code = DecisionAlgorithm.TWO_NODE_LMS

    def client_init(
        self,
        cluster: Cluster,  # noqa: ARG002 - interface argument
        client: ClientState,
    ) -> ReplyErrorCode | None:
        """Start undecided."""
        client.algo[TwoNodeLmsClient.__name__] = TwoNodeLmsClient()
        return None

    def config_node_list(
        self,
        cluster: Cluster,  # noqa: ARG002 - interface argument
        client: ClientState,  # noqa: ARG002 - interface argument
        nodes: tuple[NodeInfo, ...],
        config_version: int | None,  # noqa: ARG002 - interface argument
        initial: bool,  # noqa: ARG002 - interface argument
    ) -> AlgoResult:
        """A config list not of exactly 2 nodes => error 12 (the client then exits)."""
        if len(nodes) != TWO_NODES:
            return AlgoResult(error=ReplyErrorCode.UNSUPPORTED_DECISION_ALGORITHM)
        return AlgoResult()

    def membership_node_list(
        self,
        cluster: Cluster,
        client: ClientState,
        ring_id: RingId,
        nodes: tuple[int, ...],
        heuristics: Heuristics | None,
    ) -> AlgoResult:
        """Newcomer NACK (not stored), else rules 2-5 (stored as last_result)."""
        if newcomer_blocked(cluster, client, ring_id):
            why = "newcomer while another partition holds ACK"
            return AlgoResult(reply_vote=Vote.NACK, decision=f"node {client.node_id} NACK: {why}")
        vote, why = decide(cluster, client, nodes, heuristics)
        _client(client).last_result = vote
        return AlgoResult(reply_vote=vote, decision=f"node {client.node_id} {vote.name}: {why}")

    def ask_for_vote(
        self,
        cluster: Cluster,  # noqa: ARG002 - interface argument
        client: ClientState,
    ) -> AlgoResult:
        """The last result, or ASK_LATER if never decided."""
        return AlgoResult(reply_vote=_client(client).last_result or Vote.ASK_LATER)


def last_result(client: ClientState) -> Vote | None:
    """The client's stored 2nodelms result (None = never decided)."""
    return _client(client).last_result
