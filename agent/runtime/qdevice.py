"""The agent's qdevice client at run time: drives `QdeviceSession` over TCP/TLS with asyncio.

Adapter ring: the sans-IO session (`agent/qdevice_session.py`) decides; this module owns the
socket, the TLS upgrade, the clock, the heuristics subprocesses and the log lines. The agent's main
loop (`agent/runtime/main.py`) forwards `QdeviceUpdate` effects with `update()` and hears back
through `on_vote(vote, connected, reason, ring)`, which it turns into `QdeviceVote` for the node.

* Effects run in order, synchronously, in the call that produced them: `Connect` starts a
  connect task, `SendMsg` writes, `StartTls` starts the upgrade task, `Close` closes. Nothing is
  sent between STARTTLS and INIT (the session is in state `tls`), so the upgrade may run in a task.
* Every connection has a generation number, bumped by `Connect` and `Close`; a connect, reader,
  TLS or heuristics task of an older generation reports nothing, so the session never hears
  `disconnected()` after its own `Close`.
* TLS: the client context trusts `ca_pem`, presents `cert_pem`/`key_pem`; the server must be
  named `Qnetd Server` (SAN DNS names, the CN only without a SAN extension, case-insensitive, as
  NSS checks it), which Python's host-name check cannot do (the space), so it is checked here
  after the handshake.
  A session without TLS (`PlainText`: tls = "off" or an allowed downgrade) is logged as a warning
  on every connect; a close that gives up (a server without TLS when no downgrade is allowed,
  and the other refusals of reference 4.8) is logged as an error with its reason.
* The reader feeds a `StreamDecoder` limited to `session.max_receive_size` (32 KiB until the
  INIT_REPLY, then the server's reply size); a bad message drops the connection (qdevice does).
* Heuristics: every command (split like a shell would, run without one) must exit 0 within
  `heuristics_timeout`; they run concurrently, a timed-out one is killed.
* `on_vote` is called soon after, never from inside `update()`/`set_config()`: the node's
  `handle()` is not re-entered from its own effects. A revocation (the held ACK is gone: NACK,
  connection lost) that came from qnetd is reported at once, before the effects that follow it
  (a VOTE_INFO_REPLY to that NACK): qnetd ACKs the other side only after that reply, so the
  node must have stopped counting the device by then (design §3.4).
* `close()` ends the session before the agent says Leave (clean stop): qnetd must not see the
  stopping node on its old ring when the survivors report theirs, or lms waits for it.

Tasks are named and live in one `asyncio.TaskGroup` owned by `run()`; none of them lets an
error escape (a lost qnetd is a reconnect, never an agent crash).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shlex
import ssl
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import structlog
from cryptography import x509

from agent.config import ConfigError, QdeviceConfig
from agent.qdevice_protocol import Timers
from agent.qdevice_session import (
    Close,
    Connect,
    PlainText,
    QdEffect,
    QdeviceSession,
    RunHeuristics,
    SendMsg,
    SessionEvent,
    StartTls,
    VoteChanged,
)
from agent.runtime.enroll import SERVER_NAME
from proto.cert_names import is_server_name, names_of
from proto.errors import DecodeError
from proto.qnetd_stream import StreamDecoder

CONFIG_VERSION = 1  # the agent has no config versions; one value, sent in the config lists
log = structlog.get_logger("votemesh.agent.qdevice")

OnVote = Callable[[bool, bool, str, tuple[int, int] | None], None]


def client_tls_context(cfg: QdeviceConfig) -> ssl.SSLContext:
    """Trust cfg.ca_pem, present cfg.cert_pem/key_pem; ConfigError (one line) if unusable."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # 'Qnetd Server' is no host name: see check_server_name()
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        if cfg.ca_pem.startswith(PEM_BEGIN):  # `votemesh qdevice setup`: PEM text in the config
            ctx.load_verify_locations(cadata=cfg.ca_pem)
            _load_inline_chain(ctx, cfg.cert_pem, cfg.key_pem)
        else:
            ctx.load_verify_locations(cafile=cfg.ca_pem)
            ctx.load_cert_chain(cfg.cert_pem, cfg.key_pem)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"qdevice TLS files unusable ({exc}); check qdevice.ca_pem, cert_pem and key_pem "
            "are readable PEM files (a certificate and its key)"
        ) from None
    return ctx


PEM_BEGIN = "-----BEGIN"


def _load_inline_chain(ctx: ssl.SSLContext, cert_pem: str, key_pem: str) -> None:
    """`load_cert_chain` reads files only: write the PEM texts to a private temporary
    directory (0700, key 0600), load them, and remove them at once."""
    with tempfile.TemporaryDirectory(prefix="votemesh-qdevice-") as tmp:
        cert, key = Path(tmp) / "client.pem", Path(tmp) / "client.key"
        cert.write_text(cert_pem)
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(key_pem)
        ctx.load_cert_chain(cert, key)


def server_name_problem(der: bytes | None) -> str | None:
    """Why the server certificate is not `Qnetd Server` (SAN DNS, else CN), or None if it is."""
    if der is None:
        return "server sent no certificate"
    try:
        names = names_of(x509.load_der_x509_certificate(der))
    except ValueError as exc:
        return f"server certificate unreadable: {exc}"
    if any(is_server_name(n) for n in names):
        return None
    return f"server certificate is named {names}, not {SERVER_NAME!r}"


REFUSAL_LOG_INTERVAL = 60.0
"""Seconds between two warnings for the same refusal (lms retries every few seconds)."""


class RefusalLog:
    """Rate limit for repeated refusal warnings: the first of a reason is logged, then at most
    one every `interval` seconds, each saying how many were not logged since the last one."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: dict[str, tuple[float, int]] = {}

    def due(self, reason: str, now: float) -> int | None:
        """How many of `reason` went unlogged since the last warning if one is due now, else
        None (and this one is counted)."""
        last = self._last.get(reason)
        if last is not None and now - last[0] < self.interval:
            self._last[reason] = (last[0], last[1] + 1)
            return None
        if len(self._last) > 64:  # reasons carry no peer data, but stay bounded anyway
            self._last.clear()
        self._last[reason] = (now, 0)
        return 0 if last is None else last[1]


class QdeviceRunner:
    """One node's qdevice client: connects, votes, reconnects, until `run()` is cancelled."""

    def __init__(
        self,
        cfg: QdeviceConfig,
        node_id: int,
        cluster: str,
        on_vote: OnVote,
        rng: random.Random | None = None,
    ) -> None:
        self.cfg = cfg
        self.session = QdeviceSession(node_id, cluster, cfg, rng)
        self._on_vote = on_vote
        self._ctx = client_tls_context(cfg) if cfg.tls != "off" else None
        self._connect_timeout = Timers.of(cfg).connect_timeout
        self._gen = 0
        self._writer: asyncio.StreamWriter | None = None
        self._group: asyncio.TaskGroup | None = None
        self._pending: list[QdEffect] = []
        self._wake = asyncio.Event()
        self._vote = False
        self._ring: tuple[int, int] | None = None
        self._connected = False
        self._from_core = False
        """Inside update()/set_config(): the node's handle() is running, report later."""
        self.tls_version = ""
        self.connects = 0
        """Connections that reached the connected state."""
        self.attempts = 0
        """Connects started (each `Connect` effect): what tests and benchmarks count."""
        self.last_close = ""
        self._refusals = RefusalLog(REFUSAL_LOG_INTERVAL)

    # ----- what the main loop calls -----------------------------------------------------------

    async def run(self) -> None:
        """Connect and keep the session going until cancelled; then close the connection."""
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                pending, self._pending = self._pending, []
                self._execute(pending)
                group.create_task(self._timer_loop(), name="qdevice-timer")
        finally:
            self._group = None
            await self.close()

    def update(self, ring: tuple[int, int], members: tuple[int, ...], quorate: bool) -> None:
        """The node installed `ring` with `members` and decided `quorate`."""
        now = self._now()
        self._from_core = True
        try:
            self._execute(self.session.set_membership(ring, members, now))
            self._execute(self.session.set_quorum(quorate, members, now))
        finally:
            self._from_core = False

    def set_config(self, nodes: tuple[int, ...]) -> None:
        """The configured node ids (sent as the config node list)."""
        self._from_core = True
        try:
            self._execute(
                self.session.set_config(tuple(sorted(nodes)), CONFIG_VERSION, self._now())
            )
        finally:
            self._from_core = False

    async def close(self, timeout: float = 0.5) -> None:
        """End the session and wait (at most `timeout` s) until the connection is closed, so
        qnetd has dropped this node before the agent says Leave (design §3.4, clean stop); a TLS
        shutdown still unanswered then is aborted, so no socket outlives the runner. `run()`
        ends with it too (cancelled or not)."""
        writer, self._writer = self._writer, None
        self._gen += 1
        if writer is None:
            return
        writer.close()
        try:
            async with asyncio.timeout(timeout):
                await writer.wait_closed()
        except (TimeoutError, asyncio.CancelledError) as exc:
            writer.transport.abort()  # no close_notify back in time: the socket closes now
            if isinstance(exc, asyncio.CancelledError):
                raise
        except (OSError, ssl.SSLError):
            pass

    def status(self) -> dict[str, Any]:
        """For the control socket: session state, server, TLS version, last close reason."""
        return {
            "state": self.session.state,
            "server": f"{self.cfg.host}:{self.cfg.port}",
            "tls": self.tls_version,
            "connects": self.connects,
            "last_close": self.last_close,
        }

    # ----- effects ----------------------------------------------------------------------------

    def _execute(self, effects: list[QdEffect]) -> None:
        if self._group is None:
            self._pending += effects
            return
        for effect in effects:
            self._execute_one(effect)
        self._wake.set()

    def _execute_one(self, effect: QdEffect) -> None:
        match effect:
            case Connect():
                self._gen += 1
                self.attempts += 1
                self._close_writer()
                log.debug("qdevice connecting", server=f"{self.cfg.host}:{self.cfg.port}")
                self._spawn(self._connect(self._gen), "qdevice-connect")
            case SendMsg(data) if self._writer is not None:
                self._writer.write(data)
            case StartTls():
                self._spawn(self._start_tls(self._gen), "qdevice-tls")
            case PlainText(reason):
                self.tls_version = "plain"
                log.warning(
                    "qdevice connection without TLS: the arbitrator is not authenticated",
                    server=f"{self.cfg.host}:{self.cfg.port}",
                    reason=reason,
                )
            case Close(reason, reconnect_at, refused):
                self._gen += 1
                self._close_writer()
                self.last_close = reason
                if reconnect_at is None:
                    log.error("qdevice gave up; restart the agent once fixed", reason=reason)
                    return
                delay = round(reconnect_at - self._now(), 3)
                if not refused:
                    log.info("qdevice connection closed", reason=reason, reconnect_in_s=delay)
                elif (unlogged := self._refusals.due(reason, self._now())) is not None:
                    log.warning(
                        "qdevice refused by qnetd",
                        reason=reason,
                        reconnect_in_s=delay,
                        not_logged_since_last=unlogged,
                    )
            case RunHeuristics():
                self._spawn(self._heuristics(self._gen), "qdevice-heuristics")
            case VoteChanged(vote, reason, ring):
                revoked = self._ring is not None and ring is None
                self._vote, self._ring = vote, ring
                self._report(reason, at_once=revoked and not self._from_core)
            case SessionEvent(name, reason):
                self._connected = name == "connected"
                if self._connected:
                    self.connects += 1
                log.debug(f"qdevice {name}", reason=reason, tls=self.tls_version or None)
                self._report(reason)

    def _report(self, reason: str, *, at_once: bool = False) -> None:
        """Tell the main loop soon (not re-entrantly): vote, connected, reason, held ring; a
        revocation from qnetd at once (see the module docstring)."""
        args = (self._vote, self._connected, reason, self._ring)
        if at_once:
            self._on_vote(*args)
            return
        asyncio.get_running_loop().call_soon(self._on_vote, *args)

    # ----- connection tasks -------------------------------------------------------------------

    async def _connect(self, gen: int) -> None:
        try:
            async with asyncio.timeout(self._connect_timeout):
                reader, writer = await asyncio.open_connection(self.cfg.host, self.cfg.port)
        except (OSError, TimeoutError) as exc:
            self._lost(gen, f"connect to {self.cfg.host}:{self.cfg.port}: {exc or 'timeout'}")
            return
        if gen != self._gen:
            writer.close()
            return
        self._writer = writer
        self.tls_version = ""
        self._spawn(self._read_loop(gen, reader), "qdevice-read")
        self._execute(self.session.connected(self._now()))

    async def _start_tls(self, gen: int) -> None:
        writer = self._writer
        if writer is None or self._ctx is None:
            self._lost(gen, "STARTTLS without a TLS context")
            return
        try:
            await writer.drain()
            await writer.start_tls(self._ctx)
        except (OSError, ssl.SSLError, ssl.CertificateError) as exc:
            self._lost(gen, f"TLS handshake: {exc}")
            return
        if gen != self._gen:
            return
        tls = writer.get_extra_info("ssl_object")
        problem = server_name_problem(tls.getpeercert(binary_form=True) if tls else None)
        if problem is not None:
            self._lost(gen, f"TLS: {problem}")
            return
        self.tls_version = tls.version() or ""
        self._execute(self.session.tls_established(self._now()))

    async def _read_loop(self, gen: int, reader: asyncio.StreamReader) -> None:
        decoder = StreamDecoder(self.session.max_receive_size)
        try:
            while gen == self._gen:
                data = await reader.read(decoder.bytes_wanted())
                if not data:
                    self._lost(gen, "qnetd closed the connection")
                    return
                decoder.feed(data)
                while gen == self._gen and (msg := decoder.next_message()) is not None:
                    self._execute(self.session.received(msg, self._now()))
                    decoder.max_message_size = self.session.max_receive_size
        except DecodeError as exc:
            self._lost(gen, f"bad message from qnetd: {exc}")
        except (OSError, ssl.SSLError) as exc:
            self._lost(gen, f"read: {exc}")

    async def _heuristics(self, gen: int) -> None:
        results = await asyncio.gather(*(self._run_check(c) for c in self.cfg.heuristics))
        passed = all(results)
        log.info("qdevice heuristics", passed=passed, results=results)
        if gen == self._gen:
            self._execute(self.session.heuristics_result(passed, self._now()))

    async def _run_check(self, command: str) -> bool:
        """One heuristics command: True when it exits 0 within heuristics_timeout."""
        try:
            proc = await asyncio.create_subprocess_exec(
                *shlex.split(command),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
        except (OSError, ValueError) as exc:
            log.warning("qdevice heuristics command failed to start", command=command, error=exc)
            return False
        try:
            async with asyncio.timeout(self.cfg.heuristics_timeout):
                return await proc.wait() == 0
        except TimeoutError:
            log.warning("qdevice heuristics command timed out", command=command)
            return False
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    def _lost(self, gen: int, reason: str) -> None:
        """A connection task failed: the session hears it unless that connection is over."""
        if gen == self._gen:
            self._execute(self.session.disconnected(reason, self._now()))

    # ----- timers and plumbing ----------------------------------------------------------------

    async def _timer_loop(self) -> None:
        while True:
            self._wake.clear()
            deadline = self.session.next_deadline()
            now = self._now()
            if deadline is not None and deadline <= now:
                self._execute(self.session.tick(now))
                continue
            timeout = None if deadline is None else deadline - now
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        if self._group is None:
            coro.close()
            return
        self._group.create_task(self._guarded(coro, name, self._gen), name=name)

    async def _guarded(self, coro: Coroutine[Any, Any, None], name: str, gen: int) -> None:
        """A connection task's bug is logged and drops that connection; the agent runs on."""
        try:
            await coro
        except Exception:  # logged with the traceback; the session reconnects
            log.exception("qdevice task failed", task=name)
            self._lost(gen, f"internal error in {name}")

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    @staticmethod
    def _now() -> float:
        return time.monotonic()  # the loop's clock too; works before the loop runs
