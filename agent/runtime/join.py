"""The join server: a member admits a new node that shows a one-time token (design §3.11).

Adapter ring. A TLS listener (node.pem, signed by the cluster CA; no client certificate) on
the node's link0 address and `[join] port` (default 5408), run as the agent's `join` task.
Per connection: admitted by `proto.connection_limits.ConnectionGuard` before the handshake
(`LIMITS`), then at most two length-prefixed JSON requests (`proto/join.py`): `ca` (the CA
PEM, so the joiner checks it against the join string's fingerprint) and `join`. The handshake
and every request must arrive within `REQUEST_TIMEOUT` of accept; the change is bounded by
`CHANGE_TIMEOUT`. A join is handled under one lock: the source's failed-guess budget
(`AttemptLimiter`), the token (`agent/runtime/join_tokens.py`), the request's CSR, the admission
checks (`agent/join_admission.py`, also run inside `change_config`'s mutate on the committed
configuration), the change (quorum and the version bump are the replication's), then the node
certificate, the token spent and the grant. Every refusal is counted by reason in `JoinStats`
and logged on one line (at most one per reason and source every 10 s, with the count held
back); garbage never reaches past the connection's task.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from agent import cluster_config
from agent.cluster_config import ClusterConfig
from agent.config import AgentConfig, ConfigError
from agent.join_admission import Joiner, JoinRefusedError, admit
from agent.runtime import join_files
from agent.runtime.join_files import ClusterFiles
from agent.runtime.join_tokens import JoinTokens, TokenRefusedError
from agent.runtime.keys import load_keys
from proto import certificates
from proto.cert_names import node_name_problem
from proto.connection_limits import (
    AttemptLimiter,
    ConnectionGuard,
    ConnectionLimits,
    LogLimiter,
    source_key,
)
from proto.errors import CertificateError, DecodeError
from proto.join import (
    HEADER,
    MAX_REQUEST_FRAME,
    JoinGrant,
    JoinRequest,
    JoinString,
    Refusal,
    decode_body,
    encode_frame,
    frame_length,
    request_op,
)

if TYPE_CHECKING:
    from agent.runtime.config_file import Startup

log = structlog.get_logger("votemesh.agent.join")

REQUEST_TIMEOUT = 5.0  # seconds from accept for the handshake and each request
CHANGE_TIMEOUT = 30.0  # the configuration change (replication across the view)
LIMITS = ConnectionLimits(deadline=REQUEST_TIMEOUT + CHANGE_TIMEOUT, per_source=4, total=32)
"""Joins are rare: a joiner makes one connection; a slow change keeps it open."""


class ChangeResult(Protocol):
    """`agent.runtime.main.ChangeOutcome`."""

    @property
    def ok(self) -> bool: ...
    @property
    def text(self) -> str: ...
    @property
    def version(self) -> int: ...


class JoinHost(Protocol):
    """What the join server needs of the running agent (`AgentRuntime`)."""

    @property
    def cluster_config(self) -> ClusterConfig: ...

    async def change_config(
        self, mutate: Callable[[ClusterConfig], ClusterConfig]
    ) -> ChangeResult: ...


@dataclass
class JoinStats:
    """Counters: joins admitted, CA requests served, refusals by reason."""

    admitted: int = 0
    ca_served: int = 0
    refused: dict[str, int] = field(default_factory=dict)

    def refuse(self, reason: str) -> None:
        """Count one refusal."""
        self.refused[reason] = self.refused.get(reason, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "admitted": self.admitted,
            "ca_served": self.ca_served,
            "refused": dict(sorted(self.refused.items())),
        }


class _RefusedError(Exception):
    """A request refused with a reason and one line (sent back, counted, logged)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class JoinServer:
    """Mints tokens and admits joiners for one member."""

    def __init__(
        self,
        host: JoinHost,
        files: ClusterFiles,
        keys: Sequence[bytes],
        address: str,
        port: int,
        *,
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
        limits: ConnectionLimits = LIMITS,
        attempts: AttemptLimiter | None = None,
    ) -> None:
        self.host = host
        self.files = files
        self.keys = tuple(keys)
        self.address, self.port = address, port
        self.wall, self.clock = wall, clock
        self.tokens = JoinTokens(files.state_dir)
        self.guard = ConnectionGuard(limits)
        self.attempts = attempts or AttemptLimiter()
        self.quiet = LogLimiter()
        self.stats = JoinStats()
        self.lock = asyncio.Lock()
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.next_id = 0
        self.server: asyncio.Server | None = None
        self.context = _server_context(files)
        self.ca_pem = files.ca_cert.read_bytes()

    # ------------------------------------------------------------ tokens
    def mint(self, ttl: float) -> str:
        """A join string with a new token (the control socket's `join-token`)."""
        ca, _ = join_files.load_ca(self.files)
        token = self.tokens.mint(ttl=ttl, now=self.wall())
        log.info("join token minted", ttl_s=ttl)
        return JoinString(
            self.host.cluster_config.cluster_name,
            ((self.address, self.bound_port()),),
            certificates.ca_fingerprint(ca),
            token,
        ).encode()

    def bound_port(self) -> int:
        """The port actually bound (the configured one, or the kernel's for port 0)."""
        if self.server is not None and self.server.sockets:
            return int(self.server.sockets[0].getsockname()[1])
        return self.port

    def control(self, words: list[str]) -> tuple[bool, str]:
        """Control socket: `join-token SECONDS` -> {"join": string}; `join-stats`."""
        if words[0] == "join-stats" and len(words) == 1:
            return True, json.dumps(self.stats.as_dict(), sort_keys=True) + "\n"
        if words[0] == "join-token" and len(words) == 2 and words[1].isdigit():
            try:
                text = self.mint(float(words[1]))
            except (ValueError, ConfigError) as exc:
                return False, f"no join token: {exc}\n"
            return True, json.dumps({"join": text}) + "\n"
        if words[0] == "join-reload" and len(words) == 1:
            return self.reload()
        return False, "send join-token SECONDS, join-stats or join-reload\n"

    def reload(self) -> tuple[bool, str]:
        """`votemesh updatecerts`: the next connection gets the new node.pem / node.key (a
        handshake under way keeps the context it started with)."""
        try:
            self.context = _server_context(self.files)
        except ConfigError as exc:
            return False, f"join port kept its certificate: {exc}\n"
        log.info("join certificate reloaded", cert=str(self.files.node_cert))
        return True, json.dumps({"ok": True, "text": "join port certificate reloaded"}) + "\n"

    # ------------------------------------------------------------ listener
    async def start(self) -> asyncio.Server:
        """Bind (plain TCP: the guard decides before any TLS work)."""
        self.server = await asyncio.start_server(
            self.serve, self.address, self.port, limit=MAX_REQUEST_FRAME + HEADER.size
        )
        log.info("join listening", address=self.address, port=self.bound_port())
        return self.server

    async def run(self) -> None:
        """The agent's `join` task: serve until cancelled."""
        server = self.server or await self.start()
        try:
            await server.serve_forever()
        finally:
            server.close()
            for task in list(self.tasks.values()):
                task.cancel()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection: admit or refuse at once, then TLS and at most two requests."""
        peer = writer.get_extra_info("peername")
        host = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        self.next_id += 1
        conn = self.next_id
        verdict = self.guard.admit(conn, host, self.clock())
        for old in verdict.evicted:
            self._count("evicted", host, "")
            evicted = self.tasks.pop(old, None)
            if evicted is not None:
                evicted.cancel()
        if not verdict.admitted:
            self._count(str(verdict.reason), host, "")
            writer.transport.abort()
            return
        task = asyncio.current_task()
        if task is not None:
            self.tasks[conn] = task
        raw = writer.transport
        try:
            await self._serve(reader, writer, host, conn)
        except asyncio.CancelledError:
            raw.abort()
        finally:
            self.guard.closed(conn)
            self.tasks.pop(conn, None)
            if not raw.is_closing():
                raw.close()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, conn: int
    ) -> None:
        started = self.clock()
        try:
            await writer.start_tls(self.context, ssl_handshake_timeout=REQUEST_TIMEOUT)
        except (TimeoutError, ConnectionError, OSError, ssl.SSLError) as exc:
            self._count("tls_failed", host, str(exc))
            writer.transport.abort()
            return
        for _ in range(2):  # `ca`, then `join`
            left = max(0.0, started + REQUEST_TIMEOUT - self.clock())
            try:
                message = await asyncio.wait_for(_read_frame(reader), left)
                reply = await self._answer(message, host, conn)
            except _RefusedError as exc:
                reply = self._refuse(exc, host)
            except TimeoutError:
                self._count("timeout", host, "request not complete in time")
                break
            except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
                self._count("disconnected", host, "")
                break
            except Exception:  # a bug costs one request, never the listener
                log.exception("join request failed", peer=host)
                reply = self._refuse(_RefusedError("internal", "internal error; see its log"), host)
            if not await _send(writer, reply) or not reply.get("ok"):
                break
            started = self.clock()
        writer.close()

    async def _answer(self, message: dict[str, Any], host: str, conn: int) -> dict[str, Any]:
        try:
            op = request_op(message)
        except DecodeError as exc:
            raise _RefusedError(exc.reason, exc.detail) from None
        if op == "ca":
            self.stats.ca_served += 1
            return {"ok": True, "ca": self.ca_pem.decode()}
        return await self._join(message, host, conn)

    # ------------------------------------------------------------ a join
    async def _join(self, message: dict[str, Any], host: str, conn: int) -> dict[str, Any]:
        source = source_key(host)
        if not self.attempts.allowed(source, self.clock()):
            wait = self.attempts.retry_after(source, self.clock())
            raise _RefusedError(
                "rate_limited",
                f"too many failed join attempts from {host}; try again in {wait:.0f} s",
            )
        try:
            request = JoinRequest.from_message(message)
        except DecodeError as exc:
            raise _RefusedError(exc.reason, exc.detail) from None
        # Shielded: once a change may be under way, neither an eviction nor a shutdown of this
        # connection's task cuts it short before the token is spent (J2); the lock is held by
        # the shielded task, so no other join runs meanwhile.
        return await asyncio.shield(self._locked_join(request, host, source, conn))

    async def _locked_join(
        self, request: JoinRequest, host: str, source: str, conn: int
    ) -> dict[str, Any]:
        async with self.lock:
            try:
                self.tokens.check(request.token, now=self.wall())
            except TokenRefusedError as exc:
                self.attempts.failed(source, self.clock())
                raise _RefusedError(exc.reason, str(exc)) from None
            self.guard.established(conn)  # a right token: no longer evictable
            return await self._admit(request, host)

    async def _admit(self, request: JoinRequest, host: str) -> dict[str, Any]:
        public_key = _check_csr(request)
        joiner = Joiner(request.name, request.links, request.node_id, request.votes, request.force)
        try:
            admit(self.host.cluster_config, joiner)  # a clear refusal before any change
        except JoinRefusedError as exc:
            raise _RefusedError("refused", str(exc)) from None
        try:
            outcome = await asyncio.wait_for(
                self.host.change_config(lambda c: admit(c, joiner)), CHANGE_TIMEOUT
            )
        except JoinRefusedError as exc:
            raise _RefusedError("refused", str(exc)) from None
        except TimeoutError:
            self.tokens.spend(request.token, now=self.wall())  # the outcome is unknown (J2)
            raise _RefusedError(
                "timeout", "the configuration change did not finish in time; check status"
            ) from None
        config = self.host.cluster_config
        me = next((n for n in config.nodes if n.name == request.name), None)
        if not outcome.ok and me is None:
            if "unknown" in outcome.text or "view changed" in outcome.text:
                self.tokens.spend(request.token, now=self.wall())
            reason = "not_quorate" if "quorate" in outcome.text else "change_failed"
            raise _RefusedError(reason, outcome.text)
        if me is None:
            raise _RefusedError("change_failed", "the change committed without this node; retry")
        grant = self._grant(config, me.node_id, request.name, public_key)
        self.tokens.spend(request.token, now=self.wall())
        self.stats.admitted += 1
        log.info(
            "node joined", name=request.name, node_id=me.node_id, peer=host, version=config.version
        )
        return grant.to_message()

    def _grant(self, config: ClusterConfig, node_id: int, name: str, public_key: Any) -> JoinGrant:
        try:
            ca, ca_key = join_files.load_ca(self.files)
        except ConfigError as exc:
            raise _RefusedError("internal", str(exc)) from None
        cert = join_files.sign_node(ca, ca_key, name, public_key, join_files.utcnow())
        return JoinGrant(
            node_id=node_id,
            config=cluster_config.encode(config),
            keys=self.keys,
            ca=self.ca_pem.decode(),
            ca_key=certificates.key_pem(ca_key).decode(),
            cert=certificates.cert_pem(cert).decode(),
        )

    # ------------------------------------------------------------ refusals
    def _refuse(self, exc: _RefusedError, host: str) -> dict[str, Any]:
        self._count(exc.reason, host, str(exc))
        return Refusal(exc.reason, str(exc)).to_message()

    def _count(self, reason: str, host: str, detail: str) -> None:
        """Count one refusal; one warning per reason and source every 10 s."""
        self.stats.refuse(reason)
        held = self.quiet.allow(f"{reason} {source_key(host)}", self.clock())
        if held is not None:
            log.warning("join refused", reason=reason, detail=detail, peer=host, suppressed=held)


class RuntimeLike(JoinHost, Protocol):
    """`AgentRuntime` as `start_join_server` sees it."""

    @property
    def startup(self) -> Startup: ...
    @property
    def config(self) -> AgentConfig: ...


async def start_join_server(runtime: RuntimeLike) -> JoinServer | None:
    """The agent's join server, bound; None (logged) for a single-file agent or when the files
    or the port are missing: the agent runs on without a join port."""
    startup, config = runtime.startup, runtime.config
    if startup.single_file:
        return None
    files = ClusterFiles(startup.path.parent, Path(config.state_dir))
    link0 = min(config.links, key=lambda k: k.index)
    try:
        keys = [k.secret for k in load_keys(config.key_files)]
        server = JoinServer(runtime, files, keys, link0.address, startup.local.join_port)
        await server.start()
    except (ConfigError, OSError) as exc:
        log.warning("join port off", reason=str(exc), effect="votemesh join-info is refused")
        return None
    return server


def _check_csr(request: JoinRequest) -> Any:
    """The CSR's RSA key if it is well formed and names the joiner; _RefusedError otherwise."""
    problem = node_name_problem(request.name)
    if problem is not None:
        raise _RefusedError("refused", f"{problem}; pass --name")
    try:
        csr = certificates.parse_request(request.csr.encode())
        key = certificates.rsa_public(csr.public_key())
    except CertificateError as exc:
        raise _RefusedError("bad_csr", str(exc)) from None
    if certificates.common_name(csr.subject) != request.name:
        raise _RefusedError("bad_csr", "the certificate request does not name the joining node")
    return key


async def _read_frame(reader: asyncio.StreamReader) -> dict[str, Any]:
    """One request frame; _RefusedError(bad_frame / version / bad_request) for garbage."""
    try:
        header = await reader.readexactly(HEADER.size)
        body = await reader.readexactly(frame_length(header, MAX_REQUEST_FRAME))
        return decode_body(body)
    except DecodeError as exc:
        raise _RefusedError(exc.reason, exc.detail) from None


async def _send(writer: asyncio.StreamWriter, message: dict[str, Any]) -> bool:
    """Write one frame; False when the peer is gone."""
    with contextlib.suppress(ConnectionError, ssl.SSLError, TimeoutError):
        writer.write(encode_frame(message))
        await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT)
        return True
    return False


def _server_context(files: ClusterFiles) -> ssl.SSLContext:
    """TLS 1.2+ with the node's certificate; no client certificates."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(files.node_cert, files.node_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load {files.node_cert} / {files.node_key} for the join port: {exc}"
        ) from None
    return context
