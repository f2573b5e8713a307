"""Bad input at the mesh sockets: dropped, counted by reason, and membership does not move.

The live tests run three real agents on 127.0.0.1-3. Node 2 reaches node 1 through a relay in
this process, which forwards every datagram and keeps copies, so the test holds genuine
datagrams to replay, truncate and tamper with.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog.testing

from agent.config import AgentConfig, LinkConfig, PeerConfig
from agent.node_events import MessageIn
from agent.runtime.udp import MeshTransport
from proto.datagram_seal import ClusterKey, Opener, Sealer
from proto.mesh_messages import Heartbeat, MeshKind, seal_message
from tests.agent.live_agents import AgentCluster, free_udp_port

RELAY = "127.0.0.10"
FLOOD = 10_000  # garbage datagrams, sent over about one second
BATCH = 100
SETTLE = 30.0


class Relay:
    """Forwards datagrams from node 2 to node 1 and keeps the first copies (a thread)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((RELAY, 0))
        self.sock.settimeout(0.1)
        self.address: tuple[str, int] = self.sock.getsockname()
        self.target: tuple[str, int] | None = None
        self.copies: list[bytes] = []
        self.forwarded = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="relay", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, _ = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            if self.target is not None:
                self.sock.sendto(data, self.target)
                self.forwarded += 1
                if len(self.copies) < 1000:
                    self.copies.append(data)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


def unit_config(port: int, peer: int) -> AgentConfig:
    """Node 1 on 127.0.0.1:`port` with one static peer at 127.0.0.`peer`:9."""
    return AgentConfig(
        cluster_name="unit",
        node_id=1,
        links=(LinkConfig(0, "127.0.0.1", port),),
        peers=(PeerConfig(peer, addresses=((0, f"127.0.0.{peer}", 9),)),),
        key_files=("unused",),
    )


def kernel_drops(address: str, port: int) -> int:
    """Datagrams the kernel dropped for a local UDP socket (receive buffer full)."""
    a, b, c, d = (int(x) for x in address.split("."))
    local = f"{d:02X}{c:02X}{b:02X}{a:02X}:{port:04X}"
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local:
            return int(fields[-1])
    return 0


def with_field(datagram: bytes, offset: int, fmt: str, value: int) -> bytes:
    """A copy of a datagram with one header field replaced."""
    size = struct.calcsize(fmt)
    return datagram[:offset] + struct.pack(fmt, value) + datagram[offset + size :]


def dropped(doc: dict[str, Any]) -> dict[str, int]:
    counts: dict[str, int] = doc["runtime"]["datagrams"]["dropped"]
    return counts


@pytest.fixture
def relayed_cluster(tmp_path: Path) -> Iterator[tuple[AgentCluster, Relay]]:
    """Three agents in one quorate view; node 2 -> node 1 goes through a relay."""
    relay = Relay()
    cluster = AgentCluster(tmp_path, 3, via={(2, 1): relay.address})
    relay.target = (cluster.agents[1].address, cluster.agents[1].port)
    relay.start()
    try:
        cluster.start_all()
        cluster.wait_for(lambda: cluster.one_view([1, 2, 3]), SETTLE, "a view of 3")
        cluster.wait_for(lambda: len(relay.copies) >= 5, SETTLE, "relayed datagrams")
        yield cluster, relay
    finally:
        cluster.close()
        relay.close()


def test_each_kind_of_bad_datagram_is_counted_by_reason(
    relayed_cluster: tuple[AgentCluster, Relay],
) -> None:
    """Forged, replayed, truncated, foreign-cluster, wrong-key, zero-header, non-votemesh and
    unknown-sender datagrams at a running agent are each dropped and counted once under their
    reason (a tampered incarnation is a forgery: it is part of the sealed header); the view and
    quorum stay as they were."""
    cluster, relay = relayed_cluster
    agent = cluster.agents[1]
    before = agent.status()
    assert before is not None
    genuine = relay.copies[0]
    key = ClusterKey(cluster.key_path.read_bytes())
    heartbeat = Heartbeat(link=0, stamp_us=1, wall_ms=1)
    bad = {
        "replayed": genuine,
        "forged": with_field(genuine, 28, ">Q", 2**62),  # fresh counter, header tampered
        "truncated": genuine[:40],
        "bad_magic": b"XX" + genuine[2:],
        "bad_version": with_field(genuine, 2, ">B", 9),
        "foreign_cluster": seal_message(Sealer("other", key, 2, 1), heartbeat),
        "unknown_key": seal_message(Sealer("live", ClusterKey(os.urandom(32)), 2, 1), heartbeat),
        "bad_header": with_field(genuine, 16, ">I", 0),
        "unknown_peer": seal_message(Sealer("live", key, 99, 1), heartbeat),
    }
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as attacker:
        attacker.bind(("127.0.0.20", 0))
        for datagram in bad.values():
            attacker.sendto(datagram, (agent.address, agent.port))
    expected = {reason: dropped(before).get(reason, 0) + 1 for reason in bad}
    cluster.wait_for(
        lambda: (
            (doc := agent.status()) is not None
            and all(dropped(doc).get(r, 0) >= n for r, n in expected.items())
        ),
        SETTLE,
        "the drops to be counted",
    )
    after = agent.status()
    assert after is not None
    assert {r: dropped(after).get(r, 0) for r in bad} == expected
    assert (after["ring_id"], after["members"], after["quorate"]) == (
        before["ring_id"],
        [1, 2, 3],
        True,
    )
    assert cluster.one_view([1, 2, 3])


def garbage(genuine: list[bytes], rng: random.Random) -> bytes:
    """One of four kinds of junk: random bytes, a votemesh prefix with junk, a header valid up
    to the AEAD (our cluster and key id, random sender state), or a cut-off genuine datagram."""
    kind = rng.randrange(4)
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 200))
    if kind == 1:
        return b"VM\x01" + rng.randbytes(rng.randrange(0, 120))
    if kind == 2:
        head = genuine[0][:16]  # magic, version, kind, cluster id, key id
        sender = rng.choice((1, 2, 3, 7))
        state = struct.pack(">IQQ", sender, rng.getrandbits(64) | 1, rng.getrandbits(64) | 1)
        return head + state + rng.randbytes(60)
    return rng.choice(genuine)[: rng.randrange(0, 52)]


def test_garbage_flood_changes_nothing_and_is_counted(
    relayed_cluster: tuple[AgentCluster, Relay],
) -> None:
    """10,000 junk datagrams in about a second at one agent: every one is either counted under a
    drop reason or dropped by the kernel (its receive buffer), the three agents never leave
    their view or lose quorum, and no membership event is logged meanwhile."""
    cluster, relay = relayed_cluster
    agent = cluster.agents[1]
    before = agent.status()
    assert before is not None
    kernel_before = kernel_drops(agent.address, agent.port)
    log_mark = len(agent.log_records())
    rng = random.Random(20261125)
    junk = [garbage(relay.copies[:50], rng) for _ in range(FLOOD)]
    seen: list[tuple[Any, Any, Any]] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as attacker:
        attacker.bind(("127.0.0.21", 0))
        start = time.monotonic()
        for batch in range(FLOOD // BATCH):
            for datagram in junk[batch * BATCH : (batch + 1) * BATCH]:
                attacker.sendto(datagram, (agent.address, agent.port))
            if batch % 10 == 0:
                seen += [
                    (tuple(d["ring_id"]), tuple(d["members"]), d["quorate"])
                    for d in cluster.statuses([1, 2, 3]).values()
                    if d is not None
                ]
            pause = start + (batch + 1) * BATCH / FLOOD - time.monotonic()
            if pause > 0:
                time.sleep(pause)
    garbage_reasons = {"truncated", "bad_magic", "bad_version", "foreign_cluster", "unknown_key"}
    garbage_reasons |= {"bad_header", "forged", "stale_incarnation", "replayed", "unknown_peer"}

    def all_accounted() -> bool:
        doc = agent.status()
        if doc is None:
            return False
        counted = sum(dropped(doc).values()) - sum(dropped(before).values())
        return counted + kernel_drops(agent.address, agent.port) - kernel_before >= FLOOD

    cluster.wait_for(all_accounted, SETTLE, "every junk datagram to be accounted for")
    after = agent.status()
    assert after is not None
    counted = sum(dropped(after).values()) - sum(dropped(before).values())
    assert counted + kernel_drops(agent.address, agent.port) - kernel_before == FLOOD
    assert set(dropped(after)) <= garbage_reasons
    assert {"bad_magic", "truncated", "forged"} <= set(dropped(after))
    assert set(seen) == {(tuple(before["ring_id"]), (1, 2, 3), True)}
    assert cluster.one_view([1, 2, 3])
    assert agent.status() is not None
    membership = {"view_installed", "quorum_lost", "peer_lost", "peer_suspected", "link_down"}
    assert [r for r in agent.log_records()[log_mark:] if r["event"] in membership] == []


@pytest.mark.asyncio
async def test_authentic_but_undecodable_payloads_are_counted() -> None:
    """A datagram sealed with the cluster key by a configured peer whose payload is not a valid
    message (bad msgpack, unknown kind) is counted as bad_payload / unknown_kind and never
    reaches the core; a valid one is delivered with the sender's incarnation and link."""
    key = ClusterKey(os.urandom(32))
    port = free_udp_port("127.0.0.1")
    config = unit_config(port, 2)
    delivered: list[MessageIn] = []

    def deliver(message: MessageIn) -> bool:
        delivered.append(message)
        return True

    mesh = MeshTransport(config, Sealer("unit", key, 1, 5), Opener("unit", [key]), deliver)
    await mesh.start()
    peer = Sealer("unit", key, 2, 7)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(peer.seal(MeshKind.HEARTBEAT, b"\xc1"), ("127.0.0.1", port))
            sender.sendto(peer.seal(99, b"\x80"), ("127.0.0.1", port))
            sender.sendto(
                seal_message(peer, Heartbeat(link=0, stamp_us=1, wall_ms=2)), ("127.0.0.1", port)
            )
            for _ in range(200):
                if mesh.counters.received >= 3:
                    break
                await asyncio.sleep(0.01)
        assert dict(mesh.counters.dropped) == {"bad_payload": 1, "unknown_kind": 1}
        assert [(m.peer, m.incarnation, m.link) for m in delivered] == [(2, 7, 0)]
        assert mesh.counters.accepted == 1
    finally:
        mesh.close()


def test_drops_are_logged_at_most_once_per_reason_per_second() -> None:
    """A burst of junk is counted in full but logged once per reason, whatever its size. Junk
    is a debug line; datagrams from another cluster, another key or a node nobody configured
    are a warning naming the source address (regression: they were only counted)."""
    key = ClusterKey(os.urandom(32))
    config = AgentConfig(
        cluster_name="unit",
        node_id=1,
        links=(LinkConfig(0, "127.0.0.1", 1),),
        peers=(PeerConfig(2, addresses=((0, "127.0.0.2", 9),)),),
        key_files=("unused",),
    )
    mesh = MeshTransport(config, Sealer("unit", key, 1, 5), Opener("unit", [key]), lambda _: True)
    foreign = Sealer("other", key, 2, 1)
    wrong_key = Sealer("unit", ClusterKey(os.urandom(32)), 2, 1)
    stranger = Sealer("unit", key, 77, 1)
    with structlog.testing.capture_logs() as logs:
        for _ in range(500):
            mesh.receive(0, b"junk" * 20, ("127.0.0.9", 4000))
            mesh.receive(0, b"VM", ("127.0.0.9", 4000))
            mesh.receive(0, foreign.seal(1, b"\x80"), ("127.0.0.9", 4001))
            mesh.receive(0, wrong_key.seal(1, b"\x80"), ("127.0.0.9", 4002))
            mesh.receive(0, stranger.seal(1, b"\x80"), ("127.0.0.9", 4003))
    assert dict(mesh.counters.dropped) == {
        "bad_magic": 500,
        "truncated": 500,
        "foreign_cluster": 500,
        "unknown_key": 500,
        "unknown_peer": 500,
    }
    drops = sorted(
        (e["reason"], e["log_level"], e["source"]) for e in logs if e["event"] == "datagram dropped"
    )
    assert drops == [
        ("bad_magic", "debug", "127.0.0.9:4000"),
        ("foreign_cluster", "warning", "127.0.0.9:4001"),
        ("truncated", "debug", "127.0.0.9:4000"),
        ("unknown_key", "warning", "127.0.0.9:4002"),
        ("unknown_peer", "warning", "127.0.0.9:4003"),
    ]


@pytest.mark.asyncio
async def test_authenticated_source_outranks_discovered_addresses() -> None:
    """A discovered (unauthenticated) address is replaced by the source of the peer's first
    authentic datagram; a later mDNS claim of another address is refused for CONFIRMED_FOR
    seconds and counted; a forged datagram from elsewhere, and an authentic one the core did
    not find fresh (a possible recording), teach nothing; pinned (static) links never change."""
    key = ClusterKey(os.urandom(32))
    port = free_udp_port("127.0.0.1")
    config = unit_config(port, 3)
    fresh = {2: False}
    mesh = MeshTransport(
        config,
        Sealer("unit", key, 1, 5),
        Opener("unit", [key]),
        lambda _: True,
        fresh=lambda peer: fresh.get(peer, False),
    )
    await mesh.start()
    spoofed = ("127.0.0.66", 6666)
    try:
        assert mesh.discovered_address(2, 0, spoofed)  # nothing better known yet
        assert not mesh.discovered_address(3, 0, spoofed)  # pinned by the config
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer_sock,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as forger,
        ):
            peer_sock.bind(("127.0.0.2", 0))
            forger.bind(("127.0.0.66", 0))
            forger.sendto(os.urandom(80), ("127.0.0.1", port))
            peer = Sealer("unit", key, 2, 7)
            real = peer_sock.getsockname()
            for count, stamp in ((2, 1), (3, 2)):
                genuine = seal_message(peer, Heartbeat(link=0, stamp_us=stamp, wall_ms=2))
                peer_sock.sendto(genuine, ("127.0.0.1", port))
                for _ in range(200):
                    if mesh.counters.received >= count:
                        break
                    await asyncio.sleep(0.01)
                if count == 2:  # authentic, but not fresh: the discovered address stays
                    assert (mesh.counters.accepted, mesh.addresses[2][0]) == (1, spoofed)
                    fresh[2] = True
        assert mesh.addresses[2][0] == real
        assert mesh.counters.learned_addresses == 1
        assert not mesh.discovered_address(2, 0, spoofed)
        assert mesh.addresses[2][0] == real
        assert mesh.counters.discovery_overruled == 1
        assert mesh.discovered_address(2, 0, real)  # the same address is fine
        assert mesh.addresses[3][0] == ("127.0.0.3", 9)
    finally:
        mesh.close()
