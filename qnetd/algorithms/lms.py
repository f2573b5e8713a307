"""lms ("LMS", last man standing, code 3), reference 7.3: the largest / best partition wins.

Owns the *LMS(R)* procedure (out-of-step check, partitions by stored ring id, newcomer rule, score,
size, tie-breaker), the heartbeat/4 algorithm timer and the client's `last_result` and config node
count in `ClientState.algo`. Reads stored lists and ring ids (remember: while a client's membership
list is handled its stored values are still the previous ones, reference 4.6). No clock, sockets
or logging.

Reproduced quirks of corosync-qnetd 3.0.3: a previous WAIT counts as "decided" for the newcomer
rule; a score tie falls to the largest partition over *all* partitions; tie-breaker lowest only
considers ids below 0x7FFFFFFF; tie-breaker node id ACKs only the named node itself.

Deliberate difference from 3.0.3 (docs/design.md 3.4, "revoke before grant"): an ACK for ring R
is never given while a client on another stored ring still holds an ACK. Such clients get a
VOTE_INFO NACK first, and the ACK becomes WAIT_FOR_REPLY (timer re-armed) until each of them has
acknowledged its latest VOTE_INFO or disconnected; the heartbeat/4 timer then grants it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from proto.qnetd_enums import DecisionAlgorithm, Heuristics, ReplyErrorCode, TieBreakerMode, Vote
from proto.qnetd_options import NodeInfo, RingId
from qnetd.algorithms.common import (
    AlgorithmDefaults,
    heuristics_score,
    mode_text,
    private,
    quarter_heartbeat,
)
from qnetd.model import AlgoResult, CancelTimer, ClientState, Cluster, TimerResult, VoteSend

LOWEST_SEARCH_START = 0x7FFFFFFF
"""INT_MAX: qnetd 3.0.3 starts the lowest-id search here, so only smaller ids qualify."""
NO_RING = RingId(0, 0)
"""The tie-breaker's ring id when no client qualified (3.0.3 zero-initialises it)."""


@dataclass
class LmsClient:
    """lms' memory for one client."""

    last_result: Vote | None = None
    """None = never decided (3.0.3's 0); WAIT counts as decided; a newcomer NACK is not stored."""
    config_node_count: int = 0
    revoking: bool = False
    """A VOTE_INFO NACK took this client's ACK back and is not acknowledged yet."""


@dataclass
class Partition:
    """Clients sharing one stored ring id: how many, and their summed score."""

    ring_id: RingId
    nodes: int = 0
    score: int = 0


def _client(client: ClientState) -> LmsClient:
    return private(client.algo, LmsClient)


def out_of_step(cluster: Cluster, client: ClientState, ring_id: RingId) -> ClientState | None:
    """Step 2: a client of our partition (either side's stored list) not yet on ring R."""
    for other in cluster.clients:
        if other is client:
            continue
        ours = other.node_id in client.membership_nodes or client.node_id in other.membership_nodes
        if ours and other.ring_id != ring_id:
            return other
    return None


def partitions(cluster: Cluster) -> list[Partition]:
    """Step 3: clients with a ring seq != 0, grouped by stored ring id in order of appearance."""
    found: dict[RingId, Partition] = {}
    for c in cluster.clients:
        if c.ring_id.seq == 0:
            continue
        part = found.setdefault(c.ring_id, Partition(c.ring_id))
        part.nodes += 1
        part.score += 1 + heuristics_score(c.last_heuristics)
    return list(found.values())


def unique_top(parts: list[Partition], key: Callable[[Partition], int]) -> Partition | None:
    """The first partition with the highest key, or None if another one ties with it."""
    top = max(parts, key=key)  # max returns the first maximum
    return None if sum(key(p) == key(top) for p in parts) > 1 else top


def newcomer_blocked(cluster: Cluster, client: ClientState, ring_id: RingId) -> bool:
    """Step 5: never decided, and a client on another ring already holds ACK."""
    if _client(client).last_result is not None:
        return False
    return any(c.ring_id != ring_id and _client(c).last_result is Vote.ACK for c in cluster.clients)


def tie_breaker(cluster: Cluster, client: ClientState, ring_id: RingId) -> tuple[Vote, str]:
    """Step 8: ACK iff we are the tie-breaker node or share its stored ring id."""
    tb = client.tie_breaker
    if tb.mode is TieBreakerMode.NODE_ID:
        vote = Vote.ACK if client.node_id == tb.node_id else Vote.NACK
        return vote, f"tie-breaker {mode_text(tb)}: only that node gets ACK"
    lowest = tb.mode is TieBreakerMode.LOWEST
    chosen, ring = (LOWEST_SEARCH_START if lowest else 0), NO_RING
    for c in cluster.clients:
        if (c.node_id < chosen) if lowest else (c.node_id > chosen):
            chosen, ring = c.node_id, c.ring_id
    vote = Vote.ACK if client.node_id == chosen or ring == ring_id else Vote.NACK
    return vote, f"tie-breaker {mode_text(tb)} (node {chosen})"


def _ours(part: Partition, ring_id: RingId, why: str) -> tuple[Vote, str]:
    vote = Vote.ACK if part.ring_id == ring_id else Vote.NACK
    return vote, f"{why}: ring {part.ring_id}"


def _rank(cluster: Cluster, client: ClientState, ring_id: RingId) -> tuple[Vote, str]:
    """Steps 6-8 over two or more partitions: score, then size, then the tie-breaker."""
    parts = partitions(cluster)
    best = unique_top(parts, lambda p: p.score)
    if best is not None:
        return _ours(best, ring_id, f"highest score {best.score}")
    largest = unique_top(parts, lambda p: p.nodes)
    if largest is not None:
        return _ours(largest, ring_id, f"scores tie, largest partition ({largest.nodes} nodes)")
    return tie_breaker(cluster, client, ring_id)


def holds_ack(client: ClientState) -> bool:
    """The client was last sent ACK, or a NACK revoking one is not acknowledged yet."""
    return client.last_ack_nack is Vote.ACK or _client(client).revoking


def ack_holders(cluster: Cluster, client: ClientState, ring_id: RingId) -> list[ClientState]:
    """Clients on another stored ring than R that still hold an ACK (revoke before grant)."""
    return [c for c in cluster.clients if c is not client and c.ring_id != ring_id and holds_ack(c)]


def _revoke(holders: list[ClientState]) -> tuple[VoteSend, ...]:
    """VOTE_INFO NACK to every holder not already being revoked; mark them revoking."""
    sends: list[VoteSend] = []
    for c in holders:
        data = _client(c)
        if not data.revoking or c.last_ack_nack is Vote.ACK:
            data.revoking = True
            data.last_result = Vote.NACK
            sends.append(VoteSend(c, Vote.NACK, c.ring_id))
    return tuple(sends)


def _decide(cluster: Cluster, client: ClientState, ring_id: RingId) -> tuple[Vote, str]:
    """*LMS(R)* steps 2-8 as in 3.0.3; stores last_result except for the newcomer NACK."""
    data = _client(client)
    lagging = out_of_step(cluster, client, ring_id)
    count = len(partitions(cluster))
    if lagging is not None or count == 0:
        data.last_result = Vote.WAIT_FOR_REPLY
        why = f"node {lagging.node_id} is not on ring {ring_id} yet" if lagging else "no rings"
        return Vote.WAIT_FOR_REPLY, f"waiting: {why}"
    if count == 1:
        data.last_result = Vote.ACK
        return Vote.ACK, "only one partition"
    if newcomer_blocked(cluster, client, ring_id):
        return Vote.NACK, "newcomer while another partition holds ACK"
    vote, why = _rank(cluster, client, ring_id)
    data.last_result = vote
    return vote, why


def lms(
    cluster: Cluster, client: ClientState, ring_id: RingId
) -> tuple[Vote, str, tuple[VoteSend, ...]]:
    """*LMS(R)*, then revoke before grant: an ACK waits while another ring holds one."""
    vote, why = _decide(cluster, client, ring_id)
    if vote is not Vote.ACK:
        return vote, why, ()
    holders = ack_holders(cluster, client, ring_id)
    if not holders:
        return vote, why, ()
    _client(client).last_result = Vote.WAIT_FOR_REPLY
    ids = ",".join(str(c.node_id) for c in holders)
    return Vote.WAIT_FOR_REPLY, f"{why}; waiting: node(s) {ids} still hold ACK", _revoke(holders)


def _result(cluster: Cluster, client: ClientState, ring_id: RingId) -> AlgoResult:
    """Run *LMS(R)* for a message: cancel the timer, re-arm it on WAIT."""
    vote, why, sends = lms(cluster, client, ring_id)
    if vote is Vote.NACK and client.last_ack_nack is Vote.ACK:
        # a reply is never acknowledged: take the ACK back by a VOTE_INFO too, and await its reply
        _client(client).revoking = True
        sends = (*sends, VoteSend(client, Vote.NACK, ring_id))
    waiting = vote is Vote.WAIT_FOR_REPLY
    return AlgoResult(
        reply_vote=vote,
        sends=sends,
        timer=quarter_heartbeat(client) if waiting else CancelTimer(),
        decision=f"node {client.node_id} {vote.name}: {why}",
    )


class Lms(AlgorithmDefaults):
    """Reference 7.3: replies carry ACK / NACK / WAIT; the timer turns a WAIT into a VOTE_INFO."""

    code = DecisionAlgorithm.LMS

    def client_init(
        self,
        cluster: Cluster,  # noqa: ARG002 - interface argument
        client: ClientState,
    ) -> ReplyErrorCode | None:
        """Start undecided."""
        client.algo[LmsClient.__name__] = LmsClient()
        return None

    def config_node_list(
        self,
        cluster: Cluster,  # noqa: ARG002 - interface argument
        client: ClientState,
        nodes: tuple[NodeInfo, ...],
        config_version: int | None,  # noqa: ARG002 - interface argument
        initial: bool,  # noqa: ARG002 - interface argument
    ) -> AlgoResult:
        """Remember the node count; [NO_CHANGE]."""
        _client(client).config_node_count = len(nodes)
        return AlgoResult()

    def membership_node_list(
        self,
        cluster: Cluster,
        client: ClientState,
        ring_id: RingId,
        nodes: tuple[int, ...],  # noqa: ARG002 - interface argument
        heuristics: Heuristics | None,  # noqa: ARG002 - interface argument
    ) -> AlgoResult:
        """*LMS(R = the message's ring id)*, against the previously stored lists."""
        return _result(cluster, client, ring_id)

    def quorum_node_list(
        self,
        cluster: Cluster,
        client: ClientState,
        quorate: bool,  # noqa: ARG002 - interface argument
        nodes: tuple[NodeInfo, ...],  # noqa: ARG002 - interface argument
    ) -> AlgoResult:
        """*LMS(R = the stored ring id)*."""
        return _result(cluster, client, client.ring_id)

    def ask_for_vote(self, cluster: Cluster, client: ClientState) -> AlgoResult:
        """*LMS(R = the stored ring id)*."""
        return _result(cluster, client, client.ring_id)

    def vote_info_reply(
        self,
        cluster: Cluster,  # noqa: ARG002 - interface argument
        client: ClientState,
        seq: int,
    ) -> tuple[VoteSend, ...]:
        """An acknowledgement of the latest VOTE_INFO ends a revocation (waiting ACKs poll)."""
        if seq == client.vote_info_seq:
            _client(client).revoking = False
        return ()

    def timer(self, cluster: Cluster, client: ClientState) -> TimerResult:
        """*LMS(stored ring id)*: ACK/NACK => VOTE_INFO and stop; WAIT => again in heartbeat/4."""
        vote, why, sends = lms(cluster, client, client.ring_id)
        if vote is Vote.WAIT_FOR_REPLY:
            decision = f"node {client.node_id} revoking (timer): {why}" if sends else ""
            return TimerResult(sends=sends, timer=quarter_heartbeat(client), decision=decision)
        if vote is Vote.NACK and client.last_ack_nack is Vote.ACK:
            _client(client).revoking = True  # its own NACK takes an ACK back: await the reply
        return TimerResult(
            sends=(VoteSend(client, vote, client.ring_id),),
            timer=CancelTimer(),
            decision=f"node {client.node_id} {vote.name} (timer): {why}",
        )


def last_result(client: ClientState) -> Vote | None:
    """The client's stored lms result (None = never decided)."""
    return _client(client).last_result
