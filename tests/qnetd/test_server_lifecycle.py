"""Server lifecycle: systemd readiness, graceful shutdown, listening sockets, user errors."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from proto.qnetd_enums import Vote
from proto.qnetd_options import RingId
from qnetd.runtime.server import bind_listeners
from tests.qnetd.async_client import AsyncQdevice
from tests.qnetd.our_qnetd import OurQnetd


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_ready_notification_and_graceful_shutdown(tmp_path: Path) -> None:
    """Under systemd (NOTIFY_SOCKET) the server says READY=1 once serving; SIGTERM drops the
    clients, says STOPPING=1, logs the stop and exits 0."""
    notify_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(20)
    os.environ["NOTIFY_SOCKET"] = str(notify_path)
    server = OurQnetd(tmp_path / "q")
    try:
        server.start()
    finally:
        del os.environ["NOTIFY_SOCKET"]
    loop = asyncio.get_running_loop()
    assert (await loop.run_in_executor(None, notify.recv, 100)) == b"READY=1"
    client = AsyncQdevice(server.port, b"c", 1, server.client_credentials("c"))
    await client.start(RingId(1, 1), (1,), (1,))
    await asyncio.sleep(0.3)
    assert client.votes == [Vote.ACK]
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    assert await loop.run_in_executor(None, server.process.wait, 20) == 0
    assert (await loop.run_in_executor(None, notify.recv, 100)) == b"STOPPING=1"
    await asyncio.wait_for(client.closed.wait(), 5)
    events = [r.get("event") for r in server.log_records()]
    assert events[-1] == "qnetd stopped"
    assert "client dropped" in events
    notify.close()
    await client.close()


def test_shutdown_through_control_socket(tmp_path: Path) -> None:
    """`shutdown` on the control socket (as corosync-qnetd-tool -H sends) stops the server."""
    server = OurQnetd(tmp_path / "q")
    server.start()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(server.control_socket))
        sock.sendall(b"shutdown\n")
        assert sock.recv(100).startswith(b"OK")
    assert server.process is not None
    assert server.process.wait(timeout=20) == 0


def test_default_listener_is_dual_stack() -> None:
    """With no --listen the server takes IPv4 and IPv6 peers on one socket, like corosync-qnetd."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this kernel")
    (sock,) = bind_listeners(None, 0)
    try:
        sock.listen(4)
        port = sock.getsockname()[1]
        for host in ("127.0.0.1", "::1"):
            with socket.create_connection((host, port), 2):
                peer, addr = sock.accept()
                peer.close()
                assert addr[0] in {"::ffff:127.0.0.1", "::1"}
    finally:
        sock.close()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["run", "--tls", "maybe"], "--tls must be one of"),
        (["run", "--heartbeat-min", "5000", "--heartbeat-max", "1000"], "heartbeat range"),
        (["run", "--ca-cert", "/nonexistent"], "give all three"),
        (["status", "--control-socket", "/nonexistent/sock"], "is it running?"),
    ],
)
def test_user_mistakes_are_one_line_and_nonzero(args: list[str], fragment: str) -> None:
    """A user's mistake is one line on stderr saying what to do, exit 2, no traceback."""
    result = subprocess.run(
        [sys.executable, "-m", "qnetd", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr
    assert (
        len([line for line in result.stderr.splitlines() if line.strip()]) <= 2
    )  # argparse adds usage
