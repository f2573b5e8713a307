"""Local mistakes and oversize input (issue 12 item 12): one-line errors, never a traceback."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.agent.live_agents import AgentCluster
from tests.agent.test_agent_cli import one_line_error, run


def test_max_seq_of_2_64_is_a_one_line_error(tmp_path: Path) -> None:
    """Regression (on main it passed the check, then died with a traceback): a max_seq file
    that leaves no room for a new ring id stops the start with one line saying what to do."""
    cluster = AgentCluster(tmp_path, 1)
    agent = cluster.agents[1]
    (agent.workdir / "state").mkdir()
    (agent.workdir / "state" / "max_seq").write_text(f"{2**64 - 1}\n")
    one_line_error(
        run("votemesh-agent", "--config", str(agent.config_path)), "highest ring sequence"
    )


def test_control_socket_naming_a_regular_file_is_refused_and_kept(tmp_path: Path) -> None:
    """Regression (on main the agent deleted the file): control_socket pointing at an existing
    regular file is a one-line error, and the file is untouched."""
    cluster = AgentCluster(tmp_path, 1)
    agent = cluster.agents[1]
    agent.control_socket.write_text("precious\n")
    one_line_error(run("votemesh-agent", "--config", str(agent.config_path)), "is not a socket")
    assert agent.control_socket.read_text() == "precious\n"


def test_a_70_kb_control_request_is_refused_in_one_line(tmp_path: Path) -> None:
    """Regression (on main it logged a traceback): a 70 kB request line gets an Error answer,
    the agent logs one warning line and keeps serving."""
    cluster = AgentCluster(tmp_path, 1)
    agent = cluster.agents[1]
    try:
        cluster.start(1)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(agent.control_socket))
            sock.sendall(b"status " + b"x" * 70_000 + b"\n")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.startswith(b"Error\nrequest longer than")
        assert agent.status() is not None
        text = agent.log_path.read_text()
        assert "Traceback" not in text
        refused = [r for r in agent.log_records() if r["event"] == "control request refused"]
        assert len(refused) == 1
        assert refused[0]["level"] == "warning"
    finally:
        cluster.close()
