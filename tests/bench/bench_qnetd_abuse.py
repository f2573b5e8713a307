"""qnetd under abuse (issue 7, Must show): idle and half-open connections beside a good cluster.

One `votemesh-qnetd run` on 127.0.0.1 with its default limits. Three clusters of three real
qdevice-protocol clients each (tests/qnetd/async_client.py: STARTTLS with a client certificate
naming the cluster, INIT, node lists, ffsplit votes, echoes at an 8 s heartbeat like
corosync-qdevice) connect and get their ACKs. Then, phase by phase, from a process of its own
(tests/qnetd/abusers.py) and 250 loopback sources (127.0.1.x):

- idle: nothing else;
- hold: `VOTEMESH_BENCH_ABUSERS` (2,000) connections opened once (at up to 2,000/s) and held
  for `VOTEMESH_BENCH_HOLD_S` (8) s, a third each TCP connected and silent, PREINIT then silent,
  and PREINIT + STARTTLS + a real ClientHello then silent (handshake half done); the server holds
  what its caps allow (`--preinit-max` 1,024) and refuses or evicts the rest, by reason;
- churn: a handshake flood, the same mix re-opened as fast as the server drops it, at up to
  `VOTEMESH_BENCH_ABUSE_RATE` (1,000) connections/s for `VOTEMESH_BENCH_ABUSE_S` (10) s;
  `VOTEMESH_BENCH_CHURN_KINDS` (idle,preinit,tls_stalled) picks the kinds;
- after each: once the server has no connection pending, the same measurements again;
- idle again: once more after the server's second (late) heap trim, 13 s after the last burst:
  the RSS it returns to, and a second idle echo p99 (the noise band is printed).

Per phase: the cluster's ECHO round trip p50 / p99 (and p99 over idle), vote changes (any
VOTE_INFO or lost connection of a cluster client: must be 0), a new legitimate client's
connect + PREINIT + STARTTLS + INIT time (target: within 1 s), the server's fds and RSS (peak
during the phase, at its end, and the end minus idle), and the refusals by reason from
/metrics. With `VOTEMESH_BENCH_ALL_HELD=1` (default) a second server with `--preinit-max 4096`
runs idle / hold / after / idle again, so that all 2,000 are held at once. Figures only: nothing
here fails on a timing; a vote change fails the run (it is a bug, not a timing).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from proto.qnetd_options import RingId
from qnetd.runtime.server import LATE_TRIM_DELAY, TRIM_DELAY
from tests.bench.qnetd_loadgen import percentile, sample_process
from tests.interop.debian_qnetd import ClientCredentials
from tests.qnetd.async_client import AsyncQdevice
from tests.qnetd.our_qnetd import OurQnetd

CLUSTERS = ("alpha", "bravo", "charlie")
NODES = (1, 2, 3)
HEARTBEAT_MS = 8000  # corosync-qdevice's default
SOURCES = [f"127.0.{1 + i // 250}.{1 + i % 250}" for i in range(250)]
RING = RingId(1, 1)
REASONS = ("per_source", "total", "fd_headroom", "deadline", "evicted", "handshake_busy")
KINDS = "idle,preinit,tls_stalled"
PREINIT_TIMEOUT = 5.0
"""The server's default --preinit-timeout: held connections start to expire this long after the
hold began."""
HELD_SETTLE = 0.5
"""Seconds after the abusers have all opened before `held_echo` starts (accepts drained)."""


@dataclass(frozen=True)
class Knobs:
    """Sizes from the environment."""

    abusers: int = int(os.environ.get("VOTEMESH_BENCH_ABUSERS", "2000"))
    hold_s: float = float(os.environ.get("VOTEMESH_BENCH_HOLD_S", "8"))
    churn_s: float = float(os.environ.get("VOTEMESH_BENCH_ABUSE_S", "10"))
    churn_rate: float = float(os.environ.get("VOTEMESH_BENCH_ABUSE_RATE", "1000"))
    churn_kinds: str = os.environ.get("VOTEMESH_BENCH_CHURN_KINDS", KINDS)
    all_held: bool = os.environ.get("VOTEMESH_BENCH_ALL_HELD", "1") != "0"
    compare: bool = os.environ.get("VOTEMESH_BENCH_COMPARE_LOOP", "1") != "0"
    """Also run the default server with `--tls-handshake-threads 0` (handshakes on the loop)."""
    quiet_s: float = 4.0
    """Length of the idle and after phases."""


def raise_own_fd_limit() -> int:
    """The bench holds thousands of sockets: soft RLIMIT_NOFILE up to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


def fds_and_rss(server: OurQnetd) -> tuple[int, int]:
    assert server.process is not None
    return server.fd_count(), sample_process(server.process.pid).rss_kb


@dataclass
class Sampler:
    """Largest fds / RSS of the server since the last `reset`, sampled every 0.1 s."""

    server: OurQnetd
    fds: int = 0
    rss_kb: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def reset(self) -> None:
        self.fds, self.rss_kb = fds_and_rss(self.server)

    def run(self) -> None:
        while not self.stop.wait(0.1):
            with contextlib.suppress(OSError, AssertionError):
                fds, rss = fds_and_rss(self.server)
                self.fds, self.rss_kb = max(self.fds, fds), max(self.rss_kb, rss)


async def echo_rtts(clients: list[AsyncQdevice], seconds: float) -> list[tuple[float, float]]:
    """(when it was sent: time.monotonic, round trip) of ECHO_REQUEST -> ECHO_REPLY, one client
    after another, for `seconds`; a reply that does not come within 5 s counts as 5 s."""
    rtts: list[tuple[float, float]] = []
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        client = clients[i % len(clients)]
        i += 1
        sent, started = time.monotonic(), time.perf_counter()
        ok = await client.echo(timeout=5.0)
        rtts.append((sent, time.perf_counter() - started if ok else 5.0))
        await asyncio.sleep(0.005)
    return rtts


@dataclass
class Connects:
    """New clients' connect + PREINIT + STARTTLS + INIT times, and the slowest one's steps."""

    times: list[float] = field(default_factory=list)
    slowest: dict[str, float] = field(default_factory=dict)
    """Its last attempt's steps (connect, preinit, tls, init) and its number of attempts."""


async def connect_times(
    server: OurQnetd, creds: ClientCredentials, count: int, gap: float
) -> Connects:
    """A new client of cluster `late` connects, PREINIT, STARTTLS, INIT, `count` times. A
    refused or dropped attempt is retried after 0.2 s (votemesh-agent's first retry, 0.1-0.2 s)
    and the time counts from the first attempt: what a real client waits."""
    out = Connects()
    for node in range(1, count + 1):
        await asyncio.sleep(gap)
        started = time.perf_counter()
        attempts = 0
        while True:
            attempts += 1
            client = AsyncQdevice(server.port, b"late", node, creds, heartbeat_ms=HEARTBEAT_MS)
            try:
                await asyncio.wait_for(client.start(RING, (node,), (node,)), 30)
                elapsed = time.perf_counter() - started
                break
            except (OSError, ConnectionError, TimeoutError):
                elapsed = float("inf")
                if time.perf_counter() - started > 10:
                    break
                await asyncio.sleep(0.2)
            finally:
                with contextlib.suppress(Exception):
                    await client.close()
        out.times.append(elapsed)
        if elapsed >= max(out.times):
            out.slowest = dict(client.steps) | {"attempts": attempts}
    return out


def metrics(server: OurQnetd) -> str:
    url = f"http://127.0.0.1:{server.http_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def sample_value(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def refusals(server: OurQnetd) -> dict[str, float]:
    text = metrics(server)
    name = "votemesh_qnetd_preinit_refused_total"
    return {r: sample_value(text, f'{name}{{reason="{r}"}}') for r in REASONS}


async def wait_preinit_zero(server: OurQnetd, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        text = await asyncio.to_thread(metrics, server)
        if sample_value(text, "votemesh_qnetd_preinit_connections") == 0:
            break
        await asyncio.sleep(0.2)
    return time.monotonic() - started


@dataclass
class Phase:
    """Figures of one phase."""

    name: str
    echo: list[float]
    connect: Connects
    vote_changes: int
    fds: tuple[int, int]
    """(peak, end)"""
    rss_kb: tuple[int, int]
    refused: dict[str, float]
    abuse: dict[str, int] | None = None
    held_echo: list[float] | None = None
    """Echoes sent while every abuser connection was open at once: from HELD_SETTLE after the
    abusers said all were open until the first of them could reach the server's pre-INIT
    timeout (the arrival burst and the expiry burst left out; they are in `echo`)."""


@dataclass
class Cluster:
    """The well-behaved clients and what they had seen when a phase began."""

    clients: list[AsyncQdevice]
    late: ClientCredentials

    def mark(self) -> list[tuple[int, bool]]:
        return [(len(c.votes), c.closed.is_set()) for c in self.clients]

    def changes_since(self, mark: list[tuple[int, bool]]) -> int:
        """VOTE_INFOs received and connections lost since `mark` (all must stay as they were)."""
        now = self.mark()
        return sum(
            n - m + int(closed and not was) for (n, closed), (m, was) in zip(now, mark, strict=True)
        )


async def phase(
    name: str,
    server: OurQnetd,
    cluster: Cluster,
    sampler: Sampler,
    *,
    seconds: float,
    abuse: Sequence[str] | None = None,
    connects: int = 3,
) -> Phase:
    """Measure for `seconds`, with the abusers' command running if given."""
    sampler.reset()
    mark = cluster.mark()
    refused_before = await asyncio.to_thread(refusals, server)
    proc = None
    opened_at: list[float] = []
    started = time.monotonic()
    if abuse is not None:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.qnetd.abusers", *abuse], stdout=subprocess.PIPE, text=True
        )
    lines = None if proc is None else asyncio.to_thread(_abuser_lines, proc, opened_at, seconds)
    echo, connect, out = await asyncio.gather(
        echo_rtts(cluster.clients, seconds),
        connect_times(server, cluster.late, connects, seconds / (connects + 1)),
        lines if lines is not None else asyncio.sleep(0, result=[]),
    )
    counts = json.loads(out[-1]) if out else None
    held = None
    if opened_at:
        window = (opened_at[0] + HELD_SETTLE, started + PREINIT_TIMEOUT)
        held = [rtt for sent, rtt in echo if window[0] <= sent < window[1]]
    fds_end, rss_end = fds_and_rss(server)
    refused_after = await asyncio.to_thread(refusals, server)
    return Phase(
        name,
        [rtt for _, rtt in echo],
        connect,
        cluster.changes_since(mark),
        (max(sampler.fds, fds_end), fds_end),
        (max(sampler.rss_kb, rss_end), rss_end),
        {r: refused_after[r] - refused_before[r] for r in REASONS},
        counts,
        held,
    )


def _abuser_lines(proc: subprocess.Popen[str], opened_at: list[float], seconds: float) -> list[str]:
    """The abusers' output lines; when they say all are open, the time goes into `opened_at`."""
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        if "opened_all" in line:
            opened_at.append(time.monotonic())
        lines.append(line.strip())
    proc.wait(timeout=seconds + 120)
    return lines


async def settle(server: OurQnetd) -> float:
    """Until no connection is pending, then 2 s: the server trims its heap 1 s after that.
    Returns when nothing was pending any more (time.monotonic)."""
    await wait_preinit_zero(server, 60)
    zero_at = time.monotonic()
    await asyncio.sleep(2.0)
    return zero_at


async def idle_again(server: OurQnetd, cluster: Cluster, sampler: Sampler, zero_at: float) -> Phase:
    """The idle phase once more, after the server's late trim (`LATE_TRIM_DELAY` after the
    first): RSS back to baseline, and a second idle echo p99 for the noise band."""
    late = zero_at + TRIM_DELAY + LATE_TRIM_DELAY + 1.0
    await asyncio.sleep(max(0.0, late - time.monotonic()))
    return await phase("idle again", server, cluster, sampler, seconds=Knobs.quiet_s)


async def run(workdir: Path, knobs: Knobs, extra: Sequence[str], churn: bool) -> list[Phase]:
    """One server: idle, hold, after hold and (if `churn`) churn, after churn."""
    server = OurQnetd(workdir, None, None, *extra)
    server.start()
    sampler = Sampler(server)
    clients: list[AsyncQdevice] = []
    try:
        for name in CLUSTERS:
            creds = server.client_credentials(name)
            for node in NODES:
                client = AsyncQdevice(server.port, name.encode(), node, creds, HEARTBEAT_MS)
                await client.start(RING, NODES, NODES)
                clients.append(client)
        cluster = Cluster(clients, server.client_credentials("late"))
        await asyncio.sleep(1.0)  # every client has its ACK
        await connect_times(server, cluster.late, 1, 0)  # warm-up: certificates, code paths
        # The first scrape imports prometheus_client (deferred at start): before the baseline.
        await asyncio.to_thread(metrics, server)
        threading.Thread(target=sampler.run, daemon=True).start()
        port, sources = str(server.port), str(len(SOURCES))
        phases = [await phase("idle", server, cluster, sampler, seconds=knobs.quiet_s)]
        hold = [port, str(knobs.abusers), str(knobs.hold_s), sources, "2000", "once", KINDS]
        label = f"hold {knobs.abusers:,} for {knobs.hold_s:.0f} s"
        phases.append(
            await phase(
                label, server, cluster, sampler, seconds=knobs.hold_s, abuse=hold, connects=6
            )
        )
        zero_at = await settle(server)
        phases.append(await phase("after hold", server, cluster, sampler, seconds=knobs.quiet_s))
        if churn:
            rate = f"{knobs.churn_rate:.0f}"
            flood = [port, str(knobs.abusers), str(knobs.churn_s), sources, rate, "churn"]
            flood.append(knobs.churn_kinds)
            label = f"churn {rate}/s for {knobs.churn_s:.0f} s"
            phases.append(
                await phase(
                    label, server, cluster, sampler, seconds=knobs.churn_s, abuse=flood, connects=8
                )
            )
            zero_at = await settle(server)
            phases.append(
                await phase("after churn", server, cluster, sampler, seconds=knobs.quiet_s)
            )
        phases.append(await idle_again(server, cluster, sampler, zero_at))
        for client in clients:
            await client.close()
        return phases
    finally:
        sampler.stop.set()
        server.stop()


def _ms(values: list[float], pct: float) -> str:
    value = percentile(values, pct)
    return "-" if value is None else f"{value * 1000:.1f}"


COLUMNS = (
    ("phase", 24), ("echo p50", 9), ("p99", 7), ("p99/idle", 9), ("n", 5), ("votes chg", 10),
    ("new client p50/max ms", 22), ("fds peak/end", 13), ("RSS MB peak/end", 16),
    ("end-idle", 9),
)  # fmt: skip


def _line(cells: Sequence[str]) -> str:
    first, *rest = ((c, w) for c, (_, w) in zip(cells, COLUMNS, strict=True))
    return f"{first[0]:<{first[1]}}" + "".join(f"{c:>{w}}" for c, w in rest)


def print_table(title: str, phases: list[Phase]) -> None:
    idle = phases[0]
    idle_p99 = percentile(idle.echo, 99) or 0.0
    print(title)
    print(_line([name for name, _ in COLUMNS]))
    for p in phases:
        p99 = percentile(p.echo, 99)
        ratio = "-" if not p99 or not idle_p99 else f"{p99 / idle_p99:.1f}x"
        print(
            _line([
                p.name, _ms(p.echo, 50), _ms(p.echo, 99), ratio, str(len(p.echo)),
                str(p.vote_changes), f"{_ms(p.connect.times, 50)} / {_ms(p.connect.times, 100)}",
                f"{p.fds[0]} / {p.fds[1]}",
                f"{p.rss_kb[0] / 1024:.1f} / {p.rss_kb[1] / 1024:.1f}",
                f"{(p.rss_kb[1] - idle.rss_kb[1]) / 1024:+.1f}",
            ])
        )  # fmt: skip
    for p in phases:
        if p.held_echo:
            p99 = percentile(p.held_echo, 99) or 0.0
            print(
                f"  {p.name}, while all {p.abuse.get('held_max', 0) if p.abuse else 0:,} are "
                f"open ({HELD_SETTLE} s after the last opened until the first may expire): echo "
                f"p50 {_ms(p.held_echo, 50)} / p99 {_ms(p.held_echo, 99)} ms, n {len(p.held_echo)}"
                + (f", p99/idle {p99 / idle_p99:.1f}x" if idle_p99 else "")
            )
    quiet = [q for p in phases if p.abuse is None and (q := percentile(p.echo, 99))]
    if quiet:
        print(
            "echo p99 without abuse (idle, after each, idle again: the noise band): "
            + " / ".join(f"{q * 1000:.1f}" for q in quiet)
            + f" ms, max/min {max(quiet) / min(quiet):.1f}x"
        )
    print("the slowest new client's steps (ms):")
    for p in phases:
        steps = ", ".join(
            f"{k} {v}" if k == "attempts" else f"{k} {v * 1000:.1f}"
            for k, v in p.connect.slowest.items()
        )
        print(f"  {p.name:<22} {steps}")
    print("refused or dropped before INIT, by reason (server /metrics), and the abusers' view:")
    for p in phases:
        if p.abuse is None and not any(p.refused.values()):
            continue
        reasons = ", ".join(f"{k} {v:.0f}" for k, v in p.refused.items() if v)
        a = p.abuse or {}
        view = (
            f"opened {a.get('opened', 0)}, held at once {a.get('held_max', 0)}, "
            f"connect failed {a.get('failed', 0)}"
        )
        if "closed_by_server" in a:
            view += f", closed by the server while held {a['closed_by_server']}"
        print(f"  {p.name:<22} {reasons or 'none'}; abusers: {view}")


def print_comparison(loop: list[Phase], threads: list[Phase]) -> None:
    """Echo p99 and the slowest new client, handshakes on the loop vs on a worker thread."""
    print("TLS handshakes on the event loop (--tls-handshake-threads 0) vs on 1 worker (default):")
    print(
        f"{'phase':<24}{'loop p50/p99':>14}{'worker p50/p99':>16}{'p99 worker/loop':>17}"
        f"{'new client max loop/worker':>28}"
    )
    for a, b in zip(loop, threads, strict=True):
        pa, pb = percentile(a.echo, 99), percentile(b.echo, 99)
        ratio = "-" if not pa or not pb else f"{pb / pa:.2f}"
        print(
            f"{a.name:<24}{_ms(a.echo, 50) + ' / ' + _ms(a.echo, 99):>14}"
            f"{_ms(b.echo, 50) + ' / ' + _ms(b.echo, 99):>16}{ratio:>17}"
            f"{_ms(a.connect.times, 100) + ' / ' + _ms(b.connect.times, 100):>28}"
        )
    for label, phases in (("loop", loop), ("worker", threads)):
        quiet = [q for p in phases if p.abuse is None and (q := percentile(p.echo, 99))]
        if quiet:
            band = f"{min(quiet) * 1000:.1f}-{max(quiet) * 1000:.1f}"
            print(f"  quiet echo p99 band, {label}: {band} ms")


def main() -> None:
    """Run with the sizes from the environment and print the tables."""
    limit = raise_own_fd_limit()
    knobs = Knobs()
    if limit < knobs.abusers + 200:
        knobs = Knobs(abusers=max(100, limit - 200))
        print(f"open-file limit {limit}: abusers reduced to {knobs.abusers}")
    changes = 0
    with tempfile.TemporaryDirectory(prefix="vm-abuse-") as tmp:
        on_loop: list[Phase] = []
        if knobs.compare:  # first, so that the default run's table stays the last word
            on_loop = asyncio.run(
                run(Path(tmp) / "loop", knobs, ("--tls-handshake-threads", "0"), churn=True)
            )
            changes += sum(p.vote_changes for p in on_loop)
        phases = asyncio.run(run(Path(tmp) / "default", knobs, (), churn=True))
        print_table(
            f"qnetd under abuse: {len(CLUSTERS)} clusters x {len(NODES)} TLS qdevice clients "
            f"(certificates, ffsplit, heartbeat {HEARTBEAT_MS // 1000} s) beside up to "
            f"{knobs.abusers:,} connections that never INIT, from {len(SOURCES)} sources; "
            "server defaults (--preinit-max 1024, --preinit-per-source 16, --preinit-timeout 5)",
            phases,
        )
        changes += sum(p.vote_changes for p in phases)
        if knobs.all_held:
            held = asyncio.run(run(Path(tmp) / "held", knobs, ("--preinit-max", "4096"), False))
            print_table("the same hold with --preinit-max 4096 (all of them held at once)", held)
            changes += sum(p.vote_changes for p in held)
        if on_loop:
            print_comparison(on_loop, phases)
    if changes:
        raise SystemExit(f"FAILED: {changes} vote changes or lost connections in the cluster")
