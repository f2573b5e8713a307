"""Mesh transport: one UDP socket per link, sealed datagrams in and out.

Adapter ring. Every link of the config gets a non-blocking UDP socket bound to its address and
port, read by the event loop (`add_reader`). Each wake-up drains the datagrams waiting on the
socket (at most BATCH_MAX, then the loop runs its timers and other sockets) and calls
`batch_done` once after the last of them (the agent re-arms its timer and observes the core once
per batch, design §3.14); no delay is added to gather more. Each datagram is opened
(`proto.mesh_messages`: envelope checks, AEAD, replay window), its sender must be a known peer,
and the decoded message is handed to `deliver` as a `MessageIn`. Anything else is dropped and
counted by reason (`DecodeError.reason`, plus `unknown_peer`, `bad_payload`, `bad_value`,
`not_running`, and the core's reasons from `AgentNode.last_drop`, asked after each message),
logged rate-limited (`WARN_REASONS` as warnings with the source address, the rest as debug
lines): nothing a peer sends can raise out of the receive path.

Sending: a `Broadcast` or `SendTo` is sealed once and the same bytes go to each peer's address
on that link, except a heartbeat with echoes: each peer gets its own datagram whose `echoes`
holds only that peer's echo (design §1.3; the rest is packed once per `Broadcast`). `sendto`
is called on the socket itself; a full send buffer (EAGAIN) drops the datagram and counts it in
`send_errors` ("send buffer full"). A peer's addresses come from the static config or discovery
(`discovered_address`).

Addresses learned from authenticated traffic: multicast DNS is not authenticated, so a
discovered address is only a proposal. When a fresh heartbeat from a peer opens under the
cluster key (fresh: the core saw it echo one of this agent's own recent stamps, so it is no
recording), its source address becomes that peer's address on the link (unless the config pins
one), and for `CONFIRMED_FOR` seconds afterwards discovery cannot replace it with another: a
forged mDNS announcement cannot divert a live peer's heartbeats (refusals are counted as
`discovery_overruled`). It also follows a peer whose address changed, without waiting for mDNS.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from agent.config import AgentConfig, LinkConfig
from agent.node_events import MessageIn
from proto.datagram_seal import Opener, Sealer, claimed_sender
from proto.errors import DecodeError
from proto.mesh_messages import (
    Heartbeat,
    MeshKind,
    MeshMessage,
    decode,
    heartbeat_per_peer,
    seal_message,
)
from proto.tagged_map import frozen_constructor

log = structlog.get_logger("votemesh.agent.udp")

RECEIVE_BUFFER = 1 << 20  # bytes: absorbs a burst of ~10,000 small datagrams
BATCH_MAX = 256
"""Datagrams read per wake-up at most (then the loop runs its timers and other sockets): a
round of a 256-node cluster, ~25 ms of work."""
MAX_DATAGRAM = 65535  # bytes: the largest UDP payload (an older agent's heartbeat may be large)
LOG_EVERY = 1.0  # seconds: at most one debug line per drop reason
CONFIRMED_FOR = 10.0  # seconds an authenticated source address outranks discovery
WARN_EVERY = 10.0  # seconds: at most one warning line per reason that names an outsider
WARN_REASONS = frozenset(
    {"unknown_peer", "foreign_cluster", "unknown_key", "own_node_id", "bad_value", "seq_leap"}
)
"""Drops worth an operator's attention (another cluster or key on our port, a node id nobody
configured, a keyed member sending out-of-range values): a warning with the source address,
at most one per reason every WARN_EVERY seconds. Every other reason stays a debug line."""
SOURCES_KEPT = 4  # source addresses remembered per sender (one per incarnation, newest)
_message_in = frozen_constructor(MessageIn)  # MessageIn(...) without the frozen __init__

Address = tuple[str, int]


@dataclass
class DatagramCounters:
    """What went through the sockets, for `status` and metrics."""

    received: int = 0
    batches: int = 0
    """Wake-ups that read the socket (received / batches = datagrams handled per wake-up)."""
    accepted: int = 0
    sent: int = 0
    send_errors: int = 0
    discovery_overruled: int = 0
    learned_addresses: int = 0
    dropped: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready counters."""
        return {
            "received": self.received,
            "batches": self.batches,
            "accepted": self.accepted,
            "sent": self.sent,
            "send_errors": self.send_errors,
            "discovery_overruled": self.discovery_overruled,
            "learned_addresses": self.learned_addresses,
            "dropped": dict(sorted(self.dropped.items())),
        }


class _LinkSocket:
    """One link's non-blocking UDP socket, read by the event loop (`add_reader`): each wake-up
    drains the datagrams waiting on it (at most BATCH_MAX) and ends the batch once."""

    def __init__(self, mesh: MeshTransport, link: int, sock: socket.socket) -> None:
        self.mesh, self.link, self.sock = mesh, link, sock

    def readable(self) -> None:
        """Every datagram waiting (up to BATCH_MAX) to the mesh, then one `batch_done`. A bug
        below costs one datagram, never the socket."""
        mesh, sock, link = self.mesh, self.sock, self.link
        mesh.reading = True
        try:
            for _ in range(BATCH_MAX):
                try:
                    data, addr = sock.recvfrom(MAX_DATAGRAM)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:  # an ICMP error queued on the socket, reported here
                    if sock.fileno() < 0:
                        break  # the link was removed by a message of this batch
                    mesh.send_failed(str(exc), None)
                    continue
                try:
                    mesh.receive(link, data, addr)
                except Exception:
                    mesh.counters.dropped["internal_error"] += 1
                    log.exception("datagram handling failed", link=link)
        finally:
            mesh.reading = False
            mesh.counters.batches += 1
            mesh.batch_done()

    def sockname(self) -> Any:
        return self.sock.getsockname()


class MeshTransport:
    """The node's UDP sockets, its `Sealer` and `Opener`, and the peers' addresses."""

    def __init__(
        self,
        config: AgentConfig,
        sealer: Sealer,
        opener: Opener,
        deliver: Callable[[MessageIn], bool],
        *,
        wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        fresh: Callable[[int], bool] = lambda _peer: True,
        core_drop: Callable[[], str | None] = lambda: None,
        stranger: Callable[[int, int, Address], None] = lambda _node, _link, _addr: None,
        batch_done: Callable[[], None] = lambda: None,
    ) -> None:
        self.config = config
        self.stranger = stranger
        """Called with (claimed node id, link, source) for a datagram from a node id without
        an address here (`unknown_peer`, not authenticated): a node removed from the cluster
        may be behind it (design §3.9, "Removed node")."""
        self.sealer, self.opener = sealer, opener
        self.deliver = deliver
        """Takes one message; False = the agent is not running (counted as `not_running`)."""
        self.wall_ms = wall_ms
        self.fresh = fresh
        """After `deliver`: was that datagram from this peer fresh (not a replayed recording)?
        Only then does its source address count (the core knows: `AgentNode.last_fresh_peer`)."""
        self.core_drop = core_drop
        """After `deliver`: why the core dropped that message (`AgentNode.last_drop`), or None."""
        self.batch_done = batch_done
        """After the datagrams of one wake-up were each handed to `deliver` (design §3.14): the
        agent re-arms its timer and observes the core once per batch, not once per message."""
        self.sources: OrderedDict[tuple[int, int], Address] = OrderedDict()
        """(sender, incarnation) -> the source of its last authentic datagram (bounded)."""
        self.counters = DatagramCounters()
        self.transports: dict[int, _LinkSocket] = {}
        self.addresses: dict[int, dict[int, Address]] = {}
        self.pinned = {(p.node_id, link) for p in config.peers for link, _, _ in p.addresses}
        self.confirmed: dict[tuple[int, int], tuple[Address, float]] = {}
        for peer in config.peers:
            for link, host, port in peer.addresses:
                self.set_peer_address(peer.node_id, link, (host, port))
        self._last_log: dict[str, float] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.reading = False
        """In a socket's wake-up, which ends with `batch_done` (the agent need not ask the
        loop for another turn to end its batch)."""

    # ------------------------------------------------------------ sockets
    async def start(self) -> None:
        """Bind every link's socket (OSError if an address is not local or the port is taken)."""
        try:
            for link in self.config.links:
                await self.add_link(link)
        except OSError:
            self.close()
            raise

    async def add_link(self, link: LinkConfig) -> None:
        """Bind one link's socket (at start, or a link added at run time); OSError if not."""
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in link.address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            sock.bind((link.address, link.port))
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        link_socket = _LinkSocket(self, link.index, sock)
        loop.add_reader(sock, link_socket.readable)
        self.transports[link.index] = link_socket
        self._loop = loop

    def remove_link(self, index: int) -> None:
        """Close one link's socket (a link removed at run time)."""
        link_socket = self.transports.pop(index, None)
        if link_socket is not None:
            self._close(link_socket)

    def _close(self, link_socket: _LinkSocket) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(link_socket.sock)
        link_socket.sock.close()

    def local_address(self, link: int) -> Address:
        """(host, port) a link's socket is bound to (the real port when the config says 0)."""
        host, port = self.transports[link].sockname()[:2]
        return host, port

    def close(self) -> None:
        """Close every socket."""
        for link_socket in self.transports.values():
            self._close(link_socket)
        self.transports.clear()

    # ------------------------------------------------------------ peers
    def set_peer_address(self, peer: int, link: int, address: Address) -> None:
        """Where `peer` listens on `link` (static config, discovery, authenticated traffic)."""
        self.addresses.setdefault(peer, {})[link] = address

    def discovered_address(self, peer: int, link: int, address: Address) -> bool:
        """Discovery proposes `address` for `peer` on `link`: taken unless the config pins the
        link or authenticated datagrams came from another address within CONFIRMED_FOR."""
        if (peer, link) in self.pinned:
            return False
        seen = self.confirmed.get((peer, link))
        if seen is not None and seen[0] != address and time.monotonic() - seen[1] < CONFIRMED_FOR:
            self.counters.discovery_overruled += 1
            log.info(
                "discovered address ignored",
                peer=peer,
                link=link,
                address=f"{address[0]}:{address[1]}",
                reason=f"authenticated datagrams come from {seen[0][0]}:{seen[0][1]}",
            )
            return False
        self.set_peer_address(peer, link, address)
        return True

    def _confirm(self, peer: int, link: int, addr: Any) -> None:
        """An authenticated datagram from `peer` on `link` came from `addr`."""
        key = (peer, link)
        if key in self.pinned or not isinstance(addr, tuple) or len(addr) < 2:
            return
        source: Address = (str(addr[0]), int(addr[1]))
        self.confirmed[key] = (source, time.monotonic())
        known = self.addresses.get(peer)
        if known is None or known.get(link) != source:
            self.set_peer_address(peer, link, source)
            self.counters.learned_addresses += 1
            log.info(
                "peer address learned",
                peer=peer,
                link=link,
                address=f"{source[0]}:{source[1]}",
                reason="an authenticated datagram came from it",
            )

    def peer_links(self, peer: int) -> frozenset[int]:
        """The links we have an address of `peer` on."""
        return frozenset(self.addresses.get(peer, {}))

    # ------------------------------------------------------------ receiving
    def receive(self, link: int, data: bytes, addr: Any) -> None:
        """One datagram from the network: deliver it, or drop and count it. Never raises."""
        self.counters.received += 1
        try:
            kind, sender, incarnation, payload = self.opener.open_fields(data, time.monotonic())
        except DecodeError as exc:
            self.note_drop(exc.reason, exc.detail, addr)
            if exc.reason == "unknown_peer":
                self._stranger(link, data, addr)
            return
        if sender not in self.addresses:
            self.note_drop("unknown_peer", f"node {sender}", addr)
            return
        try:
            message: MeshMessage = decode(kind, payload)
        except DecodeError as exc:
            self.note_drop(exc.reason, exc.detail, addr)
            return
        # The source of this sender life: the same tuple again (IPv4) costs one LRU move.
        key = (sender, incarnation)
        if type(addr) is tuple and self.sources.get(key) == addr:
            self.sources.move_to_end(key)
        else:
            self._remember_source(sender, incarnation, addr)
        if not self.deliver(_message_in(sender, incarnation, link, message, self.wall_ms())):
            self.note_drop("not_running", f"node {sender}", addr)
            return
        refused = self.core_drop()
        if refused is not None:
            self.note_drop(refused, f"node {sender} incarnation {incarnation}", addr)
            return
        self.counters.accepted += 1
        if self.fresh(sender):
            self._confirm(sender, link, addr)

    def _stranger(self, link: int, data: bytes, addr: Any) -> None:
        sender = claimed_sender(data)
        if sender is not None and isinstance(addr, tuple) and len(addr) >= 2:
            self.stranger(sender, link, (str(addr[0]), int(addr[1])))

    def _remember_source(self, sender: int, incarnation: int, addr: Any) -> None:
        if not isinstance(addr, tuple) or len(addr) < 2:
            return
        key, source = (sender, incarnation), (str(addr[0]), int(addr[1]))
        known = key in self.sources
        self.sources[key] = source
        self.sources.move_to_end(key)  # most recently heard last
        if known:
            return  # nothing to forget: no O(senders) scan per datagram
        mine = [key for key in self.sources if key[0] == sender]
        for key in mine[:-SOURCES_KEPT]:
            del self.sources[key]

    def source_of(self, sender: int, incarnation: int) -> str | None:
        """ "host:port" the last authentic datagram of that sender incarnation came from."""
        source = self.sources.get((sender, incarnation))
        return None if source is None else f"{source[0]}:{source[1]}"

    def note_drop(self, reason: str, detail: str = "", addr: Any = None) -> None:
        """Count a dropped datagram and log it, rate-limited: a warning with the source address
        for WARN_REASONS (once per WARN_EVERY), else a debug line (once per LOG_EVERY)."""
        self.counters.dropped[reason] += 1
        warn = reason in WARN_REASONS
        if self._log_due(reason, WARN_EVERY if warn else LOG_EVERY):
            source = None if addr is None else f"{addr[0]}:{addr[1]}"
            total = self.counters.dropped[reason]
            emit = log.warning if warn else log.debug
            emit("datagram dropped", reason=reason, detail=detail, source=source, total=total)

    def send_failed(self, detail: str, addr: Any) -> None:
        """Count a datagram we could not send; debug-log at most once a second."""
        self.counters.send_errors += 1
        if self._log_due("send_failed"):
            target = None if addr is None else f"{addr[0]}:{addr[1]}"
            log.debug("datagram not sent", detail=detail, target=target)

    def _log_due(self, reason: str, every: float = LOG_EVERY) -> bool:
        now = time.monotonic()
        if now - self._last_log.get(reason, -every) < every:
            return False
        self._last_log[reason] = now
        return True

    # ------------------------------------------------------------ sending
    def send(self, link: int, peers: tuple[int, ...], message: MeshMessage) -> None:
        """Seal `message` and send it to each peer's address on `link`: once for all, or for a
        heartbeat with echoes once per peer, each with only that peer's echo (design §1.3)."""
        link_socket = self.transports.get(link)
        if link_socket is None:
            return
        addresses = self.addresses
        targets = [
            (p, a) for p in peers if p in addresses and (a := addresses[p].get(link)) is not None
        ]
        if not targets:
            return
        sendto = link_socket.sock.sendto
        if isinstance(message, Heartbeat) and message.echoes:
            payload, seal = heartbeat_per_peer(message), self.sealer.seal
            datagrams = [(seal(MeshKind.HEARTBEAT, payload(p)), a) for p, a in targets]
        else:
            datagram = seal_message(self.sealer, message)
            datagrams = [(datagram, a) for _, a in targets]
        for datagram, address in datagrams:
            try:
                sendto(datagram, address)
            except BlockingIOError:
                self.send_failed("send buffer full", address)
                continue
            except OSError as exc:
                self.send_failed(str(exc), address)
                continue
            self.counters.sent += 1
