"""asyncio adapter of the arbitrator: sockets, STARTTLS, timers and logging around `QnetdCore`.

Each connection starts in *exact-read* mode: the socket is read with `sock_recv` for exactly the
bytes the stream decoder still wants, so nothing past a STARTTLS is ever consumed and the TLS
handshake can take the socket over cleanly: by default on our own SSLObject with its CPU work on
a worker thread (qnetd/runtime/tls_offload.py), with `--tls-handshake-threads 0` by asyncio
(`loop.connect_accepted_socket(ssl=...)`). After the upgrade (or after INIT on a plain
connection) it switches to an `asyncio.Protocol` transport.
This module owns sockets and the clock; every decision is the core's.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import resource
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import structlog

from proto.errors import DecodeError
from proto.qnetd_stream import StreamDecoder
from qnetd.arbitration import QnetdCore
from qnetd.connection_limits import ConnectionGuard, ConnectionLimits, LogLimiter
from qnetd.core_events import (
    Accepted,
    ConnectionClosed,
    Disconnect,
    Effect,
    Event,
    Log,
    Received,
    Send,
    Shutdown,
    StartTls,
    Tick,
    TlsEstablished,
    Undecodable,
)
from qnetd.peer_names import PeerNames
from qnetd.runtime.handshake_gate import HandshakeGate
from qnetd.runtime.heap_release import release_after_burst
from qnetd.runtime.tls_offload import HandshakeWorkers, TlsSession, TlsStream, server_handshake

LISTEN_BACKLOG = 512  # corosync-qnetd uses 10; thousands of reconnecting clients need more
TLS_HANDSHAKE_TIMEOUT = 10.0
MAX_READ = 65536
ACCEPT_BURST = 16  # accepts in a row (~0.15 ms each) before the accept loop yields to the others
DROPS_PER_TURN = 32  # expired connections dropped before the deadline loop yields
TLS_STARTS_PER_TURN = 1  # TLS handshakes started per loop turn (qnetd/runtime/handshake_gate.py)
TRIM_AFTER = 64  # pending connections gone since the last malloc_trim before trimming again
TRIM_DELAY = 1.0  # seconds after the pending set emptied
LATE_TRIM_DELAY = TLS_HANDSHAKE_TIMEOUT + 1.0
"""Seconds after the first trim for a second one: asyncio keeps up to ~100 of the burst's
cancelled handshake timers (and what they reference) until their time has come."""


def raise_fd_limit() -> int:
    """Raise the soft open-file limit to the hard one (asyncio uses epoll); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(hard, 1 << 20) if hard != resource.RLIM_INFINITY else 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft if soft != resource.RLIM_INFINITY else 1 << 20
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def open_fds() -> int:
    """File descriptors this process has open now (Linux /proc; 16 elsewhere)."""
    try:
        return sum(1 for _ in Path("/proc/self/fd").iterdir())
    except OSError:
        return 16


def rss_mb() -> float | None:
    """Resident set size of this process in MB (Linux /proc), for the log."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return round(pages * resource.getpagesize() / 1048576, 1)


def _malloc_trim() -> Callable[[], object] | None:
    """glibc's malloc_trim(0), if there is one: hands freed heap pages back to the kernel."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


def tune_tls_memory() -> None:
    """Shrink asyncio's per-connection TLS read buffer from 256 KiB to 16 KiB.

    Measured (shared/ref/platform-facts.md): 295 KiB -> 55 KiB per idle TLS connection.
    """
    from asyncio import sslproto  # noqa: PLC0415 (a deliberate, documented tweak)

    sslproto.SSLProtocol.max_size = 16384


@dataclass
class _Conn:
    conn_id: int
    sock: socket.socket
    address: str
    decoder: StreamDecoder
    transport: asyncio.Transport | None = None
    want_tls: bool = False
    closed: bool = False
    pending: list[bytes] = field(default_factory=list)
    """Replies queued while the connection is in exact-read mode or upgrading."""
    task: asyncio.Task[Any] | None = None
    established: bool = False
    """INIT accepted: out of the connection guard's pending set."""
    upgrading: bool = False
    """The socket was handed to asyncio (connect_accepted_socket): only its transport closes it."""


def _is_open(conn: _Conn) -> bool:
    return not conn.closed


class _StreamProtocol(asyncio.Protocol):
    def __init__(self, server: QnetdServer, conn: _Conn) -> None:
        self.server, self.conn = server, conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Called after the TLS handshake and before any data_received: the right moment to
        # tell the core who the peer is.
        self.server.on_stream(self.conn, transport)

    def data_received(self, data: bytes) -> None:
        self.server.on_data(self.conn, data)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.on_closed(self.conn, "peer_closed" if exc is None else "socket_error")


class QnetdServer:
    """Runs a `QnetdCore` on listening sockets until `stop()`."""

    def __init__(
        self,
        core: QnetdCore,
        ssl_context: ssl.SSLContext | None,
        clock: Callable[[], float] = time.monotonic,
        limits: ConnectionLimits | None = None,
    ) -> None:
        """`limits`: of the pre-INIT phase; default from the settings and the fd limit."""
        self.core = core
        self.ssl_context = ssl_context
        self.clock = clock
        self.log = structlog.get_logger("votemesh.qnetd")
        self.listeners: list[socket.socket] = []
        self._conns: dict[int, _Conn] = {}
        self._next_id = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timer_wake = asyncio.Event()
        self._stopped = asyncio.Event()
        self._limits_given = limits
        self.guard = ConnectionGuard(limits or ConnectionLimits())
        self._guard_wake = asyncio.Event()
        self._quiet = LogLimiter()
        self._trim = _malloc_trim()
        self._gone_since_trim = 0
        self._trim_handle: asyncio.TimerHandle | None = None
        self._trim_late = False
        """`_trim_handle` is the second, late trim after a burst."""
        self.trims = 0
        """Heap releases after a burst (for tests)."""
        self.handshakes = HandshakeGate(TLS_STARTS_PER_TURN)
        threads = core.settings.tls_handshake_threads
        self.tls_workers = HandshakeWorkers(threads) if ssl_context and threads else None
        """Threads for the TLS handshakes' CPU work; None: asyncio's TLS, on the loop thread."""

    def connection_limits(self) -> ConnectionLimits:
        """Limits from the settings, with the fd budget: soft RLIMIT_NOFILE - open now - reserve."""
        settings = self.core.settings
        budget = raise_fd_limit() - open_fds() - settings.fd_reserve
        return ConnectionLimits(
            deadline=settings.preinit_timeout,
            per_source=settings.preinit_per_source,
            total=settings.preinit_max,
            fd_budget=max(1, budget),
        )

    # ------------------------------------------------------------ lifecycle
    async def start(self, sockets: list[socket.socket]) -> None:
        """Serve on already-bound listening sockets."""
        self.listeners = sockets
        limits = self._limits_given or self.connection_limits()
        self.guard = ConnectionGuard(limits)
        self.log.info(
            "connection limits",
            preinit_timeout=limits.deadline,
            per_source=limits.per_source,
            total=limits.total,
            fd_budget=limits.fd_budget,
        )
        for lsock in sockets:
            lsock.setblocking(False)
            lsock.listen(LISTEN_BACKLOG)
            self._spawn(self._accept_loop(lsock), "qnetd-accept")
        self._spawn(self._timer_loop(), "qnetd-timers")
        self._spawn(self._deadline_loop(), "qnetd-preinit-deadlines")

    async def stop(self) -> None:
        """Graceful shutdown: drop every client (no vote recomputation), close listeners."""
        self._execute(self.core.handle(Shutdown(), self.clock()))
        for lsock in self.listeners:
            lsock.close()
        self._stopped.set()
        if self.tls_workers is not None:
            self.tls_workers.stop()
        if self._trim_handle is not None:
            self._trim_handle.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)  # not `self._tasks.discard`: the set is rebuilt
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)

    def compact_tables(self) -> None:
        """Rebuild the per-connection tables at their present size (after a burst)."""
        self._conns = dict(self._conns)
        self._tasks = set(self._tasks)
        self.guard.compact()
        self.core.compact()

    async def _accept_loop(self, lsock: socket.socket) -> None:
        burst = 0
        while True:
            try:
                sock, addr, waited = await self._accept_one(lsock)
            except OSError as exc:  # EMFILE and friends: keep serving the others
                self._refusal_log("accept_failed", error=str(exc))
                await asyncio.sleep(0.1)
                continue
            sock.setblocking(False)
            self._next_id += 1
            host, port = addr[0], addr[1]
            # While the backlog is not empty accepting never yields: yield every ACCEPT_BURST
            # accepts, or a flood of connects holds the loop and every established client waits
            # (measured: 0.5 s stalls at 1,000 accepts/s without yielding; 5-7 ms turns with 64
            # accepts or 5 ms). Yielding after each one let the backlog grow instead, and a new
            # client waited behind it.
            burst = 1 if waited else burst + 1
            if burst >= ACCEPT_BURST:
                await asyncio.sleep(0)
                burst = 0
            if not self._admit(self._next_id, host, sock):
                continue
            conn = _Conn(self._next_id, sock, f"{host}:{port}", self._new_decoder())
            self._conns[conn.conn_id] = conn
            self._feed(Accepted(conn.conn_id, conn.address))
            if not conn.closed:
                conn.task = self._spawn(self._exact_reads(conn), f"qnetd-conn-{conn.conn_id}")

    @staticmethod
    async def _accept_one(lsock: socket.socket) -> tuple[socket.socket, Any, bool]:
        """(socket, address, whether the backlog was empty and we waited for it)."""
        try:
            sock, addr = lsock.accept()
        except BlockingIOError:
            sock, addr = await asyncio.get_running_loop().sock_accept(lsock)
            return sock, addr, True
        return sock, addr, False

    def _admit(self, conn_id: int, host: str, sock: socket.socket) -> bool:
        """Ask the connection guard; close a refused socket at once (the peer sees a reset)."""
        verdict = self.guard.admit(conn_id, host, self.clock())
        for old in verdict.evicted:
            self._drop_pending(old, "preinit_evicted")
        if verdict.admitted:
            if self.guard.next_deadline() is not None:
                self._guard_wake.set()
            return True
        with contextlib.suppress(OSError):  # RST, not FIN: nothing lingers in TIME_WAIT here
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        sock.close()
        self._refusal_log(str(verdict.reason), address=host)
        return False

    def _refusal_log(self, reason: str, **fields: Any) -> None:
        """One warning per reason every 10 s, with how many were held back."""
        held = self._quiet.allow(reason, self.clock())
        if held is not None:
            self.log.warning("connection refused", reason=reason, suppressed=held, **fields)

    def _drop_pending(self, conn_id: int, reason: str) -> None:
        """Drop a connection the guard has given up on (deadline or eviction)."""
        conn = self._conns.get(conn_id)
        if conn is not None:
            self._refusal_log(reason, address=conn.address)
            self._lost(conn, reason)

    async def _deadline_loop(self) -> None:
        """Drop pending connections at their pre-INIT deadline."""
        while not self._stopped.is_set():
            deadline = self.guard.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - self.clock())
            self._guard_wake.clear()
            await _wait_event(self._guard_wake, timeout)
            for count, conn_id in enumerate(self.guard.expired(self.clock()), 1):
                self._drop_pending(conn_id, "preinit_timeout")
                if count % DROPS_PER_TURN == 0:  # 1,000 expiring at once: spread over turns
                    await asyncio.sleep(0)

    def _new_decoder(self) -> StreamDecoder:
        # Skipped messages are answered once whole, as corosync-qnetd does (docs/design.md 1.2).
        return StreamDecoder(self.core.settings.max_receive_size, defer_skip_errors=True)

    # ------------------------------------------------------------ reading
    async def _exact_reads(self, conn: _Conn) -> None:
        """Plain-text phase: read exactly what the decoder wants, until TLS or INIT."""
        loop = asyncio.get_running_loop()
        while not conn.closed:
            try:
                data = await loop.sock_recv(conn.sock, min(conn.decoder.bytes_wanted(), MAX_READ))
            except OSError:
                data = b""
            if not data:
                self._lost(conn, "peer_closed")
                return
            self.on_data(conn, data)
            await self._flush(conn)
            if not _is_open(conn):  # the core may have dropped it while handling the data
                return
            if conn.want_tls:
                # at most N handshakes start per loop turn, quiet sources first
                await self.handshakes.enter(self.guard.pending_from_source(conn.conn_id))
                if not conn.closed:
                    await self._upgrade(conn, self.ssl_context)
                return
            if self._initialised(conn):
                await self._upgrade(conn, None)
                return

    async def _flush(self, conn: _Conn) -> None:
        loop = asyncio.get_running_loop()
        while conn.pending and not conn.closed:
            data = conn.pending.pop(0)
            try:
                await loop.sock_sendall(conn.sock, data)
            except OSError:
                self._lost(conn, "socket_error")

    def _initialised(self, conn: _Conn) -> bool:
        state = self.core.connections.get(conn.conn_id)
        return state is not None and state.client is not None

    async def _upgrade(self, conn: _Conn, context: ssl.SSLContext | None) -> None:
        loop = asyncio.get_running_loop()
        started = self.clock()
        self.log.debug("stream switch", conn=conn.conn_id, tls=context is not None)
        # From here on bytes arrive through the protocol, possibly before the await below
        # returns (TLS 1.3 lets the client's first record ride on its last handshake flight).
        conn.want_tls = False
        protocol: Callable[[], asyncio.Protocol] = lambda: _StreamProtocol(self, conn)  # noqa: E731
        in_handshake = context is not None  # a failure now is the TLS handshake's
        try:
            if context is not None and self.tls_workers is not None:
                # the handshake on our socket, its CPU on a worker thread; then a plain
                # transport under TlsStream (qnetd/runtime/tls_offload.py)
                session = await self._offloaded_handshake(conn, context, self.tls_workers)
                protocol = lambda: TlsStream(session, _StreamProtocol(self, conn))  # noqa: E731
                context, in_handshake = None, False
            conn.upgrading = True
            transport, _ = await loop.connect_accepted_socket(
                protocol,
                sock=conn.sock,
                ssl=context,
                ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT if context else None,
            )
        except (TimeoutError, OSError, ssl.SSLError, ConnectionError) as exc:
            if conn.closed:  # dropped while switching (deadline, eviction): counted there
                return
            reason = "tls_handshake_failed" if in_handshake else "socket_error"
            if in_handshake:
                self.core.stats.tls_failures["handshake"] += 1
            held = self._quiet.allow(reason, self.clock())  # a flood must not flood the log
            if held is not None:
                self.log.warning(
                    "connection failed",
                    conn=conn.conn_id,
                    reason=reason,
                    error=str(exc),
                    suppressed=held,
                )
            self._lost(conn, reason)
            return
        if conn.closed:  # dropped by the core while the handshake ran
            transport.abort()
            return
        self.log.debug("stream switched", conn=conn.conn_id, seconds=self.clock() - started)
        self.on_data(conn, b"")  # anything decoded-but-unprocessed while switching

    async def _offloaded_handshake(
        self, conn: _Conn, context: ssl.SSLContext, workers: HandshakeWorkers
    ) -> TlsSession:
        async with asyncio.timeout(TLS_HANDSHAKE_TIMEOUT):
            return await server_handshake(
                conn.sock, context, workers, lambda: self.guard.pending_from_source(conn.conn_id)
            )

    def on_stream(self, conn: _Conn, transport: asyncio.BaseTransport) -> None:
        """The switched stream is up: flush queued replies, report the TLS peer."""
        conn.transport = cast(asyncio.Transport, transport)
        if transport.get_extra_info("ssl_object") is not None:
            self._feed(TlsEstablished(conn.conn_id, self._peer_names(transport)))
        for data in conn.pending:
            conn.transport.write(data)
        conn.pending.clear()

    @staticmethod
    def _peer_names(transport: asyncio.BaseTransport) -> PeerNames | None:
        ssl_object = transport.get_extra_info("ssl_object")
        cert = ssl_object.getpeercert() if ssl_object else None  # verified by the handshake
        return PeerNames.from_peercert(cert) if cert else None

    def on_data(self, conn: _Conn, data: bytes) -> None:
        """Bytes from the peer: decode every whole message and hand it to the core."""
        if conn.closed:
            return
        conn.decoder.feed(data)
        while not conn.closed and not conn.want_tls:
            try:
                msg = conn.decoder.next_message()
            except DecodeError as exc:
                self._feed(Undecodable(conn.conn_id, exc))
                continue
            if msg is None:
                if (skip := conn.decoder.take_skip_notice()) is not None:
                    # answered (and counted) only once whole, as 3.0.3 does; logged now
                    fields = {"reason": skip.reason, "detail": skip.detail}
                    self.log.warning("skipping message", conn=conn.conn_id, **fields)
                return
            self._feed(Received(conn.conn_id, msg, conn.decoder.last_raw))
            if not conn.established and self._initialised(conn):
                conn.established = True
                self.guard.established(conn.conn_id)
                self._maybe_release_memory()  # the last pending one may have been this one

    def on_closed(self, conn: _Conn, reason: str) -> None:
        """The transport reports the connection ended."""
        self._lost(conn, reason)

    def _lost(self, conn: _Conn, reason: str) -> None:
        """Tell the core (once) and release the socket."""
        if conn.closed:
            return
        self._feed(ConnectionClosed(conn.conn_id, reason))
        self._release(conn)

    # ------------------------------------------------------------ effects
    def _feed(self, event: Event) -> None:
        before = self.core.next_deadline()
        self._execute(self.core.handle(event, self.clock()))
        after = self.core.next_deadline()
        if after is not None and (before is None or after < before):
            self._timer_wake.set()

    def _execute(self, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, Send):
                self._write(effect.conn_id, effect.data)
            elif isinstance(effect, StartTls):
                conn = self._conns.get(effect.conn_id)
                if conn is not None and conn.transport is None:
                    conn.want_tls = True
                elif conn is not None:  # STARTTLS after the stream switched: cannot be safe
                    self._lost(conn, "late_starttls")
            elif isinstance(effect, Disconnect):
                self._close(effect.conn_id)
            elif isinstance(effect, Log):
                getattr(self.log, effect.level)(effect.event, **effect.fields)

    def _write(self, conn_id: int, data: bytes) -> None:
        conn = self._conns.get(conn_id)
        if conn is None or conn.closed:
            return
        if conn.transport is None:
            conn.pending.append(data)
            return
        limit = self.core.settings.max_send_buffers * self.core.settings.max_send_size
        if conn.transport.get_write_buffer_size() > limit:
            self.log.warning("client dropped", conn=conn_id, reason="send_queue_full")
            self._lost(conn, "send_queue_full")
            return
        conn.transport.write(data)

    def _close(self, conn_id: int) -> None:
        """The core dropped this connection: release it (the core already forgot it)."""
        conn = self._conns.get(conn_id)
        if conn is not None:
            self._release(conn)

    def _release(self, conn: _Conn) -> None:
        conn.closed = True
        self._conns.pop(conn.conn_id, None)
        self.guard.closed(conn.conn_id)
        if not conn.established:
            self._gone_since_trim += 1
        self._maybe_release_memory()
        # Drop the references back to this connection as well: a cancelled task's traceback
        # holds the frame that holds `conn`, a cycle only the cyclic collector would free.
        transport, task = conn.transport, conn.task
        conn.transport, conn.task = None, None
        if transport is not None:
            transport.abort()
        elif conn.upgrading:
            # A transport owns the socket but has not reported in yet: closing the fd under it
            # would let it register a reused fd number. Cancel the switch (asyncio then closes
            # its transport and the fd) and shut the socket down so that nothing lingers if the
            # transport had not started yet. (Shutting down alone, and letting the handshake
            # fail, left the SSL objects to the cyclic collector: RSS grew under a flood.)
            if task is not None and task is not asyncio.current_task():
                task.cancel()
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
        else:
            if task is not None and task is not asyncio.current_task():
                task.cancel()
            with contextlib.suppress(OSError):
                conn.sock.close()

    def _maybe_release_memory(self) -> None:
        if self._gone_since_trim >= TRIM_AFTER and not self.guard.pending:
            self._release_memory()

    def _release_memory(self) -> None:
        """After a burst of unauthenticated connections is gone, give the freed heap back.

        Measured (docs/benchmarks.md): 2,000 half-open TLS handshakes take the RSS from 38 to
        91 MB; once they are closed every transport, SSL object and socket is freed, yet the RSS
        stays at 91 MB because glibc keeps the freed pages in its heap; malloc_trim(0) returns
        them (50 MB, with the abusers' own sockets in the same process). Runs 1 s after the
        pending set became empty, so the transports' close callbacks have run.
        """
        self._gone_since_trim = 0
        if self._trim_handle is not None and not self._trim_late:
            return
        if self._trim_handle is not None:  # a new burst before the late trim: start over
            self._trim_handle.cancel()
        loop = asyncio.get_running_loop()

        def trim(late: bool) -> None:
            self._trim_handle = None
            if late and self.guard.pending:  # another burst: it schedules its own
                return
            self.trims += 1
            before = rss_mb()
            if not late:
                release_after_burst(loop, self.compact_tables)
            gc.collect()  # asyncio's SSL transports free in cycles; idle, no collection runs
            if self._trim is not None:
                self._trim()
            self.log.info("heap trimmed", rss_mb_before=before, rss_mb_after=rss_mb(), late=late)
            if not late:  # once the burst's cancelled handshake timers have expired too
                self._trim_handle = loop.call_later(LATE_TRIM_DELAY, trim, True)
                self._trim_late = True

        self._trim_handle = loop.call_later(TRIM_DELAY, trim, False)
        self._trim_late = False

    # ------------------------------------------------------------ timers
    async def _timer_loop(self) -> None:
        while not self._stopped.is_set():
            deadline = self.core.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - self.clock())
            self._timer_wake.clear()
            await _wait_event(self._timer_wake, timeout)
            if deadline is not None and self.clock() >= deadline:
                self._feed(Tick())

    @property
    def connection_count(self) -> int:
        """Open TCP connections (INIT-ed or not)."""
        return len(self._conns)


async def _wait_event(event: asyncio.Event, timeout: float | None) -> None:
    """Wait for `event` at most `timeout` seconds.

    Not `asyncio.wait_for`: on Python 3.11 it loses a cancellation that arrives as the event
    is set, and a loop around it then never ends (seen: `stop()` hung under a connect flood).
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()


def bind_listeners(host: str | None, port: int, family: str = "any") -> list[socket.socket]:
    """Listening sockets: dual-stack `::` by default (IPv4 peers as ::ffff:a.b.c.d), like qnetd.

    family: "any" (dual stack, falling back to IPv4), "4" or "6".
    """
    if host is None:
        host = "0.0.0.0" if family == "4" else "::"  # noqa: S104 (listening on all is the default)
    af = {"4": socket.AF_INET, "6": socket.AF_INET6}.get(family, socket.AF_UNSPEC)
    infos = socket.getaddrinfo(host, port, af, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    last: OSError | None = None
    for fam, kind, proto, _, addr in infos:
        sock = socket.socket(fam, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if fam == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(addr)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        return [sock]
    if last is not None:
        raise last
    raise OSError(f"no address to listen on for {host}")


def server_ssl_context(
    ca_pem: str, cert_pem: str, key_pem: str, client_cert_required: bool
) -> ssl.SSLContext:
    """TLS server context: our certificate; client certificates required and checked if asked."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # No TLS 1.2 renegotiation: it would re-run a handshake (an RSA signature) on the loop
    # thread after the offloaded one (qnetd/runtime/tls_offload.py); qdevice never asks for it.
    # OpenSSL 3 already refuses client-initiated renegotiation by default; 1.1.1 did not.
    context.options |= ssl.OP_NO_RENEGOTIATION
    context.load_cert_chain(cert_pem, key_pem)
    if client_cert_required:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=ca_pem)
    else:
        context.verify_mode = ssl.CERT_NONE
    return context
