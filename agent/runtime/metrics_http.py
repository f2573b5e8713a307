"""A very small HTTP/1.1 server for the metrics sink: `GET` a path, get one answer, close.

Adapter ring. It is still network input: the request head is bounded (`max_request` bytes,
else 431), it must arrive within `timeout` seconds (else the connection is closed, counted),
at most `max_connections` are open at once (more are closed at once, counted), and anything
that is not `GET`/`HEAD` of a known path gets a 4xx. One request per connection
(`Connection: close`): Prometheus and health checkers open one per scrape anyway.

The answers come from `routes`, plain callables run on the event loop thread (where the agent's
state may be read without a lock); nothing here reads the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

log = structlog.get_logger("votemesh.agent")


@dataclass(frozen=True, slots=True)
class Answer:
    """One response."""

    code: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


Route = Callable[[str], Answer]
"""Called with the query string (after `?`, may be empty)."""

REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """What one client may cost."""

    max_request: int = 8192
    """Bytes of request line plus headers (a scraper sends ~200)."""
    timeout: float = 5.0
    """Seconds for the whole exchange: reading the request and writing the answer."""
    max_connections: int = 16
    """Open connections at once; more are closed unanswered."""


@dataclass
class HttpCounters:
    """What the server saw (`stats()` of the metrics sink)."""

    requests: int = 0
    bad_requests: int = 0
    timeouts: int = 0
    refused: int = 0
    errors: int = 0
    """Routes that raised (answered 500)."""


@dataclass
class TinyHttpServer:
    """Serves `routes` (path -> callable) on one address."""

    routes: dict[str, Route]
    limits: HttpLimits = field(default_factory=HttpLimits)
    counters: HttpCounters = field(default_factory=HttpCounters)
    _open: set[asyncio.StreamWriter] = field(default_factory=set)

    async def start(self, host: str, port: int) -> asyncio.Server:
        """Listen (OSError when the address is in use or not ours)."""
        return await asyncio.start_server(self._client, host, port, limit=self.limits.max_request)

    def close_clients(self) -> None:
        """Drop every open connection (the sink is stopping)."""
        for writer in list(self._open):
            writer.transport.abort()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._open) >= self.limits.max_connections:
            self.counters.refused += 1
            writer.close()
            return
        self._open.add(writer)
        done = False
        try:
            async with asyncio.timeout(self.limits.timeout):
                answer, head_only = await self._answer(reader)
                await self._send(writer, answer, head_only)
            done = True
        except TimeoutError:
            self.counters.timeouts += 1
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away: nothing to answer
        finally:
            self._open.discard(writer)
            if done:
                writer.close()
            else:  # a slow or vanished client: drop what is buffered, free the socket now
                writer.transport.abort()

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[Answer, bool]:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.LimitOverrunError, ValueError):
            self.counters.bad_requests += 1
            return Answer(431, b"request too large\n"), False
        self.counters.requests += 1
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            self.counters.bad_requests += 1
            return Answer(400, b"not an HTTP/1.x request line\n"), False
        method, target = parts[0], parts[1].decode("latin-1")
        if method not in (b"GET", b"HEAD"):
            self.counters.bad_requests += 1
            return Answer(405, b"GET or HEAD only\n"), False
        path, _, query = target.partition("?")
        route = self.routes.get(path)
        if route is None:
            return Answer(404, f"no {path[:80]} here; try /metrics or /healthz\n".encode()), False
        try:
            return route(query), method == b"HEAD"
        except Exception:  # a bug in a route: one 500 and a log line, never the server
            self.counters.errors += 1
            log.exception("metrics request failed", path=path)
            return Answer(500, b"internal error; see the agent's log\n"), False

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, answer: Answer, head_only: bool) -> None:
        head = (
            f"HTTP/1.1 {answer.code} {REASONS.get(answer.code, 'Unknown')}\r\n"
            f"Content-Type: {answer.content_type}\r\n"
            f"Content-Length: {len(answer.body)}\r\n"
            "Cache-Control: no-store\r\nConnection: close\r\n\r\n"
        ).encode("latin-1")
        writer.write(head if head_only else head + answer.body)
        await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()
