"""Drive a QnetdCore by hand in tests: connections, messages, and decoded outputs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from proto.qnetd_enums import DecisionAlgorithm, NodeListType, TieBreakerMode, TlsSupported
from proto.qnetd_messages import (
    ALL_MESSAGE_TYPES,
    ALL_OPTION_TYPES,
    Init,
    NodeList,
    Preinit,
    QnetdMessage,
    decode,
    encode,
)
from proto.qnetd_options import NodeInfo, RingId, TieBreaker
from qnetd.arbitration import QnetdCore
from qnetd.core_events import Accepted, Disconnect, Effect, Event, Received, Send, TlsEstablished
from qnetd.model import Algorithm
from qnetd.peer_names import PeerNames
from qnetd.settings import QnetdSettings

PLAIN = QnetdSettings(tls=TlsSupported.SUPPORTED, client_cert_required=False)


@dataclass
class Driver:
    """A core plus a clock; `send()` returns the messages written back, per connection."""

    core: QnetdCore
    now: float = 1000.0
    effects: list[Effect] = field(default_factory=list)

    @classmethod
    def make(
        cls, algorithms: Mapping[DecisionAlgorithm, Algorithm], settings: QnetdSettings = PLAIN
    ) -> Driver:
        return cls(QnetdCore(settings, algorithms))

    def feed(self, event: Event) -> list[Effect]:
        self.effects = self.core.handle(event, self.now)
        return self.effects

    def connect(self, conn_id: int) -> None:
        self.feed(Accepted(conn_id, f"127.0.0.1:{40000 + conn_id}"))

    def send(self, conn_id: int, msg: QnetdMessage) -> list[tuple[int, QnetdMessage]]:
        """Deliver `msg` from `conn_id`; the decoded messages written back, in order."""
        effects = self.feed(Received(conn_id, msg, encode(msg)))
        return [(e.conn_id, decode(e.data)) for e in effects if isinstance(e, Send)]

    def replies(self, conn_id: int, msg: QnetdMessage) -> list[QnetdMessage]:
        """Messages written to `conn_id` itself."""
        return [m for c, m in self.send(conn_id, msg) if c == conn_id]

    def disconnected(self) -> list[int]:
        return [e.conn_id for e in self.effects if isinstance(e, Disconnect)]

    def tls_up(self, conn_id: int, cn: str | None) -> None:
        self.feed(TlsEstablished(conn_id, PeerNames((cn,)) if cn else None))

    def join(
        self,
        conn_id: int,
        node_id: int,
        cluster: bytes = b"c1",
        algorithm: DecisionAlgorithm = DecisionAlgorithm.FFSPLIT,
        ring: RingId = RingId(1, 1),
        **init: Any,
    ) -> list[QnetdMessage]:
        """Connect, PREINIT and INIT; returns the INIT replies."""
        self.connect(conn_id)
        self.send(conn_id, Preinit(seq=1, cluster_name=cluster))
        return self.replies(conn_id, init_msg(node_id, algorithm, ring, **init))


def init_msg(
    node_id: int | None,
    algorithm: int = DecisionAlgorithm.FFSPLIT,
    ring: RingId | None = RingId(1, 1),
    **over: Any,
) -> Init:
    fields: dict[str, Any] = {
        "seq": 2,
        "supported_messages": ALL_MESSAGE_TYPES,
        "supported_options": ALL_OPTION_TYPES,
        "node_id": node_id,
        "decision_algorithm": algorithm,
        "heartbeat_interval": 8000,
        "tie_breaker": TieBreaker(TieBreakerMode.LOWEST),
        "ring_id": ring,
    }
    fields.update(over)
    return Init(**fields)


def membership(seq: int, ring: RingId, *nodes: int, **over: Any) -> NodeList:
    return NodeList(
        seq=seq,
        node_list_type=NodeListType.MEMBERSHIP,
        ring_id=ring,
        nodes=tuple(NodeInfo(n) for n in nodes),
        **over,
    )


def config(seq: int, *nodes: int, initial: bool = True) -> NodeList:
    kind = NodeListType.INITIAL_CONFIG if initial else NodeListType.CHANGED_CONFIG
    return NodeList(seq=seq, node_list_type=kind, nodes=tuple(NodeInfo(n) for n in nodes))
