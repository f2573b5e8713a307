"""A userspace Ethernet switch over TAP devices that speaks netem, per directed host pair.

The kernels of our CI machines have no `sch_netem`, so the lab shapes traffic here instead::

    python -m votemesh_lab.switch --ports 3 --prefix t1a2b3c --control /tmp/x/switch.sock \
        --hosts n1,n2,qnetd --seed 42

creates TAP devices `t1a2b3c1` .. `t1a2b3c3` (ports 1 .. 3, named n1, n2, qnetd) in the caller's
network namespace, listens for control requests on the unix socket, prints ``ready`` on stdout
(and ``seed N`` on stderr) and forwards frames until SIGTERM. The caller then moves each TAP into
a host namespace (`ip link set t1a2b3c1 netns HOST name eth0`): the file descriptor this process
holds keeps working after the move. The TAPs are not persistent: when this process exits, they
vanish.

Forwarding: source MACs are learned; broadcast, multicast (mDNS included) and unknown unicast
frames are flooded to every other port. Each copy then passes its directed pair's block and
impairment, decided by `votemesh_lab.netem.decide` (netem's order: duplicate, loss, corrupt,
limit, reorder, delay + jitter from the distribution, rate), with one seeded random stream per
pair (`netem.pair_rng(seed, src, dst, generation)`). Delayed frames wait in one heap served by one
timer that fires `EARLY` seconds before the first deadline, because asyncio timers fire about a
millisecond late otherwise.

Control: one JSON object per line on the unix socket, one JSON reply per line
(``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``)::

    {"op": "apply", "generation": 3, "blocks": [["n1", "n2"]],
     "pairs": {"n1>n3": {"delay": "20ms", "loss": "5%"}}, "default": {"jitter": "1ms"}}
                                            the whole matrix at once (grudge.Matrix.to_request):
                                            parsed entirely before anything changes
    {"op": "matrix"}                        readback: the matrix held, in the words of "apply"
    {"op": "counters"}                      frames received, forwarded, dropped by reason, per pair
    {"op": "ping"}

and, for older callers, by port numbers: ``{"op": "impair", "pairs": [[1, 2]], "delay_ms": 20,
"jitter_ms": 5, "loss": 0.1, "duplicate": 0.01, "rate_kbit": 0}`` (replace those pairs'
impairment; "pairs" omitted: all), ``{"op": "block"|"unblock", "pairs": [[1, 2]]}``,
``{"op": "reset"}``. These change the held matrix (the readback shows it) but not its generation.

This is lab tooling: it runs as its own process so that the caller's work does not delay its
timers, and it never touches an interface it did not create.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import heapq
import json
import os
import secrets
import signal
import struct
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from votemesh_lab.netem import NO_IMPAIRMENT, Impairment, PairState, decide, pair_rng

#: From <linux/if_tun.h>: _IOW('T', 202, int), and the flags of struct ifreq's ifr_flags.
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFNAMSIZ = 16
#: Fire the delay timer this early: asyncio wakes ~1 ms late (measured in platform-facts.md).
EARLY = 0.0005
#: Frames larger than the MTU never come out of a TAP with IFF_NO_PI; 64 KiB covers GSO-less use.
MAX_FRAME = 65536
#: Control requests carry a whole matrix: 16 hosts, 240 pairs of netem words fit many times.
MAX_REQUEST = 4 * 1024 * 1024
ETHERNET_HEADER = 14
#: Scheduling priority boost (as root): a busy machine then delays the switch's timer less than
#: it delays the daemons under test, so delays stay as asked (docs/benchmarks.md, "Lab switch").
NICE = -10

Pair = tuple[int, int]
LEGACY_FIELDS = ("delay_ms", "jitter_ms", "loss", "duplicate", "rate_kbit")


class ControlError(ValueError):
    """A control request the switch cannot carry out; the reply says why."""


def legacy_impairment(request: dict[str, Any]) -> Impairment:
    """The impairment of an `impair` request (delay_ms, jitter_ms; loss and duplicate as
    probabilities; rate_kbit; absent = 0) in netem's words, zero fields left unset."""
    values: dict[str, float] = {}
    for key in LEGACY_FIELDS:
        raw = request.get(key, 0.0)
        if isinstance(raw, bool) or not isinstance(raw, int | float) or raw < 0:
            raise ControlError(f"{key} must be a number >= 0, got {raw!r}")
        values[key] = float(raw)
    if values["loss"] > 1 or values["duplicate"] > 1:
        raise ControlError("loss and duplicate are probabilities between 0 and 1")
    words = {
        "delay": (values["delay_ms"], "ms"),
        "jitter": (values["jitter_ms"], "ms"),
        "loss": (values["loss"] * 100, "%"),
        "duplicate": (values["duplicate"] * 100, "%"),
        "rate": (values["rate_kbit"], "kbit"),
    }
    return Impairment.parse({k: f"{v!r}{unit}" for k, (v, unit) in words.items() if v > 0})


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
    """Ports 1..N over file descriptors; learning, flooding, netem per pair, one delay timer.

    `names` maps ports to host names (default: the port numbers); `seed` with a pair's names and
    the generation seeds that pair's random stream (netem.pair_rng).
    """

    def __init__(
        self, fds: dict[int, int], seed: int | str = 0, names: dict[int, str] | None = None
    ) -> None:
        self.fds = fds
        self._flood = {s: tuple(sorted(p for p in fds if p != s)) for s in fds}
        """Per source port, the ports a broadcast or unknown destination floods to (in order)."""
        self.seed = seed
        self.names = names or {port: str(port) for port in fds}
        self.ports = {name: port for port, name in self.names.items()}
        self.generation = 0
        self.default = NO_IMPAIRMENT
        self.impairments: dict[Pair, Impairment] = {}
        self.blocked: set[Pair] = set()
        self.states: dict[Pair, PairState] = {}
        self.mac_table: dict[bytes, int] = {}
        self.counters: Counter[str] = Counter()
        self.pair_counters: dict[Pair, Counter[str]] = {}
        self._heap: list[tuple[float, int, Pair, bytes]] = []
        self._seq = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
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
        targets = (destination,) if destination is not None else self._flood[source]
        now = self._loop.time()
        for target in targets:
            self._impair((source, target), frame, now)

    def impairment_of(self, pair: Pair) -> Impairment:
        """The pair's own impairment, else the default one."""
        return self.impairments.get(pair, self.default)

    def _state(self, pair: Pair) -> PairState:
        state = self.states.get(pair)
        if state is None:
            src, dst = self.names[pair[0]], self.names[pair[1]]
            state = PairState(pair_rng(self.seed, src, dst, self.generation))
            self.states[pair] = state
        return state

    def _impair(self, pair: Pair, frame: bytes, now: float) -> None:
        if pair in self.blocked:
            self._drop(pair, "blocked")
            return
        impairment = self.impairment_of(pair)
        if impairment.is_passthrough() and not impairment.limit:
            self._write(pair[1], frame, pair)
            return
        state = self._state(pair)
        decision = decide(state, impairment, len(frame), now)
        for reason in decision.dropped:
            self._drop(pair, reason)
        if decision.duplicated:
            self._count(pair, "duplicated")
        for copy in decision.copies:
            data = frame if copy.corrupt_at is None else corrupted(frame, *copy.corrupt_at)
            if copy.corrupt_at is not None:
                self._count(pair, "corrupted")
            if copy.reordered:
                self._count(pair, "reordered")
            if copy.due_at <= now:
                state.queued -= 1
                self._write(pair[1], data, pair)
            else:
                self._schedule(copy.due_at, pair, data)

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
            state = self.states.get(pair)
            if state is not None and state.queued > 0:
                state.queued -= 1
            self._write(pair[1], frame, pair)
        self._arm()

    def _write(self, port: int, frame: bytes, pair: Pair) -> None:
        try:
            os.write(self.fds[port], frame)
        except OSError:  # the host's interface is down, or its queue is full
            self._drop(pair, "write_error")
            return
        self._count(pair, "forwarded")

    def _count(self, pair: Pair, what: str) -> None:
        self.counters[what] += 1
        self._pair_counter(pair)[what] += 1

    def _drop(self, pair: Pair | None, reason: str) -> None:
        self.counters[f"dropped_{reason}"] += 1
        if pair is not None:
            self._pair_counter(pair)[f"dropped_{reason}"] += 1

    def _pair_counter(self, pair: Pair) -> Counter[str]:
        counter = self.pair_counters.get(pair)
        if counter is None:  # made once per pair, not per frame
            counter = self.pair_counters[pair] = Counter()
        return counter

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

    def _named_pair(self, src: object, dst: object) -> Pair:
        if src not in self.ports or dst not in self.ports or src == dst:
            raise ControlError(
                f"bad pair {src!r}>{dst!r}: two different hosts of {sorted(self.ports)}"
            )
        return self.ports[str(src)], self.ports[str(dst)]

    def _apply(self, request: dict[str, Any]) -> dict[str, Any]:
        """Replace the whole matrix at once: everything is parsed before anything changes."""
        generation = request.get("generation")
        if isinstance(generation, bool) or not isinstance(generation, int) or generation < 0:
            raise ControlError(f"generation must be an integer >= 0, got {generation!r}")
        raw_blocks, raw_pairs = request.get("blocks", []), request.get("pairs", {})
        if not isinstance(raw_blocks, list) or not isinstance(raw_pairs, dict):
            raise ControlError(
                'blocks must be a list of [src, dst] and pairs an object {"s>d": {}}'
            )
        blocks = set()
        for item in raw_blocks:
            if not isinstance(item, list) or len(item) != 2:
                raise ControlError(f"bad block {item!r}: give [src, dst]")
            blocks.add(self._named_pair(item[0], item[1]))
        impairments = {}
        for key, words in raw_pairs.items():
            src, _, dst = str(key).partition(">")
            impairments[self._named_pair(src, dst)] = self._parse(words)
        default = self._parse(request.get("default", {}))
        queued = {pair: state.queued for pair, state in self.states.items()}
        self.generation, self.blocked, self.impairments, self.default = (
            generation, blocks, impairments, default
        )  # fmt: skip
        self.states = {}
        for pair, count in queued.items():
            self._state(pair).queued = count
        return {"ok": True, "generation": generation}

    @staticmethod
    def _parse(words: object) -> Impairment:
        if not isinstance(words, dict):
            raise ControlError(f"an impairment is an object of netem words, got {words!r}")
        return Impairment.parse(words)

    def matrix_document(self) -> dict[str, Any]:
        """The matrix this switch holds, in the words of the `apply` request (readback)."""
        name = self.names
        return {
            "op": "apply",
            "generation": self.generation,
            "blocks": sorted([name[a], name[b]] for a, b in self.blocked),
            "pairs": {
                f"{name[a]}>{name[b]}": i.to_dict()
                for (a, b), i in sorted(self.impairments.items())
            },
            "default": self.default.to_dict(),
        }

    def control(self, request: dict[str, Any]) -> dict[str, Any]:
        """Carry out one control request; ControlError when it makes no sense."""
        op = request.get("op")
        handler = self._handlers().get(str(op))
        if handler is None:
            raise ControlError(f"unknown op {op!r}: {', '.join(self._handlers())}")
        return handler(request)

    def _handlers(self) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
        return {
            "apply": self._apply,
            "matrix": lambda _r: {"ok": True, "matrix": self.matrix_document()},
            "impair": self._legacy_impair,
            "block": lambda r: self._blocks(r, add=True),
            "unblock": lambda r: self._blocks(r, add=False),
            "reset": lambda _r: self._apply({"generation": self.generation}),
            "counters": lambda _r: {"ok": True, "counters": self.counter_document()},
            "ping": lambda _r: {"ok": True},
        }

    def _blocks(self, request: dict[str, Any], *, add: bool) -> dict[str, Any]:
        """Block or unblock those port pairs (all pairs when none given); shaping unchanged."""
        pairs = self._pairs(request)
        if add:
            self.blocked.update(pairs)
        else:
            self.blocked.difference_update(pairs)
        return {"ok": True}

    def _legacy_impair(self, request: dict[str, Any]) -> dict[str, Any]:
        """Replace those pairs' impairment (all zero: back to the default); blocks unchanged."""
        impairment = legacy_impairment(request)
        for pair in self._pairs(request):
            if impairment.is_none():
                self.impairments.pop(pair, None)
            else:
                self.impairments[pair] = impairment
            if pair in self.states:
                self.states[pair].last_due = None
        return {"ok": True}

    def counter_document(self) -> dict[str, Any]:
        """Totals, per-pair counts by name, the generation, blocks, and the delay queue."""
        name = self.names
        return {
            **dict(self.counters),
            "generation": self.generation,
            "delayed_now": len(self._heap),
            "pairs": {
                f"{name[a]}->{name[b]}": dict(c) for (a, b), c in sorted(self.pair_counters.items())
            },
            "impairments": {
                f"{name[a]}->{name[b]}": i.to_dict()
                for (a, b), i in sorted(self.impairments.items())
                if not i.is_none()
            },
            "blocked": [f"{name[a]}->{name[b]}" for a, b in sorted(self.blocked)],
        }


def corrupted(frame: bytes, offset: int, bit: int) -> bytes:
    """The frame with one bit flipped (netem's corrupt)."""
    data = bytearray(frame)
    data[offset] ^= 1 << bit
    return bytes(data)


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

    return await asyncio.start_unix_server(client, path=str(path), limit=MAX_REQUEST)


async def run(args: argparse.Namespace) -> None:
    """Create the TAPs, serve control, say ready, forward until SIGTERM or SIGINT."""
    fds: dict[int, int] = {}
    with contextlib.suppress(OSError):  # the lab's clock: ahead of the daemons it carries
        os.nice(NICE)
    try:
        for port in range(1, args.ports + 1):
            fds[port] = open_tap(f"{args.prefix}{port}")
        names = dict(enumerate(args.hosts, start=1)) if args.hosts else None
        switch = Switch(fds, args.seed, names)
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
    parser.add_argument("--seed", type=int, default=None, help="run seed (default: random)")
    parser.add_argument(
        "--hosts", type=lambda v: v.split(","), default=None,
        help="host names of ports 1..N, comma-separated (default: the port numbers)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if not 1 <= args.ports <= 99 or len(f"{args.prefix}{args.ports}") >= IFNAMSIZ:
        parser.error("--ports must be 1-99 and PREFIX+port at most 15 characters")
    if args.hosts is not None and (
        len(args.hosts) != args.ports or len(set(args.hosts)) != args.ports
    ):
        parser.error("--hosts must name every port once")
    if args.seed is None:
        args.seed = secrets.randbits(32)
    print(f"seed {args.seed}", file=sys.stderr, flush=True)
    try:
        asyncio.run(run(args))
    except OSError as exc:
        print(f"tapswitch: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
