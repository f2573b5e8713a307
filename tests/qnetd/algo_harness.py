"""A tiny stand-in for the arbitration core, for driving one decision algorithm in tests.

It keeps one `Cluster`, calls the algorithm the way `qnetd/arbitration.py` does and then stores
exactly what reference 4.6 says (only when the algorithm returned no error): config list and
version; membership list, ring id := message ring id, membership and last heuristics; quorum list
and quorate flag; for HEURISTICS_CHANGE regular and last heuristics. VOTE_INFOs get the client's
next seq (first is 1). `last_vote` follows every reply vote and VOTE_INFO, `last_ack_nack` only
ACK/NACK. Algorithm timers run on a fake clock that moves only through `advance()`. A disconnect
calls the hook while the client is still listed, then removes it.

Every vote the "server" sends is appended to `sent`, VOTE_INFOs before the reply they came with.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from proto.qnetd_enums import Heuristics, TieBreakerMode, Vote
from proto.qnetd_options import NodeInfo, RingId, TieBreaker
from qnetd.model import (
    AlgoResult,
    Algorithm,
    ArmTimer,
    CancelTimer,
    ClientState,
    Cluster,
    TimerChange,
    VoteSend,
)

LOWEST = TieBreaker(TieBreakerMode.LOWEST)
HIGHEST = TieBreaker(TieBreakerMode.HIGHEST)


def node_id_tb(node_id: int) -> TieBreaker:
    """Tie-breaker mode 3: the named node."""
    return TieBreaker(TieBreakerMode.NODE_ID, node_id)


@dataclass(frozen=True, slots=True)
class Sent:
    """One vote the server sent: a VOTE_INFO (seq > 0) or a reply (kind names the reply)."""

    node_id: int
    kind: str
    vote: Vote
    ring_id: RingId
    seq: int = 0


@dataclass
class AlgoHarness:
    """One cluster of clients, one algorithm, a fake clock; see the module docstring."""

    algorithm: Algorithm
    cluster: Cluster = field(default_factory=lambda: Cluster(b"cluster"))
    now: float = 0.0
    timers: dict[int, float] = field(default_factory=dict)
    """Armed algorithm timers: conn id -> deadline (seconds)."""
    sent: list[Sent] = field(default_factory=list)
    decisions: list[str] = field(default_factory=list)
    acked: dict[int, int] = field(default_factory=dict)
    """Highest VOTE_INFO seq each connection has acknowledged: conn id -> seq."""
    _next_conn: int = 1

    # ------------------------------------------------------------ clients
    def connect(
        self,
        node_id: int,
        *,
        tie_breaker: TieBreaker = LOWEST,
        kap: bool = False,
        heartbeat_ms: int = 8000,
        ring_id: RingId | None = None,
    ) -> ClientState:
        """INIT: add the client (sorted by node id) and run the algorithm's per-client init."""
        client = ClientState(
            conn_id=self._next_conn,
            cluster_name=self.cluster.name,
            node_id=node_id,
            algorithm=self.algorithm.code,
            tie_breaker=tie_breaker,
            heartbeat_interval_ms=heartbeat_ms,
            ring_id=ring_id or RingId(node_id, 0),
            keep_active_partition=kap,
        )
        self._next_conn += 1
        self.cluster.add(client)
        error = self.algorithm.client_init(self.cluster, client)
        assert error is None, f"client_init failed: {error}"
        return client

    def client(self, node_id: int) -> ClientState:
        """The listed client with this node id (it must exist)."""
        found = self.cluster.by_node_id(node_id)
        assert found is not None, f"node {node_id} is not connected"
        return found

    def disconnect(self, node_id: int, *, server_going_down: bool = False) -> None:
        """Run the disconnect hook while the client is listed, then remove it."""
        client = self.client(node_id)
        self.timers.pop(client.conn_id, None)
        sends = self.algorithm.disconnect(self.cluster, client, server_going_down)
        self.cluster.clients.remove(client)
        self._emit(sends)

    def start(
        self,
        config: Iterable[int],
        ring_id: RingId,
        *,
        tie_breaker: TieBreaker = LOWEST,
        kap: bool = False,
        heuristics: dict[int, Heuristics] | None = None,
    ) -> None:
        """Connect every configured node, send the initial burst, acknowledge all, forget output.

        Like real qdevices starting together: all INITs first, then per node the initial config
        list, the membership list (everyone in `ring_id`) and a quorum list.
        """
        nodes = tuple(config)
        for node_id in nodes:
            self.connect(node_id, tie_breaker=tie_breaker, kap=kap, ring_id=ring_id)
        for node_id in nodes:
            self.config(node_id, nodes)
            self.membership(node_id, ring_id, nodes, (heuristics or {}).get(node_id))
            self.quorum(node_id)
        self.ack_all()
        self.take()
        self.decisions.clear()

    def report(
        self,
        ring_id: RingId,
        nodes: Iterable[int],
        *,
        order: Iterable[int] | None = None,
        heuristics: dict[int, Heuristics] | None = None,
    ) -> list[AlgoResult]:
        """Members of one new partition send its membership list, in `order`.

        Default order: the connected members, lowest node id first.
        """
        members = tuple(nodes)
        return [
            self.membership(n, ring_id, members, (heuristics or {}).get(n))
            for n in (self._connected(members) if order is None else order)
        ]

    # ------------------------------------------------------------ messages
    def config(
        self,
        node_id: int,
        nodes: Iterable[int],
        *,
        initial: bool = True,
        version: int | None = None,
    ) -> AlgoResult:
        """NODE_LIST type 0 (initial) or 1."""
        client = self.client(node_id)
        infos = tuple(NodeInfo(n) for n in nodes)
        result = self.algorithm.config_node_list(self.cluster, client, infos, version, initial)
        if self._accept(client, result):
            client.config_nodes, client.config_version = infos, version
            client.config_received = True
            self._reply(client, "node_list_reply", result.reply_vote)
        return result

    def membership(
        self,
        node_id: int,
        ring_id: RingId,
        nodes: Iterable[int],
        heuristics: Heuristics | None = None,
    ) -> AlgoResult:
        """NODE_LIST type 2."""
        client = self.client(node_id)
        ids = tuple(nodes)
        result = self.algorithm.membership_node_list(self.cluster, client, ring_id, ids, heuristics)
        if self._accept(client, result):
            client.membership_nodes, client.membership_received = ids, True
            client.ring_id = ring_id
            client.membership_heuristics = client.last_heuristics = heuristics
            self._reply(client, "node_list_reply", result.reply_vote)
        return result

    def quorum(self, node_id: int, quorate: bool = True, nodes: Iterable[int] = ()) -> AlgoResult:
        """NODE_LIST type 3."""
        client = self.client(node_id)
        infos = tuple(NodeInfo(n) for n in nodes)
        result = self.algorithm.quorum_node_list(self.cluster, client, quorate, infos)
        if self._accept(client, result):
            client.quorum_nodes, client.quorate = infos, quorate
            self._reply(client, "node_list_reply", result.reply_vote)
        return result

    def heuristics_change(self, node_id: int, heuristics: Heuristics) -> AlgoResult:
        """HEURISTICS_CHANGE."""
        client = self.client(node_id)
        result = self.algorithm.heuristics_change(self.cluster, client, heuristics)
        if self._accept(client, result):
            client.regular_heuristics = client.last_heuristics = heuristics
            self._reply(client, "heuristics_change_reply", result.reply_vote)
        return result

    def ask_for_vote(self, node_id: int) -> AlgoResult:
        """ASK_FOR_VOTE."""
        client = self.client(node_id)
        result = self.algorithm.ask_for_vote(self.cluster, client)
        if self._accept(client, result):
            self._reply(client, "ask_for_vote_reply", result.reply_vote)
        return result

    def ack(self, node_id: int, seq: int | None = None) -> tuple[VoteSend, ...]:
        """VOTE_INFO_REPLY with `seq` (default: the client's latest VOTE_INFO seq)."""
        client = self.client(node_id)
        chosen = client.vote_info_seq if seq is None else seq
        self.acked[client.conn_id] = max(self.acked.get(client.conn_id, 0), chosen)
        sends = self.algorithm.vote_info_reply(self.cluster, client, chosen)
        self._emit(sends)
        return sends

    def ack_all(self) -> None:
        """Clients acknowledge their unacknowledged latest VOTE_INFO, lowest id first."""
        while pending := [c for c in self.cluster.clients if self.unacknowledged(c)]:
            self.ack(pending[0].node_id)

    def unacknowledged(self, client: ClientState) -> bool:
        """Whether the client has a VOTE_INFO it has not acknowledged yet."""
        return client.vote_info_seq > self.acked.get(client.conn_id, 0)

    # ------------------------------------------------------------ time
    def advance(self, ms: float) -> None:
        """Move the fake clock forward, firing due algorithm timers in deadline order."""
        until = self.now + ms / 1000
        while self.timers and (at := min(self.timers.values())) <= until:
            conn_id = min(self.timers, key=lambda k: (self.timers[k], k))
            del self.timers[conn_id]
            self.now = at
            client = next(c for c in self.cluster.clients if c.conn_id == conn_id)
            result = self.algorithm.timer(self.cluster, client)
            self._timer(client, result.timer)
            self._emit(result.sends)
            self._decided(result.decision)
        self.now = until

    def timer_at(self, node_id: int) -> float | None:
        """When the node's algorithm timer fires (None: not armed)."""
        return self.timers.get(self.client(node_id).conn_id)

    # ------------------------------------------------------------ what was sent
    def take(self) -> list[Sent]:
        """Everything sent since the last take."""
        out, self.sent = self.sent, []
        return out

    def take_vote_infos(self) -> list[tuple[int, Vote]]:
        """(node id, vote) of the VOTE_INFOs sent since the last take (replies dropped)."""
        return [(s.node_id, s.vote) for s in self.take() if s.kind == "vote_info"]

    # ------------------------------------------------------------ internals
    def _connected(self, nodes: tuple[int, ...]) -> list[int]:
        return [n for n in nodes if self.cluster.by_node_id(n) is not None]

    def _accept(self, client: ClientState, result: AlgoResult) -> bool:
        if result.error is not None:
            error = Sent(client.node_id, "server_error", Vote.NO_CHANGE, client.ring_id)
            self.sent.append(error)
            return False
        self._timer(client, result.timer)
        self._emit(result.sends)
        self._decided(result.decision)
        return True

    def _reply(self, client: ClientState, kind: str, vote: Vote) -> None:
        self._record_vote(client, vote)
        self.sent.append(Sent(client.node_id, kind, vote, client.ring_id))

    def _emit(self, sends: tuple[VoteSend, ...]) -> None:
        for send in sends:
            listed = any(c is send.client for c in self.cluster.clients)
            assert listed, "VOTE_INFO for a client that is not listed"
            send.client.vote_info_seq += 1
            self._record_vote(send.client, send.vote)
            self.sent.append(
                Sent(
                    send.client.node_id,
                    "vote_info",
                    send.vote,
                    send.ring_id,
                    send.client.vote_info_seq,
                )
            )

    def _timer(self, client: ClientState, change: TimerChange) -> None:
        if isinstance(change, ArmTimer):
            self.timers[client.conn_id] = self.now + change.delay_ms / 1000
        elif isinstance(change, CancelTimer):
            self.timers.pop(client.conn_id, None)

    def _decided(self, decision: str) -> None:
        if decision:
            self.decisions.append(decision)

    @staticmethod
    def _record_vote(client: ClientState, vote: Vote) -> None:
        client.last_vote = vote
        if vote in (Vote.ACK, Vote.NACK):
            client.last_ack_nack = vote
