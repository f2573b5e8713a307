"""structlog configuration (JSON lines) and systemd readiness notification."""

from __future__ import annotations

import logging
import os
import socket
import sys

import structlog


def configure_logging(level: str = "info", json_lines: bool = True) -> None:
    """One JSON object per line on stdout, with ISO timestamps and the level."""
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json_lines else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )


def sd_notify(state: str) -> bool:
    """Tell systemd (Type=notify) about our state, e.g. "READY=1"; False when not under systemd or
    the socket did not take the datagram at once (never raises, never waits). The same function
    as agent.runtime.systemd.sd_notify (tests/test_sd_notify_copies.py keeps them equal)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        try:
            sock.connect(address)
            sock.sendall(state.encode())
        except OSError:
            return False
    return True
