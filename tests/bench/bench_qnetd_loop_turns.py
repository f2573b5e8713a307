"""The qnetd event loop's turns while 2,000 connections that never INIT arrive (issue 7).

An echo that reaches the server while the loop runs a turn waits for the rest of that turn, so
the echo p99 under abuse follows the long turns. This measures them directly, in-process, by
the loop thread's own CPU time (`time.thread_time` around each `_run_once`): unlike a round trip
it does not move when other processes load the machine. A `QnetdServer` with the default
settings (TLS required, client certificates) runs in this process on 127.0.0.1; a process of
its own (tests/qnetd/abusers.py) opens `VOTEMESH_BENCH_ABUSERS` (2,000) connections from 250
loopback sources at up to 2,000/s, a third each idle, PREINIT-only, and PREINIT + STARTTLS + a
ClientHello (the server answers with its half of the handshake: one RSA-2048 signature), and
holds them for 6 s (the 5 s pre-INIT deadline closes them). Alternately with the TLS
handshakes on the loop (`--tls-handshake-threads 0`, asyncio's TLS) and on the default worker
thread, `VOTEMESH_BENCH_TURN_RUNS` (2) times each.

Figures: the loop thread's CPU over the whole run, turns, turn CPU p99 / p99.9 / max, and how
many turns took more than 1 and 2 ms of CPU; and how late a 2 ms timer in the loop fired (wall
clock: this one does include the machine's other load). The run includes the deadline drops
and the heap trim 1 s later (one long turn: the collection and `malloc_trim`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from qnetd.algorithms.registry import ALGORITHMS
from qnetd.arbitration import QnetdCore
from qnetd.runtime.pki_check import ensure_state_pki
from qnetd.runtime.server import QnetdServer, bind_listeners, server_ssl_context
from qnetd.settings import QnetdSettings
from tests.bench.bench_qnetd_abuse import SOURCES, raise_own_fd_limit

HOLD_S = 6.0
PROBE_S = 0.002
KINDS = "idle,preinit,tls_stalled"


@dataclass(frozen=True)
class Turns:
    """The loop thread's CPU seconds per turn during one run."""

    threads: int
    cpu: list[float]
    lag: list[float]
    """How late a 2 ms timer in the server's loop fired, each time (wall clock)."""

    def row(self) -> str:
        cpu = sorted(self.cpu)
        n = len(cpu)

        def pct(p: float) -> str:
            return f"{cpu[min(n - 1, int(n * p))] * 1000:.2f}"

        over1 = sum(c > 0.001 for c in cpu)
        over2 = sum(c > 0.002 for c in cpu)
        where = "loop (0)" if self.threads == 0 else f"worker ({self.threads})"
        lag = sorted(self.lag)
        late = f"{lag[len(lag) // 2] * 1000:.2f} / {lag[int(len(lag) * 0.99)] * 1000:.1f}"
        return (
            f"{where:<12}{sum(cpu) * 1000:>10.0f}{n:>8}{pct(0.99):>10}{pct(0.999):>10}"
            f"{cpu[-1] * 1000:>9.1f}{over1:>9}{over2:>9}{late:>20}"
        )


HEADER = (
    f"{'handshakes':<12}{'CPU ms':>10}{'turns':>8}{'p99 ms':>10}{'p99.9 ms':>10}{'max ms':>9}"
    f"{'>1 ms':>9}{'>2 ms':>9}{'timer late p50/p99':>20}"
)


async def one_run(workdir: Path, threads: int, abusers: int) -> Turns:
    paths = ensure_state_pki(workdir)
    context = server_ssl_context(
        str(paths.ca_cert), str(paths.server_cert), str(paths.server_key), True
    )
    settings = QnetdSettings(tls_handshake_threads=threads)
    server = QnetdServer(QnetdCore(settings, ALGORITHMS), context)
    await server.start(bind_listeners("127.0.0.1", 0, "4"))
    loop = asyncio.get_running_loop()
    run_once = loop._run_once  # type: ignore[attr-defined]
    cpu: list[float] = []
    lag: list[float] = []
    done = asyncio.Event()

    async def probe() -> None:
        while not done.is_set():
            start = time.perf_counter()
            await asyncio.sleep(PROBE_S)
            lag.append(time.perf_counter() - start - PROBE_S)

    def timed() -> None:
        start = time.thread_time()
        run_once()
        cpu.append(time.thread_time() - start)

    try:
        port = server.listeners[0].getsockname()[1]
        args = [str(port), str(abusers), str(HOLD_S), str(len(SOURCES)), "2000", "once", KINDS]
        loop._run_once = timed  # type: ignore[attr-defined]
        prober = asyncio.create_task(probe())
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.qnetd.abusers", *args, stdout=subprocess.DEVNULL
        )
        await proc.wait()
        await asyncio.sleep(2.0)  # the heap trim 1 s after the last pending connection
        done.set()
        await prober
    finally:
        loop._run_once = run_once  # type: ignore[attr-defined]
        await server.stop()
    return Turns(threads, cpu, lag)


def main() -> None:
    """Alternate loop / worker runs and print one row each."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    limit = raise_own_fd_limit()
    abusers = min(int(os.environ.get("VOTEMESH_BENCH_ABUSERS", "2000")), limit - 200)
    runs = int(os.environ.get("VOTEMESH_BENCH_TURN_RUNS", "2"))
    print(
        f"qnetd loop turns (loop-thread CPU per turn) while {abusers:,} connections that never "
        f"INIT arrive at up to 2,000/s and are held {HOLD_S:.0f} s (a third with a ClientHello)"
    )
    print(HEADER)
    with tempfile.TemporaryDirectory(prefix="vm-turns-") as tmp:
        for i in range(runs):
            for threads in (0, 1):
                turns = asyncio.run(one_run(Path(tmp) / f"{i}-{threads}", threads, abusers))
                print(turns.row(), flush=True)
