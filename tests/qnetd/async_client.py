"""An asyncio qdevice-like client built from proto/: STARTTLS, INIT, node lists, echoes, votes.

It answers every VOTE_INFO with VOTE_INFO_REPLY and sends ECHO_REQUESTs at its heartbeat, like a
real corosync-qdevice, and records everything it receives.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from dataclasses import dataclass, field

from proto.qnetd_enums import DecisionAlgorithm, NodeListType, TieBreakerMode, Vote
from proto.qnetd_messages import (
    ALL_MESSAGE_TYPES,
    ALL_OPTION_TYPES,
    EchoReply,
    EchoRequest,
    Init,
    InitReply,
    NodeList,
    Preinit,
    QnetdMessage,
    StartTls,
    VoteInfo,
    VoteInfoReply,
    encode,
)
from proto.qnetd_options import NodeInfo, RingId, TieBreaker
from proto.qnetd_stream import StreamDecoder
from tests.interop.debian_qnetd import ClientCredentials


def client_context(creds: ClientCredentials) -> ssl.SSLContext:
    """TLS client context trusting the qnetd CA and presenting the cluster certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # the server name 'Qnetd Server' is not a host name
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=str(creds.ca_pem))
    ctx.load_cert_chain(str(creds.cert_pem), str(creds.key_pem))
    return ctx


@dataclass
class AsyncQdevice:
    """One client connection; `votes` collects (vote, ring id) of every VOTE_INFO."""

    port: int
    cluster: bytes
    node_id: int
    creds: ClientCredentials | None
    heartbeat_ms: int = 8000
    algorithm: DecisionAlgorithm = DecisionAlgorithm.FFSPLIT
    votes: list[Vote] = field(default_factory=list)
    received: asyncio.Queue[QnetdMessage] = field(default_factory=asyncio.Queue)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    echoed: asyncio.Event = field(default_factory=asyncio.Event)
    seq: int = 1
    echo_seq: int = 0
    echo_replied: int = 0
    """Highest ECHO_REPLY sequence number received."""
    steps: dict[str, float] = field(default_factory=dict)
    """Seconds each step of `start` took: connect, preinit, tls, init."""

    async def start(self, ring: RingId, members: tuple[int, ...], config: tuple[int, ...]) -> None:
        """Connect, (STARTTLS), INIT, then the initial config / membership / quorum lists."""
        mark = time.perf_counter()

        def step(name: str) -> None:
            nonlocal mark
            now = time.perf_counter()
            self.steps[name], mark = now - mark, now

        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        step("connect")
        self.decoder = StreamDecoder()
        self._write(Preinit(seq=self.seq, cluster_name=self.cluster))
        await self._read_one()
        step("preinit")
        if self.creds is not None:
            self._write(StartTls(seq=self._next()))
            await self.writer.start_tls(client_context(self.creds))
            step("tls")
        self._write(
            Init(
                seq=self._next(),
                supported_messages=ALL_MESSAGE_TYPES,
                supported_options=ALL_OPTION_TYPES,
                node_id=self.node_id,
                decision_algorithm=self.algorithm,
                heartbeat_interval=self.heartbeat_ms,
                tie_breaker=TieBreaker(TieBreakerMode.LOWEST),
                ring_id=ring,
            )
        )
        reply = await self._read_one()
        step("init")
        if not isinstance(reply, InitReply) or reply.reply_error_code != 0:
            raise ConnectionError(f"INIT refused: {reply}")
        self._reader_task = asyncio.create_task(self._read_loop(), name="qdevice-read")
        self._echo_task = asyncio.create_task(self._echo_loop(), name="qdevice-echo")
        nodes = tuple(NodeInfo(n) for n in config)
        self._write(
            NodeList(seq=self._next(), node_list_type=NodeListType.INITIAL_CONFIG, nodes=nodes)
        )
        await self.membership(ring, members)

    async def membership(self, ring: RingId, members: tuple[int, ...]) -> None:
        """Send a membership list and a quorum list."""
        nodes = tuple(NodeInfo(n) for n in members)
        self._write(
            NodeList(
                seq=self._next(), node_list_type=NodeListType.MEMBERSHIP, ring_id=ring, nodes=nodes
            )
        )
        self._write(
            NodeList(
                seq=self._next(), node_list_type=NodeListType.QUORUM, quorate=True, nodes=nodes
            )
        )
        await self.writer.drain()

    async def echo(self, timeout: float = 5.0) -> bool:
        """Send one ECHO_REQUEST and wait for its reply (or a later one: the heartbeat loop may
        send its own echo meanwhile)."""
        self.echo_seq += 1
        mine = self.echo_seq
        self._write(EchoRequest(seq=mine))
        await self.writer.drain()
        try:
            async with asyncio.timeout(timeout):
                while self.echo_replied < mine:
                    self.echoed.clear()
                    await self.echoed.wait()
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        for task in (getattr(self, "_reader_task", None), getattr(self, "_echo_task", None)):
            if task is not None:
                task.cancel()
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()

    def _next(self) -> int:
        self.seq += 1
        return self.seq

    def _write(self, msg: QnetdMessage) -> None:
        self.writer.write(encode(msg))

    async def _read_one(self) -> QnetdMessage:
        while (msg := self.decoder.next_message()) is None:
            data = await self.reader.read(self.decoder.bytes_wanted())
            if not data:
                raise ConnectionError("server closed the connection")
            self.decoder.feed(data)
        return msg

    async def _read_loop(self) -> None:
        try:
            while True:
                msg = await self._read_one()
                if isinstance(msg, VoteInfo) and msg.vote is not None:
                    self.votes.append(Vote(msg.vote))
                    self._write(VoteInfoReply(seq=msg.seq))
                elif isinstance(msg, EchoReply):
                    self.echo_replied = max(self.echo_replied, msg.seq or 0)
                    self.echoed.set()
                await self.received.put(msg)
        except (ConnectionError, OSError):
            self.closed.set()

    async def _echo_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_ms / 2000)
            self.echo_seq += 1
            self._write(EchoRequest(seq=self.echo_seq))
