"""The arbitrator's sans-IO core: connections, clusters, message handling, votes and timers.

`QnetdCore.handle(event, now) -> list[Effect]` and `next_deadline()`; it never reads a clock,
touches a socket or logs (log lines are `Log` effects). Behaviour follows corosync-qnetd 3.0.3
(reference sections 3-4 and 6): the same checks in the same order, the same error codes, storage
after the algorithm ran, VOTE_INFOs queued before the reply that triggered them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from proto.errors import DecodeError
from proto.qnetd_enums import (
    SERVER_TO_CLIENT,
    DecisionAlgorithm,
    Heuristics,
    MessageType,
    NodeListType,
    ReplyErrorCode,
    TlsSupported,
    Vote,
)
from proto.qnetd_messages import (
    ALL_MESSAGE_TYPES,
    ALL_OPTION_TYPES,
    AskForVote,
    AskForVoteReply,
    HeuristicsChange,
    HeuristicsChangeReply,
    Init,
    InitReply,
    NodeList,
    NodeListReply,
    Preinit,
    PreinitReply,
    QnetdMessage,
    ServerError,
    SetOption,
    SetOptionReply,
    VoteInfo,
    VoteInfoReply,
    echo_reply_bytes,
    encode,
)
from proto.qnetd_options import TieBreaker
from qnetd.core_events import (
    Accepted,
    ConnectionClosed,
    Disconnect,
    Effect,
    Event,
    Log,
    Received,
    Send,
    Shutdown,
    StartTls,
    Tick,
    TlsEstablished,
    Undecodable,
)
from qnetd.deadlines import Deadlines
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
from qnetd.peer_names import PeerNames, matches_cluster
from qnetd.settings import QnetdSettings

E = ReplyErrorCode
SUPPORTED_ALGORITHMS = (0, 1, 2, 3)
MAX_U32 = 0xFFFFFFFF


# ---------------------------------------------------------------- state
@dataclass
class Connection:
    """Per-TCP-connection protocol state (before and after INIT)."""

    conn_id: int
    address: str
    cluster_name: bytes | None = None
    tls_started: bool = False
    cert_name: bytes | None = None
    """The cluster name the client certificate was verified against (None: not verified)."""
    peer: PeerNames | None = None
    heartbeat_ms: int | None = None
    client: ClientState | None = None

    @property
    def cert_verified(self) -> bool:
        """The certificate was checked against the cluster name this connection uses now."""
        return self.cert_name is not None and self.cert_name == self.cluster_name


@dataclass
class CoreStats:
    """Counters for /metrics and status; plain numbers, read by the adapter."""

    accepted: int = 0
    closed: Counter[str] = field(default_factory=Counter)
    messages: Counter[str] = field(default_factory=Counter)
    decode_errors: Counter[str] = field(default_factory=Counter)
    server_errors: Counter[int] = field(default_factory=Counter)
    votes_sent: Counter[str] = field(default_factory=Counter)
    decisions: int = 0
    tls_failures: Counter[str] = field(default_factory=Counter)


class QnetdCore:
    """All clusters and connections of one server."""

    def __init__(
        self, settings: QnetdSettings, algorithms: Mapping[DecisionAlgorithm, Algorithm]
    ) -> None:
        settings.validate()
        self.settings = settings
        self.algorithms = algorithms
        self.connections: dict[int, Connection] = {}
        self.clusters: dict[bytes, Cluster] = {}
        self.stats = CoreStats()
        self.shutting_down = False
        self._deadlines: Deadlines[tuple[str, int]] = Deadlines()
        self._out: list[Effect] = []
        self._now = 0.0
        self._handlers: dict[MessageType, Callable[[Connection, Any, bytes], None]] = {
            MessageType.PREINIT: self._preinit,
            MessageType.STARTTLS: self._starttls,
            MessageType.INIT: self._init,
            MessageType.SET_OPTION: self._set_option,
            MessageType.ECHO_REQUEST: self._echo_request,
            MessageType.NODE_LIST: self._node_list,
            MessageType.ASK_FOR_VOTE: self._ask_for_vote,
            MessageType.VOTE_INFO_REPLY: self._vote_info_reply,
            MessageType.HEURISTICS_CHANGE: self._heuristics_change,
        }

    # ------------------------------------------------------------ public API
    def handle(self, event: Event, now: float) -> list[Effect]:
        """Process one event at time `now`; return the effects to carry out, in order."""
        self._now = now
        self._out = []
        if isinstance(event, Tick):
            self._fire_timers()
        elif isinstance(event, Shutdown):
            self._shutdown()
        elif isinstance(event, Accepted):
            self._accepted(event)
        else:
            conn = self.connections.get(event.conn_id)
            if conn is not None:
                self._dispatch(conn, event)
        return self._out

    def next_deadline(self) -> float | None:
        """When the adapter must send `Tick` next (None: no timer pending)."""
        return self._deadlines.earliest()

    def compact(self) -> None:
        """Rebuild the per-connection tables at their present size (the adapter calls this after
        a burst of connections is gone: a dict keeps the size it had at its fullest)."""
        self.connections = dict(self.connections)
        self._deadlines.compact()

    def client_count(self) -> int:
        """Connections that completed INIT."""
        return sum(len(c.clients) for c in self.clusters.values())

    # ------------------------------------------------------------ connection lifecycle
    def _accepted(self, ev: Accepted) -> None:
        self.stats.accepted += 1
        limit = self.settings.max_clients
        if limit and len(self.connections) >= limit:
            self._out.append(Disconnect(ev.conn_id, "max_clients"))
            self._log("connection refused", "warning", address=ev.address, reason="max_clients")
            return
        conn = Connection(ev.conn_id, ev.address)
        self.connections[ev.conn_id] = conn
        self._arm_dpd(conn)

    def _dispatch(self, conn: Connection, event: Event) -> None:
        if isinstance(event, Received):
            self._arm_dpd(conn)
            self._received(conn, event.message, event.raw)
        elif isinstance(event, Undecodable):
            self._undecodable(conn, event.error)
        elif isinstance(event, TlsEstablished):
            conn.peer = event.peer
        elif isinstance(event, ConnectionClosed):
            self._remove(conn, event.reason)

    def _drop(self, conn: Connection, reason: str, level: str = "warning") -> None:
        """Close a connection on our side: effect for the adapter, cleanup now."""
        self._out.append(Disconnect(conn.conn_id, reason))
        self._log("client dropped", level, **self._who(conn), reason=reason)
        self._remove(conn, reason)

    def _remove(self, conn: Connection, reason: str) -> None:
        self.connections.pop(conn.conn_id, None)
        self._deadlines.cancel(("dpd", conn.conn_id))
        self._deadlines.cancel(("algo", conn.conn_id))
        self.stats.closed[reason] += 1
        client = conn.client
        if client is None:
            return
        cluster = self.clusters[client.cluster_name]
        algorithm = self.algorithms[client.algorithm]
        sends = algorithm.disconnect(cluster, client, self.shutting_down)
        cluster.clients.remove(client)
        conn.client = None
        self._emit_votes(sends)
        if not cluster.clients:
            del self.clusters[cluster.name]
        self._log("client left", "info", **self._who(conn), reason=reason)

    def _shutdown(self) -> None:
        self.shutting_down = True
        for conn in list(self.connections.values()):
            self._drop(conn, "server_shutdown", "info")

    # ------------------------------------------------------------ timers
    def _dpd_seconds(self, conn: Connection) -> float:
        heartbeat = conn.heartbeat_ms or self.settings.heartbeat_max_ms
        return self.settings.dpd_coefficient * heartbeat / 1000

    def _arm_dpd(self, conn: Connection) -> None:
        if self.settings.dpd_enabled:
            self._deadlines.set(("dpd", conn.conn_id), self._now + self._dpd_seconds(conn))

    def _fire_timers(self) -> None:
        for kind, conn_id in self._deadlines.pop_due(self._now):
            conn = self.connections.get(conn_id)
            if conn is None:
                continue
            if kind == "dpd":
                self._drop(conn, "dead_peer")
            elif conn.client is not None:
                self._algorithm_timer(conn, conn.client)

    def _algorithm_timer(self, conn: Connection, client: ClientState) -> None:
        cluster = self.clusters[client.cluster_name]
        result = self.algorithms[client.algorithm].timer(cluster, client)
        self._apply_timer(conn, result.timer)
        self._emit_votes(result.sends)
        self._log_decision(client, result.decision, result.sends)

    def _apply_timer(self, conn: Connection, change: TimerChange) -> None:
        if isinstance(change, ArmTimer):
            self._deadlines.set(("algo", conn.conn_id), self._now + change.delay_ms / 1000)
        elif isinstance(change, CancelTimer):
            self._deadlines.cancel(("algo", conn.conn_id))

    # ------------------------------------------------------------ receiving
    def _undecodable(self, conn: Connection, error: DecodeError) -> None:
        self.stats.decode_errors[error.reason] += 1
        if error.code == E.ERROR_DECODING_MSG:
            self._arm_dpd(conn)  # a complete (if undecodable) message counts as liveness
        self._log("bad message", "warning", **self._who(conn), reason=error.reason)
        self._error(conn, error.seq, E(error.code))  # seq: as 3.0.3, when it could be read

    def _received(self, conn: Connection, msg: QnetdMessage, raw: bytes) -> None:
        self.stats.messages[msg.TYPE.name] += 1
        if msg.TYPE in SERVER_TO_CLIENT:
            self._error(conn, msg.seq, E.UNEXPECTED_MESSAGE)
            return
        self._handlers[msg.TYPE](conn, msg, raw)

    def _error(self, conn: Connection, seq: int | None, code: ReplyErrorCode) -> None:
        self.stats.server_errors[int(code)] += 1
        self._send(conn, ServerError(seq=seq, reply_error_code=code))

    def _send(self, conn: Connection, msg: QnetdMessage) -> None:
        data = encode(msg)
        if len(data) > self.settings.max_send_size:
            self._drop(conn, "reply_too_large")
            return
        self._out.append(Send(conn.conn_id, data))

    def _tls_ok(self, conn: Connection, seq: int | None) -> bool:
        """Reference 4.3 server enforcement; False when the message must not be processed."""
        mode = self.settings.tls
        required = self.settings.client_cert_required
        if mode is TlsSupported.REQUIRED and not conn.tls_started:
            self._error(conn, seq, E.TLS_REQUIRED)
            return False
        check = required and not conn.cert_verified and mode is not TlsSupported.UNSUPPORTED
        if check and (mode is TlsSupported.REQUIRED or conn.tls_started):
            return self._verify_certificate(conn)
        return True

    def _verify_certificate(self, conn: Connection) -> bool:
        name = conn.cluster_name or b""
        if conn.peer is None or not matches_cluster(conn.peer, name):
            why = "no_certificate" if conn.peer is None else "name_mismatch"
            self.stats.tls_failures[why] += 1
            self._drop(conn, f"certificate_{why}")
            return False
        conn.cert_name = name
        return True

    def _initialised(self, conn: Connection, seq: int | None) -> ClientState | None:
        """The connection's client after the TLS and INIT checks, else None (error sent)."""
        if not self._tls_ok(conn, seq):
            return None
        if conn.client is None:
            self._error(conn, seq, E.INIT_REQUIRED)
            return None
        return conn.client

    # ------------------------------------------------------------ message handlers
    def _preinit(self, conn: Connection, msg: Preinit, _raw: bytes) -> None:
        if conn.cluster_name is not None:
            # One cluster per connection: a second PREINIT could swap the name a certificate was
            # checked against (deliberate difference from 3.0.3, which overwrites the name).
            self._log("preinit refused", "warning", **self._who(conn), reason="preinit_repeated")
            self._error(conn, msg.seq, E.UNEXPECTED_MESSAGE)
            return
        if msg.cluster_name is None:
            self._error(conn, msg.seq, E.DOESNT_CONTAIN_REQUIRED_OPTION)
            return
        conn.cluster_name = msg.cluster_name
        reply = PreinitReply(
            seq=msg.seq,
            tls_supported=self.settings.tls,
            tls_client_cert_required=self.settings.client_cert_required,
        )
        self._send(conn, reply)

    def _starttls(self, conn: Connection, msg: QnetdMessage, _raw: bytes) -> None:
        if conn.cluster_name is None:
            self._error(conn, msg.seq, E.PREINIT_REQUIRED)
        elif self.settings.tls is TlsSupported.UNSUPPORTED or conn.tls_started:
            self.stats.tls_failures["starttls_refused"] += 1
            self._drop(conn, "starttls_not_possible")
        else:
            conn.tls_started = True
            conn.cert_name = None
            self._out.append(StartTls(conn.conn_id))

    def _init(self, conn: Connection, msg: Init, _raw: bytes) -> None:
        if not self._tls_ok(conn, msg.seq):
            return
        error = self._init_error(conn, msg)
        if error is E.NO_ERROR:
            error = self._join_cluster(conn, msg)
        reply = InitReply(
            seq=msg.seq,
            reply_error_code=error,
            supported_messages=ALL_MESSAGE_TYPES if msg.supported_messages is not None else None,
            supported_options=ALL_OPTION_TYPES if msg.supported_options is not None else None,
            server_maximum_request_size=self.settings.max_receive_size,
            server_maximum_reply_size=self.settings.max_send_size,
            supported_decision_algorithms=SUPPORTED_ALGORITHMS,
        )
        if error is not E.NO_ERROR:
            self.stats.server_errors[int(error)] += 1
            self._log("init refused", "warning", **self._who(conn), error=error.name)
        self._send(conn, reply)

    def _init_error(self, conn: Connection, msg: Init) -> ReplyErrorCode:
        """Reference 4.5 steps 2-7, including the overwriting quirks of codes 13 and 12."""
        e = E.NO_ERROR if conn.cluster_name is not None else E.PREINIT_REQUIRED
        if e is E.NO_ERROR and (msg.node_id is None or msg.ring_id is None):
            e = E.DOESNT_CONTAIN_REQUIRED_OPTION
        if e is E.NO_ERROR and msg.heartbeat_interval is None:
            e = E.DOESNT_CONTAIN_REQUIRED_OPTION
        else:
            heartbeat = msg.heartbeat_interval or 0
            s = self.settings
            if not s.heartbeat_min_ms <= heartbeat <= s.heartbeat_max_ms:
                e = E.INVALID_HEARTBEAT_INTERVAL
            else:
                conn.heartbeat_ms = heartbeat
                self._arm_dpd(conn)
        if e is E.NO_ERROR and msg.tie_breaker is None:
            e = E.DOESNT_CONTAIN_REQUIRED_OPTION
        if e is E.NO_ERROR and msg.decision_algorithm is None:
            e = E.DOESNT_CONTAIN_REQUIRED_OPTION
        elif (msg.decision_algorithm or 0) not in SUPPORTED_ALGORITHMS:
            e = E.UNSUPPORTED_DECISION_ALGORITHM
        if e is E.NO_ERROR and conn.client is not None:
            e = E.DUPLICATE_NODE_ID  # a second INIT collides with itself, as in 3.0.3
        return e

    def _join_cluster(self, conn: Connection, msg: Init) -> ReplyErrorCode:
        name, node_id, ring, tb = conn.cluster_name, msg.node_id, msg.ring_id, msg.tie_breaker
        heartbeat, code = msg.heartbeat_interval, msg.decision_algorithm
        if name is None or node_id is None or ring is None or tb is None:
            return E.DOESNT_CONTAIN_REQUIRED_OPTION  # unreachable: _init_error checked them
        if heartbeat is None or code is None:
            return E.DOESNT_CONTAIN_REQUIRED_OPTION
        algorithm = DecisionAlgorithm(code)
        cluster = self.clusters.get(name)
        clash = _clash(cluster, tb, algorithm, node_id) if cluster else None
        if clash is not None:
            return clash
        client = ClientState(
            conn_id=conn.conn_id,
            cluster_name=name,
            node_id=node_id,
            algorithm=algorithm,
            tie_breaker=tb,
            heartbeat_interval_ms=heartbeat,
            ring_id=ring,
            address=conn.address,
            keep_active_partition=self.settings.keep_active_partition_default,
        )
        if cluster is None:
            cluster = self.clusters[name] = Cluster(name)
        cluster.add(client)
        error = self.algorithms[algorithm].client_init(cluster, client)
        if error is not None:
            cluster.clients.remove(client)
            if not cluster.clients:
                del self.clusters[cluster.name]
            return error
        conn.client = client
        self._log("client joined", "info", **self._who(conn), algorithm=algorithm.name)
        return E.NO_ERROR

    def _set_option(self, conn: Connection, msg: SetOption, _raw: bytes) -> None:
        client = self._initialised(conn, msg.seq)
        if client is None:
            return
        heartbeat = msg.heartbeat_interval
        s = self.settings
        if heartbeat is not None and not s.heartbeat_min_ms <= heartbeat <= s.heartbeat_max_ms:
            self._error(conn, msg.seq, E.INVALID_HEARTBEAT_INTERVAL)
            return
        if heartbeat is not None:
            client.heartbeat_interval_ms = conn.heartbeat_ms = heartbeat
            self._arm_dpd(conn)
        kap = msg.keep_active_partition_tie_breaker
        if kap is not None:
            client.keep_active_partition = kap
        reply = SetOptionReply(
            seq=msg.seq,
            heartbeat_interval=client.heartbeat_interval_ms if heartbeat is not None else None,
            keep_active_partition_tie_breaker=client.keep_active_partition
            if kap is not None
            else None,
        )
        self._send(conn, reply)

    def _echo_request(self, conn: Connection, msg: QnetdMessage, raw: bytes) -> None:
        if self._initialised(conn, msg.seq) is not None:
            self._out.append(Send(conn.conn_id, echo_reply_bytes(raw)))

    def _node_list(self, conn: Connection, msg: NodeList, _raw: bytes) -> None:
        client = self._initialised(conn, msg.seq)
        if client is None:
            return
        list_type, seq = msg.node_list_type, msg.seq
        missing = list_type is None or seq is None
        missing = missing or (list_type == NodeListType.MEMBERSHIP and msg.ring_id is None)
        missing = missing or (list_type == NodeListType.QUORUM and msg.quorate is None)
        if missing:
            self._error(conn, seq, E.DOESNT_CONTAIN_REQUIRED_OPTION)
            return
        cluster = self.clusters[client.cluster_name]
        result = self._run_node_list(cluster, client, msg)
        if not self._apply_result(conn, client, result, seq):
            return
        _store_node_list(client, msg)
        self._reply_vote(client, result.reply_vote)
        reply = NodeListReply(
            seq=seq, node_list_type=list_type, ring_id=client.ring_id, vote=result.reply_vote
        )
        self._send(conn, reply)

    def _run_node_list(self, cluster: Cluster, client: ClientState, msg: NodeList) -> AlgoResult:
        algorithm = self.algorithms[client.algorithm]
        if msg.node_list_type in (NodeListType.INITIAL_CONFIG, NodeListType.CHANGED_CONFIG):
            initial = msg.node_list_type == NodeListType.INITIAL_CONFIG
            return algorithm.config_node_list(
                cluster, client, msg.nodes, msg.config_version, initial
            )
        if msg.node_list_type == NodeListType.MEMBERSHIP and msg.ring_id is not None:
            ids = tuple(n.node_id for n in msg.nodes)
            heuristics = _heuristics(msg.heuristics)
            return algorithm.membership_node_list(cluster, client, msg.ring_id, ids, heuristics)
        return algorithm.quorum_node_list(cluster, client, bool(msg.quorate), msg.nodes)

    def _apply_result(
        self, conn: Connection, client: ClientState, result: AlgoResult, seq: int | None
    ) -> bool:
        """Send VOTE_INFOs, apply the timer; False (and SERVER_ERROR) if the algorithm refused."""
        if result.error is not None:
            self._error(conn, seq, result.error)
            return False
        self._apply_timer(conn, result.timer)
        self._emit_votes(result.sends)
        self._log_decision(client, result.decision, result.sends)
        return True

    def _initialised_with_seq(self, conn: Connection, seq: int | None) -> ClientState | None:
        """As `_initialised`, and the message must carry a seq (error 7 otherwise)."""
        client = self._initialised(conn, seq)
        if client is not None and seq is None:
            self._error(conn, None, E.DOESNT_CONTAIN_REQUIRED_OPTION)
            return None
        return client

    def _ask_for_vote(self, conn: Connection, msg: AskForVote, _raw: bytes) -> None:
        client = self._initialised_with_seq(conn, msg.seq)
        if client is None or msg.seq is None:
            return
        cluster = self.clusters[client.cluster_name]
        result = self.algorithms[client.algorithm].ask_for_vote(cluster, client)
        if self._apply_result(conn, client, result, msg.seq):
            self._reply_vote(client, result.reply_vote)
            self._send(
                conn, AskForVoteReply(seq=msg.seq, vote=result.reply_vote, ring_id=client.ring_id)
            )

    def _vote_info_reply(self, conn: Connection, msg: VoteInfoReply, _raw: bytes) -> None:
        client = self._initialised_with_seq(conn, msg.seq)
        if client is None or msg.seq is None:
            return
        cluster = self.clusters[client.cluster_name]
        sends = self.algorithms[client.algorithm].vote_info_reply(cluster, client, msg.seq)
        self._emit_votes(sends)
        if sends:
            self._log_decision(client, "votes released after acknowledgements", sends)

    def _heuristics_change(self, conn: Connection, msg: HeuristicsChange, _raw: bytes) -> None:
        client = self._initialised(conn, msg.seq)
        if client is None:
            return
        if msg.seq is None or msg.heuristics is None:
            self._error(conn, msg.seq, E.DOESNT_CONTAIN_REQUIRED_OPTION)
            return
        cluster = self.clusters[client.cluster_name]
        heuristics = Heuristics(msg.heuristics)
        result = self.algorithms[client.algorithm].heuristics_change(cluster, client, heuristics)
        if not self._apply_result(conn, client, result, msg.seq):
            return
        self._reply_vote(client, result.reply_vote)
        client.regular_heuristics = client.last_heuristics = heuristics
        reply = HeuristicsChangeReply(
            seq=msg.seq, vote=result.reply_vote, ring_id=client.ring_id, heuristics=heuristics
        )
        self._send(conn, reply)

    # ------------------------------------------------------------ votes and logs
    def _reply_vote(self, client: ClientState, vote: Vote) -> None:
        client.last_vote = vote
        if vote in (Vote.ACK, Vote.NACK):
            client.last_ack_nack = vote
        self.stats.votes_sent[vote.name] += 1

    def _emit_votes(self, sends: tuple[VoteSend, ...]) -> None:
        for send in sends:
            conn = self.connections.get(send.client.conn_id)
            if conn is None or conn.client is not send.client:
                continue  # the client is gone (or leaving): nothing to tell it
            client = send.client
            client.vote_info_seq = client.vote_info_seq % MAX_U32 + 1
            self._reply_vote(client, send.vote)
            msg = VoteInfo(seq=client.vote_info_seq, vote=send.vote, ring_id=send.ring_id)
            self._send(conn, msg)

    def _log_decision(
        self, client: ClientState, decision: str, sends: tuple[VoteSend, ...]
    ) -> None:
        if not decision:
            return
        self.stats.decisions += 1
        votes = {str(s.client.node_id): s.vote.name for s in sends}
        self._log(
            "decision",
            "info",
            cluster=client.cluster_name.decode("utf-8", "replace"),
            algorithm=client.algorithm.name,
            trigger_node=client.node_id,
            decision=decision,
            votes=votes,
        )

    def _log(self, event: str, level: str, **fields: Any) -> None:
        self._out.append(Log(event, level, fields))

    @staticmethod
    def _who(conn: Connection) -> dict[str, Any]:
        who: dict[str, Any] = {"conn": conn.conn_id, "address": conn.address}
        if conn.cluster_name is not None:
            who["cluster"] = conn.cluster_name.decode("utf-8", "replace")
        if conn.client is not None:
            who["node_id"] = conn.client.node_id
        return who


def _store_node_list(client: ClientState, msg: NodeList) -> None:
    """Reference 4.6: what the server stores after the algorithm accepted a node list."""
    if msg.node_list_type in (NodeListType.INITIAL_CONFIG, NodeListType.CHANGED_CONFIG):
        client.config_nodes = msg.nodes
        client.config_version = msg.config_version
        client.config_received = True
    elif msg.node_list_type == NodeListType.MEMBERSHIP:
        client.membership_nodes = tuple(n.node_id for n in msg.nodes)
        client.membership_received = True
        client.ring_id = msg.ring_id or client.ring_id
        client.membership_heuristics = client.last_heuristics = _heuristics(msg.heuristics)
    else:
        client.quorum_nodes = msg.nodes
        client.quorate = msg.quorate


def _heuristics(value: int | None) -> Heuristics | None:
    """The heuristics TLV as the enum (absent = undefined = None)."""
    return None if value is None else Heuristics(value)


def _clash(
    cluster: Cluster, tb: TieBreaker, algorithm: DecisionAlgorithm, node_id: int
) -> ReplyErrorCode | None:
    """Reference 4.5 step 9: the first client (node-id order) that differs decides the code."""
    for other in cluster.clients:
        if other.tie_breaker != tb:
            return E.TIE_BREAKER_DIFFERS_FROM_OTHER_NODES
        if other.algorithm != algorithm:
            return E.ALGORITHM_DIFFERS_FROM_OTHER_NODES
        if other.node_id == node_id:
            return E.DUPLICATE_NODE_ID
    return None
