"""Pair-matrix verification (design §4.3): did the network become what the lab asked for?

Two checks after every change, both must pass:

1. control plane: the switch's readback (`{"op": "matrix"}`) equals the request, field by field;
2. data plane: for every ordered pair (s, d), s sends K datagrams ``{lab, g, s, d, n}`` to d's
   UDP port 5399 and **d reports what it received** over its own pipe to the lab process, never
   by a reply (which would cross the other direction). A pair is `open` when at least one
   arrived within delay + 4 * jitter (+ the probes' serialisation at `rate`) + 0.5 s, else
   `cut`; it must match `cut` for a block and `open` otherwise. K is the smallest number >= 3
   with loss^K < 1e-6 (at most 60); a pair losing more than 80 % is `unverified`, listed but
   not failed.

The per-host side runs in every lab host as ``python -m votemesh_lab.probe --name n1 --address
198.18.0.2 --lab ID``: it binds the address, counts valid probes by (generation, nonce, source),
drops and counts anything else, and obeys JSON lines on stdin (``send``, ``report``), answering
one JSON line each on stdout. `Prober` (in the lab process) starts one per host, tracked by the
Lab (stopped by PID at close), and drives all pairs in parallel.
"""

from __future__ import annotations

import argparse
import json
import math
import secrets
import select
import socket
import subprocess
import sys
import time
import weakref
from collections import Counter
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from votemesh_lab.netns import PACKAGE_PARENT, LabError, TrackedProcess

if TYPE_CHECKING:
    from votemesh_lab.grudge import Matrix
    from votemesh_lab.netns import Lab

PORT = 5399
MAX_PROBES = 60
MIN_PROBES = 3
#: A pair that loses more than this cannot be told from a cut with few probes.
UNVERIFIABLE_LOSS = 0.8
MISS_CHANCE = 1e-6
SETTLE = 0.5
"""Seconds a probe may take beyond the pair's delay + 4 * jitter."""
MAX_DATAGRAM = 512
#: A probe on the wire: about 100 bytes of JSON + UDP, IPv4 and Ethernet headers, in bits.
PROBE_FRAME_BITS = 150 * 8
KEPT_ROUNDS = 8
ANSWER_TIMEOUT = 10.0


@dataclass(frozen=True)
class Mismatch:
    """One ordered pair whose data plane is not what the matrix asks."""

    src: str
    dst: str
    expected: str
    seen: str
    probes: int
    arrived: int

    def __str__(self) -> str:
        return (
            f"{self.src}->{self.dst} expected {self.expected}, seen {self.seen} "
            f"({self.arrived}/{self.probes} probes)"
        )


@dataclass(frozen=True)
class Verification:
    """The outcome of verifying one generation of the matrix."""

    generation: int
    ok: bool
    mismatches: tuple[Mismatch, ...]
    unverified: tuple[str, ...]
    pairs: int
    seconds: float
    control: tuple[str, ...] = ()
    """Control-plane differences: what the switch holds that the request did not say."""

    def __str__(self) -> str:
        if self.ok:
            extra = f", {len(self.unverified)} unverified" if self.unverified else ""
            return (
                f"generation {self.generation} verified: {self.pairs} pairs in "
                f"{self.seconds:.2f} s{extra}"
            )
        first = str(self.mismatches[0]) if self.mismatches else self.control[0]
        more = len(self.mismatches) + len(self.control) - 1
        return f"generation {self.generation} NOT applied: {first}" + (
            f" (+{more} more)" if more else ""
        )


def probe_count(loss: float) -> int:
    """The smallest K >= 3 with loss^K < 1e-6, at most 60."""
    if loss <= 0:
        return MIN_PROBES
    if loss >= 1:
        return MAX_PROBES
    needed = math.floor(math.log(MISS_CHANCE) / math.log(loss)) + 1
    return max(MIN_PROBES, min(MAX_PROBES, needed))


def compare(requested: dict[str, Any], held: dict[str, Any]) -> tuple[str, ...]:
    """Control-plane differences between the request and the switch's readback, one line each."""
    lines = []
    if requested.get("generation") != held.get("generation"):
        lines.append(
            f"switch holds generation {held.get('generation')}, asked {requested.get('generation')}"
        )
    asked_blocks = {tuple(b) for b in requested.get("blocks", [])}
    held_blocks = {tuple(b) for b in held.get("blocks", [])}
    lines += [f"switch blocks {s}->{d}, not asked" for s, d in sorted(held_blocks - asked_blocks)]
    lines += [f"switch lacks block {s}->{d}" for s, d in sorted(asked_blocks - held_blocks)]
    if requested.get("default", {}) != held.get("default", {}):
        lines.append(f"switch default {held.get('default')} != asked {requested.get('default')}")
    asked_pairs, held_pairs = requested.get("pairs", {}), held.get("pairs", {})
    for key in sorted(set(asked_pairs) | set(held_pairs)):
        if asked_pairs.get(key) != held_pairs.get(key):
            lines.append(f"switch pair {key} {held_pairs.get(key)} != asked {asked_pairs.get(key)}")
    return tuple(lines)


@dataclass(frozen=True)
class PairPlan:
    """What to send over one ordered pair and what to expect of it."""

    src: str
    dst: str
    expected: str
    probes: int
    unverified: bool


def plan(matrix: Matrix) -> tuple[list[PairPlan], float]:
    """Every ordered pair's probe count and expectation, and how long to wait for arrivals."""
    plans, wait = [], SETTLE
    for src, dst in matrix.pairs():
        impairment = matrix.effective(src, dst)
        loss = impairment.loss_fraction()
        blocked = (src, dst) in matrix.blocks
        plans.append(
            PairPlan(
                src,
                dst,
                "cut" if blocked else "open",
                probe_count(loss),
                unverified=not blocked and loss > UNVERIFIABLE_LOSS,
            )
        )
        serialise = (
            probe_count(loss) * PROBE_FRAME_BITS / impairment.rate if impairment.rate else 0.0
        )
        spread = (impairment.delay or 0.0) + 4 * (impairment.jitter or 0.0) + serialise
        wait = max(wait, spread + SETTLE)
    return plans, wait


def judge(
    plans: list[PairPlan], arrived: dict[tuple[str, str], int]
) -> tuple[tuple[Mismatch, ...], tuple[str, ...]]:
    """Mismatches and unverified pairs from what each destination reported."""
    mismatches, unverified = [], []
    for p in plans:
        count = arrived.get((p.src, p.dst), 0)
        seen = "open" if count else "cut"
        if p.unverified and seen == "cut":
            unverified.append(f"{p.src}->{p.dst}")
        elif seen != p.expected:
            mismatches.append(Mismatch(p.src, p.dst, p.expected, seen, p.probes, count))
    return tuple(mismatches), tuple(unverified)


def _close_all(pipes: list[IO[bytes] | None]) -> None:
    for pipe in pipes:
        if pipe is not None:
            pipe.close()


class Prober:
    """One probe process per lab host, driven over pipes; all pairs probed in parallel."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.processes: dict[str, TrackedProcess] = {}
        for host in lab.hosts.values():
            log_path = host.root / "probe.log"
            host.root.mkdir(parents=True, exist_ok=True)
            args = ["setpriv", "--pdeathsig", "KILL", *host.nsenter(), sys.executable, "-m",
                    "votemesh_lab.probe", "--name", host.name, "--address", host.address,
                    "--lab", lab.lab_id]  # fmt: skip
            with log_path.open("ab") as log:
                process = subprocess.Popen(
                    args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                    start_new_session=True, cwd=PACKAGE_PARENT,
                )  # fmt: skip
            tracked = TrackedProcess(host.name, "probe", process, log_path)
            lab.processes.append(tracked)
            self.processes[host.name] = tracked
        pipes = [p for t in self.processes.values() for p in (t.process.stdin, t.process.stdout)]
        weakref.finalize(lab, _close_all, pipes)  # the Lab stops the processes, this their pipes
        self._answers(dict.fromkeys(self.processes))  # each says {"ready": true}

    def _answers(self, requests: dict[str, dict[str, Any] | None]) -> dict[str, dict[str, Any]]:
        """Send each host its request (None: just read), then read one answer line from each."""
        for name, request in requests.items():
            if request is not None:
                pipe = self._pipe(name, "stdin")
                pipe.write(json.dumps(request).encode() + b"\n")
                pipe.flush()
        answers = {}
        deadline = time.monotonic() + ANSWER_TIMEOUT
        for name in requests:
            stdout = self._pipe(name, "stdout")
            ready, _, _ = select.select([stdout], [], [], max(0.0, deadline - time.monotonic()))
            line = stdout.readline() if ready else b""
            if not line:
                tracked = self.processes[name]
                raise LabError(f"probe in {name} did not answer: {tracked.log_tail(5)}")
            answers[name] = json.loads(line)
        return answers

    def _pipe(self, name: str, which: str) -> IO[bytes]:
        pipe: IO[bytes] | None = getattr(self.processes[name].process, which)
        if pipe is None:
            raise LabError(f"probe in {name} has no {which}")
        return pipe

    def verify(self, matrix: Matrix, control: tuple[str, ...]) -> Verification:
        """Probe every ordered pair of `matrix` and judge what the destinations received."""
        started = time.monotonic()
        plans, wait = plan(matrix)
        nonce = secrets.token_hex(6)
        round_ = {"g": matrix.generation, "n": nonce}
        sends: dict[str, dict[str, Any] | None] = {
            name: {"op": "send", **round_, "to": []} for name in self.processes
        }
        for p in plans:
            to = sends[p.src]
            if to is not None:
                to["to"].append([p.dst, self.lab.hosts[p.dst].address, p.probes])
        self._answers(sends)
        time.sleep(wait)
        reports = self._answers({name: {"op": "report", **round_} for name in self.processes})
        arrived = {
            (src, dst): int(count)
            for dst, report in reports.items()
            for src, count in report.get("received", {}).items()
        }
        mismatches, unverified = judge(plans, arrived)
        return Verification(
            generation=matrix.generation,
            ok=not mismatches and not control,
            mismatches=mismatches,
            unverified=unverified,
            pairs=len(plans),
            seconds=time.monotonic() - started,
            control=control,
        )


# -- the per-host process ---------------------------------------------------------------------


class Responder:
    """Counts valid probes addressed to this host; sends probes on request."""

    def __init__(self, name: str, address: str, lab: str, port: int) -> None:
        self.name, self.lab, self.port = name, lab, port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, port))
        self.sock.setblocking(False)
        self.rounds: dict[tuple[int, str], Counter[str]] = {}
        self.bad = 0

    def receive(self) -> None:
        """Drain the socket; garbage is counted in `bad`, never raised."""
        while True:
            try:
                data = self.sock.recv(MAX_DATAGRAM + 1)
            except BlockingIOError:
                return
            key = self._valid(data)
            if key is None:
                self.bad += 1
                continue
            if key[0] not in self.rounds:
                self.rounds[key[0]] = Counter()
                while len(self.rounds) > KEPT_ROUNDS:
                    del self.rounds[next(iter(self.rounds))]
            self.rounds[key[0]][key[1]] += 1

    def _valid(self, data: bytes) -> tuple[tuple[int, str], str] | None:
        if len(data) > MAX_DATAGRAM:
            return None
        try:
            doc = json.loads(data)
        except ValueError:
            return None
        if not isinstance(doc, dict) or doc.get("lab") != self.lab or doc.get("d") != self.name:
            return None
        g, n, s = doc.get("g"), doc.get("n"), doc.get("s")
        if not (isinstance(g, int) and g >= 0 and isinstance(n, str) and isinstance(s, str)):
            return None
        if not 0 < len(s) <= 32 or len(n) > 32:
            return None
        return (g, n), s

    def command(self, request: dict[str, Any]) -> dict[str, Any]:
        """`send` probes to each [dst, address, count]; `report` what arrived for a round."""
        g, n = request.get("g"), request.get("n")
        if request.get("op") == "send":
            sent = 0
            for dst, address, count in request.get("to", []):
                payload = json.dumps({"lab": self.lab, "g": g, "s": self.name, "d": dst, "n": n})
                for _ in range(int(count)):
                    try:
                        self.sock.sendto(payload.encode(), (address, self.port))
                        sent += 1
                    except OSError:
                        pass  # a full queue or an unreachable neighbour: that probe is lost
            return {"ok": True, "sent": sent}
        if request.get("op") == "report":
            self.receive()
            counts = self.rounds.get((int(str(g)), str(n)), Counter())
            return {"ok": True, "received": dict(counts), "bad": self.bad}
        return {"ok": False, "error": f"unknown op {request.get('op')!r}"}


def serve(responder: Responder) -> None:
    """Until stdin closes: count probes, answer commands one line each."""
    stdin = sys.stdin.buffer
    out = sys.stdout.buffer
    out.write(b'{"ready": true}\n')
    out.flush()
    while True:
        ready, _, _ = select.select([responder.sock, stdin], [], [])
        if responder.sock in ready:
            responder.receive()
        if stdin in ready:
            line = stdin.readline()
            if not line:
                return
            try:
                request = json.loads(line)
                answer = (
                    responder.command(request)
                    if isinstance(request, dict)
                    else {"ok": False, "error": "a request is a JSON object"}
                )
            except (ValueError, TypeError) as exc:
                answer = {"ok": False, "error": str(exc)}
            out.write(json.dumps(answer).encode() + b"\n")
            out.flush()


def main(argv: list[str] | None = None) -> int:
    """`python -m votemesh_lab.probe --name N --address A --lab ID [--port 5399]`."""
    parser = argparse.ArgumentParser(prog="python -m votemesh_lab.probe", description=__doc__)
    parser.add_argument("--name", required=True)
    parser.add_argument("--address", required=True)
    parser.add_argument("--lab", required=True)
    parser.add_argument("--port", type=int, default=PORT)
    args = parser.parse_args(argv)
    try:
        serve(Responder(args.name, args.address, args.lab, args.port))
    except OSError as exc:
        print(f"probe: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
