"""ffsplit ("Fifty-Fifty split", code 1): the arbitrator's vote in an even cluster, reference 7.2.

Owns the *Decide* procedure (stability check, partition selection with scores, keep-active-
partition and tie-breaker), the two-phase release (every NACK acknowledged before any ACK goes
out) and ffsplit's private state in `Cluster.algo` / `ClientState.algo`. It reads the clients'
stored lists and never writes them (the core stores after we return, reference 4.6). No clock,
sockets or logging.

Reproduced quirks of corosync-qnetd 3.0.3: a leaving client still counts as active (with its last
heuristics) in partition scores; only a representative's own entry uses the per-iteration
heuristics; KAP compares the representatives' node ids only; a NACKed client acknowledging an older
VOTE_INFO than its latest is ignored. Not reproduced: the 3.0.3 segfault in the tie-breaker on an
empty config list, which is "not better" here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum

from proto.qnetd_enums import DecisionAlgorithm, Heuristics, ReplyErrorCode, TieBreakerMode, Vote
from proto.qnetd_options import NodeInfo, RingId, TieBreaker
from qnetd.algorithms.common import (
    AlgorithmDefaults,
    heuristics_score,
    ids_text,
    mode_text,
    private,
)
from qnetd.model import AlgoResult, ClientState, Cluster, VoteSend


class ClusterPhase(Enum):
    """Per-cluster state of ffsplit."""

    WAITING_FOR_CHANGE = "waiting for change"
    WAITING_FOR_STABLE_MEMBERSHIP = "waiting for stable membership"
    SENDING_NACKS = "sending NACKs"
    SENDING_ACKS = "sending ACKs"


class ClientPhase(Enum):
    """Per-client state of ffsplit: which vote the client still has to acknowledge."""

    WAITING_FOR_CHANGE = "waiting for change"
    SENDING_NACK = "sending NACK"
    SENDING_ACK = "sending ACK"


@dataclass
class FfsplitCluster:
    """ffsplit's memory for one cluster (lost when the cluster's last client leaves)."""

    phase: ClusterPhase = ClusterPhase.WAITING_FOR_CHANGE
    last_quorate: tuple[int, ...] = ()
    """Membership list of the last selected quorate partition (KAP compares against it)."""


@dataclass
class FfsplitClient:
    """ffsplit's memory for one client."""

    phase: ClientPhase = ClientPhase.WAITING_FOR_CHANGE


@dataclass(frozen=True, slots=True)
class View:
    """One client's values as *Decide* sees them: the trigger's new inputs, others' stored ones."""

    client: ClientState
    ring_id: RingId
    config: tuple[int, ...]
    membership: tuple[int, ...]
    heuristics: Heuristics | None


@dataclass(frozen=True, slots=True)
class Stats:
    """A 50:50 partition's active clients and heuristics score."""

    active: int = 0
    score: int = 0


NO_STATS = Stats()


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of *Better(P, B)* and the rule that settled it (for the decision log)."""

    better: bool
    reason: str


def _cluster(cluster: Cluster) -> FfsplitCluster:
    """The cluster's ffsplit record."""
    return private(cluster.algo, FfsplitCluster)


def _client(client: ClientState) -> FfsplitClient:
    """The client's ffsplit record."""
    return private(client.algo, FfsplitClient)


def _anyone_in(cluster: Cluster, phase: ClientPhase) -> bool:
    """Whether some client of the cluster is still in `phase`."""
    return any(_client(c).phase is phase for c in cluster.clients)


def stored_view(c: ClientState) -> View:
    """A client's stored values as a *Decide* input."""
    return View(c, c.ring_id, c.config_node_ids, c.membership_nodes, c.last_heuristics)


# ---------------------------------------------------------------- stability check (step 2)


def _views(cluster: Cluster, trigger: View, leaving: bool) -> list[View]:
    """Every client's view in node-id order, the trigger's replaced, a leaving trigger left out."""
    views: list[View] = []
    for c in cluster.clients:
        if c is trigger.client:
            if not leaving:
                views.append(trigger)
        else:
            views.append(stored_view(c))
    return views


def _config_mismatch(views: list[View]) -> str:
    """Step 2a: every ordered pair's config lists must contain each other's node ids."""
    for x in views:
        for y in views:
            if x is not y and not set(x.config) <= set(y.config):
                return f"config lists of nodes {x.client.node_id} and {y.client.node_id} differ"
    return ""


def _membership_mismatch(views: list[View]) -> str:
    """Step 2b: connected members must share the ring id and know at least the same members."""
    by_id = {v.client.node_id: v for v in views}
    for x in views:
        for node_id in x.membership:
            y = by_id.get(node_id)
            if y is None:
                continue
            if y.ring_id != x.ring_id:
                return f"waiting for node {node_id}'s membership of ring {x.ring_id}"
            if not set(x.membership) <= set(y.membership):
                return f"nodes {x.client.node_id} and {node_id} report different memberships"
    return ""


def instability(views: list[View]) -> str:
    """Why the cluster view is not stable yet, or "" when it is."""
    return _config_mismatch(views) or _membership_mismatch(views)


# ---------------------------------------------------------------- partition selection (step 3)


def partition_stats(cluster: Cluster, view: View | None) -> Stats:
    """Active members (a leaving client included) and score = active + pass - fail.

    Only the representative's own entry uses `view.heuristics`; every other member, the trigger
    included, counts with its stored last heuristics (3.0.3 quirk).
    """
    if view is None:
        return NO_STATS
    active = score = 0
    for node_id in view.membership:
        member = cluster.by_node_id(node_id)
        if member is None:
            continue
        own = member is view.client
        active += 1
        score += 1 + heuristics_score(view.heuristics if own else member.last_heuristics)
    return Stats(active, score)


def preferred_node(tb: TieBreaker, config: tuple[int, ...]) -> int | None:
    """The tie-breaker's node: lowest / highest of the config list, or the configured id.

    None for lowest/highest on an empty config list, where qnetd 3.0.3 segfaults.
    """
    if tb.mode is TieBreakerMode.NODE_ID:
        return tb.node_id
    if not config:
        return None
    return min(config) if tb.mode is TieBreakerMode.LOWEST else max(config)


def _tie_break(p: View) -> Verdict:
    """Step 3.5: better iff P's membership contains the tie-breaker's preferred node."""
    tb = p.client.tie_breaker
    node = preferred_node(tb, p.config)
    if node is None:
        return Verdict(False, f"50:50 split, tie-breaker {mode_text(tb)} on an empty config list")
    return Verdict(node in p.membership, f"50:50 split, tie-breaker {mode_text(tb)} (node {node})")


def _kap(p: View, best: View | None, kap: bool, last: tuple[int, ...]) -> Verdict | None:
    """Step 3.4: keep-active-partition's verdict, or None when it does not decide."""
    if not kap or best is None:
        return None
    p_in, best_in = p.client.node_id in last, best.client.node_id in last
    if p_in == best_in:
        return None
    return Verdict(p_in, "50:50 split, KAP kept the active partition")


def _ranked(what: str, mine: int, theirs: int) -> Verdict:
    """Higher wins; the reason names the winner's figure first."""
    high, low = max(mine, theirs), min(mine, theirs)
    return Verdict(mine > theirs, f"50:50 split, {what} {high} > {low}")


def _fifty_fifty(
    cluster: Cluster, p: View, best: View | None, kap: bool, last: tuple[int, ...]
) -> Verdict:
    """Step 3.3-3.5: score, then active clients, then KAP, then the tie-breaker."""
    ps, bs = partition_stats(cluster, p), partition_stats(cluster, best)
    if ps.score != bs.score:
        return _ranked("heuristics score", ps.score, bs.score)
    if ps.active != bs.active:
        return _ranked("active clients", ps.active, bs.active)
    verdict = _kap(p, best, kap, last)
    return _tie_break(p) if verdict is None else verdict


def better(
    cluster: Cluster, p: View, best: View | None, kap: bool, last: tuple[int, ...]
) -> Verdict:
    """*Better(P, B)*; the reason is empty when P simply lacks a majority (no contest)."""
    config, members = len(p.config), len(p.membership)
    half = config // 2
    if config % 2 or members != half:
        won = members > half
        return Verdict(won, f"majority ({members} of {config} configured nodes)" if won else "")
    return _fifty_fifty(cluster, p, best, kap, last)


def select(cluster: Cluster, views: list[View], last: tuple[int, ...]) -> tuple[View | None, str]:
    """Step 3: the winning partition's representative (first strictly better) and why it won.

    The reason logged is the first contest between different partitions that the winner's
    partition won (or survived); comparisons inside one partition and against "none" only
    stand in until such a contest happens.
    """
    kap = all(c.keep_active_partition for c in cluster.clients)
    best: View | None = None
    why, contested = "", False
    for p in views:
        verdict = better(cluster, p, best, kap, last)
        rival = best is not None and set(p.membership) != set(best.membership)
        if verdict.better:
            if rival or not contested:
                why, contested = verdict.reason, rival
            best = p
        elif rival and verdict.reason and not contested:
            why, contested = verdict.reason, True
    return best, why


# ---------------------------------------------------------------- votes (steps 5-6)


def _assign(cluster: Cluster, leaving: ClientState | None, winners: tuple[int, ...]) -> None:
    """Step 5: re-vote every client; the leaving one waits."""
    for c in cluster.clients:
        if c is leaving:
            phase = ClientPhase.WAITING_FOR_CHANGE
        elif c.node_id in winners:
            phase = ClientPhase.SENDING_ACK
        else:
            phase = ClientPhase.SENDING_NACK
        _client(c).phase = phase


def _votes(cluster: Cluster, trigger: View | None, ack: bool) -> tuple[VoteSend, ...]:
    """VOTE_INFO{ACK or NACK} for each client in the matching phase (trigger: its new ring)."""
    wanted = ClientPhase.SENDING_ACK if ack else ClientPhase.SENDING_NACK
    vote = Vote.ACK if ack else Vote.NACK
    return tuple(
        VoteSend(c, vote, trigger.ring_id if trigger and c is trigger.client else c.ring_id)
        for c in cluster.clients
        if _client(c).phase is wanted
    )


def _release(cluster: Cluster, trigger: View | None, ack_phase: bool) -> tuple[VoteSend, ...]:
    """Send the NACKs (or, with `ack_phase` or when nobody gets a NACK, the ACKs)."""
    data = _cluster(cluster)
    if not ack_phase:
        data.phase = ClusterPhase.SENDING_NACKS
        sends = _votes(cluster, trigger, ack=False)
        if sends:
            return sends
    data.phase = ClusterPhase.SENDING_ACKS
    sends = _votes(cluster, trigger, ack=True)
    if not sends:
        data.phase = ClusterPhase.WAITING_FOR_CHANGE
    return sends


def decide(cluster: Cluster, trigger: View, leaving: bool) -> AlgoResult:
    """*Decide*: stability check, partition selection, re-vote everyone, release NACKs first."""
    data = _cluster(cluster)
    data.phase = ClusterPhase.WAITING_FOR_STABLE_MEMBERSHIP
    views = _views(cluster, trigger, leaving)
    unstable = instability(views)
    if unstable:
        return AlgoResult(reply_vote=Vote.WAIT_FOR_REPLY, decision=f"unstable: {unstable}")
    best, why = select(cluster, views, data.last_quorate)
    data.last_quorate = best.membership if best else ()
    _assign(cluster, trigger.client if leaving else None, data.last_quorate)
    sends = _release(cluster, trigger, ack_phase=False)
    if best is None:
        decision = "no partition is quorate: NACK to every client"
    else:
        decision = f"partition {ids_text(best.membership)} wins: {why}"
    return AlgoResult(reply_vote=Vote.NO_CHANGE, sends=sends, decision=decision)


# ---------------------------------------------------------------- the interface


class Ffsplit(AlgorithmDefaults):
    """Reference 7.2: votes only through VOTE_INFO; replies are NO_CHANGE / WAIT / ASK_LATER."""

    code = DecisionAlgorithm.FFSPLIT

    def client_init(self, cluster: Cluster, client: ClientState) -> ReplyErrorCode | None:
        """Create the cluster's and the client's ffsplit state (both start waiting for change)."""
        _cluster(cluster)
        client.algo[FfsplitClient.__name__] = FfsplitClient()
        return None

    def config_node_list(
        self,
        cluster: Cluster,
        client: ClientState,
        nodes: tuple[NodeInfo, ...],
        config_version: int | None,  # noqa: ARG002 - interface argument
        initial: bool,
    ) -> AlgoResult:
        """Error 18 on an empty list or one without the sender; ASK_LATER until membership."""
        ids = tuple(n.node_id for n in nodes)
        if client.node_id not in ids:
            return AlgoResult(error=ReplyErrorCode.INVALID_CONFIG_NODE_LIST)
        if initial or not client.membership_nodes:
            return AlgoResult(reply_vote=Vote.ASK_LATER)
        return decide(cluster, replace(stored_view(client), config=ids), leaving=False)

    def membership_node_list(
        self,
        cluster: Cluster,
        client: ClientState,
        ring_id: RingId,
        nodes: tuple[int, ...],
        heuristics: Heuristics | None,
    ) -> AlgoResult:
        """Error 19 on an empty list or one without the sender; ASK_LATER until a config list."""
        if client.node_id not in nodes:
            return AlgoResult(error=ReplyErrorCode.INVALID_MEMBERSHIP_NODE_LIST)
        if not client.config_nodes:
            return AlgoResult(reply_vote=Vote.ASK_LATER)
        view = View(client, ring_id, client.config_node_ids, nodes, heuristics)
        return decide(cluster, view, leaving=False)

    def heuristics_change(
        self, cluster: Cluster, client: ClientState, heuristics: Heuristics
    ) -> AlgoResult:
        """ASK_LATER until both lists are stored; else *Decide* with the new heuristics."""
        if not client.config_nodes or not client.membership_nodes:
            return AlgoResult(reply_vote=Vote.ASK_LATER)
        return decide(cluster, replace(stored_view(client), heuristics=heuristics), leaving=False)

    def ask_for_vote(
        self,
        cluster: Cluster,  # noqa: ARG002 - interface argument
        client: ClientState,  # noqa: ARG002 - interface argument
    ) -> AlgoResult:
        """ffsplit votes only by VOTE_INFO: SERVER_ERROR 14."""
        return AlgoResult(error=ReplyErrorCode.UNSUPPORTED_DECISION_ALGORITHM_MESSAGE)

    def vote_info_reply(
        self, cluster: Cluster, client: ClientState, seq: int
    ) -> tuple[VoteSend, ...]:
        """An acknowledgement of the latest VOTE_INFO; the last NACK one releases the ACKs."""
        if seq != client.vote_info_seq:
            return ()
        _client(client).phase = ClientPhase.WAITING_FOR_CHANGE
        data = _cluster(cluster)
        if data.phase is ClusterPhase.SENDING_NACKS:
            if not _anyone_in(cluster, ClientPhase.SENDING_NACK):
                return _release(cluster, None, ack_phase=True)
        elif data.phase is ClusterPhase.SENDING_ACKS and not _anyone_in(
            cluster, ClientPhase.SENDING_ACK
        ):
            data.phase = ClusterPhase.WAITING_FOR_CHANGE
        return ()

    def disconnect(
        self, cluster: Cluster, client: ClientState, server_going_down: bool
    ) -> tuple[VoteSend, ...]:
        """*Decide* without the leaving client (skipped when the server shuts down)."""
        if server_going_down:
            return ()
        return decide(cluster, stored_view(client), leaving=True).sends


def phase_of(cluster: Cluster) -> ClusterPhase:
    """The cluster's ffsplit phase (for tests and status output)."""
    return _cluster(cluster).phase


def last_quorate_partition(cluster: Cluster) -> tuple[int, ...]:
    """The membership list of the last selected quorate partition (empty if none)."""
    return _cluster(cluster).last_quorate
