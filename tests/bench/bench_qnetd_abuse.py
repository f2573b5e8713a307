"""qnetd under abuse: 2,000 connections that never INIT while a good cluster keeps its votes.

One `votemesh-qnetd run` on 127.0.0.1 with its default limits. A cluster of real qdevice-protocol
clients (tests/qnetd/async_client.py: TLS with a client certificate, INIT, node lists, votes)
connects first; then, for `VOTEMESH_BENCH_ABUSE_S` seconds (default 10), abusers keep up to
`VOTEMESH_BENCH_ABUSERS` (default 2,000) connections open from 250 loopback sources
(127.0.1.1 ...), a third each idle TCP, PREINIT-only and stalled TLS handshakes, re-opening what
the server drops at up to `VOTEMESH_BENCH_ABUSE_RATE` (default 1,000) connections per second,
from a process of their own (tests/qnetd/abusers.py). Printed, in one table: echo round trip
p50/p99 of the cluster before / during / after, the time a new client needs to connect and INIT
during the abuse (target: within 1 s), the server's fds and RSS before / peak / after, whether
every cluster client kept its ACK, and the refusals by reason from /metrics. Figures only:
nothing here fails on a timing.
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
from dataclasses import dataclass, field
from pathlib import Path

from proto.qnetd_enums import Vote
from proto.qnetd_options import RingId
from tests.bench.qnetd_loadgen import percentile, sample_process
from tests.qnetd.async_client import AsyncQdevice
from tests.qnetd.our_qnetd import OurQnetd

CLUSTER_NODES = 8
SOURCES = [f"127.0.{1 + i // 250}.{1 + i % 250}" for i in range(250)]
RING = RingId(1, 1)


def raise_own_fd_limit() -> int:
    """The bench holds thousands of sockets: soft RLIMIT_NOFILE up to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


@dataclass
class Peak:
    """Largest fds / RSS of the server seen by the sampler thread."""

    fds: int = 0
    rss_kb: int = 0
    stop: threading.Event = field(default_factory=threading.Event)


def fds_and_rss(server: OurQnetd) -> tuple[int, int]:
    assert server.process is not None
    return server.fd_count(), sample_process(server.process.pid).rss_kb


def sampler(server: OurQnetd, peak: Peak) -> None:
    while not peak.stop.wait(0.1):
        with contextlib.suppress(OSError):
            fds, rss = fds_and_rss(server)
            peak.fds, peak.rss_kb = max(peak.fds, fds), max(peak.rss_kb, rss)


async def echo_rtts(clients: list[AsyncQdevice], seconds: float) -> list[float]:
    """Round trips of ECHO_REQUEST -> ECHO_REPLY, one client after another, for `seconds`."""
    rtts: list[float] = []
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        client = clients[i % len(clients)]
        i += 1
        started = time.perf_counter()
        if await client.echo(timeout=5.0):
            rtts.append(time.perf_counter() - started)
        await asyncio.sleep(0.01)
    return rtts


async def connect_times(server: OurQnetd, creds: object, count: int, gap: float) -> list[float]:
    """A new client of cluster `late` connects, does STARTTLS and INIT, `count` times."""
    times: list[float] = []
    for node in range(1, count + 1):
        await asyncio.sleep(gap)
        client = AsyncQdevice(server.port, b"late", node, creds, heartbeat_ms=60000)  # type: ignore[arg-type]
        started = time.perf_counter()
        try:
            await asyncio.wait_for(client.start(RING, (node,), (node,)), 30)
            times.append(time.perf_counter() - started)
        except (OSError, ConnectionError, TimeoutError):
            times.append(float("inf"))
        with contextlib.suppress(Exception):
            await client.close()
    return times


def metrics(server: OurQnetd) -> str:
    url = f"http://127.0.0.1:{server.http_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def sample_value(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return float("nan")


async def wait_preinit_zero(server: OurQnetd, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        text = await asyncio.to_thread(metrics, server)
        if sample_value(text, "votemesh_qnetd_preinit_connections") == 0:
            break
        await asyncio.sleep(0.2)
    return time.monotonic() - started


@dataclass
class AbuseResult:
    """Figures of one run: (before, during, after) triples and counters."""

    echo: tuple[list[float], list[float], list[float]]
    connect: tuple[list[float], list[float]]
    fds: tuple[int, int, int]
    rss_kb: tuple[int, int, int]
    kept: bool
    refused: dict[str, float]
    opened: int
    held_max: int
    failed: int
    drained_s: float


async def run(workdir: Path, abusers: int, abuse_s: float, rate: float) -> AbuseResult:
    """Start the server and the cluster, measure before, during and after the abuse."""
    server = OurQnetd(workdir)
    server.start()
    peak = Peak()
    abuse: subprocess.Popen[str] | None = None
    try:
        creds = server.client_credentials("bench")
        late_creds = server.client_credentials("late")
        nodes = tuple(range(1, CLUSTER_NODES + 1))
        clients = [AsyncQdevice(server.port, b"bench", n, creds, heartbeat_ms=60000) for n in nodes]
        for client in clients:
            await client.start(RING, nodes, nodes)
        await asyncio.sleep(1.0)
        await connect_times(server, late_creds, 1, 0)  # warm-up: certificates, code paths
        # The first scrape imports prometheus_client (deferred at start): do it before the
        # baseline so "after" compares like with like.
        await asyncio.to_thread(metrics, server)
        before = await echo_rtts(clients, 3.0)
        before_connect = await connect_times(server, late_creds, 3, 0.2)
        base_fds, base_rss = fds_and_rss(server)
        thread = threading.Thread(target=sampler, args=(server, peak), daemon=True)
        thread.start()
        abuse = subprocess.Popen(
            [sys.executable, "-m", "tests.qnetd.abusers", str(server.port), str(abusers),
             str(abuse_s), str(len(SOURCES)), str(rate)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        ramp = min(2.0, abuse_s / 4)
        await asyncio.sleep(ramp)  # let the flood build up
        during, during_connect = await asyncio.gather(
            echo_rtts(clients, abuse_s - ramp),
            connect_times(server, late_creds, 8, (abuse_s - ramp) / 9),
        )
        out, _ = await asyncio.to_thread(abuse.communicate, None, abuse_s + 60)
        counts = json.loads(out.strip().splitlines()[-1])
        drained = await wait_preinit_zero(server, 30)
        await asyncio.sleep(2.0)  # the server trims its heap 1 s after the last one went
        after = await echo_rtts(clients, 3.0)
        peak.stop.set()
        after_fds, after_rss = fds_and_rss(server)
        text = await asyncio.to_thread(metrics, server)
        kept = all(c.votes and c.votes[-1] is Vote.ACK and not c.closed.is_set() for c in clients)
        refused = {
            r: sample_value(text, f'votemesh_qnetd_preinit_refused_total{{reason="{r}"}}')
            for r in ("per_source", "total", "fd_headroom", "deadline", "evicted")
        }
        for client in clients:
            await client.close()
        return AbuseResult(
            echo=(before, during, after),
            connect=(before_connect, during_connect),
            fds=(base_fds, peak.fds, after_fds),
            rss_kb=(base_rss, peak.rss_kb, after_rss),
            kept=kept,
            refused=refused,
            opened=counts["opened"],
            held_max=counts["held_max"],
            failed=counts["failed"],
            drained_s=drained,
        )
    finally:
        peak.stop.set()
        if abuse is not None and abuse.poll() is None:
            abuse.kill()
            abuse.wait(10)
        server.stop()


def _ms(values: list[float], pct: float) -> str:
    value = percentile(values, pct)
    return "-" if value is None else f"{value * 1000:.2f}"


def _row(label: str, *cells: str) -> None:
    print(f"{label:<42}" + "".join(f"{c:>12}" for c in cells))


def main() -> None:
    """Run once with the sizes from the environment and print the table."""
    limit = raise_own_fd_limit()
    abusers = int(os.environ.get("VOTEMESH_BENCH_ABUSERS", "2000"))
    abuse_s = float(os.environ.get("VOTEMESH_BENCH_ABUSE_S", "10"))
    rate = float(os.environ.get("VOTEMESH_BENCH_ABUSE_RATE", "1000"))
    if limit < abusers + 200:
        abusers = max(100, limit - 200)
        print(f"open-file limit {limit}: abusers reduced to {abusers}")
    with tempfile.TemporaryDirectory(prefix="vm-abuse-") as tmp:
        r = asyncio.run(run(Path(tmp), abusers, abuse_s, rate))
    print(
        f"qnetd under abuse: up to {abusers} connections that never INIT (idle / PREINIT-only / "
        f"stalled TLS handshake) from {len(SOURCES)} sources for {abuse_s:.0f} s, re-opened at up "
        f"to {rate:.0f}/s; a cluster of {CLUSTER_NODES} TLS clients"
    )
    _row("figure", "before", "during", "after")
    _row("echo round trip p50 (ms)", *(_ms(v, 50) for v in r.echo))
    _row("echo round trip p99 (ms)", *(_ms(v, 99) for v in r.echo))
    _row("echo samples", *(str(len(v)) for v in r.echo))
    _row("new client connect+STARTTLS+INIT p50 (ms)", *(_ms(v, 50) for v in r.connect), "")
    _row("new client connect+STARTTLS+INIT max (ms)", *(_ms(v, 100) for v in r.connect), "")
    _row("server fds (during: peak)", *(str(v) for v in r.fds))
    _row("server RSS MB (during: peak)", *(f"{v / 1024:.1f}" for v in r.rss_kb))
    _row("cluster kept its ACK votes", "", "", "yes" if r.kept else "NO")
    print(
        f"abuse: {r.opened} connections opened, at most {r.held_max} held at once, "
        f"{r.failed} connects failed; server back to 0 pre-INIT {r.drained_s:.1f} s after"
    )
    print("refused by reason: " + ", ".join(f"{k} {v:.0f}" for k, v in r.refused.items()))
