"""After a burst of connections that never INIT, the server keeps nothing per connection or per
source: its own tables, the connection guard's, the core's, the handshake gate's, and /metrics
does not grow a label set per source address (issue 7 item 5: memory back to idle).

The server runs in this test's event loop (real sockets on 127.0.0.1, real TLS with the
state directory's CA); abusers bind other loopback sources and run in a thread.
"""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from proto.qnetd_options import RingId
from qnetd.algorithms.registry import ALGORITHMS
from qnetd.arbitration import QnetdCore
from qnetd.runtime import server as server_module
from qnetd.runtime.app import _preinit_metrics
from qnetd.runtime.http import CoreCollector, LazyMetrics
from qnetd.runtime.pki_check import ensure_state_pki
from qnetd.runtime.server import QnetdServer, bind_listeners, server_ssl_context
from qnetd.settings import QnetdSettings
from tests.interop.debian_qnetd import ClientCredentials
from tests.qnetd.abusers import KINDS, client_hello, close_all, open_abuser
from tests.qnetd.async_client import AsyncQdevice


@asynccontextmanager
async def serving(
    state_dir: Path, settings: QnetdSettings | None = None
) -> AsyncIterator[QnetdServer]:
    paths = ensure_state_pki(state_dir)
    context = server_ssl_context(
        str(paths.ca_cert), str(paths.server_cert), str(paths.server_key), True
    )
    server = QnetdServer(QnetdCore(settings or QnetdSettings(), ALGORITHMS), context)
    await server.start(bind_listeners("127.0.0.1", 0, "4"))
    try:
        yield server
    finally:
        await server.stop()


def credentials(state_dir: Path, cluster: str) -> ClientCredentials:
    out = state_dir.parent / f"client-{cluster}"
    subprocess.run(
        [sys.executable, "-m", "qnetd", "certs", "client", "--cluster", cluster,
         "--out", str(out), "--state-dir", str(state_dir), "--force"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return ClientCredentials(out / "ca.pem", out / "client.pem", out / "client.key")


def open_burst(port: int, sources: list[str], per_source: int) -> list[socket.socket]:
    hello = client_hello()
    return [
        open_abuser(port, KINDS[i % 3], source, hello)
        for source in sources
        for i in range(per_source)
    ]


async def until(check: object, timeout: float = 10.0) -> None:
    assert callable(check)
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


def label_sets(text: str) -> set[str]:
    """Every sample's name and labels, without its value."""
    return {line.rsplit(" ", 1)[0] for line in text.splitlines() if line and line[0] != "#"}


@pytest.mark.asyncio
@pytest.mark.timeout(90)
async def test_nothing_per_connection_or_source_outlives_a_burst(tmp_path: Path) -> None:
    """45 connections from 15 sources (idle, PREINIT-only, stalled TLS handshake) beside one
    INIT-ed TLS client; once they are closed the guard's pending and per-source tables, the
    server's and the core's connection tables and the handshake gate hold only the client, and
    the core's timer heap is bounded by its live timers. When the client leaves, all are empty."""
    state = tmp_path / "state"
    async with serving(state) as server:
        port = server.listeners[0].getsockname()[1]
        creds = await asyncio.to_thread(credentials, state, "alpha")
        client = AsyncQdevice(port, b"alpha", 1, creds)
        await client.start(RingId(1, 1), (1,), (1,))
        sources = [f"127.0.2.{i}" for i in range(1, 16)]
        socks = await asyncio.to_thread(open_burst, port, sources, 3)
        await until(lambda: len(server.guard.pending) == 45)
        assert len(server.guard.per_source) == 15
        close_all(socks)
        await until(lambda: not server.guard.pending)
        await until(lambda: len(server.core.connections) == 1)
        assert not server.guard.per_source
        assert len(server.guard.established_ids) == 1
        assert len(server._conns) == 1
        assert server.handshakes.waiting == 0
        live = 2  # the client's dead-peer timer and at most one algorithm timer
        assert len(server.core._deadlines) <= 2 * live + 16
        await client.close()
        await until(lambda: not server.core.connections)
        assert not server._conns
        assert not server.guard.established_ids


@pytest.mark.asyncio
@pytest.mark.timeout(90)
async def test_metrics_label_sets_do_not_grow_with_sources(tmp_path: Path) -> None:
    """/metrics after a burst from 10 sources and after another from 20 more has the same label
    sets (values aside): no metric is labelled by source address, so a flood from many addresses
    cannot grow the exposition or the collector's memory."""
    state = tmp_path / "state"
    async with serving(state) as server:
        port = server.listeners[0].getsockname()[1]
        collector = CoreCollector(server.core, lambda: server.connection_count)
        collector.extra.append(lambda: _preinit_metrics(server))
        metrics = LazyMetrics(collector)
        texts = []
        for numbers in (range(1, 11), range(11, 31)):
            sources = [f"127.0.3.{i}" for i in numbers]
            socks = await asyncio.to_thread(open_burst, port, sources, 3)
            await until(lambda n=len(socks): len(server.guard.pending) == n)
            close_all(socks)
            await until(lambda: not server.guard.pending)
            texts.append(metrics().decode())
        assert label_sets(texts[0]) == label_sets(texts[1])
        assert not re.search(r"127\.0\.3\.", texts[1])
        assert "votemesh_qnetd_tls_handshakes_delayed_total" in texts[1]


def table_bytes(server: QnetdServer) -> dict[str, tuple[int, int]]:
    """Per table: (its size now, the size of a copy of it, at least 256 bytes)."""
    loop = asyncio.get_running_loop()
    tables: dict[str, object] = {
        "server connections": server._conns,
        "server tasks": server._tasks,
        "guard pending": server.guard.pending,
        "guard per source": server.guard.per_source,
        "core connections": server.core.connections,
        "core deadlines": server.core._deadlines._current,
        "selector map": loop._selector._fd_to_key,  # type: ignore[attr-defined]
        "asyncio tasks": asyncio.tasks._all_tasks.data,  # type: ignore[attr-defined]
    }
    return {
        name: (sys.getsizeof(table), max(256, sys.getsizeof(type(table)(table))))  # type: ignore[call-arg]
        for name, table in tables.items()
    }


@pytest.mark.asyncio
@pytest.mark.timeout(90)
async def test_tables_shrink_back_after_a_burst(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """90 pending connections from 15 sources, closed: once the server has released the heap
    (1 s after the pending set emptied), every per-connection table (server, guard, core, the
    loop's selector map, asyncio's set of tasks) is the size of a fresh copy, not the size it
    grew to. Was: each kept its 90-entry table (CPython never shrinks a dict or set on delete;
    after 2,000 connections ~0.7 MB in total, which also kept allocator pages in use). A second,
    late trim follows once the burst's cancelled handshake timers have expired."""
    monkeypatch.setattr(server_module, "LATE_TRIM_DELAY", 0.3)
    state = tmp_path / "state"
    async with serving(state) as server:
        port = server.listeners[0].getsockname()[1]
        sources = [f"127.0.4.{i}" for i in range(1, 16)]
        socks = await asyncio.to_thread(open_burst, port, sources, 6)
        await until(lambda: len(server.guard.pending) == 90)
        grown = table_bytes(server)
        close_all(socks)
        await until(lambda: server.trims >= 1, timeout=20)
        after = table_bytes(server)
        # a fresh copy, give or take the growth of a table filled one entry at a time
        assert {name: sizes for name, sizes in after.items() if sizes[0] > 4 * sizes[1]} == {}
        assert sum(size for size, _ in after.values()) < sum(s for s, _ in grown.values()) / 2
        await until(lambda: server.trims >= 2, timeout=5)
