"""`corosync-qnetd-tool` reads votemesh-qnetd's control socket and prints what it prints for
Debian's corosync-qnetd in the same situation (addresses and ports aside)."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from proto.qnetd_enums import Vote
from proto.qnetd_options import RingId
from tests.interop.debian_qnetd import DebianQnetd, missing_reason
from tests.qnetd.async_client import AsyncQdevice
from tests.qnetd.our_qnetd import OurQnetd

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(
        shutil.which("corosync-qnetd-tool") is None, reason="corosync-qnetd not installed"
    ),
]
RING = RingId(1, 0x1A)


def tool(socket_path: Path, *args: str) -> str:
    result = subprocess.run(
        ["corosync-qnetd-tool", "-p", str(socket_path), *args],
        capture_output=True, text=True, timeout=10, check=True,
    )  # fmt: skip
    return result.stdout


def normalise(text: str) -> str:
    """Hide what legitimately differs: listen address/port and client source ports."""
    text = re.sub(r"(QNetd address:\s+)\S+", r"\1ADDR", text)
    return re.sub(r"(Client address:\s+)\S+", r"\1ADDR", text)


async def cluster_state(port: int, creds_for: object) -> list[AsyncQdevice]:
    creds = creds_for("toolc")  # type: ignore[operator]
    clients = [AsyncQdevice(port, b"toolc", n, creds) for n in (1, 2)]
    for client in clients:
        await client.start(RING, (1, 2), (1, 2))
    for _ in range(50):
        if all(c.votes[-1:] == [Vote.ACK] for c in clients):
            break
        await asyncio.sleep(0.1)
    assert all(c.votes[-1:] == [Vote.ACK] for c in clients)
    return clients


async def outputs(server: DebianQnetd | OurQnetd, socket_path: Path) -> tuple[str, str]:
    clients = await cluster_state(server.port, server.client_credentials)
    await asyncio.sleep(0.3)
    loop = asyncio.get_running_loop()
    listing = await loop.run_in_executor(None, tool, socket_path, "-l", "-v")
    status = await loop.run_in_executor(None, tool, socket_path, "-s", "-v")
    for client in clients:
        await client.close()
    return normalise(listing), normalise(status)


@pytest.mark.root
@pytest.mark.asyncio
@pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))
@pytest.mark.timeout(90)
async def test_tool_prints_the_same_for_both_servers(tmp_path: Path) -> None:
    """`corosync-qnetd-tool -l -v` and `-s -v` give the same text for both servers."""
    debian = DebianQnetd(tmp_path / "debian")
    debian.init_ca()
    debian.start()
    try:
        theirs = await outputs(debian, debian.workdir / "qnetd.sock")
    finally:
        debian.stop()
    ours_server = OurQnetd(tmp_path / "ours", "on", True)  # Debian's defaults, -s on -c on
    ours_server.start()
    try:
        ours = await outputs(ours_server, ours_server.control_socket)
    finally:
        ours_server.stop()
    assert 'Cluster "toolc":' in theirs[0]
    assert ours[0] == theirs[0]
    assert ours[1] == theirs[1]
