"""Timestamped UDP between lab hosts, and what the netem core predicts for the same schedule.

Used by tests/lab/test_switch_netem.py and tests/bench/bench_lab_switch.py. The programs run with
the lab's Python inside a host; the hosts share the machine's CLOCK_MONOTONIC (one kernel clock),
so a datagram's one-way delay is its arrival time minus the send time it carries.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from votemesh_lab.netem import Impairment, PairState, decide, pair_rng
from votemesh_lab.netns import Host

PORT = 47100
#: IPv4 (20) + UDP (8) + Ethernet (14) around a datagram's payload, as the switch counts a frame.
FRAME_OVERHEAD = 42

#:   send ADDR PORT COUNT INTERVAL SIZE   COUNT datagrams on an absolute schedule (0: flat out)
#:   recv ADDR PORT IDLE MAX              every arrival: [seq, sent_ns, recv_ns]; stops IDLE s
#:                                        after the last one or after MAX s
#:   flood ADDR PORT SECONDS SIZE         send flat out for SECONDS; prints how many were sent
#:   count ADDR PORT IDLE MAX             how many arrived, first to last arrival time (s)
#:   echo ADDR PORT SECONDS               send every datagram back
#:   rtt ADDR PORT COUNT GAP              round trips to an echo, in ms
TOOL = r"""
import json, socket, struct, sys, time
mode, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
now = time.monotonic_ns
if mode in ("recv", "echo", "count"):
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind((addr, port))
    print("ready", flush=True)
if mode == "send":
    count, interval, size = int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
    start = time.monotonic()
    for i in range(count):
        wait = start + i * interval - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        s.sendto(struct.pack("!IQ", i, now()).ljust(size, b"."), (addr, port))
elif mode == "flood":
    end, size, sent = time.monotonic() + float(sys.argv[4]), int(sys.argv[5]), 0
    while time.monotonic() < end:
        for _ in range(100):
            try:
                s.sendto(struct.pack("!IQ", sent, now()).ljust(size, b"."), (addr, port))
                sent += 1
            except OSError:
                pass
    print(json.dumps({"sent": sent}))
elif mode == "recv":
    idle, end, out = float(sys.argv[4]), time.monotonic() + float(sys.argv[5]), []
    s.settimeout(float(sys.argv[5]))
    while (left := end - time.monotonic()) > 0:
        try:
            data = s.recv(65536)
        except TimeoutError:
            break
        out.append(list(struct.unpack("!IQ", data[:12])) + [now()])
        s.settimeout(min(idle, left))
    print(json.dumps({"arrivals": out}))
elif mode == "count":
    idle, end = float(sys.argv[4]), time.monotonic() + float(sys.argv[5])
    count, first, last = 0, 0.0, 0.0
    s.settimeout(float(sys.argv[5]))
    while (left := end - time.monotonic()) > 0:
        try:
            s.recv(65536)
        except TimeoutError:
            break
        last = time.monotonic()
        first = first or last
        count += 1
        s.settimeout(min(idle, left))
    print(json.dumps({"received": count, "seconds": last - first}))
elif mode == "echo":
    end = time.monotonic() + float(sys.argv[4])
    while (left := end - time.monotonic()) > 0:
        s.settimeout(left)
        try:
            data, peer = s.recvfrom(2048)
        except TimeoutError:
            break
        s.sendto(data, peer)
else:
    s.settimeout(0.5)
    rtts = []
    for i in range(int(sys.argv[4])):
        sent = time.monotonic()
        s.sendto(struct.pack("!I", i), (addr, port))
        try:
            while struct.unpack("!I", s.recv(64)[:4])[0] != i:
                pass
            rtts.append((time.monotonic() - sent) * 1000)
        except TimeoutError:
            pass
        time.sleep(float(sys.argv[5]))
    print(json.dumps({"rtts_ms": rtts}))
"""


class Program:
    """A `recv` or `echo` program running in a host until it ends by itself."""

    def __init__(self, host: Host, *args: object) -> None:
        self.process = subprocess.Popen(
            [*host.nsenter(), sys.executable, "-c", TOOL, *map(str, args)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        if self.process.stdout is None or self.process.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{args[0]} did not start: {self.process.stderr}")

    def result(self, timeout: float = 60) -> dict[str, Any]:
        """Its JSON output (waits for it to end)."""
        out, err = self.process.communicate(timeout=timeout)
        if self.process.returncode != 0:
            raise RuntimeError(err)
        doc: dict[str, Any] = json.loads(out.splitlines()[-1]) if out.strip() else {}
        return doc

    def stop(self) -> None:
        """Kill it (the echo) and reap it."""
        self.process.kill()
        self.process.communicate(timeout=10)


def run(host: Host, *args: object, timeout: float = 60) -> dict[str, Any]:
    """Run a `send`, `flood` or `rtt` program in a host to completion; its JSON output if any."""
    out = host.run([sys.executable, "-c", TOOL, *map(str, args)], timeout=timeout).stdout.strip()
    doc: dict[str, Any] = json.loads(out) if out else {}
    return doc


@dataclass(frozen=True)
class Arrival:
    """One datagram received: its sequence number, send and arrival times (ns, one clock)."""

    seq: int
    sent_ns: int
    recv_ns: int

    @property
    def delay_ms(self) -> float:
        """One-way delay."""
        return (self.recv_ns - self.sent_ns) / 1e6


def one_way(
    sender: Host, receiver: Host, count: int, interval: float, size: int = 64
) -> list[Arrival]:
    """Send `count` timestamped datagrams sender -> receiver; every arrival, in arrival order."""
    listener = Program(receiver, "recv", receiver.address, PORT, 1.5, count * interval + 15)
    run(sender, "send", receiver.address, PORT, count, interval, size)
    return [Arrival(*a) for a in listener.result()["arrivals"]]


@dataclass(frozen=True)
class Measured:
    """What one run of `one_way` showed."""

    sent: int
    unique: int
    duplicates: int
    out_of_order: int
    delays_ms: list[float]

    @property
    def loss(self) -> float:
        """Share of datagrams that never arrived."""
        return 1 - self.unique / self.sent

    def quantile(self, q: float) -> float:
        """The q-quantile of the one-way delays of first copies, ms."""
        return statistics.quantiles(self.delays_ms, n=100)[round(q * 100) - 1]


def measure(arrivals: list[Arrival], sent: int) -> Measured:
    """Loss, duplicates, out-of-order first copies (a lower seq after a higher), delays."""
    seen: set[int] = set()
    highest, out_of_order, delays = -1, 0, []
    for a in arrivals:
        if a.seq in seen:
            continue
        seen.add(a.seq)
        delays.append(a.delay_ms)
        if a.seq < highest:
            out_of_order += 1
        highest = max(highest, a.seq)
    return Measured(sent, len(seen), len(arrivals) - len(seen), out_of_order, delays)


def predicted(
    words: dict[str, str], count: int, interval: float, size: int = 64, repeat: int = 1
) -> Measured:
    """A schedule of `count` frames `interval` apart through the pure netem core (arrival = due
    time), `repeat` times over with fresh streams, pooled (delays in ms)."""
    return predicted_at(words, [i * interval for i in range(count)], size, repeat)


def predicted_at(
    words: dict[str, str], send_times: list[float], size: int = 64, repeat: int = 1
) -> Measured:
    """Frames sent at these times (s) through the pure netem core, `repeat` times, pooled."""
    imp = Impairment.parse(words)
    pooled = Measured(0, 0, 0, 0, [])
    for run_index in range(repeat):
        state = PairState(pair_rng("predicted", "n1", "n2", run_index))
        copies = []
        for i, at in enumerate(send_times):
            decision = decide(state, imp, size + FRAME_OVERHEAD, at)
            copies += [(c.due_at, i, at) for c in decision.copies]
            state.queued = 0
        arrivals = [Arrival(i, round(at * 1e9), round(due * 1e9)) for due, i, at in sorted(copies)]
        one = measure(arrivals, len(send_times))
        pooled = Measured(
            pooled.sent + one.sent, pooled.unique + one.unique,
            pooled.duplicates + one.duplicates, pooled.out_of_order + one.out_of_order,
            pooled.delays_ms + one.delays_ms,
        )  # fmt: skip
    return pooled


def share_tolerance(p: float, n: int, extra: float) -> float:
    """4 binomial standard deviations plus `extra` (a share, not points)."""
    return 4 * math.sqrt(max(p * (1 - p), 1e-12) / n) + extra
