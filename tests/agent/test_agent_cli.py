"""`votemesh` and `votemesh-agent` command lines: one-line user errors, keygen, status, expected."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from agent.status import from_json
from tests.agent.live_agents import BIN, AgentCluster
from tests.agent.test_status_schema import validate


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run one of our console scripts; never raises on a non-zero exit."""
    return subprocess.run(
        [str(BIN / args[0]), *args[1:]],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


def one_line_error(result: subprocess.CompletedProcess[str], expected: str) -> None:
    """Nothing on stdout, one line on stderr containing `expected`, exit status 1 from
    `votemesh` (like corosync-quorumtool, where 2 means not quorate) and 2 from
    `votemesh-agent`."""
    program = Path(str(result.args[0])).name
    assert result.returncode == (2 if program == "votemesh-agent" else 1), result
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert expected in result.stderr


def test_keygen_then_refuse_overwrite(tmp_path: Path) -> None:
    """`votemesh keygen FILE` writes a 0600 key; a second run refuses in one line, exit 1."""
    path = tmp_path / "cluster.key"
    assert run("votemesh", "keygen", str(path)).returncode == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    one_line_error(run("votemesh", "keygen", str(path)), "refusing to overwrite")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("votemesh", "status", "--socket", "/nonexistent/agent.sock"), "no agent is listening"),
        (("votemesh", "expected", "zero", "--socket", "/x.sock"), "whole number from 1 to"),
        (("votemesh", "expected", str(2**64), "--socket", "/x.sock"), "to 1024000 or 'reset'"),
        (("votemesh", "frobnicate"), "invalid choice"),
        (("votemesh-agent",), "the following arguments are required: --config"),
        (("votemesh-agent", "--config", "/nonexistent.toml"), "cannot read config"),
    ],
)
def test_user_mistakes_are_one_line(args: tuple[str, ...], expected: str) -> None:
    """Wrong commands, missing sockets and files: one line on stderr, exit status 1 for
    `votemesh` (like corosync-quorumtool; 2 means not quorate), 2 for `votemesh-agent`."""
    one_line_error(run(*args), expected)


def test_agent_refuses_exposed_key_and_busy_port(tmp_path: Path) -> None:
    """The agent will not start with a world-readable key (says `chmod 600`), nor on a port
    another socket holds; both are one line with exit status 2."""
    cluster = AgentCluster(tmp_path, 1)
    agent = cluster.agents[1]
    cluster.key_path.chmod(0o644)
    one_line_error(
        run("votemesh-agent", "--config", str(agent.config_path)), f"chmod 600 {cluster.key_path}"
    )
    cluster.key_path.chmod(0o600)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind((agent.address, agent.port))
        one_line_error(run("votemesh-agent", "--config", str(agent.config_path)), "in use")


def next_state(notify: socket.socket) -> bytes:
    """The next notify message that is not a STATUS= line (agent.runtime.systemd sends those
    on status changes; tests/agent/test_systemd_live.py checks them)."""
    while (message := notify.recv(4096)).startswith(b"STATUS="):
        pass
    return message


def test_status_table_expected_and_readiness(tmp_path: Path) -> None:
    """Under systemd the agent says READY=1; `votemesh status` prints the table, `expected N`
    overrides expected votes (visible in --json), `events` lists JSON lines, and SIGTERM says
    STOPPING=1 and exits 0."""
    notify_path = tmp_path / "notify.sock"
    cluster = AgentCluster(tmp_path / "c", 2)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.settimeout(20)
        os.environ["NOTIFY_SOCKET"] = str(notify_path)
        try:
            cluster.start(1)
        finally:
            del os.environ["NOTIFY_SOCKET"]
        try:
            assert next_state(notify) == b"READY=1"
            cluster.start(2)
            cluster.wait_for(lambda: cluster.one_view([1, 2]), 30, "a view of 2")
            config = str(cluster.agents[1].config_path)
            table = run("votemesh", "status", "--config", config)
            assert table.returncode == 0, table.stderr
            assert "Quorate:          Yes" in table.stdout
            assert "0x00000002          1 127.0.0.2\n" in table.stdout
            assert "0x00000001          1 127.0.0.1 (local)\n" in table.stdout
            nodes = run("votemesh", "nodes", "--config", config)
            assert nodes.returncode == 0, nodes.stderr
            assert "         2          1 node2\n" in nodes.stdout
            explain = run("votemesh", "explain", "--config", config)
            assert explain.returncode == 0, explain.stderr
            assert "is quorate" in explain.stdout
            result = run("votemesh", "expected", "3", "--config", config)
            assert result.returncode == 0, result.stderr
            doc = json.loads(run("votemesh", "status", "--json", "--config", config).stdout)
            assert doc["expected_votes"] == 3
            events = run("votemesh", "events", "--config", config).stdout.splitlines()
            kinds = [json.loads(line)["event"] for line in events]
            assert "view_installed" in kinds
            assert "expected_votes_changed" in kinds
            process = cluster.agents[1].process
            assert process is not None
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=20) == 0
            assert next_state(notify) == b"STOPPING=1"
        finally:
            cluster.close()


def test_status_nodes_explain_exit_statuses_on_a_lone_node(tmp_path: Path) -> None:
    """A lone agent of three (1 of 3 votes): `status` and `explain` exit 2 (not quorate, like
    corosync-quorumtool -s), `nodes` 0; the text says `Activity blocked` and who is missing; the
    --json document validates against docs/status.schema.json and reads back typed."""
    cluster = AgentCluster(tmp_path, 3)
    try:
        cluster.start(1)
        sock = str(cluster.agents[1].control_socket)
        status = run("votemesh", "status", "--socket", sock)
        assert status.returncode == 2, status.stderr
        assert "Quorum:           2 Activity blocked\n" in status.stdout
        assert "Quorate:          No\n" in status.stdout
        assert "Ring ID:          1." in status.stdout
        assert run("votemesh", "nodes", "--socket", sock).returncode == 0
        explain = run("votemesh", "explain", "--socket", sock)
        assert explain.returncode == 2, explain.stderr
        assert "is NOT quorate" in explain.stdout
        assert "node 2 (node2), 1 vote(s): not in a view with this node" in explain.stdout
        doc = json.loads(run("votemesh", "status", "--json", "--socket", sock).stdout)
        assert validate(doc) == []
        typed = from_json(doc)
        assert typed.runtime is not None
        assert typed.ring == doc["ring"]
        assert not typed.quorate
    finally:
        cluster.close()


@pytest.mark.parametrize("program", ["votemesh", "votemesh-agent", "votemesh-qnetd"])
def test_version(program: str) -> None:
    """`--version` prints the program and the installed package's version on stdout, exit 0
    (`votemesh-agent --version` needs no --config)."""
    from importlib.metadata import version

    result = run(program, "--version")
    assert result.returncode == 0, result
    assert result.stdout == f"{program} {version('votemesh')}\n"
