"""Local HTTP endpoint: `/healthz` (JSON) and `/metrics` (Prometheus text format).

Plain HTTP on 127.0.0.1 by default (any local user can read it), or on a unix socket (mode 0660)
with `--http-listen unix:PATH`. The metrics are read from the core's counters at scrape time
by a custom collector, so nothing is counted twice.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import structlog

from qnetd.arbitration import QnetdCore
from qnetd.runtime.control import remove_stale_socket

log = structlog.get_logger("votemesh.qnetd.http")
PREFIX = "votemesh_qnetd"


class CoreCollector:
    """Exports `QnetdCore` state and counters (a prometheus_client collector by duck typing, so
    that prometheus_client is imported at the first scrape, not at start)."""

    def __init__(self, core: QnetdCore, connections: Callable[[], int]) -> None:
        self.core, self.connections = core, connections
        self.extra: list[Callable[[], Iterator[Any]]] = []

    def collect(self) -> Iterator[Any]:
        """The metric families, read from the core now."""
        from prometheus_client.core import (  # noqa: PLC0415 (first scrape)
            CounterMetricFamily,
            GaugeMetricFamily,
        )

        core, stats = self.core, self.core.stats
        yield GaugeMetricFamily(f"{PREFIX}_connections", "Open TCP connections", self.connections())
        yield GaugeMetricFamily(
            f"{PREFIX}_clients", "Clients that completed INIT", core.client_count()
        )
        yield GaugeMetricFamily(f"{PREFIX}_clusters", "Clusters with a client", len(core.clusters))
        current = Counter(
            c.last_vote.name for cl in core.clusters.values() for c in cl.clients if c.last_vote
        )
        yield _labelled(
            GaugeMetricFamily, "votes", "Clients by the last vote sent", "vote", current
        )
        yield _labelled(CounterMetricFamily, "votes_sent", "Votes sent", "vote", stats.votes_sent)
        yield CounterMetricFamily(f"{PREFIX}_decisions", "Algorithm decisions", stats.decisions)
        yield CounterMetricFamily(f"{PREFIX}_connections_accepted", "Accepted", stats.accepted)
        yield _labelled(CounterMetricFamily, "connections_closed", "Closed", "reason", stats.closed)
        yield _labelled(
            CounterMetricFamily,
            "decode_errors",
            "Undecodable messages",
            "reason",
            stats.decode_errors,
        )
        errors = Counter({str(k): v for k, v in stats.server_errors.items()})
        yield _labelled(CounterMetricFamily, "server_errors", "SERVER_ERRORs sent", "code", errors)
        yield _labelled(
            CounterMetricFamily, "tls_failures", "TLS failures", "reason", stats.tls_failures
        )
        for extra in self.extra:
            yield from extra()


def _labelled(kind: Any, name: str, doc: str, label: str, values: Counter[str]) -> Any:
    family = kind(f"{PREFIX}_{name}", doc, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


class LazyMetrics:
    """`/metrics` text; the registry (and prometheus_client, ~4 MB) is made at the first scrape."""

    def __init__(self, collector: CoreCollector) -> None:
        self.collector = collector
        self._registry: Any = None

    def __call__(self) -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest  # noqa: PLC0415

        if self._registry is None:
            self._registry = CollectorRegistry()
            self._registry.register(self.collector)
        return bytes(generate_latest(self._registry))


Metrics = Callable[[], bytes]


async def serve_http(
    host: str, port: int, registry: Metrics, health: Callable[[], dict[str, Any]]
) -> asyncio.AbstractServer:
    """Serve /healthz and /metrics on TCP until the returned server is closed."""
    return await asyncio.start_server(_handler(registry, health), host, port, limit=8192)


async def serve_http_unix(
    path: Path, registry: Metrics, health: Callable[[], dict[str, Any]]
) -> asyncio.AbstractServer:
    """The same on a unix socket, mode 0660: only root and the service's group can scrape
    (a TCP port on 127.0.0.1 is readable by every local user). A stale socket is replaced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_socket(path)
    server = await asyncio.start_unix_server(_handler(registry, health), str(path), limit=8192)
    path.chmod(0o660)
    return server


MAX_CLIENTS = 16
"""Scrapes served at once; a connection beyond them is closed at once (a scraper retries)."""
EXCHANGE_TIMEOUT = 5.0
"""Seconds for a whole request and its answer: a client that neither sends nor reads is cut."""


def _handler(
    registry: Metrics, health: Callable[[], dict[str, Any]]
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    open_clients = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_clients
        if open_clients >= MAX_CLIENTS:
            log.debug("http connection refused: too many at once")
            writer.close()
            return
        open_clients += 1
        done = False
        try:
            async with asyncio.timeout(EXCHANGE_TIMEOUT):
                await _exchange(reader, writer, registry, health)
            done = True
        except (TimeoutError, ValueError, ConnectionError, OSError, asyncio.IncompleteReadError):
            log.debug("bad http request")
        finally:
            open_clients -= 1
            if done:
                writer.close()  # everything is in the kernel's buffer by now
            else:
                writer.transport.abort()  # a client that does not read keeps nothing here

    return handle


async def _exchange(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    registry: Metrics,
    health: Callable[[], dict[str, Any]],
) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    method, path, *_ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
    status, ctype, body = _route(method, path, registry, health)
    writer.transport.set_write_buffer_limits(high=0)  # drain() returns once all is sent
    writer.write(
        f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
        f"Connection: close\r\n\r\n".encode()
        + body
    )
    await writer.drain()


def _route(
    method: str, path: str, registry: Metrics, health: Callable[[], dict[str, Any]]
) -> tuple[str, str, bytes]:
    if method != "GET":
        return "405 Method Not Allowed", "text/plain", b"GET only\n"
    if path == "/metrics":
        return "200 OK", "text/plain; version=0.0.4", registry()
    if path == "/healthz":
        return "200 OK", "application/json", json.dumps(health()).encode() + b"\n"
    return "404 Not Found", "text/plain", b"try /healthz or /metrics\n"
