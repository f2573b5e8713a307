"""Cross-cluster admission through real TLS servers (issue 7 item 1), ours and Debian's 3.0.3.

One connection: PREINIT(alpha), STARTTLS with alpha's valid certificate, ECHO_REQUEST (a checked
message: the certificate is verified against alpha), PREINIT(beta), INIT. Our qnetd answers the
second PREINIT with SERVER_ERROR 8 and lists the client in alpha only; Debian's corosync-qnetd
3.0.3 answers it with PREINIT_REPLY and lists the client in beta (a deliberate difference,
docs/qnetd.md "Security model").
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from proto.qnetd_enums import ReplyErrorCode, TlsSupported
from proto.qnetd_messages import (
    EchoRequest,
    InitReply,
    Preinit,
    PreinitReply,
    ServerError,
    StartTls,
)
from tests.interop.debian_qnetd import DebianQnetd, missing_reason, running_qnetd
from tests.interop.wire_walk import Transcript, WireClient
from tests.qnetd.core_helpers import init_msg
from tests.qnetd.our_qnetd import OurQnetd, running_our_qnetd

E = ReplyErrorCode


def swap_cluster(server: DebianQnetd | OurQnetd, listing: Callable[[], str]) -> list[object]:
    """The alpha -> beta sequence on one connection; the server's replies, in order, then what
    `listing()` says while the connection is still open."""
    creds = server.client_credentials("alpha")
    client = WireClient(server.port, Transcript())
    try:
        client.send(Preinit(seq=1, cluster_name=b"alpha"))
        replies: list[object] = [client.receive()]
        client.send(StartTls(seq=2))
        client.start_tls(creds)
        client.send(EchoRequest(seq=3))
        replies.append(client.receive())
        client.send(Preinit(seq=4, cluster_name=b"beta"))
        replies.append(client.receive())
        client.send(init_msg(7, seq=5))
        replies.append(client.receive())
        replies.append(listing())
    finally:
        client.close()
    return replies


@pytest.fixture
def ours(tmp_path: Path) -> Iterator[OurQnetd]:
    with running_our_qnetd(tmp_path / "ours") as server:  # the defaults: TLS + certificate
        yield server


def test_ours_keeps_a_certificate_in_its_own_cluster(ours: OurQnetd) -> None:
    """Real TLS, default settings: the second PREINIT is error 8; the INIT lands in alpha."""
    creds = ours.client_credentials("alpha")
    client = WireClient(ours.port, Transcript())
    try:
        client.send(Preinit(seq=1, cluster_name=b"alpha"))
        assert isinstance(client.receive(), PreinitReply)
        client.send(StartTls(seq=2))
        client.start_tls(creds)
        client.send(EchoRequest(seq=3))
        assert client.receive() == ServerError(seq=3, reply_error_code=E.INIT_REQUIRED)
        client.send(Preinit(seq=4, cluster_name=b"beta"))
        assert client.receive() == ServerError(seq=4, reply_error_code=E.UNEXPECTED_MESSAGE)
        client.send(init_msg(7, seq=5))
        reply = client.receive()
        assert isinstance(reply, InitReply)
        assert reply.reply_error_code == E.NO_ERROR
        clusters = {
            c["name"]: [n["node_id"] for n in c["clients"]] for c in ours.status()["clusters"]
        }
        assert clusters == {"alpha": [7]}
    finally:
        client.close()
    assert any(r.get("event") == "preinit refused" for r in ours.log_records())


@pytest.mark.interop
@pytest.mark.root
@pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))
def test_debian_3_0_3_admits_the_certificate_into_another_cluster(tmp_path: Path) -> None:
    """The same sequence against corosync-qnetd 3.0.3 with `-s req -c on`: the second
    PREINIT is answered and the client is listed in beta (what our qnetd refuses on purpose)."""
    with running_qnetd(tmp_path / "debian", tls="req") as debian:
        tool = ["corosync-qnetd-tool", "-l", "-p", str(debian.workdir / "qnetd.sock")]

        def listing() -> str:
            return subprocess.run(
                tool, capture_output=True, text=True, timeout=10, check=True
            ).stdout

        replies = swap_cluster(debian, listing)
        assert isinstance(replies[1], ServerError)
        assert replies[1].reply_error_code == E.INIT_REQUIRED
        assert isinstance(replies[2], PreinitReply)
        assert isinstance(replies[3], InitReply)
        assert replies[3].reply_error_code == E.NO_ERROR
        listed = replies[4]
    assert isinstance(listed, str)
    assert 'Cluster "beta"' in listed, listed
    assert 'Cluster "alpha"' not in listed, listed


def plain_init(port: int, cluster: bytes) -> list[object]:
    """PREINIT then INIT in plain text (no STARTTLS, no certificate): the two replies."""
    client = WireClient(port, Transcript())
    try:
        client.send(Preinit(seq=1, cluster_name=cluster))
        replies: list[object] = [client.receive()]
        client.send(init_msg(3, seq=2))
        replies.append(client.receive())
    finally:
        client.close()
    return replies


def test_ours_refuses_plain_text_clients_by_default(ours: OurQnetd) -> None:
    """Default settings: PREINIT_REPLY announces TLS required + certificate; a plain-text INIT
    gets SERVER_ERROR 3 and no cluster appears. No `insecure admission` warning at start."""
    preinit_reply, init_reply = plain_init(ours.port, b"anycluster")
    assert preinit_reply == PreinitReply(
        seq=1, tls_supported=TlsSupported.REQUIRED, tls_client_cert_required=True
    )
    assert init_reply == ServerError(seq=2, reply_error_code=E.TLS_REQUIRED)
    assert ours.status()["clusters"] == []
    assert not any(r.get("event") == "insecure admission" for r in ours.log_records())


def test_permissive_mode_is_explicit_and_warns(tmp_path: Path) -> None:
    """`--tls on` still admits a plain-text client (corosync's -s on), and says so at start."""
    with running_our_qnetd(tmp_path / "on", "on", True) as server:
        _, init_reply = plain_init(server.port, b"anycluster")
        assert isinstance(init_reply, InitReply)
        assert init_reply.reply_error_code == E.NO_ERROR
        warnings = [r for r in server.log_records() if r.get("event") == "insecure admission"]
        assert len(warnings) == 1
        assert warnings[0]["level"] == "warning"
        assert "plain-text clients may join any cluster" in warnings[0]["problem"]
    help_text = server.command("run", "--help").stdout
    assert "may join ANY cluster" in " ".join(help_text.split())


@pytest.mark.interop
@pytest.mark.root
@pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))
def test_debian_3_0_3_defaults_admit_plain_text_clients(tmp_path: Path) -> None:
    """corosync-qnetd 3.0.3 with its defaults (-s on -c on) lets a plain-text client without a
    certificate join any cluster: what our default refuses on purpose."""
    with running_qnetd(tmp_path / "debian") as debian:
        preinit_reply, init_reply = plain_init(debian.port, b"anycluster")
    assert preinit_reply == PreinitReply(
        seq=1, tls_supported=TlsSupported.SUPPORTED, tls_client_cert_required=True
    )
    assert isinstance(init_reply, InitReply)
    assert init_reply.reply_error_code == E.NO_ERROR
