"""`votemesh create` and `join-info` as a user meets them: files, modes, one-line mistakes."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509

from agent.cli import main as cli
from agent.cli.client import UserError
from agent.cli.cluster import parse_ttl
from agent.runtime import cluster_store
from agent.runtime.config_file import load_startup
from proto import certificates


def _dirs(root: Path) -> list[str]:
    return ["--config-dir", str(root / "etc"), "--state-dir", str(root / "state")]


def test_create_writes_a_cluster_an_agent_can_start_from(tmp_path: Path) -> None:
    """Key 0600, CA and node certificate (signed by it, CN = node name), configuration version 1
    with this node and its links, and a node.toml the agent's loader accepts."""
    argv = ["create", "prod", "--name", "alpha", "--link0", "10.0.0.1",
            "--link1", "fd00::1,priority=5", "--nodeid", "4", "--votes", "2"]  # fmt: skip
    argv += _dirs(tmp_path)
    assert cli(argv) == 0
    etc = tmp_path / "etc"
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in etc.iterdir()}
    assert modes["cluster.key"] == modes["cluster-ca.key"] == modes["node.key"] == 0o600
    assert len((etc / "cluster.key").read_bytes()) == 32
    ca = x509.load_pem_x509_certificate((etc / "cluster-ca.pem").read_bytes())
    cert = x509.load_pem_x509_certificate((etc / "node.pem").read_bytes())
    assert certificates.issued_by(cert, ca, cert.not_valid_before_utc)
    assert certificates.common_name(ca.subject) == "votemesh CA prod"
    stored = cluster_store.load(tmp_path / "state")
    assert stored is not None
    assert stored.staged is None
    assert stored.promised is None
    config = stored.committed
    assert (config.cluster_name, config.version) == ("prod", 1)
    (node,) = config.nodes
    assert (node.node_id, node.name, node.votes) == (4, "alpha", 2)
    assert [(k.index, k.address, k.priority) for k in node.links] == [
        (0, "10.0.0.1", 0),
        (1, "fd00::1", 5),
    ]
    startup = load_startup(etc / "node.toml")
    assert startup.agent.node_id == 4
    assert startup.agent.cluster_name == "prod"
    assert startup.local.join_port == 5408


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["create", "bad_name", "--name", "a", "--link0", "10.0.0.1"], 'cluster name "bad_name"'),
        (["create", "prod", "--name", "a_b", "--link0", "10.0.0.1"], 'node name "a_b"'),
        (["create", "prod", "--name", "a"], "give this node's address: --link0 ADDR"),
        (["create", "prod", "--name", "a", "--link0", "host.example"], "is not an IP address"),
        (["create", "prod", "--name", "a", "--link0", "10.0.0.1,prio=2"], "ADDR,priority=N"),
        (["create", "prod", "--name", "a", "--link0", "10.0.0.1", "--votes", "300"], "votes"),
        (["add", "vmjoin1:xyz", "--name", "a", "--link0", "10.0.0.1"], "not a join string"),
        (["add", "hello", "--name", "a", "--link0", "10.0.0.1"], "not a join string"),
    ],
)
def test_mistakes_are_one_line_and_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    """Exit 1, one line on stderr that says what to do, no file written."""
    assert cli([*argv, *_dirs(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert says in err[0]
    assert not (tmp_path / "etc").exists()
    assert not (tmp_path / "state").exists()


def test_create_twice_needs_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A second create in the same directory is refused; --force makes a new cluster."""
    argv = ["create", "prod", "--name", "a", "--link0", "10.0.0.1", *_dirs(tmp_path)]
    assert cli(argv) == 0
    key = (tmp_path / "etc" / "cluster.key").read_bytes()
    assert cli(argv) == 1
    assert "already belongs to a cluster" in capsys.readouterr().err
    assert (tmp_path / "etc" / "cluster.key").read_bytes() == key
    assert cli([*argv, "--force"]) == 0
    assert (tmp_path / "etc" / "cluster.key").read_bytes() != key


def test_ttl_forms() -> None:
    """--ttl takes seconds or s/m/h/d, 60 s to 7 d."""
    assert [parse_ttl(t) for t in ("90", "90s", "15m", "1h", "7d")] == [90, 90, 900, 3600, 604800]
    for bad in ("59s", "8d", "1w", "", "-5m", "1.5h"):
        with pytest.raises(UserError, match="--ttl"):
            parse_ttl(bad)


def test_join_info_without_an_agent_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No agent on the socket: exit 1 and what to check."""
    assert cli(["join-info", "--socket", str(tmp_path / "none.sock")]) == 1
    assert "is votemesh-agent running?" in capsys.readouterr().err


def test_control_socket_routes_join_requests() -> None:
    """`join-token S` / `join-stats` reach the join server; an agent without one says so."""
    from agent.runtime.control import ControlHandlers, answer

    seen: list[list[str]] = []

    def join(words: list[str]) -> tuple[bool, str]:
        seen.append(words)
        return True, "{}\n"

    base = ControlHandlers(status=dict, set_expected=lambda _v: None, events=list)
    ok, body = answer("join-token 3600", base)
    assert not ok
    assert "runs no join port" in body
    with_join = ControlHandlers(status=dict, set_expected=lambda _v: None, events=list, join=join)
    assert answer("JOIN-TOKEN 60", with_join) == (True, "{}\n")
    assert answer("join-stats", with_join)[0]
    assert seen == [["join-token", "60"], ["join-stats"]]
