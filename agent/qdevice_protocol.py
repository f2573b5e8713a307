"""The qdevice-net client's vocabulary: its effects, what it sends and accepts, its timers.

Effects the session returns for the runtime to execute; reference sections 4.3 (TLS decision),
4.5 (INIT and the INIT_REPLY checks), 4.6 (node lists) and 8.1 (timer formulas). Pure data and
functions over `QdeviceConfig` and proto messages: no state, clock, sockets or logging. The
session (`agent/qdevice_session.py`) decides when to call them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from agent.config import QdeviceConfig
from proto.qnetd_enums import (
    DecisionAlgorithm,
    NodeListType,
    NodeState,
    OptionType,
    TieBreakerMode,
    TlsSupported,
)
from proto.qnetd_messages import (
    ALL_MESSAGE_TYPES,
    ALL_OPTION_TYPES,
    DEFAULT_MAX_MESSAGE_SIZE,
    Init,
    InitReply,
    NodeList,
    PreinitReply,
)
from proto.qnetd_options import NodeInfo, RingId, TieBreaker

MIN_SERVER_REQUEST_SIZE = DEFAULT_MAX_MESSAGE_SIZE  # 4.5: server must accept >= 32768 B requests
MAX_SERVER_REPLY_SIZE = 16 * 1024 * 1024  # 4.5: and promise replies <= 16 MiB
HEARTBEAT_MIN_MS = 1000  # 8.1: heartbeat clamped to [1000, 120000] ms
HEARTBEAT_MAX_MS = 120000
RETRY_INIT_CODES = frozenset({15, 16, 17})  # 4.5: the only INIT_REPLY errors that reconnect
CAST_VOTE_PER_HEARTBEAT = 0.625  # 8.1: heartbeat = 0.8 x timeout, cast_vote = 0.5 x timeout
# Reconnect backoff (docs/design.md 3.5; qdevice waits 0-4.5 s, or 8 s after a refused connect):
RECONNECT_FIRST = 0.2  # seconds; the first retry after a session that worked: 0.1-0.2 s
RECONNECT_GROWTH = 1.5  # per consecutive failed attempt
RECONNECT_CAP = 3.0  # the delay never exceeds this (before jitter)
RECONNECT_JITTER = 0.5  # the delay is drawn from [JITTER x d, d]

_TLS_SETTING = {"off": 0, "on": 1, "required": 2}
_ALGORITHMS = {
    "test": DecisionAlgorithm.TEST,
    "ffsplit": DecisionAlgorithm.FFSPLIT,
    "2nodelms": DecisionAlgorithm.TWO_NODE_LMS,
    "lms": DecisionAlgorithm.LMS,
}


@dataclass(frozen=True, slots=True)
class Connect:
    """Open TCP to cfg.host:cfg.port; call `connected()` or `disconnected()`."""


@dataclass(frozen=True, slots=True)
class SendMsg:
    """Write these bytes (one encoded message) in order."""

    data: bytes


@dataclass(frozen=True, slots=True)
class StartTls:
    """Upgrade to TLS right after the preceding SendMsg is written; then `tls_established()`."""


@dataclass(frozen=True, slots=True)
class Close:
    """Close the connection (if still open); the session reconnects itself at `reconnect_at`.

    None = give up: a real qdevice would exit. After executing Close the runtime must not report
    `disconnected()` for that connection.
    """

    reason: str
    reconnect_at: float | None
    refused: bool = False
    """A refusal (`reconnect = False`: ffsplit gives up, lms retries), not a lost connection:
    the runtime logs it as a warning (rate-limited) or an error, not as an info line."""


@dataclass(frozen=True, slots=True)
class PlainText:
    """The connection goes on without TLS (tls = "off", or a downgrade the operator allowed):
    the runtime warns, on every such connect."""

    reason: str


@dataclass(frozen=True, slots=True)
class RunHeuristics:
    """Run cfg.heuristics (each within cfg.heuristics_timeout); then `heuristics_result()`."""


@dataclass(frozen=True, slots=True)
class VoteChanged:
    """`vote` or `ring` changed: votequorum counts (True) or stops counting (False) the device
    votes for the current ring; `ring` is the (node id, seq) of the ring the last unrevoked ACK
    was for (None: no ACK held), which the node may keep counting during a membership change
    (design §3.4)."""

    vote: bool
    reason: str
    ring: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class SessionEvent:
    """'connected' (initial burst sent) or 'disconnected' (a connected session ended)."""

    name: str
    reason: str


QdEffect: TypeAlias = (
    Connect | SendMsg | StartTls | PlainText | Close | RunHeuristics | VoteChanged | SessionEvent
)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why the client drops the connection, and whether qdevice would reconnect (4.8)."""

    reason: str
    reconnect: bool


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """What a good INIT_REPLY told us: message size limits and KAP support."""

    max_request_size: int
    """Largest message we may send (SERVER_MAXIMUM_REQUEST_SIZE)."""
    max_reply_size: int
    """Largest message we accept from now on (SERVER_MAXIMUM_REPLY_SIZE)."""
    kap_supported: bool
    """The server listed option 23, so the initial burst starts with SET_OPTION KAP."""


@dataclass(slots=True)
class Connection:
    """The session's per-connection state; a fresh one after every close."""

    tcp_up: bool = False
    started_at: float = 0.0
    connect_deadline: float | None = None
    """started_at + connect_timeout until a good INIT_REPLY."""
    echo_at: float | None = None
    echo_sent: int = 0
    """Echo seq: its own counter, restarted at 0 with the echo timer (reference 4.2)."""
    echo_received: int = 0
    limits: ServerLimits | None = None
    heuristics_for: str | None = None
    """'connect' or 'membership' while a RunHeuristics result is awaited."""
    quorum_dirty: bool = False
    """A quorum change waits for the pending membership list."""
    ask_at: float | None = None
    """lms answered WAIT_FOR_REPLY for our ring: ASK_FOR_VOTE again then (design §3.4)."""


@dataclass(frozen=True, slots=True)
class Timers:
    """Client timers derived from `QdeviceConfig.heartbeat_interval` (reference 8.1)."""

    heartbeat_ms: int
    """round(heartbeat_interval x 1000) clamped to [1000, 120000]; sent in INIT."""

    @property
    def heartbeat(self) -> float:
        """Echo period and echo timeout in seconds."""
        return self.heartbeat_ms / 1000

    @property
    def connect_timeout(self) -> float:
        """connect() to a good INIT_REPLY: qdevice's default = the heartbeat interval."""
        return self.heartbeat

    @property
    def cast_vote_interval(self) -> float:
        """0.5 x device timeout = 0.625 x heartbeat (5 s for the 8 s default)."""
        return self.heartbeat * CAST_VOTE_PER_HEARTBEAT

    @classmethod
    def of(cls, cfg: QdeviceConfig) -> Timers:
        """Timers for one configuration."""
        wanted = round(cfg.heartbeat_interval * 1000)
        return cls(min(HEARTBEAT_MAX_MS, max(HEARTBEAT_MIN_MS, wanted)))


def algorithm_of(cfg: QdeviceConfig) -> DecisionAlgorithm:
    """The DECISION_ALGORITHM code for `cfg.algorithm`."""
    return _ALGORITHMS[cfg.algorithm]


def tie_breaker_of(cfg: QdeviceConfig) -> TieBreaker:
    """TIE_BREAKER: lowest, highest or a named node (node id sent only in mode 3)."""
    if cfg.tie_breaker == "lowest":
        return TieBreaker(TieBreakerMode.LOWEST)
    if cfg.tie_breaker == "highest":
        return TieBreaker(TieBreakerMode.HIGHEST)
    return TieBreaker(TieBreakerMode.NODE_ID, int(cfg.tie_breaker))


def reconnect_delay(failures: int, draw: float) -> float:
    """Seconds until the next connect after `failures` consecutive failed attempts (0 after a
    session that worked); `draw` in [0, 1] picks the point in the jitter range."""
    ceiling = min(RECONNECT_CAP, RECONNECT_FIRST * RECONNECT_GROWTH ** min(failures, 64))
    return ceiling * (RECONNECT_JITTER + (1 - RECONNECT_JITTER) * draw)


def use_tls(server_mode: int, client_setting: str, allow_downgrade: bool = False) -> bool | None:
    """Reference 4.3 table, but `on` only falls back to plain text with `allow_downgrade`:
    True = STARTTLS, False = stay plain, None = refuse (incompatible)."""
    client = _TLS_SETTING[client_setting]
    if server_mode == TlsSupported.UNSUPPORTED:
        if client == TlsSupported.UNSUPPORTED:
            return False
        return False if client == TlsSupported.SUPPORTED and allow_downgrade else None
    if server_mode == TlsSupported.REQUIRED:
        return None if client == TlsSupported.UNSUPPORTED else True
    return client != TlsSupported.UNSUPPORTED


def check_preinit_reply(msg: PreinitReply, expected_seq: int, cfg: QdeviceConfig) -> bool | Refusal:
    """Whether to STARTTLS after this PREINIT_REPLY, or why to drop the connection."""
    if msg.seq != expected_seq:
        return Refusal(f"PREINIT_REPLY seq {msg.seq}, expected {expected_seq}", reconnect=False)
    if msg.tls_supported is None or msg.tls_client_cert_required is None:
        return Refusal("PREINIT_REPLY lacks a TLS option", reconnect=False)
    decision = use_tls(msg.tls_supported, cfg.tls, cfg.allow_tls_downgrade)
    if decision is not None:
        return decision
    if msg.tls_supported == TlsSupported.UNSUPPORTED:
        allow = (
            ", or set qdevice.allow_tls_downgrade = true to accept it" if cfg.tls == "on" else ""
        )
        return Refusal(
            f"qnetd offers no TLS and qdevice.tls = {cfg.tls}: refusing plain text (the "
            f"arbitrator cannot be authenticated); enable TLS on the qnetd{allow}",
            reconnect=False,
        )
    return Refusal(f"incompatible TLS: server {msg.tls_supported}, us {cfg.tls}", reconnect=False)


def build_init(seq: int, node_id: int, cfg: QdeviceConfig, ring: RingId) -> Init:
    """INIT as qdevice 3.0.3 sends it: every message and option type supported."""
    return Init(
        seq=seq,
        supported_messages=ALL_MESSAGE_TYPES,
        supported_options=ALL_OPTION_TYPES,
        node_id=node_id,
        decision_algorithm=algorithm_of(cfg),
        heartbeat_interval=Timers.of(cfg).heartbeat_ms,
        tie_breaker=tie_breaker_of(cfg),
        ring_id=ring,
    )


def check_init_reply(  # noqa: PLR0911 (the reference's check list, in order)
    msg: InitReply, expected_seq: int, cfg: QdeviceConfig
) -> ServerLimits | Refusal:
    """The INIT_REPLY checks of reference 4.5, in qdevice's order; the first failure wins."""
    if msg.seq != expected_seq:
        return Refusal(f"INIT_REPLY seq {msg.seq}, expected {expected_seq}", reconnect=False)
    code = msg.reply_error_code
    if code is None:
        return Refusal("INIT_REPLY lacks the error code", reconnect=False)
    if code != 0:
        return Refusal(f"INIT refused with code {code}", reconnect=code in RETRY_INIT_CODES)
    request, reply = msg.server_maximum_request_size, msg.server_maximum_reply_size
    if request is None or reply is None:
        return Refusal("INIT_REPLY lacks the maximum sizes", reconnect=False)
    if msg.supported_messages is None or msg.supported_options is None:
        return Refusal("INIT_REPLY lacks the supported message/option lists", reconnect=False)
    if msg.supported_decision_algorithms is None:
        return Refusal("INIT_REPLY lacks the supported algorithms", reconnect=False)
    if request < MIN_SERVER_REQUEST_SIZE or reply > MAX_SERVER_REPLY_SIZE:
        return Refusal(f"incompatible message size {request}/{reply}", reconnect=False)
    if algorithm_of(cfg) not in msg.supported_decision_algorithms:
        return Refusal(f"server lacks algorithm {cfg.algorithm}", reconnect=False)
    if cfg.heuristics and OptionType.HEURISTICS not in msg.supported_options:
        return Refusal("server does not support heuristics", reconnect=False)
    kap = OptionType.KEEP_ACTIVE_PARTITION_TIE_BREAKER in msg.supported_options
    return ServerLimits(request, reply, kap_supported=kap)


def config_list(seq: int, kind: NodeListType, nodes: tuple[int, ...], version: int) -> NodeList:
    """NODE_LIST type 0/1: one NODE_INFO per configured node, no state."""
    infos = tuple(NodeInfo(n) for n in nodes)
    return NodeList(seq=seq, node_list_type=kind, config_version=version, nodes=infos)


def membership_list(
    seq: int, ring: RingId, members: tuple[int, ...], heuristics: int | None
) -> NodeList:
    """NODE_LIST type 2: the ring, its members, heuristics only when enabled and known."""
    infos = tuple(NodeInfo(n) for n in members)
    return NodeList(
        seq=seq,
        node_list_type=NodeListType.MEMBERSHIP,
        ring_id=ring,
        nodes=infos,
        heuristics=heuristics,
    )


def quorum_list(
    seq: int, quorate: bool, members: tuple[int, ...], configured: tuple[int, ...]
) -> NodeList:
    """NODE_LIST type 3: every known node, member or dead, and the quorate flag."""
    known = sorted(set(members) | set(configured))
    infos = tuple(
        NodeInfo(n, state=NodeState.MEMBER if n in members else NodeState.DEAD) for n in known
    )
    return NodeList(seq=seq, node_list_type=NodeListType.QUORUM, quorate=quorate, nodes=infos)
