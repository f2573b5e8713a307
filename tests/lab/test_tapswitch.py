"""The tap switch: real frames between namespace hosts, shaped per directed pair.

Two hosts on a `Lab(..., switch="tap")`; small Python programs in each host send and receive
UDP (the lab machines have no `ping`). One lab serves every root test but the cleanup test; each
test starts from no impairment and no block. The first tests need no root: they drive `Switch`
over unix datagram socket pairs standing in for TAP fds (one read, one frame, as on a TAP).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from votemesh_lab.netns import Host, Lab, lab_namespaces, missing_reason
from votemesh_lab.switch import ControlError, Switch

REASON = missing_reason("tap")

PORT = 47000
MDNS = ("224.0.0.251", 5353)

#: One program for every role, run with the lab's Python inside a host:
#:   recv ADDR PORT SECONDS [GROUP]    count datagrams (joining GROUP on ADDR if given)
#:   send ADDR PORT COUNT GAP [IFADDR] send COUNT datagrams GAP s apart (multicast via IFADDR)
#:   echo ADDR PORT SECONDS            send every datagram back
#:   rtt ADDR PORT COUNT GAP           send probes to an echo, print the round-trip times
UDP_TOOL = r"""
import json, socket, struct, sys, time
mode, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
if mode in ("recv", "echo"):
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if len(sys.argv) > 5:
        s.bind(("", port))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                     socket.inet_aton(sys.argv[5]) + socket.inet_aton(addr))
    else:
        s.bind((addr, port))
    print("ready", flush=True)
    end = time.monotonic() + float(sys.argv[4])
    count = 0
    while (left := end - time.monotonic()) > 0:
        s.settimeout(left)
        try:
            data, peer = s.recvfrom(2048)
        except TimeoutError:
            break
        count += 1
        if mode == "echo":
            s.sendto(data, peer)
    print(json.dumps({"received": count}))
elif mode == "send":
    if len(sys.argv) > 6:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(sys.argv[6]))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
    for i in range(int(sys.argv[4])):
        s.sendto(struct.pack("!I", i), (addr, port))
        time.sleep(float(sys.argv[5]))
else:
    s.settimeout(0.5)
    rtts = []
    for i in range(int(sys.argv[4])):
        sent = time.monotonic()
        s.sendto(struct.pack("!I", i), (addr, port))
        try:
            while struct.unpack("!I", s.recv(64))[0] != i:
                pass
            rtts.append((time.monotonic() - sent) * 1000)
        except TimeoutError:
            pass
        time.sleep(float(sys.argv[5]))
    print(json.dumps({"rtts_ms": rtts}))
"""


BROADCAST = b"\xff" * 6
MAC = {port: bytes([2, 0, 0, 0, 0, port]) for port in (1, 2, 3)}


def frame(source: int, destination: bytes, payload: bytes = b"x") -> bytes:
    """An Ethernet frame from the host on `source` (IPv4 ethertype, any payload)."""
    return destination + MAC[source] + b"\x08\x00" + payload


class FakePorts:
    """Three switch ports over socket pairs: `host[p]` is the far end of port p."""

    def __init__(self) -> None:
        self.switch_fds: dict[int, int] = {}
        self.host: dict[int, socket.socket] = {}
        for port in (1, 2, 3):
            near, far = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            near.setblocking(False)
            far.setblocking(False)
            self.switch_fds[port] = near.detach()
            self.host[port] = far

    async def received(self, port: int, wait: float = 0.05) -> list[bytes]:
        """Every frame that reached port's host within `wait` seconds."""
        await asyncio.sleep(wait)
        frames = []
        while True:
            try:
                frames.append(self.host[port].recv(65536))
            except BlockingIOError:
                return frames

    def close(self) -> None:
        """Close both ends of every pair."""
        for fd in self.switch_fds.values():
            os.close(fd)
        for sock in self.host.values():
            sock.close()


async def running_switch() -> tuple[Switch, FakePorts]:
    """A seeded switch reading three fake ports."""
    ports = FakePorts()
    switch = Switch(ports.switch_fds, 1)
    switch.start()
    return switch, ports


@pytest.mark.asyncio
async def test_floods_broadcast_then_unicasts_to_the_learned_port() -> None:
    """A broadcast from 1 reaches 2 and 3; afterwards a frame to 1's MAC goes to port 1 only."""
    switch, ports = await running_switch()
    try:
        ports.host[1].send(frame(1, BROADCAST))
        assert await ports.received(2) == [frame(1, BROADCAST)]
        assert await ports.received(3, 0) == [frame(1, BROADCAST)]
        ports.host[2].send(frame(2, MAC[1]))
        assert await ports.received(1) == [frame(2, MAC[1])]
        assert await ports.received(3, 0) == []
    finally:
        switch.stop()
        ports.close()


@pytest.mark.asyncio
async def test_block_and_delay_apply_to_their_directed_pair_only() -> None:
    """Blocking 1 -> 2 keeps 1 -> 3 open; a 100 ms delay on 1 -> 3 holds its frames back."""
    switch, ports = await running_switch()
    try:
        switch.control({"op": "block", "pairs": [[1, 2]]})
        switch.control({"op": "impair", "pairs": [[1, 3]], "delay_ms": 100})
        ports.host[1].send(frame(1, BROADCAST))
        assert await ports.received(3, 0.02) == []
        assert await ports.received(3, 0.15) == [frame(1, BROADCAST)]
        assert await ports.received(2, 0) == []
        counters = switch.counter_document()
        assert counters["pairs"]["1->2"] == {"dropped_blocked": 1}
        assert counters["blocked"] == ["1->2"]
    finally:
        switch.stop()
        ports.close()


@pytest.mark.asyncio
async def test_rate_spaces_frames_by_their_serialisation_time() -> None:
    """At 80 kbit/s a 1000-byte frame takes 100 ms on the wire: of three sent at once, one has
    arrived after 150 ms and the other two by 350 ms."""
    switch, ports = await running_switch()
    try:
        switch.control({"op": "impair", "pairs": [[1, 2]], "rate_kbit": 80})
        switch.mac_table[MAC[2]] = 2
        big = frame(1, MAC[2], bytes(986))
        for _ in range(3):
            ports.host[1].send(big)
        assert len(await ports.received(2, 0.15)) == 1
        assert len(await ports.received(2, 0.2)) == 2
    finally:
        switch.stop()
        ports.close()


@pytest.mark.parametrize(
    "request_",
    [
        {"op": "nonsense"},
        {"op": "impair", "loss": 1.5},
        {"op": "impair", "delay_ms": -1},
        {"op": "impair", "jitter_ms": "5"},
        {"op": "block", "pairs": [[1, 1]]},
        {"op": "block", "pairs": [[1, 9]]},
        {"op": "unblock", "pairs": "1->2"},
    ],
)
@pytest.mark.asyncio
async def test_bad_control_requests_are_refused(request_: dict[str, Any]) -> None:
    """Nonsense ops, out-of-range values and bad pairs raise ControlError (an error reply)."""
    switch, ports = await running_switch()
    try:
        with pytest.raises(ControlError):
            switch.control(request_)
    finally:
        switch.stop()
        ports.close()


class Listener:
    """A `recv` or `echo` program running in a host until its time is up."""

    def __init__(self, host: Host, *args: str) -> None:
        self.process = subprocess.Popen(
            [*host.nsenter(), sys.executable, "-c", UDP_TOOL, *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "ready", self.process.stderr

    def result(self) -> dict[str, Any]:
        """Its final JSON line (waits for it to finish)."""
        out, err = self.process.communicate(timeout=30)
        assert self.process.returncode == 0, err
        doc: dict[str, Any] = json.loads(out.splitlines()[-1])
        return doc


def run_tool(host: Host, *args: str) -> dict[str, Any]:
    """Run a `send` or `rtt` program in a host to completion; its JSON output if any."""
    out = host.run([sys.executable, "-c", UDP_TOOL, *args], timeout=60).stdout.strip()
    doc: dict[str, Any] = json.loads(out) if out else {}
    return doc


def datagrams(sender: Host, receiver: Host, count: int, gap: float = 0.001) -> int:
    """How many of `count` datagrams sender -> receiver arrive."""
    listener = Listener(receiver, "recv", receiver.address, str(PORT), str(count * gap + 1.0))
    run_tool(sender, "send", receiver.address, str(PORT), str(count), str(gap))
    received: int = listener.result()["received"]
    return received


def rtts(client: Host, server: Host, count: int, gap: float = 0.02) -> list[float]:
    """Round-trip times (ms) of `count` UDP probes client -> echo on server -> client."""
    echo = Listener(server, "echo", server.address, str(PORT), str(count * (gap + 0.1) + 2.0))
    times: list[float] = run_tool(client, "rtt", server.address, str(PORT), str(count), str(gap))[
        "rtts_ms"
    ]
    echo.process.kill()
    echo.process.communicate(timeout=10)
    return times


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """Two hosts on one tap switch (seeded), shared by the module."""
    with Lab(tmp_path_factory.mktemp("tap"), ["a", "b"], switch="tap", switch_seed=7) as lab:
        yield lab


@pytest.fixture
def clean(lab: Lab) -> Lab:
    """The shared lab with no impairment and no block."""
    lab.impair_all()
    lab.heal()
    return lab


@pytest.mark.timeout(30)
@pytest.mark.root
@pytest.mark.skipif(REASON is not None, reason=str(REASON))
def test_udp_crosses_the_switch_both_ways(clean: Lab) -> None:
    """Unimpaired, every probe a -> echo on b -> a returns, within a few milliseconds."""
    times = rtts(clean["a"], clean["b"], 20, gap=0.005)
    assert len(times) == 20
    assert statistics.median(times) < 10, times
    assert datagrams(clean["b"], clean["a"], 50) == 50


@pytest.mark.timeout(30)
@pytest.mark.root
@pytest.mark.skipif(REASON is not None, reason=str(REASON))
def test_configured_delay_is_measured(clean: Lab) -> None:
    """20 ms on a -> b only: the round trip's median lies between 15 and 60 ms."""
    clean.impair("a", "b", delay_ms=20)
    times = rtts(clean["a"], clean["b"], 30)
    assert len(times) >= 28
    assert 15 <= statistics.median(times) <= 60, times


@pytest.mark.timeout(30)
@pytest.mark.root
@pytest.mark.skipif(REASON is not None, reason=str(REASON))
def test_full_loss_one_way_silences_exactly_that_direction(clean: Lab) -> None:
    """loss=1.0 on a -> b: b hears nothing from a, a still hears everything from b; a block
    does the same, and heal() lifts it."""
    clean.impair("a", "b", loss=1.0)
    assert datagrams(clean["a"], clean["b"], 50) == 0
    assert datagrams(clean["b"], clean["a"], 50) == 50
    clean.impair_all()
    clean.block("b", "a")
    assert datagrams(clean["b"], clean["a"], 50) == 0
    assert datagrams(clean["a"], clean["b"], 50) == 50
    assert clean.switch_counters()["pairs"]["b->a"]["dropped_blocked"] >= 50
    clean.heal()
    assert datagrams(clean["b"], clean["a"], 50) == 50


@pytest.mark.timeout(30)
@pytest.mark.root
@pytest.mark.skipif(REASON is not None, reason=str(REASON))
def test_thirty_percent_loss_is_binomial(clean: Lab) -> None:
    """loss=0.3 on a -> b over 1000 datagrams: 700 ± 6 standard deviations (14.5) arrive."""
    clean.impair("a", "b", loss=0.3)
    received = datagrams(clean["a"], clean["b"], 1000, gap=0.0005)
    assert 613 <= received <= 787, received


@pytest.mark.timeout(30)
@pytest.mark.root
@pytest.mark.skipif(REASON is not None, reason=str(REASON))
def test_duplication_doubles_one_direction(clean: Lab) -> None:
    """duplicate=1.0 on a -> b delivers every datagram twice; b -> a stays single."""
    clean.impair("a", "b", duplicate=1.0)
    assert datagrams(clean["a"], clean["b"], 50) == 100
    assert datagrams(clean["b"], clean["a"], 50) == 50


@pytest.mark.timeout(30)
@pytest.mark.root
@pytest.mark.skipif(REASON is not None, reason=str(REASON))
def test_mdns_multicast_crosses(clean: Lab) -> None:
    """A datagram to 224.0.0.251:5353 sent from a reaches a listener that joined it on b."""
    a, b = clean["a"], clean["b"]
    listener = Listener(b, "recv", b.address, str(MDNS[1]), "2.0", MDNS[0])
    run_tool(a, "send", MDNS[0], str(MDNS[1]), "5", "0.05", a.address)
    assert listener.result()["received"] == 5


@pytest.mark.timeout(30)
@pytest.mark.root
@pytest.mark.skipif(REASON is not None, reason=str(REASON))
def test_close_removes_namespaces_and_stops_the_switch(tmp_path: Path) -> None:
    """After close(): no namespace of the lab, the switch process reaped, its socket gone."""
    lab = Lab(tmp_path, ["x", "y"], switch="tap")
    assert lab.switch_process is not None
    pid, socket_dir = lab.switch_process.pid, lab._switch_socket.parent
    assert socket_dir.is_dir()
    lab.close()
    assert lab.switch_process.poll() is not None
    assert not Path(f"/proc/{pid}").exists()
    assert not socket_dir.exists()
    assert lab_namespaces(lab.lab_id) == []
