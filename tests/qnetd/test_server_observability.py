"""What operators see: /healthz, /metrics and the JSON status under real traffic; own PKI."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from proto.qnetd_enums import Vote
from proto.qnetd_messages import VoteInfo
from qnetd import certs
from tests.interop.debian_qnetd import ClientCredentials
from tests.interop.wire_walk import full_walk
from tests.qnetd.our_qnetd import running_our_qnetd


def get(port: int, path: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return int(response.status), bytes(response.read())


def metric(text: str, name: str) -> float:
    """Value of one sample line `name value` (labels included in `name`)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in metrics")


@pytest.mark.timeout(60)
def test_health_metrics_and_status_follow_a_session(tmp_path: Path) -> None:
    """After one qdevice session: /healthz is ok, /metrics counts the connection, the votes sent,
    the decision and a decode error; `status --json` shows the cluster with its vote."""
    with running_our_qnetd(tmp_path / "q") as server:
        status, body = get(server.http_port, "/healthz")
        assert status == 200
        assert json.loads(body)["status"] == "ok"
        transcript = full_walk(server.port, "obs", server.client_credentials("obs"))
        assert [m.vote for m in transcript.received() if isinstance(m, VoteInfo)] == [Vote.ACK]
        _, raw = get(server.http_port, "/metrics")
        text = raw.decode()
        assert metric(text, "votemesh_qnetd_connections_accepted_total") >= 2
        assert metric(text, 'votemesh_qnetd_votes_sent_total{vote="ACK"}') == 1
        assert metric(text, "votemesh_qnetd_decisions_total") >= 1
        assert metric(text, 'votemesh_qnetd_connections_closed_total{reason="peer_closed"}') >= 1
        cli = server.command("status", "--json", "--control-socket", str(server.control_socket))
        assert cli.returncode == 0, cli.stderr
        snap = json.loads(cli.stdout)
        assert snap["connected_clients"] == 0  # the walk has disconnected again
        text_status = server.command("status", "-v", "--control-socket", str(server.control_socket))
        assert "TLS:\t\t\t\tRequired (client certificate required)" in text_status.stdout
        status, _ = get(server.http_port, "/metrics")
        assert status == 200


@pytest.mark.timeout(60)
def test_operator_pki_is_used_and_no_ca_is_created(tmp_path: Path) -> None:
    """With --ca-cert/--server-cert/--server-key the server uses the operator's PKI: a client
    certificate from that CA works, and the state directory gets no CA of its own."""
    operator = certs.init(tmp_path / "operator-pki", force=False)
    bundle = certs.client_bundle(tmp_path / "operator-pki", "opc", tmp_path / "client", False)
    pki = [
        "--ca-cert", str(operator.ca_cert),
        "--server-cert", str(operator.server_cert),
        "--server-key", str(operator.server_key),
    ]  # fmt: skip
    with running_our_qnetd(tmp_path / "q", "on", True, *pki) as server:
        creds = ClientCredentials(bundle.ca_pem, bundle.client_pem, bundle.client_key)
        transcript = full_walk(server.port, "opc", creds)
        assert [m.vote for m in transcript.received() if isinstance(m, VoteInfo)] == [Vote.ACK]
        assert not (server.state_dir / "ca.key").exists()
