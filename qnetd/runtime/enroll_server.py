"""Enrollment endpoint: minimal HTTP/1.1 over TLS on its own port (default 5404).

Why its own port and not a path inside the qnetd protocol on 5403: 5403 speaks the qnetd TLV
protocol with STARTTLS and (by default) demands a client certificate, which a node that is
enrolling does not have yet; squeezing an unauthenticated exchange into that listener would weaken
the policy real qdevice peers rely on. A separate listener can be disabled (`--enroll-listen off`)
or firewalled on its own.

    GET  /v1/ca      -> 200, the CA certificate (PEM)
    POST /v1/enroll  {"token", "csr"} -> 200 {"certificate", "ca", "cluster"} | 4xx {"error", ...}

The TLS certificate is the state directory's `server.pem` (`CN=Qnetd Server`), signed by the CA
whose SHA-256 the tokens carry, so a node authenticates us before it sends its token. One request
per connection; the head is capped at 8 KiB, the body at `proto.enrollment.MAX_BODY_BYTES`, the
whole exchange (TLS handshake included) at `REQUEST_TIMEOUT` seconds from accept. Connections
are admitted by `qnetd.connection_limits.ConnectionGuard` before the handshake (`LIMITS`: per
source, in all, the oldest evicted for a new one when full), so idle peers cannot lock a node
out. Failed token
attempts are limited per source (`qnetd.enrollment.AttemptLimiter`: 429 when spent). A request is
checked completely (JSON, CSR signature and key type) before its token is spent. Bad input gets a
4xx, is counted by reason in `EnrollmentStats` and logged on one line (refusals of connections
rate-limited); nothing a peer sends can stop the server. `cryptography` is imported at the
first enrollment request (or at start when the state directory has no CA yet), not at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from proto.connection_limits import (
    AttemptLimiter,
    ConnectionGuard,
    ConnectionLimits,
    LogLimiter,
    source_key,
)
from proto.enrollment import (
    CA_PATH,
    ENROLL_PATH,
    MAX_BODY_BYTES,
    EnrollRequest,
    EnrollResponse,
    ErrorResponse,
    Token,
)
from proto.errors import DecodeError
from qnetd.enrollment import REASONS, TokenRejectedError, TokenStore
from qnetd.runtime.pki_check import ensure_state_pki
from qnetd.state_files import StatePaths

log = structlog.get_logger("qnetd.enroll")

MAX_HEAD_BYTES = 8192
REQUEST_TIMEOUT = 5.0  # seconds from accept for handshake and request
LIMITS = ConnectionLimits(deadline=REQUEST_TIMEOUT, per_source=4, total=64, evict_after=1.0)
"""Enrollment is rare: a node makes two connections one after the other."""
STATUS_TEXT = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Content Too Large",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
}
TOKEN_STATUS = {"malformed": 400}  # other token rejections are 403


@dataclass
class EnrollmentStats:
    """Counters exported by /metrics: certificates issued, requests refused by reason."""

    issued: int = 0
    ca_served: int = 0
    rejected: dict[str, int] = field(default_factory=dict)

    def reject(self, reason: str) -> None:
        """Count one refused request."""
        self.rejected[reason] = self.rejected.get(reason, 0) + 1


class HttpError(Exception):
    """A request we refuse: HTTP status, counter reason, one-line message for the peer."""

    def __init__(self, status: int, reason: str, message: str, source: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.source = source


@dataclass(frozen=True)
class Request:
    """One parsed HTTP request."""

    method: str
    path: str
    body: bytes


@dataclass(frozen=True)
class Reply:
    """One HTTP response."""

    status: int
    body: bytes
    content_type: str = "application/json"


async def read_request(reader: asyncio.StreamReader) -> Request:
    """Request line, headers and a Content-Length body, within the size limits."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError as exc:
        raise HttpError(431, "too_large", "request head too large") from exc
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HttpError(400, "bad_http", "malformed request line")
    length = 0
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep and name.strip().lower() == "content-length":
            if not value.strip().isdigit():
                raise HttpError(400, "bad_http", "bad Content-Length")
            length = int(value.strip())
        elif sep and name.strip().lower() == "transfer-encoding":
            raise HttpError(411, "bad_http", "send a Content-Length, not chunks")
    if length > MAX_BODY_BYTES:
        raise HttpError(413, "too_large", f"body larger than {MAX_BODY_BYTES} bytes")
    body = await reader.readexactly(length) if length else b""
    return Request(parts[0], parts[1], body)


class EnrollmentHandler:
    """Answers one connection: admit, handshake, route, redeem the token, sign the request."""

    def __init__(
        self,
        paths: StatePaths,
        stats: EnrollmentStats,
        now: Callable[[], float],
        context: ssl.SSLContext,
        *,
        limits: ConnectionLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.paths = paths
        self.stats = stats
        self.now = now
        self.clock = clock
        self.context = context
        self.tokens = TokenStore(paths.tokens)
        self.guard = ConnectionGuard(limits or LIMITS)
        self.attempts = AttemptLimiter()
        self.quiet = LogLimiter()
        self.tasks: dict[int, asyncio.Task[None] | None] = {}
        self.next_id = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Admit (or refuse at once), then handle one request over TLS and close."""
        peer = writer.get_extra_info("peername")
        host = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        self.next_id += 1
        conn = self.next_id
        verdict = self.guard.admit(conn, host, self.clock())
        for old in verdict.evicted:
            self._refused("evicted", host)
            task = self.tasks.pop(old, None)
            if task is not None:
                task.cancel()
        if not verdict.admitted:
            self._refused(str(verdict.reason), host)
            writer.transport.abort()
            return
        self.tasks[conn] = asyncio.current_task()
        raw = writer.transport  # the TCP transport under the TLS one
        try:
            await self._serve(reader, writer, peer, host)
        except asyncio.CancelledError:
            # Evicted, or server shutdown. Ending normally: Python 3.11's start_server callback
            # logs an error for a handler task that ends cancelled.
            raw.abort()
        finally:
            self.guard.closed(conn)
            self.tasks.pop(conn, None)
            # Flush what TLS wrote (reply, close_notify) and close the socket now, instead of
            # waiting up to 30 s for the peer's close_notify with the socket still open.
            if not raw.is_closing():
                raw.close()

    def _refused(self, reason: str, host: str) -> None:
        """Count a refused or dropped connection; one log line per reason every 10 s."""
        self.stats.reject(reason)
        held = self.quiet.allow(reason, self.clock())
        if held is not None:
            log.warning("enrollment refused", reason=reason, peer=host, suppressed=held)

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: object, host: str
    ) -> None:
        """Every failure is answered with a 4xx/5xx or dropped, and counted."""
        started = self.clock()
        try:
            await writer.start_tls(self.context, ssl_handshake_timeout=REQUEST_TIMEOUT)
        except (TimeoutError, ConnectionError, OSError, ssl.SSLError) as exc:
            self._refused("tls_failed", host)
            log.debug("enrollment handshake failed", peer=peer, error=str(exc))
            writer.transport.abort()
            return
        left = max(0.0, REQUEST_TIMEOUT - (self.clock() - started))
        try:
            reply = await asyncio.wait_for(self._answer(reader, peer, host), left)
        except HttpError as exc:
            reply = self._refuse(exc, peer)
        except TimeoutError:
            reply = self._refuse(HttpError(408, "timeout", "request not complete in time"), peer)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, UnicodeError):
            self.stats.reject("disconnected")
            log.debug("enrollment peer went away", peer=peer)
            await _close(writer)
            return
        except Exception:  # a bug must cost one request, never the listener
            log.exception("enrollment request failed", peer=peer)
            reply = self._refuse(HttpError(500, "internal", "internal error"), peer)
        await _send(writer, reply)

    def _refuse(self, exc: HttpError, peer: object) -> Reply:
        self.stats.reject(exc.reason)
        held: int | None = 0
        if exc.reason == "rate_limited":  # one line per source every 10 s
            held = self.quiet.allow(f"rate_limited {exc.source}", self.clock())
        if held is not None:
            log.warning(
                "enrollment refused", reason=exc.reason, detail=str(exc), peer=peer, suppressed=held
            )
        return Reply(exc.status, ErrorResponse(exc.reason, str(exc)).to_json())

    async def _answer(self, reader: asyncio.StreamReader, peer: object, host: str) -> Reply:
        request = await read_request(reader)
        if request.path == CA_PATH:
            if request.method != "GET":
                raise HttpError(405, "bad_method", "use GET")
            self.stats.ca_served += 1
            return Reply(200, self.paths.ca_cert.read_bytes(), "application/x-pem-file")
        if request.path == ENROLL_PATH:
            if request.method != "POST":
                raise HttpError(405, "bad_method", "use POST")
            return await self._limited_enroll(request.body, peer, host)
        raise HttpError(404, "not_found", f"no such path; use {CA_PATH} or {ENROLL_PATH}")

    async def _limited_enroll(self, body: bytes, peer: object, host: str) -> Reply:
        """Refuse a source that spent its failed attempts (429); charge it for a bad token."""
        source = source_key(host)
        if not self.attempts.allowed(source, self.clock()):
            wait = self.attempts.retry_after(source, self.clock())
            raise HttpError(
                429,
                "rate_limited",
                f"too many failed enrollment attempts from {host}; try again in {wait:.0f} s",
                source,
            )
        try:
            return await asyncio.to_thread(self._enroll, body, peer)
        except HttpError as exc:
            if exc.reason in REASONS:
                self.attempts.failed(source, self.clock())
            raise

    def _enroll(self, body: bytes, peer: object) -> Reply:
        """Runs in a worker thread: the token file and the CA take a flock.

        Everything the request carries is checked before the token is spent: the JSON, the
        CSR's signature and key type, the token's syntax (the CN against the token in `redeem`).
        `cryptography` (qnetd.certs, about 10 MB resident) is imported here, at the first
        request: an idle server with an enrollment port does not carry it.
        """
        from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 (see above)

        from qnetd import certs  # noqa: PLC0415

        try:
            enroll = EnrollRequest.from_json(body)
        except DecodeError as exc:
            raise HttpError(400, "bad_request", exc.detail) from exc
        try:
            csr = certs.parse_request(enroll.csr.encode())
            certs.check_request_key(csr)
        except certs.CertError as exc:
            raise HttpError(400, "bad_csr", str(exc)) from exc
        try:
            Token.parse(enroll.token)
        except DecodeError as exc:
            raise HttpError(400, "malformed", f"malformed token: {exc.detail}") from exc
        cn = certs.common_name(csr.subject) or ""
        try:
            record = self.tokens.redeem(enroll.token, now=self.now(), cluster=cn)
        except TokenRejectedError as exc:
            raise HttpError(TOKEN_STATUS.get(exc.reason, 403), exc.reason, str(exc)) from exc
        try:
            cert = certs.sign_request(self.paths.root, enroll.csr.encode(), record.cluster)
        except certs.CertError as exc:
            raise HttpError(400, "bad_csr", str(exc)) from exc
        self.stats.issued += 1
        log.info("enrollment issued", cluster=record.cluster, serial=cert.serial_number, peer=peer)
        response = EnrollResponse(
            certificate=cert.public_bytes(serialization.Encoding.PEM).decode(),
            ca=self.paths.ca_cert.read_text(),
            cluster=record.cluster,
        )
        return Reply(200, response.to_json())


async def _send(writer: asyncio.StreamWriter, reply: Reply) -> None:
    head = (
        f"HTTP/1.1 {reply.status} {STATUS_TEXT.get(reply.status, 'Error')}\r\n"
        f"Content-Type: {reply.content_type}\r\n"
        f"Content-Length: {len(reply.body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    with contextlib.suppress(ConnectionError, ssl.SSLError, TimeoutError):
        writer.write(head.encode() + reply.body)
        await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT)
    await _close(writer)


async def _close(writer: asyncio.StreamWriter) -> None:
    """Close without waiting for the peer's close_notify (a slow peer must not pin a task)."""
    writer.close()


def server_context(paths: StatePaths) -> ssl.SSLContext:
    """TLS 1.2+ server context with the state directory's server certificate; no client certs."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(paths.server_cert, paths.server_key)
    return context


async def start_enrollment_server(
    state_dir: Path, host: str, port: int, *, now: Callable[[], float] = time.time
) -> tuple[asyncio.Server, EnrollmentStats]:
    """Listen for enrollments; creates the state-dir CA on first use. `now`: wall-clock seconds."""
    paths = await asyncio.to_thread(ensure_state_pki, state_dir)
    stats = EnrollmentStats()
    handler = EnrollmentHandler(paths, stats, now, server_context(paths))
    # Plain TCP first: the connection guard decides before any TLS work (then start_tls).
    server = await asyncio.start_server(handler.serve, host, port, limit=MAX_HEAD_BYTES)
    bound = [sock.getsockname()[:2] for sock in server.sockets]
    log.info("enrollment listening", addresses=bound)
    return server, stats
