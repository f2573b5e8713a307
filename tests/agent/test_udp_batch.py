"""The mesh sockets' batching and per-peer echoes (design §3.14), over real UDP on loopback.

A wake-up reads every datagram waiting on a link's socket, hands each to the agent with its own
drop reason, then ends the batch once (`batch_done`: the agent re-arms its timer and observes the
core once). A heartbeat with echoes leaves as one datagram per peer holding only that peer's echo.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.config import AgentConfig, LinkConfig, PeerConfig
from agent.node_events import MessageIn
from agent.runtime import udp
from agent.runtime.keys import load_key
from agent.runtime.udp import MeshTransport
from proto.datagram_seal import ClusterKey, Opener, Sealer
from proto.mesh_messages import Echo, Heartbeat, View, open_message, seal_message
from tests.agent.live_agents import LAB_TIMING, AgentCluster, free_udp_port

KEY = ClusterKey(b"b" * 32)
BURST = 40


def config(port: int, peers: dict[int, tuple[str, int]]) -> AgentConfig:
    """Node 1 on 127.0.0.1:`port` with static peers at the given addresses."""
    return AgentConfig(
        cluster_name="unit",
        node_id=1,
        links=(LinkConfig(0, "127.0.0.1", port),),
        peers=tuple(
            PeerConfig(node, addresses=((0, host, peer_port),))
            for node, (host, peer_port) in peers.items()
        ),
        key_files=("unused",),
    )


async def wait_until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


@pytest.mark.asyncio
async def test_a_burst_is_one_batch_with_every_drop_reason_kept() -> None:
    """40 datagrams sent while the loop is busy are read in one wake-up: each is delivered or
    dropped with its own reason (a forged one and one the core refuses, in the middle), and
    `batch_done` runs once, after the last delivery."""
    port = free_udp_port("127.0.0.1")
    delivered: list[int] = []
    events: list[str] = []
    refused_stamp = 10_030

    def deliver(message: MessageIn) -> bool:
        assert isinstance(message.message, Heartbeat)
        delivered.append(message.message.stamp_us)
        events.append("deliver")
        return True

    def batch_done() -> None:
        events.append("batch_done")

    mesh = MeshTransport(
        config(port, {2: ("127.0.0.2", 9)}),
        Sealer("unit", KEY, 1, 5),
        Opener("unit", [KEY]),
        deliver,
        core_drop=lambda: "not_newer" if delivered[-1] == refused_stamp else None,
        batch_done=batch_done,
    )
    await mesh.start()
    sender = Sealer("unit", KEY, 2, 7)
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    out.bind(("127.0.0.2", 0))
    try:
        for i in range(BURST):  # no await: the loop cannot read before the last one is sent
            datagram = seal_message(sender, Heartbeat(link=0, stamp_us=10_000 + i, wall_ms=1))
            if i == BURST // 2:  # a forged one: last byte of the tag flipped
                datagram = datagram[:-1] + bytes([datagram[-1] ^ 1])
            out.sendto(datagram, ("127.0.0.1", port))
        await wait_until(lambda: "batch_done" in events)
        assert mesh.counters.received == BURST
        assert mesh.counters.batches == 1
        assert events == ["deliver"] * (BURST - 1) + ["batch_done"]
        assert dict(mesh.counters.dropped) == {"forged": 1, "not_newer": 1}
        assert mesh.counters.accepted == BURST - 2
        assert delivered == [10_000 + i for i in range(BURST) if i != BURST // 2]
    finally:
        out.close()
        mesh.close()


@pytest.mark.asyncio
async def test_a_batch_stops_at_its_cap_and_the_rest_follows() -> None:
    """More datagrams than one batch may take (BATCH_MAX) are read in more wake-ups, none lost."""
    port = free_udp_port("127.0.0.1")
    mesh = MeshTransport(
        config(port, {2: ("127.0.0.2", 9)}),
        Sealer("unit", KEY, 1, 5),
        Opener("unit", [KEY]),
        lambda _message: True,
    )
    await mesh.start()
    sender = Sealer("unit", KEY, 2, 7)
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    out.bind(("127.0.0.2", 0))
    count = udp.BATCH_MAX + 44
    try:
        for i in range(count):
            out.sendto(
                seal_message(sender, Heartbeat(link=0, stamp_us=1 + i, wall_ms=1)),
                ("127.0.0.1", port),
            )
        await wait_until(lambda: mesh.counters.received == count)
        assert mesh.counters.accepted == count
        assert mesh.counters.batches == 2
    finally:
        out.close()
        mesh.close()


@pytest.mark.asyncio
async def test_each_peer_gets_only_its_own_echo() -> None:
    """`send` of a heartbeat with every peer's echo: peers 2 and 3 each receive a datagram whose
    echoes hold only their own entry, peer 4 (no echo) one with none; the rest is the same."""
    port = free_udp_port("127.0.0.1")
    sockets = {}
    for node in (2, 3, 4):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((f"127.0.0.{node}", 0))
        sock.settimeout(5)
        sockets[node] = sock
    mesh = MeshTransport(
        config(port, {n: s.getsockname() for n, s in sockets.items()}),
        Sealer("unit", KEY, 1, 5),
        Opener("unit", [KEY]),
        lambda _message: True,
    )
    await mesh.start()
    view = View(1, 7, (1, 2, 3, 4))
    echoes = (Echo(2, 501, 3), Echo(3, 601, 0), Echo(9, 901, 1))
    hb = Heartbeat(
        link=0, stamp_us=777, wall_ms=5, heard=(2, 3, 4), view=view, proposal=view, echoes=echoes
    )
    try:
        mesh.send(0, (2, 3, 4), hb)
        opener = Opener("unit", [KEY])
        got = {}
        for node, sock in sockets.items():
            header, message = open_message(opener, sock.recvfrom(65535)[0])
            assert header.sender == 1
            got[node] = message
        assert got[2] == dataclasses.replace(hb, echoes=(Echo(2, 501, 3),))
        assert got[3] == dataclasses.replace(hb, echoes=(Echo(3, 601, 0),))
        assert got[4] == dataclasses.replace(hb, echoes=())
        assert mesh.counters.sent == 3
    finally:
        mesh.close()
        for sock in sockets.values():
            sock.close()


def test_a_real_agent_sends_each_peer_only_its_echo(tmp_path: Path) -> None:
    """A real agent (node 1, with node 2 running) heartbeats this test, which plays node 3 on
    node 3's address: once node 3's heartbeats reach it, every echo it sends node 3 is node 3's
    own (never node 2's, which node 1 also echoes: to node 2)."""
    cluster = AgentCluster(tmp_path, 3, timing=LAB_TIMING)
    me = cluster.agents[3]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((me.address, me.port))
    sock.settimeout(0.05)
    key = load_key(cluster.key_path)
    sealer, opener = Sealer("live", key, 3, 11), Opener("live", [key])
    targets = [(a.address, a.port) for a in (cluster.agents[1], cluster.agents[2])]
    echoed: dict[int, tuple[int, float]] = {}  # peer -> (its stamp, when we got it)
    seen_echoes: list[tuple[int, ...]] = []
    try:
        cluster.start(1)
        cluster.start(2)
        deadline = time.monotonic() + 20
        next_send = 0.0
        while time.monotonic() < deadline and len(seen_echoes) < 20:
            now = time.monotonic()
            if now >= next_send:
                next_send = now + 0.1
                mine = tuple(
                    Echo(peer, stamp, int((now - at) * 1e6))
                    for peer, (stamp, at) in sorted(echoed.items())
                )
                hb = Heartbeat(
                    link=0,
                    stamp_us=int(now * 1e6) | 1,
                    wall_ms=int(time.time() * 1e3),
                    heard=tuple(sorted(echoed)),
                    echoes=mine,
                )
                for target in targets:
                    sock.sendto(seal_message(sealer, hb), target)
            try:
                data = sock.recvfrom(65535)[0]
            except TimeoutError:
                continue
            header, message = open_message(opener, data)
            if isinstance(message, Heartbeat):
                echoed[header.sender] = (message.stamp_us, time.monotonic())
                if header.sender == 1 and message.echoes:
                    seen_echoes.append(tuple(e.node_id for e in message.echoes))
        assert len(seen_echoes) >= 20, "node 1 never echoed node 3's heartbeats"
        assert set(seen_echoes) == {(3,)}
    finally:
        sock.close()
        cluster.close()


@pytest.mark.asyncio
async def test_a_sender_life_moving_to_another_source_is_seen_at_its_first_datagram() -> None:
    """The source of a sender life is remembered from each datagram: the same address again
    keeps it (the fast path), a datagram of the same life from another port replaces it at once,
    and another incarnation gets its own; a batch read from the socket says so while it runs
    (`reading`, so the agent ends it once, in `batch_done`)."""
    port = free_udp_port("127.0.0.1")
    reading: list[bool] = []

    def deliver(_message: MessageIn) -> bool:
        reading.append(mesh.reading)
        return True

    mesh = MeshTransport(
        config(port, {2: ("127.0.0.2", 9)}),
        Sealer("unit", KEY, 1, 5),
        Opener("unit", [KEY]),
        deliver,
    )
    await mesh.start()
    first, second = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2))
    first.bind(("127.0.0.2", 0))
    second.bind(("127.0.0.2", 0))
    life, other_life = Sealer("unit", KEY, 2, 7), Sealer("unit", KEY, 2, 8)
    try:

        def send(out: socket.socket, sealer: Sealer, stamp: int) -> None:
            datagram = seal_message(sealer, Heartbeat(link=0, stamp_us=stamp, wall_ms=1))
            out.sendto(datagram, ("127.0.0.1", port))

        for stamp in (1, 2):
            send(first, life, stamp)
        await wait_until(lambda: mesh.counters.accepted == 2)
        assert mesh.source_of(2, 7) == f"127.0.0.2:{first.getsockname()[1]}"
        send(second, life, 3)
        await wait_until(lambda: mesh.counters.accepted == 3)
        assert mesh.source_of(2, 7) == f"127.0.0.2:{second.getsockname()[1]}"
        send(first, other_life, 1)
        await wait_until(lambda: mesh.counters.accepted == 4)
        assert mesh.source_of(2, 8) == f"127.0.0.2:{first.getsockname()[1]}"
        assert mesh.source_of(2, 7) == f"127.0.0.2:{second.getsockname()[1]}"
        assert reading == [True] * 4
        assert not mesh.reading
    finally:
        first.close()
        second.close()
        mesh.close()
