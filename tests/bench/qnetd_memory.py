"""Where a qnetd's memory goes after a flood: tracemalloc snapshots idle vs after, compared.

`python -m tests.bench.qnetd_memory [ABUSERS SECONDS RATE]` starts `votemesh-qnetd run` with
`VOTEMESH_QNETD_TRACEMALLOC` (qnetd/runtime/memory_debug.py), connects a small TLS cluster,
takes snapshot 1 when idle, runs tests/qnetd/abusers.py (default 2,000 connections for 8 s at up
to 1,000/s), waits until the server has trimmed its heap, takes snapshot 2 and prints the traced
totals, the RSS at both moments and the 25 allocation sites that grew most (`compare_to`).
`python -m tests.bench.qnetd_memory --compare DIR` compares the first and last snapshot in DIR.
A diagnostic, not part of `make bench` (tracing slows the server several times).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from tests.bench.bench_qnetd_abuse import (
    RING,
    SOURCES,
    metrics,
    raise_own_fd_limit,
    wait_preinit_zero,
)
from tests.bench.qnetd_loadgen import sample_process
from tests.qnetd.async_client import AsyncQdevice
from tests.qnetd.our_qnetd import OurQnetd

WAITS = [float(w) for w in os.environ.get("VOTEMESH_MEMORY_WAITS", "3").split(",")]
"""Seconds after each flood's last pending connection is gone to take a snapshot (cumulative)."""
ROUNDS = int(os.environ.get("VOTEMESH_MEMORY_ROUNDS", "2"))


def compare(directory: Path, top: int = 25) -> None:
    """Print what grew between the first and the last snapshot in `directory`."""
    paths = sorted(directory.glob("snapshot-*.pickle"), key=lambda p: int(p.stem.split("-")[1]))
    first, last = (tracemalloc.Snapshot.load(str(p)) for p in (paths[0], paths[-1]))
    total = [sum(s.size for s in snap.statistics("filename")) for snap in (first, last)]
    print(f"traced: {total[0] / 1048576:.2f} MB -> {total[1] / 1048576:.2f} MB")
    for key in ("lineno", "traceback"):
        print(f"--- top {top} by {key}")
        for stat in last.compare_to(first, key)[:top]:
            print(f"{stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d} blocks  {stat}")
            if key == "traceback":
                for line in stat.traceback.format()[-8:]:
                    print("        " + line)


def snapshot(server: OurQnetd, number: int, directory: Path) -> float:
    """SIGUSR2 the server; wait for snapshot-`number`; return its RSS in MB."""
    assert server.process is not None
    server.process.send_signal(signal.SIGUSR2)
    path = directory / f"snapshot-{number}.pickle"
    for _ in range(600):
        if path.exists():
            time.sleep(1.0)  # written by one call; give it time to finish
            break
        time.sleep(0.1)
    return sample_process(server.process.pid).rss_kb / 1024


async def scenario(workdir: Path, abusers: int, seconds: float, rate: float) -> None:
    snaps = workdir / "snapshots"
    os.environ["VOTEMESH_QNETD_TRACEMALLOC"] = str(snaps)
    server = OurQnetd(workdir)
    server.start()
    try:
        creds = server.client_credentials("bench")
        nodes = (1, 2, 3)
        clients = [AsyncQdevice(server.port, b"bench", n, creds, heartbeat_ms=60000) for n in nodes]
        for client in clients:
            await client.start(RING, nodes, nodes)
        await asyncio.to_thread(metrics, server)  # imports prometheus_client: before the idle one
        await asyncio.sleep(2.0)
        rss = [snapshot(server, 1, snaps)]
        for _round in range(ROUNDS):
            subprocess.run(
                [sys.executable, "-m", "tests.qnetd.abusers", str(server.port), str(abusers),
                 str(seconds), str(len(SOURCES)), str(rate)],
                check=True, capture_output=True, timeout=seconds + 120,
            )  # fmt: skip
            await wait_preinit_zero(server, 60)
            for wait in WAITS:
                await asyncio.sleep(wait)
                rss.append(snapshot(server, len(rss) + 1, snaps))
        print("RSS MB at the snapshots: " + ", ".join(f"{r:.1f}" for r in rss))
        for client in clients:
            await client.close()
    finally:
        server.stop()
    for line in server.log_path.read_text().splitlines():
        if any(
            f'"{event}"' in line
            for event in ("tracemalloc snapshot", "heap trimmed", "sparse regions")
        ):
            print(line)
    if os.environ.get("VOTEMESH_QNETD_TRACEMALLOC_FRAMES", "10") != "0":
        compare(snaps)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--compare"]:
        compare(Path(argv[1]))
        return 0
    raise_own_fd_limit()
    abusers, seconds, rate = (argv + ["2000", "8", "1000"][len(argv) :])[:3]
    with tempfile.TemporaryDirectory(prefix="vm-mem-") as tmp:
        asyncio.run(scenario(Path(tmp), int(abusers), float(seconds), float(rate)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
