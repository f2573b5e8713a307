"""A qnetd inside the simulated network: the real sans-IO arbitrator and the real client session.

`SimQnetd` runs one `qnetd.arbitration.QnetdCore` with the real decision algorithms (ffsplit,
lms) and, per running node, the agent's own `agent.qdevice_session.QdeviceSession`. Between
them every message is encoded and decoded as on the wire and takes `delay` seconds each way
(a TCP connection: nothing is lost or reordered; TLS is off, which changes no vote). The
node's `QdeviceUpdate` effects drive its session; the session's `VoteChanged` reaches the node
as `QdeviceVote` (after the current event, never re-entrantly).

Faults: a crash or clean stop closes the node's connection (qnetd hears it after `delay`); a
paused node's session is paused too (what arrives for it waits until it resumes); the node's
path to the qnetd can be cut (`cut_qnetd`): messages wait (TCP retransmits) until it is uncut,
and the echo timers on both sides run, so a long cut drops the connection as in real life.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agent.config import QdeviceConfig
from agent.qdevice_session import (
    Close,
    Connect,
    QdEffect,
    QdeviceSession,
    SendMsg,
    SessionEvent,
    VoteChanged,
)
from proto import qnetd_messages as qm
from proto.qnetd_enums import TlsSupported
from qnetd.algorithms.registry import ALGORITHMS
from qnetd.arbitration import QnetdCore
from qnetd.core_events import Accepted, ConnectionClosed, Disconnect, Log, Received, Send, Tick
from qnetd.core_events import Effect as CoreEffect
from qnetd.settings import QnetdSettings
from votemesh_lab.sim import iface

if TYPE_CHECKING:
    from votemesh_lab.sim.network import SimNetwork

QNETD_DELAY = 0.0005
"""One-way delay between a node and the qnetd (seconds)."""


def sim_qdevice_config(algorithm: str = "ffsplit", heartbeat: float = 8.0) -> QdeviceConfig:
    """The `[qdevice]` table of every simulated node: TLS off, tie-breaker lowest."""
    return QdeviceConfig(
        host="qnetd.sim", algorithm=algorithm, tls="off", heartbeat_interval=heartbeat
    )


@dataclass
class _Client:
    """One node's session and its current connection."""

    session: QdeviceSession
    conn: int | None = None
    connected: bool = False
    timer_token: int = 0
    held: list[Callable[[], None]] = field(default_factory=list)
    """Deliveries waiting while the node is paused or its path to the qnetd is cut."""


class SimQnetd:
    """The qnetd of one simulated cluster; attach with `SimNetwork.attach_qnetd`."""

    def __init__(self, net: SimNetwork, cfg: QdeviceConfig, *, delay: float = QNETD_DELAY) -> None:
        self.net = net
        self.cfg = cfg
        self.delay = delay
        settings = QnetdSettings(tls=TlsSupported.UNSUPPORTED, client_cert_required=False)
        self.core = QnetdCore(settings, ALGORITHMS)
        self.clients: dict[int, _Client] = {}
        self.cut: set[int] = set()
        """Nodes whose path to the qnetd is cut."""
        self._conn_ids = 0
        self._conn_node: dict[int, int] = {}
        self._core_token = 0
        self._core_timer: float | None = None
        self.decisions = 0

    # ---- what the network calls --------------------------------------------------------

    def node_started(self, node: int) -> None:
        """A (re)started node: a fresh session (its own seq counter, no vote)."""
        rng = random.Random(self.net.seed * 1009 + node * 31 + len(self.clients))
        session = QdeviceSession(node, "sim", self.cfg, rng=rng)
        self.clients[node] = _Client(session)
        nodes = tuple(sorted(self.net.configs))
        self._session(node, lambda now: session.set_config(nodes, 1, now))

    def node_gone(self, node: int, why: str) -> None:
        """Crash or clean stop: the session is gone, the kernel closes its connection."""
        client = self.clients.pop(node, None)
        if client is None or client.conn is None:
            return
        conn = client.conn
        self._later(lambda: self._core(ConnectionClosed(conn, why)))

    def update(self, node: int, effect: iface.QdeviceUpdate) -> None:
        """The node installed a view or changed its verdict (a `QdeviceUpdate` effect)."""
        client = self.clients.get(node)
        if client is None:
            return
        ring, members, quorate = effect.ring, effect.members, effect.quorate
        session = client.session
        self._session(node, lambda now: session.set_membership(ring, members, now))
        self._session(node, lambda now: session.set_quorum(quorate, members, now))

    def cut_qnetd(self, node: int) -> None:
        """The node's path to the qnetd stops carrying data (both directions)."""
        self.cut.add(node)
        self.net.note(f"cut n{node}<->qnetd")

    def uncut_qnetd(self, node: int) -> None:
        """The path works again: what waited is delivered, in order."""
        self.cut.discard(node)
        self.net.note(f"uncut n{node}<->qnetd")
        client = self.clients.get(node)
        if client is not None:
            held, client.held = client.held, []
            for deliver in held:
                self.net.at(self.net.now + self.delay, deliver)

    def resumed(self, node: int) -> None:
        """A paused node runs again: its session catches up."""
        client = self.clients.get(node)
        if client is None:
            return
        held, client.held = client.held, []
        for deliver in held:
            deliver()
        self._arm_session(node)

    # ---- the session side ----------------------------------------------------------------

    def _blocked(self, node: int) -> bool:
        slot = self.net.slots.get(node)
        return node in self.cut or (slot is not None and slot.paused_until is not None)

    def _session(self, node: int, call: Callable[[float], list[QdEffect]]) -> None:
        client = self.clients.get(node)
        if client is None:
            return
        self._execute(node, client, call(self.net.now))
        self._arm_session(node)

    def _execute(self, node: int, client: _Client, effects: list[QdEffect]) -> None:
        for effect in effects:
            if isinstance(effect, Connect):
                self._connect(node, client)
            elif isinstance(effect, SendMsg):
                self._to_core(node, client, effect.data)
            elif isinstance(effect, Close):
                conn, client.conn = client.conn, None
                if conn is not None:
                    self._later(functools.partial(self._core, ConnectionClosed(conn, "closed")))
            elif isinstance(effect, VoteChanged):
                vote = iface.QdeviceVote(effect.vote, client.connected, effect.reason, effect.ring)
                self.net.note(f"n{node} qdevice vote={effect.vote} ring={effect.ring}")
                self.net.records.append(
                    {"t": self.net.now, "node": "qnetd", "kind": "qnetd_vote", "src": "sim"}
                    | {"to": node, "vote": "ack" if effect.vote else "nack"}
                )
                self.net.at(self.net.now, functools.partial(self._to_node, node, client, vote))
            elif isinstance(effect, SessionEvent):
                client.connected = effect.name == "connected"
                vote = iface.QdeviceVote(
                    client.session.vote, client.connected, effect.reason, client.session.held_ring
                )
                self.net.at(self.net.now, functools.partial(self._to_node, node, client, vote))
            # StartTls and RunHeuristics do not happen: TLS off, no heuristics

    def _to_node(self, node: int, client: _Client, vote: iface.QdeviceVote) -> None:
        if self.clients.get(node) is client and self.net.slots[node].core is not None:
            self.net.call(node, vote)

    def _connect(self, node: int, client: _Client) -> None:
        self._conn_ids += 1
        conn = self._conn_ids
        client.conn = conn
        self._conn_node[conn] = node

        def accepted() -> None:
            if client.conn != conn or self.clients.get(node) is not client:
                return
            self._core(Accepted(conn, f"sim-n{node}"))
            self._later(lambda: self._from_core(node, client, conn, None))

        self._later(accepted)

    def _to_core(self, node: int, client: _Client, data: bytes) -> None:
        conn = client.conn
        if conn is None:
            return

        def deliver() -> None:
            if self._blocked(node):
                client.held.append(deliver)
                return
            self._core(Received(conn, qm.decode(data), data))

        self._later(deliver)

    def _from_core(self, node: int, client: _Client, conn: int, data: bytes | None) -> None:
        """Deliver bytes from the core to the session (None: the TCP connect completed)."""
        if self.clients.get(node) is not client or client.conn != conn:
            return
        if self._blocked(node):
            client.held.append(lambda: self._from_core(node, client, conn, data))
            return
        session = client.session
        if data is None:
            if session.state == "connecting":
                self._session(node, session.connected)
            return
        msg = qm.decode(data, session.max_receive_size)
        self._session(node, lambda now: session.received(msg, now))

    def _arm_session(self, node: int) -> None:
        client = self.clients.get(node)
        if client is None:
            return
        client.timer_token += 1
        token = client.timer_token
        deadline = client.session.next_deadline()
        if deadline is None:
            return

        def fire() -> None:
            if self.clients.get(node) is not client or client.timer_token != token:
                return
            if self.net.slots[node].paused_until is not None:
                return  # re-armed when the node resumes
            self._session(node, client.session.tick)

        self.net.at(max(deadline, self.net.now), fire)

    # ---- the qnetd side ------------------------------------------------------------------

    def _core(self, event: object) -> None:
        effects = self.core.handle(event, self.net.now)  # type: ignore[arg-type]
        self._core_effects(effects)
        self._arm_core()

    def _core_effects(self, effects: list[CoreEffect]) -> None:
        for effect in effects:
            if isinstance(effect, Send):
                self._core_send(effect.conn_id, effect.data)
            elif isinstance(effect, Disconnect):
                self._core_disconnect(effect.conn_id, effect.reason)
            elif isinstance(effect, Log) and effect.event == "decision":
                self.decisions += 1
                self.net.note(f"qnetd {effect.fields.get('decision')}")

    def _core_send(self, conn: int, data: bytes) -> None:
        node = self._conn_node.get(conn)
        client = self.clients.get(node) if node is not None else None
        if node is None or client is None or client.conn != conn:
            return
        self._later(lambda: self._from_core(node, client, conn, data))

    def _core_disconnect(self, conn: int, reason: str) -> None:
        self._core(ConnectionClosed(conn, reason))
        node = self._conn_node.get(conn)
        client = self.clients.get(node) if node is not None else None
        if node is None or client is None or client.conn != conn:
            return
        session = client.session

        def lost() -> None:
            if self.clients.get(node) is client and client.conn == conn:
                client.conn = None
                self._session(node, lambda now: session.disconnected(reason, now))

        self._later(lost)

    def _arm_core(self) -> None:
        deadline = self.core.next_deadline()
        if deadline == self._core_timer:
            return
        self._core_timer = deadline
        self._core_token += 1
        token = self._core_token
        if deadline is None:
            return

        def fire() -> None:
            if token != self._core_token:
                return
            self._core_timer = None
            self._core(Tick())

        self.net.at(max(deadline, self.net.now), fire)

    def _later(self, action: Callable[[], None]) -> None:
        self.net.at(self.net.now + self.delay, action)
