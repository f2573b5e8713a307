"""Assemble and run the arbitrator: PKI, core, TLS server, control socket, HTTP, enrollment.

Named tasks under one event loop; SIGTERM/SIGINT and the control socket's `shutdown` stop it
gracefully. Tells systemd when it is ready (Type=notify).
"""

from __future__ import annotations

import asyncio
import errno
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from proto.qnetd_enums import TlsSupported
from qnetd import status
from qnetd.algorithms.registry import ALGORITHMS
from qnetd.arbitration import QnetdCore
from qnetd.runtime import memory_debug
from qnetd.runtime.control import (
    ControlSocketInUseError,
    check_socket_path,
    claim_control_socket,
    refuse_live_control_socket,
    serve_control,
)
from qnetd.runtime.http import CoreCollector, LazyMetrics, serve_http, serve_http_unix
from qnetd.runtime.observability import sd_notify
from qnetd.runtime.pki_check import ensure_state_pki
from qnetd.runtime.server import QnetdServer, bind_listeners, server_ssl_context, tune_tls_memory
from qnetd.settings import QnetdSettings
from qnetd.state_files import StatePaths, server_using

log = structlog.get_logger("votemesh.qnetd")


@dataclass(frozen=True)
class RunOptions:
    """Everything `votemesh-qnetd run` was told."""

    settings: QnetdSettings
    state_dir: Path
    listen: str | None = None
    port: int = 5403
    family: str = "any"
    control_socket: Path = Path("/run/votemesh-qnetd/qnetd.sock")
    http_listen: tuple[str, int] | Path | None = ("127.0.0.1", 9403)
    """TCP (host, port), a unix socket path, or None for no HTTP endpoint."""
    enroll_listen: tuple[str, int] | None = None
    ca_cert: Path | None = None
    server_cert: Path | None = None
    server_key: Path | None = None


class ListenError(OSError):
    """An address from the command line that cannot be listened on; the message names the
    option, so the user knows which one to fix."""

    def __init__(self, option: str, host: str, port: int, cause: OSError) -> None:
        reason = cause.strerror or str(cause)
        shown = f"[{host}]" if ":" in host else host
        super().__init__(f"{option}: cannot listen on {shown}:{port}: {reason}")


def _pki(options: RunOptions) -> tuple[str, str, str] | None:
    """(ca, cert, key) PEM paths; creates the state-dir PKI on first start.

    `cryptography` is imported only to create missing files or to check an operator's PKI; an
    existing state directory is checked with the ssl module (qnetd/runtime/pki_check.py)."""
    if options.settings.tls is TlsSupported.UNSUPPORTED:
        return None
    if options.ca_cert and options.server_cert and options.server_key:
        from qnetd import certs  # noqa: PLC0415 (cryptography: only for an operator's PKI)

        certs.load_operator_pki(options.ca_cert, options.server_cert, options.server_key)
        return str(options.ca_cert), str(options.server_cert), str(options.server_key)
    paths = ensure_state_pki(options.state_dir)
    return str(paths.ca_cert), str(paths.server_cert), str(paths.server_key)


async def run_server(options: RunOptions) -> None:
    """Serve until a signal or a `shutdown` request; then stop gracefully.

    Refuses to start while another server holds or answers on the control socket; marks the
    state directory as in use (for `token create`) when its CA is the one served."""
    with claim_control_socket(options.control_socket):
        await refuse_live_control_socket(options.control_socket)  # e.g. an older server
        for path in (options.control_socket, options.http_listen):
            if isinstance(path, Path):
                check_socket_path(path)  # before anything is served: a file there is kept
        if isinstance(options.http_listen, Path):
            await _refuse_live_http_socket(options.http_listen)
        pki = _pki(options)
        if pki is not None and options.ca_cert is None:
            with server_using(StatePaths(options.state_dir)):
                await _serve(options, pki)
        else:
            await _serve(options, pki)


async def _refuse_live_http_socket(path: Path) -> None:
    """Another server (with its own control socket) serving on the same `--http-listen unix:PATH`
    keeps it: replacing it would send every scrape silently to this one."""
    try:
        await refuse_live_control_socket(path)
    except ControlSocketInUseError as exc:
        raise FileExistsError(
            errno.EADDRINUSE,
            "another server answers on this --http-listen socket; stop it or give another path",
            str(path),
        ) from exc


async def _serve(options: RunOptions, pki: tuple[str, str, str] | None) -> None:
    snapshots = memory_debug.start_if_asked()  # VOTEMESH_QNETD_TRACEMALLOC: off by default
    tune_tls_memory()
    context = server_ssl_context(*pki, options.settings.client_cert_required) if pki else None
    core = QnetdCore(options.settings, ALGORITHMS)
    server = QnetdServer(core, context)
    try:
        listeners = bind_listeners(options.listen, options.port, options.family)
    except OSError as exc:
        raise ListenError("--listen", options.listen or "*", options.port, exc) from None
    address = listeners[0].getsockname()
    listen_text = f"{options.listen or '*'}:{address[1]}"
    await server.start(listeners)
    started = time.monotonic()
    stop = asyncio.Event()

    def snap() -> dict[str, Any]:
        return status.snapshot(core, listen_text, server.connection_count)

    closers: list[asyncio.AbstractServer] = [
        await serve_control(options.control_socket, snap, stop.set)
    ]
    collector = CoreCollector(core, lambda: server.connection_count)
    collector.extra.append(lambda: _preinit_metrics(server))
    if options.enroll_listen is not None:
        try:
            closers.append(await _start_enrollment(options, collector))
        except OSError as exc:
            raise ListenError("--enroll-listen", *options.enroll_listen, exc) from None
    if options.http_listen is not None:
        registry = LazyMetrics(collector)

        def health() -> dict[str, Any]:
            return {
                "status": "ok",
                "clients": core.client_count(),
                "clusters": len(core.clusters),
                "connections": server.connection_count,
                "uptime_seconds": round(time.monotonic() - started, 1),
            }

        if isinstance(options.http_listen, Path):
            closers.append(await serve_http_unix(options.http_listen, registry, health))
        else:
            try:
                closers.append(await serve_http(*options.http_listen, registry, health))
            except OSError as exc:
                raise ListenError("--http-listen", *options.http_listen, exc) from None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if snapshots is not None:
        memory_debug.install_snapshot_signal(snapshots)
    log.info(
        "qnetd started",
        listen=listen_text,
        tls=options.settings.tls.name,
        client_cert_required=options.settings.client_cert_required,
        control_socket=str(options.control_socket),
        http=str(options.http_listen) if options.http_listen else None,
        enroll=options.enroll_listen,
    )
    weak = options.settings.admission_warning()
    if weak is not None:
        log.warning(
            "insecure admission", problem=weak, fix="--tls required --client-cert-required on"
        )
    sd_notify("READY=1")
    await stop.wait()
    sd_notify("STOPPING=1")
    log.info("qnetd stopping", clients=core.client_count())
    await server.stop()
    for closer in closers:
        closer.close()
    log.info("qnetd stopped")


def _preinit_metrics(server: QnetdServer) -> Any:
    """Refusals of connections that had not INIT-ed, by reason (qnetd/connection_limits.py)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily  # noqa: PLC0415

    from qnetd.connection_limits import REASONS  # noqa: PLC0415

    guard = server.guard
    family = CounterMetricFamily(
        "votemesh_qnetd_preinit_refused",
        "Connections refused or dropped before INIT",
        labels=["reason"],
    )
    for reason in REASONS:
        family.add_metric([reason], guard.refused[reason])
    yield family
    yield GaugeMetricFamily(
        "votemesh_qnetd_preinit_connections", "Connections not INIT-ed yet", len(guard.pending)
    )
    gate = server.handshakes
    yield CounterMetricFamily(
        "votemesh_qnetd_tls_handshakes_delayed",
        "TLS handshakes that waited for a later loop turn (at most N start per turn)",
        gate.delayed,
    )
    yield GaugeMetricFamily(
        "votemesh_qnetd_tls_handshakes_waiting", "TLS handshakes waiting to start", gate.waiting
    )
    workers = server.tls_workers
    yield GaugeMetricFamily(
        "votemesh_qnetd_tls_handshake_steps_queued",
        "TLS handshake steps queued for or running on the handshake threads",
        0 if workers is None else workers.waiting,
    )
    yield GaugeMetricFamily(
        "votemesh_qnetd_fd_budget",
        "Connections the open-file limit leaves room for",
        guard.limits.fd_budget or 0,
    )


async def _start_enrollment(
    options: RunOptions, collector: CoreCollector
) -> asyncio.AbstractServer:
    from qnetd.runtime.enroll_server import start_enrollment_server  # noqa: PLC0415

    assert options.enroll_listen is not None  # noqa: S101 (checked by the caller)
    host, port = options.enroll_listen
    enroll_server, stats = await start_enrollment_server(options.state_dir, host, port)

    def metrics() -> Any:
        from prometheus_client.core import CounterMetricFamily  # noqa: PLC0415 (first scrape)

        family = CounterMetricFamily(
            "votemesh_qnetd_enrollments", "Enrollment requests", labels=["result"]
        )
        family.add_metric(["issued"], stats.issued)
        for reason, count in sorted(stats.rejected.items()):
            family.add_metric([reason], count)
        yield family

    collector.extra.append(metrics)
    return enroll_server
