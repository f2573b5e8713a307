"""Cross-cluster admission through real TLS servers (issue 7 item 1), ours and Debian's 3.0.3.

One connection: PREINIT(alpha), STARTTLS with alpha's valid certificate, ECHO_REQUEST (a checked
message: the certificate is verified against alpha), PREINIT(beta), INIT. Our qnetd answers the
second PREINIT with SERVER_ERROR 8 and lists the client in alpha only; Debian's corosync-qnetd
3.0.3 answers it with PREINIT_REPLY and lists the client in beta (a deliberate difference,
docs/qnetd.md "Security model").
"""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from proto.qnetd_enums import ReplyErrorCode, TlsSupported
from proto.qnetd_messages import (
    EchoRequest,
    InitReply,
    Preinit,
    PreinitReply,
    ServerError,
    StartTls,
)
from qnetd.state_files import StatePaths
from tests.interop.debian_qnetd import ClientCredentials, DebianQnetd, missing_reason, running_qnetd
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


def _crafted_credentials(
    server: OurQnetd, tmp: Path, cn: str, san: list[x509.GeneralName] | None
) -> ClientCredentials:
    """A client certificate signed by the server's CA, made here with `cryptography`: subject
    CN=`cn`, and a subjectAltName extension with `san` (none at all when None)."""
    state = StatePaths(server.state_dir)
    ca = x509.load_pem_x509_certificate(state.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(state.ca_key.read_bytes(), None)
    assert isinstance(ca_key, rsa.RSAPrivateKey)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if san is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    name = f"{cn}-{len(san) if san is not None else 'none'}-{tmp.name}"
    cert_pem, key_pem = tmp / f"{name}.pem", tmp / f"{name}.key"
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ClientCredentials(state.ca_cert, cert_pem, key_pem)


def _init_with(server: OurQnetd, creds: ClientCredentials, cluster: bytes) -> object:
    """PREINIT(cluster), STARTTLS, TLS with `creds`, INIT: the reply, or 'closed'."""
    client = WireClient(server.port, Transcript())
    try:
        client.send(Preinit(seq=1, cluster_name=cluster))
        assert isinstance(client.receive(), PreinitReply)
        client.send(StartTls(seq=2))
        client.start_tls(creds)
        client.send(init_msg(7, seq=3))
        try:
            return client.receive()
        except OSError:
            return "closed"
    finally:
        client.close()


@pytest.mark.parametrize(
    ("cn", "san", "admitted"),
    [
        ("alpha", None, True),  # no SAN extension: the CN names the cluster
        ("alpha", [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))], False),  # SAN, no DNS
        ("alpha", [x509.RFC822Name("ops@example.org")], False),
        ("alpha", [x509.DNSName("other")], False),
        ("other", [x509.DNSName("alpha")], True),
    ],
)
def test_the_cn_counts_only_without_a_san_extension(
    ours: OurQnetd, tmp_path: Path, cn: str, san: list[x509.GeneralName] | None, admitted: bool
) -> None:
    """Like NSS (CERT_VerifyCertName), qnetd reads the CN only when the client certificate has no
    subjectAltName extension at all: CN=alpha with a SAN of an IP address or an e-mail address
    alone does not name cluster alpha (it used to fall back to the CN)."""
    reply = _init_with(ours, _crafted_credentials(ours, tmp_path, cn, san), b"alpha")
    if admitted:
        assert isinstance(reply, InitReply)
        assert reply.reply_error_code == E.NO_ERROR
    else:
        assert reply == "closed"
        assert not any(c["clients"] for c in ours.status()["clusters"])
