"""A qdevice-like client built only from proto/, walking a qnetd through a full handshake.

Blocking sockets and the standard ssl module carry the bytes; every message is built and parsed
with proto/. Used by the compatibility test and by `make demo` (the wire tour).
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.x509.oid import NameOID

from proto.qnetd_enums import DecisionAlgorithm, NodeListType, NodeState, TieBreakerMode
from proto.qnetd_messages import (
    ALL_MESSAGE_TYPES,
    ALL_OPTION_TYPES,
    EchoRequest,
    Init,
    NodeList,
    Preinit,
    QnetdMessage,
    SetOption,
    StartTls,
    VoteInfoReply,
    encode,
)
from proto.qnetd_options import NodeInfo, RingId, TieBreaker
from proto.qnetd_stream import StreamDecoder
from tests.interop.debian_qnetd import ClientCredentials

SERVER_NAME = "Qnetd Server"  # the name qdevice expects in the server certificate (ref 5.1)
RING = RingId(1, 0x10)


@dataclass
class Transcript:
    """Every message sent and received, in order, with the raw bytes received."""

    entries: list[tuple[str, QnetdMessage, bytes]] = field(default_factory=list)
    tls_version: str | None = None
    server_subject: str | None = None
    on_entry: Callable[[str, QnetdMessage, bytes], None] | None = None

    def add(self, direction: str, msg: QnetdMessage, raw: bytes) -> None:
        self.entries.append((direction, msg, raw))
        if self.on_entry:
            self.on_entry(direction, msg, raw)

    def received(self) -> list[QnetdMessage]:
        return [m for d, m, _ in self.entries if d == "<-"]


class WireClient:
    """Blocking client connection speaking the qnetd protocol through proto/."""

    def __init__(self, port: int, transcript: Transcript, timeout: float = 5.0) -> None:
        self.sock: socket.socket = socket.create_connection(("127.0.0.1", port), timeout)
        self.decoder = StreamDecoder()
        self.transcript = transcript

    def send(self, msg: QnetdMessage) -> None:
        self.sock.sendall(encode(msg))
        self.transcript.add("->", msg, encode(msg))

    def send_raw(self, raw: bytes) -> None:
        self.sock.sendall(raw)

    def receive(self) -> QnetdMessage:
        while (msg := self.decoder.next_message()) is None:
            chunk = self.sock.recv(self.decoder.bytes_wanted())
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.decoder.feed(chunk)
        self.transcript.add("<-", msg, self.decoder.last_raw)
        return msg

    def start_tls(self, creds: ClientCredentials) -> None:
        """Switch to TLS right after STARTTLS, as qdevice does (no reply is awaited)."""
        assert self.decoder.take_buffered() == b""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False  # 'Qnetd Server' is no host name: matched on the CN below
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=str(creds.ca_pem))
        ctx.load_cert_chain(str(creds.cert_pem), str(creds.key_pem))
        self.sock = ctx.wrap_socket(self.sock)
        assert isinstance(self.sock, ssl.SSLSocket)
        self.transcript.tls_version = self.sock.version()
        der = self.sock.getpeercert(binary_form=True)
        assert der is not None
        names = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(
            NameOID.COMMON_NAME
        )
        self.transcript.server_subject = str(names[0].value) if names else None

    def close(self) -> None:
        self.sock.close()


def full_walk(
    port: int, cluster: str, creds: ClientCredentials | None, node_id: int = 1
) -> Transcript:
    """PREINIT, STARTTLS, TLS, INIT, SET_OPTION, ECHO and the three node lists of ffsplit."""
    transcript = Transcript()
    walk_into(transcript, port, cluster, creds, node_id)
    return transcript


def walk_into(
    transcript: Transcript, port: int, cluster: str, creds: ClientCredentials | None, node_id: int
) -> None:
    """Run the walk, appending to `transcript` as it goes."""
    client = WireClient(port, transcript)
    try:
        client.send(Preinit(seq=1, cluster_name=cluster.encode()))
        client.receive()
        if creds is not None:
            client.send(StartTls(seq=2))
            client.start_tls(creds)
        client.send(
            Init(
                seq=3,
                supported_messages=ALL_MESSAGE_TYPES,
                supported_options=ALL_OPTION_TYPES,
                node_id=node_id,
                decision_algorithm=DecisionAlgorithm.FFSPLIT,
                heartbeat_interval=8000,
                tie_breaker=TieBreaker(TieBreakerMode.LOWEST),
                ring_id=RING,
            )
        )
        client.receive()
        client.send(SetOption(seq=4, keep_active_partition_tie_breaker=True))
        client.receive()
        client.send(EchoRequest(seq=1))
        client.receive()
        nodes = (NodeInfo(1), NodeInfo(2))
        client.send(
            NodeList(
                seq=5, node_list_type=NodeListType.INITIAL_CONFIG, config_version=1, nodes=nodes
            )
        )
        client.receive()
        client.send(
            NodeList(seq=6, node_list_type=NodeListType.MEMBERSHIP, ring_id=RING, nodes=nodes)
        )
        vote_info = client.receive()
        client.receive()
        client.send(VoteInfoReply(seq=vote_info.seq))
        members = tuple(NodeInfo(n.node_id, state=NodeState.MEMBER) for n in nodes)
        client.send(
            NodeList(seq=7, node_list_type=NodeListType.QUORUM, quorate=True, nodes=members)
        )
        client.receive()
    finally:
        client.close()
