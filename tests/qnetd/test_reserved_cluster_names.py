"""No certificate or token is ever made for a cluster named like the arbitrator (issue 7 item 4).

On main, `certs client --cluster "Qnetd Server"` wrote a client certificate that the node's check
for the arbitrator's name (agent/runtime/qdevice.py `server_name_problem`) accepted.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from agent.runtime.enroll import EnrollError, enroll
from proto.enrollment import Token
from qnetd import certs
from qnetd.cli import main

RESERVED = ["Qnetd Server", "qnetd SERVER", "QNet CA", "*.prod"]


@pytest.mark.parametrize("name", RESERVED)
@pytest.mark.parametrize("command", [["certs", "client", "--out", "{tmp}/o"], ["token", "create"]])
def test_cli_refuses_reserved_cluster_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, command: list[str]
) -> None:
    """`certs client` and `token create` exit 2 with one line; nothing is written."""
    argv = [a.format(tmp=tmp_path) for a in command]
    argv += ["--cluster", name, "--state-dir", str(tmp_path / "s")]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "reserved" in err or "'*'" in err
    assert err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_signing_refuses_a_request_for_the_server_name(tmp_path: Path) -> None:
    """The library refuses too (enrollment and `certs sign` go through it)."""
    state = certs.ensure_state(tmp_path / "s")
    issued_before = sorted(state.issued.iterdir())
    key = certs.new_key()
    csr = certs.make_request(key, "Qnetd Server").public_bytes(serialization.Encoding.DER)
    with pytest.raises(certs.CertError, match="reserved"):
        certs.sign_request(state.root, csr, "Qnetd Server")
    with pytest.raises(certs.CertError, match="reserved"):
        certs.client_bundle(state.root, "QNETD SERVER", tmp_path / "b", force=False)
    assert sorted(state.issued.iterdir()) == issued_before


def test_node_refuses_a_token_for_a_reserved_cluster(tmp_path: Path) -> None:
    """The enrolling node refuses such a token before it connects anywhere (port 9 is unused)."""
    token = Token("Qnetd Server", b"s" * 16, b"f" * 32).encode()
    with pytest.raises(EnrollError, match="reserved"):
        enroll("127.0.0.1", 9, token, tmp_path / "out")
