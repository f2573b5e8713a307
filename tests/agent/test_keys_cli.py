"""`votemesh updatecerts` and `votemesh rotate-key` as a user meets them (design §3.12): files and
modes, and every mistake one line with exit status 1."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509

from agent.cli import main as cli
from proto import certificates


def _create(root: Path) -> Path:
    argv = ["create", "prod", "--name", "alpha", "--link0", "10.0.0.1"]
    argv += ["--config-dir", str(root / "etc"), "--state-dir", str(root / "state")]
    argv += ["--control-socket", str(root / "agent.sock")]
    assert cli(argv) == 0
    return root / "etc"


def _one_line(capsys: pytest.CaptureFixture[str], says: str) -> None:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("votemesh: "), err
    assert says in err, err


def test_updatecerts_reissues_the_certificate_and_force_makes_a_new_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --force: a new node.pem (new serial, CN = node name, signed by the CA) for the
    same node.key; with --force: a new node.key too. Modes 0644 / 0600. No agent running is a
    note, not an error."""
    etc = _create(tmp_path)
    ca = x509.load_pem_x509_certificate((etc / "cluster-ca.pem").read_bytes())
    first = x509.load_pem_x509_certificate((etc / "node.pem").read_bytes())
    key = (etc / "node.key").read_bytes()
    toml = str(etc / "node.toml")
    capsys.readouterr()
    assert cli(["updatecerts", "--config", toml]) == 0
    out = capsys.readouterr().out
    assert "CN=alpha" in out
    assert "uses the new files when restarted" in out
    second = x509.load_pem_x509_certificate((etc / "node.pem").read_bytes())
    assert second.serial_number != first.serial_number
    assert certificates.common_name(second.subject) == "alpha"
    assert certificates.issued_by(second, ca, second.not_valid_before_utc)
    assert (etc / "node.key").read_bytes() == key
    assert cli(["updatecerts", "--config", toml, "--force"]) == 0
    assert (etc / "node.key").read_bytes() != key
    third = x509.load_pem_x509_certificate((etc / "node.pem").read_bytes())
    assert third.public_key() != second.public_key()
    assert stat.S_IMODE((etc / "node.pem").stat().st_mode) == 0o644
    assert stat.S_IMODE((etc / "node.key").stat().st_mode) == 0o600


def test_updatecerts_mistakes_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No node.toml; no cluster CA key; a node.key that is not a key; a state dir whose
    configuration does not name this node: one line each, exit 1, node.pem untouched."""
    assert cli(["updatecerts", "--config", str(tmp_path / "none.toml")]) == 1
    _one_line(capsys, "none.toml")
    etc = _create(tmp_path)
    toml = str(etc / "node.toml")
    pem = (etc / "node.pem").read_bytes()
    (etc / "node.key").write_text("not a key")
    capsys.readouterr()
    assert cli(["updatecerts", "--config", toml]) == 1
    _one_line(capsys, "updatecerts --force")
    (tmp_path / "state" / "cluster-config").unlink()
    assert cli(["updatecerts", "--config", toml, "--force"]) == 1
    _one_line(capsys, "does not name node 1")
    (etc / "cluster-ca.key").unlink()
    assert cli(["updatecerts", "--config", toml, "--force"]) == 1
    _one_line(capsys, "cannot read the cluster CA")
    assert (etc / "node.pem").read_bytes() == pem


def test_rotate_key_mistakes_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No agent on the socket, and a --wait out of range: one line, exit 1."""
    assert cli(["rotate-key", "--socket", str(tmp_path / "none.sock")]) == 1
    _one_line(capsys, "no agent is listening")
    assert cli(["rotate-key", "--wait", "-1", "--socket", str(tmp_path / "none.sock")]) == 1
    _one_line(capsys, "--wait")
