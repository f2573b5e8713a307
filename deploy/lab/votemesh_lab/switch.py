"""A userspace Ethernet switch over TAP devices, with netem-style impairment per directed port pair.

The kernels of our CI machines have no `sch_netem`, so the lab shapes traffic here instead::

    python -m votemesh_lab.switch --ports 3 --prefix t1a2b3c --control /tmp/x/switch.sock

creates TAP devices `t1a2b3c1` .. `t1a2b3c3` (port 1 .. 3) in the caller's network namespace,
listens for control requests on the unix socket, prints ``ready`` on stdout and forwards frames
until SIGTERM. The caller then moves each TAP into a host namespace (`ip link set t1a2b3c1 netns
HOST name eth0`): the file descriptor this process holds keeps working after the move. The TAPs
are not persistent: when this process exits, they vanish.

Forwarding: source MACs are learned; broadcast, multicast (mDNS included) and unknown unicast
frames are flooded to every other port. Each copy then passes the impairment of its directed pair
(source port -> destination port): block, loss, rate, delay ± uniform jitter (jittered frames may
overtake each other: that is the reordering), duplication. Delayed frames wait in one heap
served by one timer that fires `EARLY` seconds before the first deadline, because asyncio
timers fire about a millisecond late otherwise.

Control: one JSON object per line on the unix socket, one JSON reply per line
(``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``)::

    {"op": "impair", "pairs": [[1, 2]], "delay_ms": 20, "jitter_ms": 5, "loss": 0.1,
     "duplicate": 0.01, "rate_kbit": 0}     replace those pairs' impairment ("pairs" omitted: all)
    {"op": "block", "pairs": [[1, 2]]}      drop every frame 1 -> 2 (one way)
    {"op": "unblock", "pairs": [[1, 2]]}    ("pairs" omitted: lift every block)
    {"op": "reset"}                         no impairment, no block
    {"op": "counters"}                      frames received, forwarded, dropped by reason, per pair
    {"op": "ping"}

This is test tooling: it runs as its own process so that the test process's work does not delay
its timers, and it never touches an interface it did not create.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import heapq
import json
import os
import random
import signal
import struct
import sys
from collections import Counter
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

#: From <linux/if_tun.h>: _IOW('T', 202, int), and the flags of struct ifreq's ifr_flags.
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFNAMSIZ = 16
#: Fire the delay timer this early: asyncio wakes ~1 ms late (measured in platform-facts.md).
EARLY = 0.0005
#: Frames larger than the MTU never come out of a TAP with IFF_NO_PI; 64 KiB covers GSO-less use.
MAX_FRAME = 65536
#: A rate-limited pair drops frames that would wait longer than this for their turn on the wire.
MAX_QUEUE_SECONDS = 1.0
ETHERNET_HEADER = 14

Pair = tuple[int, int]


class ControlError(ValueError):
    """A control request the switch cannot carry out; the reply says why."""


@dataclass(frozen=True)
class Impairment:
    """What happens to frames on one directed port pair. All zero: forwarded at once."""

    delay_ms: float = 0.0
    """Fixed one-way delay added to every frame."""
    jitter_ms: float = 0.0
    """Uniform ± jitter on top of the delay (the sum is clamped at 0); lets frames overtake."""
    loss: float = 0.0
    """Probability that a frame is dropped."""
    duplicate: float = 0.0
    """Probability that a forwarded frame is sent twice (the copy gets its own jitter)."""
    rate_kbit: float = 0.0
    """Serialisation rate in kbit/s; 0 means unlimited."""

    @classmethod
    def from_request(cls, request: dict[str, Any]) -> Impairment:
        """The impairment named by a control request's fields (absent fields are zero)."""
        values: dict[str, float] = {}
        for f in fields(cls):
            raw = request.get(f.name, 0.0)
            if isinstance(raw, bool) or not isinstance(raw, int | float) or raw < 0:
                raise ControlError(f"{f.name} must be a number >= 0, got {raw!r}")
            values[f.name] = float(raw)
        impairment = cls(**values)
        if impairment.loss > 1 or impairment.duplicate > 1:
            raise ControlError("loss and duplicate are probabilities between 0 and 1")
        return impairment

    @property
    def is_none(self) -> bool:
        """Nothing to do: forward immediately."""
        return self == NO_IMPAIRMENT


NO_IMPAIRMENT = Impairment()


def open_tap(name: str) -> int:
    """Create TAP device `name` (no packet-info header) and return its non-blocking fd."""
    if not 0 < len(name.encode()) < IFNAMSIZ:
        raise ValueError(f"interface name {name!r} must be 1-15 bytes")
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TAP | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


class Switch:
    """Ports 1..N over file descriptors; learning, flooding, impairment, one delay timer."""

    def __init__(self, fds: dict[int, int], rng: random.Random) -> None:
        self.fds = fds
        self.rng = rng
        self.impairments: dict[Pair, Impairment] = {}
        self.blocked: set[Pair] = set()
        self.mac_table: dict[bytes, int] = {}
        self.counters: Counter[str] = Counter()
        self.pair_counters: dict[Pair, Counter[str]] = {}
        self._heap: list[tuple[float, int, Pair, bytes]] = []
        self._seq = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._wire_free_at: dict[Pair, float] = {}
        self._loop = asyncio.get_running_loop()

    def start(self) -> None:
        """Read every port from the event loop."""
        for port, fd in self.fds.items():
            self._loop.add_reader(fd, self._readable, port)

    def stop(self) -> None:
        """Stop reading and drop whatever is still delayed."""
        for fd in self.fds.values():
            self._loop.remove_reader(fd)
        if self._timer is not None:
            self._timer.cancel()
        self._heap.clear()

    # -- forwarding --------------------------------------------------------------------------

    def _readable(self, port: int) -> None:
        """Drain one port: a TAP read returns exactly one frame."""
        for _ in range(64):  # bounded, so one busy port cannot starve the others
            try:
                frame = os.read(self.fds[port], MAX_FRAME)
            except BlockingIOError:
                return
            except OSError:
                self.counters["read_error"] += 1
                return
            self.on_frame(port, frame)

    def on_frame(self, source: int, frame: bytes) -> None:
        """Learn the source MAC, then send one copy through each destination's impairment."""
        self.counters["received"] += 1
        if len(frame) < ETHERNET_HEADER:
            self._drop(None, "runt")
            return
        src_mac = frame[6:12]
        if not src_mac[0] & 1:
            self.mac_table[src_mac] = source
        destination = self.mac_table.get(frame[0:6]) if not frame[0] & 1 else None
        if destination == source:
            return
        targets = [destination] if destination is not None else self.fds.keys() - {source}
        now = self._loop.time()
        for target in sorted(targets):
            self._impair((source, target), frame, now)

    def _impair(self, pair: Pair, frame: bytes, now: float) -> None:
        if pair in self.blocked:
            self._drop(pair, "blocked")
            return
        impairment = self.impairments.get(pair, NO_IMPAIRMENT)
        if impairment.is_none:
            self._write(pair[1], frame, pair)
            return
        if impairment.loss and self.rng.random() < impairment.loss:
            self._drop(pair, "loss")
            return
        leaves_at = now
        if impairment.rate_kbit:
            start = max(now, self._wire_free_at.get(pair, now))
            if start - now > MAX_QUEUE_SECONDS:
                self._drop(pair, "queue")
                return
            leaves_at = start + len(frame) * 8 / (impairment.rate_kbit * 1000)
            self._wire_free_at[pair] = leaves_at
        copies = 2 if impairment.duplicate and self.rng.random() < impairment.duplicate else 1
        if copies == 2:
            self.counters["duplicated"] += 1
        for _ in range(copies):
            jitter = self.rng.uniform(-impairment.jitter_ms, impairment.jitter_ms)
            due = leaves_at + max(0.0, impairment.delay_ms + jitter) / 1000
            if due <= now:
                self._write(pair[1], frame, pair)
            else:
                self._schedule(due, pair, frame)

    def _schedule(self, due: float, pair: Pair, frame: bytes) -> None:
        self._seq += 1  # unique, so equal deadlines keep arrival order and frames never compare
        heapq.heappush(self._heap, (due, self._seq, pair, frame))
        self._arm()

    def _arm(self) -> None:
        if not self._heap:
            return
        fire_at = self._heap[0][0] - EARLY
        if self._timer is not None and self._timer_at <= fire_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = fire_at
        self._timer = self._loop.call_at(fire_at, self._flush)

    def _flush(self) -> None:
        """Send every frame due within EARLY of now, then re-arm for the next one."""
        self._timer = None
        horizon = self._loop.time() + EARLY
        while self._heap and self._heap[0][0] <= horizon:
            _due, _seq, pair, frame = heapq.heappop(self._heap)
            self._write(pair[1], frame, pair)
        self._arm()

    def _write(self, port: int, frame: bytes, pair: Pair) -> None:
        try:
            os.write(self.fds[port], frame)
        except OSError:  # the host's interface is down, or its queue is full
            self._drop(pair, "write_error")
            return
        self.counters["forwarded"] += 1
        self.pair_counters.setdefault(pair, Counter())["forwarded"] += 1

    def _drop(self, pair: Pair | None, reason: str) -> None:
        self.counters[f"dropped_{reason}"] += 1
        if pair is not None:
            self.pair_counters.setdefault(pair, Counter())[f"dropped_{reason}"] += 1

    # -- control -----------------------------------------------------------------------------

    def _pairs(self, request: dict[str, Any]) -> list[Pair]:
        raw = request.get("pairs")
        if raw is None:
            return [(a, b) for a in self.fds for b in self.fds if a != b]
        if not isinstance(raw, list):
            raise ControlError("pairs must be a list of [source port, destination port]")
        pairs = []
        for item in raw:
            if (
                not isinstance(item, list)
                or len(item) != 2
                or not all(isinstance(p, int) and p in self.fds for p in item)
                or item[0] == item[1]
            ):
                raise ControlError(f"bad pair {item!r}: two different ports of {sorted(self.fds)}")
            pairs.append((item[0], item[1]))
        return pairs

    def control(self, request: dict[str, Any]) -> dict[str, Any]:
        """Carry out one control request; ControlError when it makes no sense."""
        op = request.get("op")
        if op == "ping":
            return {"ok": True}
        if op == "impair":
            impairment = Impairment.from_request(request)
            for pair in self._pairs(request):
                self.impairments[pair] = impairment
                self._wire_free_at.pop(pair, None)
            return {"ok": True}
        if op == "block":
            self.blocked.update(self._pairs(request))
            return {"ok": True}
        if op == "unblock":
            self.blocked.difference_update(self._pairs(request))
            return {"ok": True}
        if op == "reset":
            self.impairments.clear()
            self.blocked.clear()
            self._wire_free_at.clear()
            return {"ok": True}
        if op == "counters":
            return {"ok": True, "counters": self.counter_document()}
        raise ControlError(f"unknown op {op!r}: impair, block, unblock, reset, counters, ping")

    def counter_document(self) -> dict[str, Any]:
        """Totals, per-pair counts, the current impairments and blocks, and the delay queue."""
        return {
            **dict(self.counters),
            "delayed_now": len(self._heap),
            "pairs": {f"{a}->{b}": dict(c) for (a, b), c in sorted(self.pair_counters.items())},
            "impairments": {
                f"{a}->{b}": asdict(i)
                for (a, b), i in sorted(self.impairments.items())
                if not i.is_none
            },
            "blocked": [f"{a}->{b}" for a, b in sorted(self.blocked)],
        }


async def serve_control(switch: Switch, path: Path) -> asyncio.Server:
    """JSON lines on a unix socket; garbage gets an error reply, never a crash."""

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while line := await reader.readline():
                try:
                    request = json.loads(line)
                    if not isinstance(request, dict):
                        raise ControlError("a request is a JSON object")
                    reply = switch.control(request)
                except (ValueError, TypeError) as exc:  # ControlError and JSONDecodeError
                    reply = {"ok": False, "error": str(exc)}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        writer.close()

    return await asyncio.start_unix_server(client, path=str(path))


async def run(args: argparse.Namespace) -> None:
    """Create the TAPs, serve control, say ready, forward until SIGTERM or SIGINT."""
    fds: dict[int, int] = {}
    try:
        for port in range(1, args.ports + 1):
            fds[port] = open_tap(f"{args.prefix}{port}")
        switch = Switch(fds, random.Random(args.seed))
        server = await serve_control(switch, args.control)
        switch.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        print("ready", flush=True)
        await stop.wait()
        switch.stop()
        server.close()
    finally:
        for fd in fds.values():
            os.close(fd)
        args.control.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m votemesh_lab.switch", description=__doc__)
    parser.add_argument("--ports", type=int, required=True, help="number of TAP ports (1-99)")
    parser.add_argument("--prefix", required=True, help="TAP names are PREFIX1..PREFIXN")
    parser.add_argument("--control", type=Path, required=True, help="unix control socket path")
    parser.add_argument("--seed", type=int, default=None, help="seed of the impairment RNG")
    args = parser.parse_args(argv)
    if not 1 <= args.ports <= 99 or len(f"{args.prefix}{args.ports}") >= IFNAMSIZ:
        parser.error("--ports must be 1-99 and PREFIX+port at most 15 characters")
    try:
        asyncio.run(run(args))
    except OSError as exc:
        print(f"tapswitch: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
