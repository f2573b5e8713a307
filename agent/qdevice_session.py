"""The client half of the qnetd protocol (qdevice-net, reference sections 4 and 7.1), sans-IO.

Owns one qdevice connection's life: connect, PREINIT, the TLS decision and STARTTLS, INIT, the
initial burst (SET_OPTION KAP, config, membership, quorum lists), votes, echoes, the connect
timeout and the reconnect backoff. Inputs are method calls with `now`; outputs are effects the
runtime executes. It never touches sockets, TLS, the clock, logs, or votequorum weights: it only
says whether the device vote may be counted (`vote`).

States: disconnected -> connecting -> waiting_preinit_reply -> [tls] -> waiting_init_reply
-> connected -> disconnected. Between a good INIT_REPLY and the initial burst the state stays
waiting_init_reply while the connect heuristics run.
"""

from __future__ import annotations

import random

from agent.config import QdeviceConfig
from agent.qdevice_protocol import (
    Close,
    Connect,
    Connection,
    PlainText,
    QdEffect,
    Refusal,
    RunHeuristics,
    SendMsg,
    SessionEvent,
    StartTls,
    Timers,
    VoteChanged,
    algorithm_of,
    build_init,
    check_init_reply,
    check_preinit_reply,
    config_list,
    membership_list,
    quorum_list,
    reconnect_delay,
)
from agent.qdevice_votes import VoteMessage, VoteTracker, vote_fields
from proto import qnetd_messages as qm
from proto.errors import LocalProtocolError
from proto.qnetd_enums import DecisionAlgorithm, Heuristics, NodeListType, Vote
from proto.qnetd_options import RingId

__all__ = [
    "Close",
    "Connect",
    "PlainText",
    "QdEffect",
    "QdeviceSession",
    "RunHeuristics",
    "SendMsg",
    "SessionEvent",
    "StartTls",
    "VoteChanged",
]

SEQ_MASK = 0xFFFFFFFF  # MSG_SEQ_NUMBER is a u32 (reference 2.2)
ASK_AGAIN = 0.05
"""Seconds between ASK_FOR_VOTEs while lms answers WAIT_FOR_REPLY for our ring. Without them
the answer comes from lms' own timer, heartbeat/4 later (2 s with the default 8 s heartbeat),
although the partition's last member usually reports within one mesh heartbeat."""


class QdeviceSession:
    """One node's qdevice-net client; drive it with the methods below, execute what they return."""

    def __init__(
        self,
        node_id: int,
        cluster_name: str,
        cfg: QdeviceConfig,
        rng: random.Random | None = None,
    ) -> None:
        self._node_id = node_id
        self._cluster = cluster_name.encode()
        self._cfg = cfg
        self._rng = rng if rng is not None else random.Random()
        self._timers = Timers.of(cfg)
        self._lms = algorithm_of(cfg) is DecisionAlgorithm.LMS
        self._state = "disconnected"
        self._seq = 1  # one counter per process, never reset (reference 4.2)
        self._expected_seq = 0
        self._votes = VoteTracker()
        self._last_vote: tuple[bool, tuple[int, int] | None] = (False, None)
        self._vote_reason = ""
        self._config: tuple[tuple[int, ...], int] | None = None
        self._config_sent: tuple[tuple[int, ...], int] | None = None
        self._ring: RingId | None = None
        self._members: tuple[int, ...] = ()
        self._quorum: tuple[bool, tuple[int, ...]] = (False, ())
        self._heuristics: int | None = None
        self._reconnect_at: float | None = 0.0  # first connect as soon as we know a ring
        self._failures = 0  # failed attempts since the last session that worked (backoff)
        self._c = Connection()

    # ----- properties -------------------------------------------------------------------------

    @property
    def vote(self) -> bool:
        """Device votes may be counted: ACK for our current ring, connected, not paused."""
        return self._state == "connected" and self._votes.counted

    @property
    def held_ring(self) -> tuple[int, int] | None:
        """(node id, seq) of the ring whose ACK no NACK or disconnect has revoked, while
        connected; it stays through a membership change until qnetd answers for the new ring."""
        acked = self._votes.acked
        if self._state != "connected" or acked is None:
            return None
        return (acked.node_id, acked.seq)

    @property
    def state(self) -> str:
        """disconnected, connecting, waiting_preinit_reply, tls, waiting_init_reply, connected."""
        return self._state

    @property
    def max_receive_size(self) -> int:
        """Largest whole message to accept: 32768 until INIT_REPLY, then the server's reply size."""
        return self._c.limits.max_reply_size if self._c.limits else qm.DEFAULT_MAX_MESSAGE_SIZE

    def next_deadline(self) -> float | None:
        """When `tick()` has work: connect timeout, echo timer or reconnect; None = nothing."""
        if self._state == "disconnected":
            return self._reconnect_at if self._ready() else None
        timers = (self._c.connect_deadline, self._c.echo_at, self._c.ask_at)
        candidates = [t for t in timers if t is not None]
        return min(candidates, default=None)

    # ----- inputs -----------------------------------------------------------------------------

    def connected(self, now: float) -> list[QdEffect]:
        """TCP is up: send PREINIT with the current seq (not incremented, reference 4.2)."""
        self._require("connecting", "connected()")
        self._c.tcp_up = True
        self._state = "waiting_preinit_reply"
        self._expected_seq = self._seq
        return self._emit(now, [qm.Preinit(seq=self._seq, cluster_name=self._cluster)])

    def tls_established(self, now: float) -> list[QdEffect]:
        """The TLS handshake after STARTTLS finished: send INIT inside TLS."""
        self._require("tls", "tls_established()")
        return self._send_init(now)

    def received(self, msg: qm.QnetdMessage, now: float) -> list[QdEffect]:
        """One whole message from qnetd; dropped when no connection is up (we closed it)."""
        if self._state in {"disconnected", "connecting"}:
            return []
        return self._observe(self._dispatch(msg, now))

    def disconnected(self, reason: str, now: float) -> list[QdEffect]:
        """The runtime lost the connection (refused, closed, read/TLS/decode error): reconnect."""
        if self._state == "disconnected":
            return []
        return self._observe(self._close(now, reason, reconnect=True))

    def tick(self, now: float) -> list[QdEffect]:
        """Fire due timers: connect timeout, echo (and echo-reply check), reconnect."""
        effects: list[QdEffect] = []
        if self._c.connect_deadline is not None and now >= self._c.connect_deadline:
            effects += self._close(now, "connect timeout", reconnect=True)
        elif self._c.echo_at is not None and now >= self._c.echo_at:
            effects += self._echo_timer(now)
        if self._state == "connected" and self._c.ask_at is not None and now >= self._c.ask_at:
            self._c.ask_at = None  # the reply re-arms it if lms still waits
            effects += self._emit(now, [qm.AskForVote(seq=self._next_seq())])
        return self._observe(effects + self._maybe_connect(now))

    def set_config(self, nodes: tuple[int, ...], config_version: int, now: float) -> list[QdEffect]:
        """The configured node list; sent as a changed-config list when connected."""
        self._config = (tuple(nodes), config_version)
        effects: list[QdEffect] = []
        if self._state == "connected" and self._config != self._config_sent:
            effects = self._emit(now, [self._config_list(NodeListType.CHANGED_CONFIG)])
        return self._observe(effects + self._maybe_connect(now))

    def set_membership(
        self, ring: tuple[int, int], members: tuple[int, ...], now: float
    ) -> list[QdEffect]:
        """A new votequorum ring: pause the vote, (run heuristics,) send the membership list.

        Repeating the current ring and members changes nothing (no vote blip)."""
        new = (RingId(node_id=ring[0], seq=ring[1]), tuple(members))
        if new == (self._ring, self._members):
            return []
        self._ring, self._members = new
        effects: list[QdEffect] = []
        if self._state == "connected":
            self._votes.pause()
            self._vote_reason = f"membership change to ring {self._ring}"
            effects = self._membership_changed(now)
        return self._observe(effects + self._maybe_connect(now))

    def set_quorum(self, quorate: bool, members: tuple[int, ...], now: float) -> list[QdEffect]:
        """votequorum's verdict; sent as a quorum list (after a pending membership list)."""
        changed = (quorate, tuple(members)) != self._quorum
        self._quorum = (quorate, tuple(members))
        if self._state != "connected" or not changed:
            return []
        if self._c.heuristics_for is not None:
            self._c.quorum_dirty = True
            return []
        return self._observe(self._emit(now, [self._quorum_list()]))

    def heuristics_result(self, passed: bool | None, now: float) -> list[QdEffect]:
        """Result of RunHeuristics (None = off/undefined); also accepts unsolicited results."""
        value = None if passed is None else (Heuristics.PASS if passed else Heuristics.FAIL)
        previous, self._heuristics = self._heuristics, value
        pending, self._c.heuristics_for = self._c.heuristics_for, None
        if pending == "connect" and self._state == "waiting_init_reply":
            return self._observe(self._initial_burst(now))
        if pending == "membership" and self._state == "connected":
            return self._observe(self._send_membership(now))
        if self._state == "connected" and value is not None and value != previous:
            return self._observe(
                self._emit(now, [qm.HeuristicsChange(seq=self._next_seq(), heuristics=value)])
            )
        return []

    # ----- message handlers -------------------------------------------------------------------

    def _dispatch(self, msg: qm.QnetdMessage, now: float) -> list[QdEffect]:  # noqa: PLR0911
        """One case per server message type (reference 3.2)."""
        match msg:
            case qm.PreinitReply():
                return self._on_preinit_reply(msg, now)
            case qm.InitReply():
                return self._on_init_reply(msg, now)
            case qm.ServerError():
                return self._close(now, f"SERVER_ERROR code {msg.reply_error_code}", False)
            case qm.SetOptionReply() if self._state == "connected":
                return []  # informational: we never change the heartbeat with SET_OPTION
            case qm.EchoReply():
                return self._on_echo_reply(msg, now)
            case (
                qm.NodeListReply()
                | qm.AskForVoteReply()
                | qm.VoteInfo()
                | qm.HeuristicsChangeReply()
            ):
                return self._on_vote(msg, now)
        reason = f"unexpected {type(msg).__name__} while {self._state}"
        return self._close(now, reason, reconnect=False)

    def _on_preinit_reply(self, msg: qm.PreinitReply, now: float) -> list[QdEffect]:
        if self._state != "waiting_preinit_reply":
            return self._close(now, f"unexpected PreinitReply while {self._state}", False)
        decision = check_preinit_reply(msg, self._expected_seq, self._cfg)
        if isinstance(decision, Refusal):
            return self._close(now, decision.reason, decision.reconnect)
        if not decision:
            why = (
                "qdevice.tls = off"
                if self._cfg.tls == "off"
                else "qnetd offers no TLS; downgrade allowed by qdevice.allow_tls_downgrade"
            )
            return [PlainText(why), *self._send_init(now)]
        self._state = "tls"
        return [*self._emit(now, [qm.StartTls(seq=self._next_seq())]), StartTls()]

    def _on_init_reply(self, msg: qm.InitReply, now: float) -> list[QdEffect]:
        if self._state != "waiting_init_reply" or self._c.limits is not None:
            return self._close(now, f"unexpected InitReply while {self._state}", False)
        verdict = check_init_reply(msg, self._expected_seq, self._cfg)
        if isinstance(verdict, Refusal):
            return self._close(now, verdict.reason, verdict.reconnect)
        self._c.limits = verdict
        self._c.connect_deadline = None
        self._c.echo_sent = self._c.echo_received = 0
        self._c.echo_at = now + self._timers.heartbeat
        if not self._cfg.heuristics:
            self._heuristics = None
            return self._initial_burst(now)
        self._c.heuristics_for = "connect"
        return [RunHeuristics()]

    def _on_echo_reply(self, msg: qm.EchoReply, now: float) -> list[QdEffect]:
        if msg.seq is None:
            return self._close(now, "ECHO_REPLY without seq", reconnect=False)
        if msg.seq != self._c.echo_sent:  # reconnect: the reference does not classify this one
            return self._close(now, f"ECHO_REPLY seq {msg.seq}, sent {self._c.echo_sent}", True)
        self._c.echo_received = msg.seq
        return []

    def _on_vote(self, msg: VoteMessage, now: float) -> list[QdEffect]:
        name = type(msg).__name__
        if self._state != "connected":
            return self._close(now, f"unexpected {name} while {self._state}", reconnect=False)
        fields = vote_fields(msg)
        if isinstance(fields, str):
            return self._close(now, f"{name} without {fields}", reconnect=False)
        self._vote_reason = self._votes.apply(*fields)
        vote, ring = fields
        if self._lms and ring == self._votes.sent_ring:
            if vote != Vote.WAIT_FOR_REPLY:
                self._c.ask_at = None
            elif not isinstance(msg, qm.VoteInfo):
                self._c.ask_at = now + ASK_AGAIN
        if isinstance(msg, qm.VoteInfo):
            return self._emit(now, [qm.VoteInfoReply(seq=msg.seq)])
        return []

    # ----- sending ----------------------------------------------------------------------------

    def _send_init(self, now: float) -> list[QdEffect]:
        ring = self._current_ring()
        self._state = "waiting_init_reply"
        self._expected_seq = self._next_seq()
        self._votes.init_sent(ring)
        return self._emit(now, [build_init(self._expected_seq, self._node_id, self._cfg, ring)])

    def _initial_burst(self, now: float) -> list[QdEffect]:
        """Reference 4.6: SET_OPTION KAP (if supported), config, membership, quorum lists."""
        messages: list[qm.QnetdMessage] = []
        if self._c.limits is not None and self._c.limits.kap_supported:
            messages.append(
                qm.SetOption(seq=self._next_seq(), keep_active_partition_tie_breaker=True)
            )
        messages += [self._config_list(NodeListType.INITIAL_CONFIG), self._membership_list()]
        messages.append(self._quorum_list())
        effects = self._emit(now, messages)
        if self._state == "disconnected":
            return effects
        self._state = "connected"
        self._failures = 0
        self._vote_reason = "connected, waiting for qnetd's vote"
        return [*effects, SessionEvent("connected", f"qnetd {self._cfg.host}:{self._cfg.port}")]

    def _membership_changed(self, now: float) -> list[QdEffect]:
        if not self._cfg.heuristics:
            return self._send_membership(now)
        if self._c.heuristics_for is None:
            self._c.heuristics_for = "membership"
            return [RunHeuristics()]
        return []  # a run is pending; its result goes with the latest membership

    def _send_membership(self, now: float) -> list[QdEffect]:
        self._c.ask_at = None  # the list's reply answers for the new ring
        messages: list[qm.QnetdMessage] = [self._membership_list()]
        if self._c.quorum_dirty:
            self._c.quorum_dirty = False
            messages.append(self._quorum_list())
        return self._emit(now, messages)

    def _config_list(self, kind: NodeListType) -> qm.QnetdMessage:
        if self._config is None:
            raise LocalProtocolError("no config list yet")
        self._config_sent = self._config
        return config_list(self._next_seq(), kind, *self._config)

    def _membership_list(self) -> qm.QnetdMessage:
        ring = self._current_ring()
        self._votes.membership_sent(ring)
        return membership_list(self._next_seq(), ring, self._members, self._heuristics)

    def _quorum_list(self) -> qm.QnetdMessage:
        configured = self._config[0] if self._config else ()
        return quorum_list(self._next_seq(), *self._quorum, configured)

    def _emit(self, now: float, messages: list[qm.QnetdMessage]) -> list[QdEffect]:
        """Encode; a message over the server's request limit drops the connection (no retry)."""
        limit = self._c.limits.max_request_size if self._c.limits else qm.DEFAULT_MAX_MESSAGE_SIZE
        effects: list[QdEffect] = []
        for msg in messages:
            data = qm.encode(msg)
            if len(data) > limit:
                return self._close(now, f"{type(msg).__name__} of {len(data)} B > {limit}", False)
            effects.append(SendMsg(data))
        return effects

    # ----- timers and connection life ---------------------------------------------------------

    def _echo_timer(self, now: float) -> list[QdEffect]:
        """Reference 4.7: the previous echo must be answered by now, else disconnect."""
        if self._c.echo_received != self._c.echo_sent:
            return self._close(now, "echo reply missing", reconnect=True)
        self._c.echo_sent += 1
        self._c.echo_at = now + self._timers.heartbeat
        return self._emit(now, [qm.EchoRequest(seq=self._c.echo_sent)])

    def _maybe_connect(self, now: float) -> list[QdEffect]:
        due = self._reconnect_at is not None and now >= self._reconnect_at
        if self._state != "disconnected" or not self._ready() or not due:
            return []
        self._state = "connecting"
        self._c.started_at = now
        self._c.connect_deadline = now + self._timers.connect_timeout
        return [Connect()]

    def _close(self, now: float, reason: str, reconnect: bool) -> list[QdEffect]:
        """End the connection: vote NACK, schedule the reconnect (lms always reconnects) after
        the backoff of docs/design.md 3.5."""
        was_connected = self._state == "connected"
        if not (reconnect or self._lms):
            self._reconnect_at = None
        else:
            self._reconnect_at = now + reconnect_delay(self._failures, self._rng.random())
            self._failures += 1
        self._votes.lost()
        self._vote_reason = f"qnetd connection lost: {reason}"
        self._state = "disconnected"
        self._c = Connection()
        effects: list[QdEffect] = [Close(reason, self._reconnect_at, refused=not reconnect)]
        if was_connected:
            effects.append(SessionEvent("disconnected", reason))
        return effects

    def _ready(self) -> bool:
        """INIT needs a ring id and the initial burst a config list."""
        return self._ring is not None and self._config is not None

    def _current_ring(self) -> RingId:
        if self._ring is None:
            raise LocalProtocolError("no ring id yet: call set_membership() first")
        return self._ring

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & SEQ_MASK
        return self._seq

    def _require(self, state: str, what: str) -> None:
        if self._state != state:
            raise LocalProtocolError(f"{what} while {self._state}, expected {state}")

    def _observe(self, effects: list[QdEffect]) -> list[QdEffect]:
        """Add VoteChanged when `vote` or `held_ring` differs from what we last reported: after
        the other effects, except a revocation, which goes first so that the node stops counting
        the device before a VOTE_INFO_REPLY acknowledges a NACK (design §3.4)."""
        now = (self.vote, self.held_ring)
        if now == self._last_vote:
            return effects
        revoked = self._last_vote[1] is not None and now[1] is None
        self._last_vote = now
        change = VoteChanged(self.vote, self._vote_reason, self.held_ring)
        return [change, *effects] if revoked else [*effects, change]
