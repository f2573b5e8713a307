"""Who may ask what on the agent's control socket (agent/runtime/control.py): every user who can
open it may read; a request that changes quorum or the cluster, or hands out a join secret,
needs root. Real unix socket, real client processes as root and as another user (the layer
above, the running agent, is a stand-in)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from agent.runtime.control import ControlHandlers, serve_control

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as nobody")

NOBODY = 65534
CLIENT = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
s.sendall(sys.argv[2].encode() + b"\\n")
data = b""
while chunk := s.recv(65536):
    data += chunk
print(data.decode().replace("\\n", " "))
"""
"""A client of the control framing with the standard library only: nobody cannot read the
checkout or its venv, so it runs on the system's python3."""


async def _ask(path: Path, line: str, user: int) -> str:
    """One request from a separate process running as `user` (group root: the socket's group)."""
    proc = await asyncio.create_subprocess_exec(
        "/usr/bin/python3", "-I", "-c", CLIENT, str(path), line,
        user=user, group=0, extra_groups=[], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        cwd="/",
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()
    return out.decode().strip()


@pytest.mark.asyncio
async def test_a_group_member_may_read_but_not_change_quorum_or_mint_join_strings() -> None:
    """A non-root user of the socket (the packaged unit's `votemesh` group) gets status and
    events, but `expected 1` (a minority would become quorate), `join-token` (a way into the
    cluster) and `delnode` are refused with one line and never reach the agent; root may."""
    asked: list[str] = []

    def set_expected(value: int | None) -> str | None:
        asked.append(f"expected {value}")
        return None

    def join(words: list[str]) -> tuple[bool, str]:
        asked.append(" ".join(words))
        return True, '{"join": "secret"}\n'

    async def config(command: str, args: list[str]) -> tuple[bool, str]:
        asked.append(" ".join([command, *args]))
        return True, "{}\n"

    handlers = ControlHandlers(
        status=lambda: {"quorate": True}, set_expected=set_expected, events=list,
        config=config, join=join,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp).chmod(0o711)  # nobody may reach the socket; its mode (0660, group root) decides
        path = Path(tmp) / "agent.sock"
        server = await serve_control(path, handlers)
        try:
            assert (await _ask(path, "status", NOBODY)).startswith("OK")
            assert (await _ask(path, "events", NOBODY)).startswith("OK")
            for line in ("expected 1", "join-token 600", "delnode 2"):
                answer = await _ask(path, line, NOBODY)
                assert answer.startswith("Error"), answer
                assert "needs root" in answer, answer
            assert asked == []
            assert (await _ask(path, "expected 1", 0)).startswith("OK")
            assert asked == ["expected 1"]
        finally:
            server.close()
