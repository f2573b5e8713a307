"""Enrollment end to end: a running qnetd, a one-time token, a node that enrolls, a TLS session.

No root SSH and no NSS: `token create` on the arbitrator, `python -m agent.runtime.enroll` on the
node, and the certificate it receives is accepted by the same server for a qdevice session.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from proto.qnetd_enums import Vote
from proto.qnetd_messages import VoteInfo
from tests.interop.debian_qnetd import ClientCredentials, free_port
from tests.interop.wire_walk import full_walk
from tests.qnetd.our_qnetd import OurQnetd, running_our_qnetd


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[OurQnetd, int]]:
    enroll_port = free_port()
    with running_our_qnetd(
        tmp_path / "qnetd", "on", True, "--enroll-listen", f"127.0.0.1:{enroll_port}"
    ) as qnetd:
        yield qnetd, enroll_port


def enroll(port: int, token: str, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.runtime.enroll", "--server", f"127.0.0.1:{port}",
         "--token", token, "--out", str(out)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.timeout(120)
def test_token_enrollment_gives_a_working_single_use_certificate(
    server: tuple[OurQnetd, int], tmp_path: Path
) -> None:
    """token create -> enroll -> the issued cert completes a qdevice TLS session with an ACK;
    the same token cannot be used twice; the key is private and the p12 is there for NSS."""
    qnetd, enroll_port = server
    created = qnetd.command(
        "token", "create", "--cluster", "alpha", "--ttl", "10m", "--state-dir", str(qnetd.state_dir)
    )
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip().splitlines()[-1]
    assert token.startswith("vmq1.")

    node = tmp_path / "node1"
    first = enroll(enroll_port, token, node)
    assert first.returncode == 0, first.stderr
    assert {p.name for p in node.iterdir()} >= {"ca.pem", "client.pem", "client.key", "client.p12"}
    assert (node / "client.key").stat().st_mode & 0o777 == 0o600

    creds = ClientCredentials(node / "ca.pem", node / "client.pem", node / "client.key")
    transcript = full_walk(qnetd.port, "alpha", creds)
    votes = [m.vote for m in transcript.received() if isinstance(m, VoteInfo)]
    assert votes == [Vote.ACK]
    assert transcript.server_subject == "Qnetd Server"

    again = enroll(enroll_port, token, tmp_path / "node2")
    assert again.returncode != 0
    assert len(again.stderr.strip().splitlines()) == 1, again.stderr  # one line, no traceback
    assert not (tmp_path / "node2" / "client.key").exists()
