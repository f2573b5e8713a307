"""The arbitrator's data model: clients, clusters, and the contract between core and algorithms.

Owns the records of reference section 6 and the small interface every decision algorithm
implements (reference section 7). Pure data: no clock, sockets or logging. Time is passed in as
float seconds from a monotonic clock when a caller needs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from proto.qnetd_enums import DecisionAlgorithm, Heuristics, ReplyErrorCode, TieBreakerMode, Vote
from proto.qnetd_options import NodeInfo, RingId, TieBreaker


@dataclass
class ClientState:
    """One INIT-ed client connection (a qdevice of one cluster node), reference section 6.

    Lists and heuristics are the *stored* values: the core updates them only after the algorithm
    ran successfully for a message (reference 4.6), so algorithms see the previous values and get
    the new ones as arguments.
    """

    conn_id: int
    """Unique id of the connection (never reused by one server)."""
    cluster_name: bytes
    node_id: int
    algorithm: DecisionAlgorithm
    tie_breaker: TieBreaker
    heartbeat_interval_ms: int
    ring_id: RingId
    """Stored ring id: from INIT, then from every accepted membership list."""
    address: str = ""
    keep_active_partition: bool = False
    config_nodes: tuple[NodeInfo, ...] = ()
    config_version: int | None = None
    config_received: bool = False
    membership_nodes: tuple[int, ...] = ()
    membership_received: bool = False
    quorum_nodes: tuple[NodeInfo, ...] = ()
    quorate: bool | None = None
    membership_heuristics: Heuristics | None = None
    regular_heuristics: Heuristics | None = None
    last_heuristics: Heuristics | None = None
    """None = undefined (the TLV was absent)."""
    last_vote: Vote | None = None
    """Overwritten by every vote sent: replies and VOTE_INFO alike."""
    last_ack_nack: Vote | None = None
    """Only ACK or NACK."""
    vote_info_seq: int = 0
    """Last VOTE_INFO seq sent to this client (pre-incremented; first VOTE_INFO carries 1)."""
    algo: dict[str, Any] = field(default_factory=dict)
    """Algorithm-private per-client data."""

    @property
    def config_node_ids(self) -> tuple[int, ...]:
        """Node ids of the stored config list, in list order."""
        return tuple(n.node_id for n in self.config_nodes)


@dataclass
class Cluster:
    """All INIT-ed clients whose cluster names are byte-identical; clients sorted by node id."""

    name: bytes
    clients: list[ClientState] = field(default_factory=list)
    algo: dict[str, Any] = field(default_factory=dict)
    """Algorithm-private per-cluster data (e.g. ffsplit's state and last quorate partition)."""

    def add(self, client: ClientState) -> None:
        """Insert before the first client with a larger node id (reference section 6)."""
        index = next(
            (i for i, c in enumerate(self.clients) if c.node_id > client.node_id),
            len(self.clients),
        )
        self.clients.insert(index, client)

    def by_node_id(self, node_id: int) -> ClientState | None:
        """The connected client with this node id, if any."""
        return next((c for c in self.clients if c.node_id == node_id), None)


@dataclass(frozen=True, slots=True)
class VoteSend:
    """An unsolicited VOTE_INFO to queue for `client`; the core assigns the seq."""

    client: ClientState
    vote: Vote
    ring_id: RingId


@dataclass(frozen=True, slots=True)
class ArmTimer:
    """(Re)arm the client's algorithm timer to fire after `delay_ms`."""

    delay_ms: float


@dataclass(frozen=True, slots=True)
class CancelTimer:
    """Cancel the client's algorithm timer."""


TimerChange = ArmTimer | CancelTimer | None  # None: leave the timer as it is


@dataclass(frozen=True, slots=True)
class AlgoResult:
    """What an algorithm decided for one message.

    error: non-None => the core answers SERVER_ERROR with it and stores nothing.
    reply_vote: the VOTE of the reply message (NODE_LIST_REPLY etc.).
    sends: VOTE_INFOs to queue, in order, *before* the reply.
    timer: change to the triggering client's algorithm timer.
    decision: a one-line, human-readable account of what decided (for the decision log), or "".
    """

    reply_vote: Vote = Vote.NO_CHANGE
    sends: tuple[VoteSend, ...] = ()
    error: ReplyErrorCode | None = None
    timer: TimerChange = None
    decision: str = ""


@dataclass(frozen=True, slots=True)
class TimerResult:
    """What an algorithm timer expiry produced for its client."""

    sends: tuple[VoteSend, ...] = ()
    timer: TimerChange = None
    decision: str = ""


class Algorithm(Protocol):
    """One decision algorithm (reference section 7). Implementations are stateless objects;
    all state lives in `Cluster.algo` and `ClientState.algo`.

    The core calls these *before* it stores the message's values in `client`, and stores them
    only when `error` is None. `cluster.clients` always includes `client`.
    """

    code: DecisionAlgorithm

    def client_init(self, cluster: Cluster, client: ClientState) -> ReplyErrorCode | None:
        """Per-client initialisation after a successful INIT; an error means INIT fails (10)."""
        ...

    def config_node_list(
        self,
        cluster: Cluster,
        client: ClientState,
        nodes: tuple[NodeInfo, ...],
        config_version: int | None,
        initial: bool,
    ) -> AlgoResult:
        """NODE_LIST type 0 (initial=True) or 1."""
        ...

    def membership_node_list(
        self,
        cluster: Cluster,
        client: ClientState,
        ring_id: RingId,
        nodes: tuple[int, ...],
        heuristics: Heuristics | None,
    ) -> AlgoResult:
        """NODE_LIST type 2."""
        ...

    def quorum_node_list(
        self, cluster: Cluster, client: ClientState, quorate: bool, nodes: tuple[NodeInfo, ...]
    ) -> AlgoResult:
        """NODE_LIST type 3."""
        ...

    def heuristics_change(
        self, cluster: Cluster, client: ClientState, heuristics: Heuristics
    ) -> AlgoResult:
        """HEURISTICS_CHANGE."""
        ...

    def ask_for_vote(self, cluster: Cluster, client: ClientState) -> AlgoResult:
        """ASK_FOR_VOTE."""
        ...

    def vote_info_reply(
        self, cluster: Cluster, client: ClientState, seq: int
    ) -> tuple[VoteSend, ...]:
        """VOTE_INFO_REPLY (no reply message; may release further VOTE_INFOs)."""
        ...

    def disconnect(
        self, cluster: Cluster, client: ClientState, server_going_down: bool
    ) -> tuple[VoteSend, ...]:
        """`client` is leaving; it is still listed in `cluster.clients` during this call."""
        ...

    def timer(self, cluster: Cluster, client: ClientState) -> TimerResult:
        """The client's algorithm timer fired."""
        ...


def tie_breaker_text(tb: TieBreaker) -> str:
    """The tie-breaker as corosync-qnetd-tool prints it."""
    if tb.mode is TieBreakerMode.LOWEST:
        return "Node with lowest node ID"
    if tb.mode is TieBreakerMode.HIGHEST:
        return "Node with highest node ID"
    return f"Node with node ID {tb.node_id}"
