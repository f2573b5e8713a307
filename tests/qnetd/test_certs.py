"""qnetd/certs.py and the `certs` CLI: NSS parameters, safe first start, no silent overwrite."""

from __future__ import annotations

import datetime
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from proto import cert_names
from qnetd import certs
from qnetd.cli import main
from qnetd.peer_names import PeerNames, matches_cluster

CLUSTER = "testcluster"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _csr(cn: str, key: rsa.RSAPrivateKey | None = None) -> bytes:
    key = key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> certs.StatePaths:
    return certs.ensure_state(tmp_path_factory.mktemp("st") / "state")


def test_empty_dir_gets_ca_and_server_with_nss_parameters(state: certs.StatePaths) -> None:
    """CA: CN=QNet CA, CA:TRUE pathlen 0 critical; server: CN + SAN `Qnetd Server`; RSA 2048,
    sha256WithRSA, v3, ~1200 months, serials 101 and 102 like corosync-qnetd-certutil."""
    ca = certs.load_cert(state.ca_cert)
    server = certs.load_cert(state.server_cert)
    assert certs.common_name(ca.subject) == "QNet CA"
    assert ca.subject == ca.issuer
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical
    assert (bc.value.ca, bc.value.path_length) == (True, 0)
    assert certs.common_name(server.subject) == "Qnetd Server"
    assert server.issuer == ca.subject
    assert cert_names.names_of(server) == ["Qnetd Server"]
    for cert in (ca, server):
        assert cert.version is x509.Version.v3
        assert cert.signature_hash_algorithm is not None
        assert cert.signature_hash_algorithm.name == "sha256"
        key = cert.public_key()
        assert isinstance(key, rsa.RSAPublicKey)
        assert key.key_size == 2048
        years = (cert.not_valid_after_utc - cert.not_valid_before_utc).days / 365.25
        assert 99.9 < years < 100.1
    assert (ca.serial_number, server.serial_number) == (101, 102)
    server.verify_directly_issued_by(ca)


def test_state_dir_modes(state: certs.StatePaths) -> None:
    """Directory and issued/ 0700, private keys and serial 0600, certificates 0644."""
    assert _mode(state.root) == 0o700
    assert _mode(state.issued) == 0o700
    assert _mode(state.ca_key) == _mode(state.server_key) == _mode(state.serial) == 0o600
    assert _mode(state.ca_cert) == _mode(state.server_cert) == 0o644


def test_ensure_state_never_overwrites(state: certs.StatePaths) -> None:
    """A second ensure_state (every `run`) leaves the CA and server files byte-identical."""
    before = {p: p.read_bytes() for p in (state.ca_cert, state.ca_key, state.server_cert)}
    certs.ensure_state(state.root)
    assert {p: p.read_bytes() for p in before} == before


def test_orphan_key_from_an_interrupted_start_is_replaced(tmp_path: Path) -> None:
    """A key without its certificate (crash between the writes) does not crash-loop the start."""
    paths = certs.ensure_state(tmp_path / "s")
    paths.server_cert.unlink()
    certs.ensure_state(paths.root)
    server = certs.load_cert(paths.server_cert)
    assert server.public_key() == certs.load_key(paths.server_key).public_key()


def test_certificate_without_key_is_a_clear_error(tmp_path: Path) -> None:
    """A certificate whose key is gone cannot be repaired silently: one-line CertError."""
    paths = certs.ensure_state(tmp_path / "s")
    paths.ca_key.unlink()
    with pytest.raises(certs.CertError, match=r"ca\.key is missing"):
        certs.ensure_state(paths.root)


def test_init_refuses_without_force_and_replaces_with_it(state: certs.StatePaths) -> None:
    """`certs init` on an existing CA fails without force (the existing CA is kept)."""
    with pytest.raises(certs.CertError, match="--force"):
        certs.init(state.root, force=False)


def test_init_force_makes_a_new_ca(tmp_path: Path) -> None:
    """With force the CA key and certificate are new and the server cert chains to the new CA."""
    paths = certs.init(tmp_path / "s", force=False)
    old = paths.ca_cert.read_bytes()
    certs.init(paths.root, force=True)
    assert paths.ca_cert.read_bytes() != old
    certs.load_cert(paths.server_cert).verify_directly_issued_by(certs.load_cert(paths.ca_cert))


@pytest.mark.parametrize("encoding", [serialization.Encoding.DER, serialization.Encoding.PEM])
def test_sign_request_keeps_key_and_cn_and_records_issued(
    state: certs.StatePaths, encoding: serialization.Encoding
) -> None:
    """The request's key and CN end up in a CA-signed cert; the serial advances; issued/ has it."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = _csr(CLUSTER, key)
    request = der if encoding is serialization.Encoding.DER else _pem_csr(der)
    serial_before = int(state.serial.read_text())
    cert = certs.sign_request(state.root, request, CLUSTER)
    assert cert.public_key() == key.public_key()
    assert certs.common_name(cert.subject) == CLUSTER
    assert cert.serial_number == serial_before + 1
    cert.verify_directly_issued_by(certs.load_cert(state.ca_cert))
    assert (state.issued / f"{cert.serial_number}-{CLUSTER}.pem").exists()


def _pem_csr(der: bytes) -> bytes:
    return x509.load_der_x509_csr(der).public_bytes(serialization.Encoding.PEM)


def test_sign_request_refuses_wrong_cn(state: certs.StatePaths) -> None:
    """A request for another name would be rejected by qnetd later, so it is refused now."""
    with pytest.raises(certs.CertError, match="not cluster 'testcluster'"):
        certs.sign_request(state.root, _csr("othercluster"), CLUSTER)


def test_sign_request_refuses_garbage_and_forged_requests(state: certs.StatePaths) -> None:
    """Non-PKCS#10 bytes and a request whose signature does not verify are refused."""
    with pytest.raises(certs.CertError, match="PKCS#10"):
        certs.sign_request(state.root, b"hello", CLUSTER)
    der = bytearray(_csr(CLUSTER))
    der[-5] ^= 0xFF  # inside the signature
    with pytest.raises(certs.CertError, match="signature"):
        certs.sign_request(state.root, bytes(der), CLUSTER)


def test_client_bundle_files_modes_and_p12(state: certs.StatePaths, tmp_path: Path) -> None:
    """ca.pem, client.pem, client.key 0600 and client.p12 0600 named `Cluster Cert`, no password."""
    bundle = certs.client_bundle(state.root, CLUSTER, tmp_path / "out", force=False)
    assert _mode(bundle.client_key) == _mode(bundle.client_p12) == 0o600
    assert bundle.ca_pem.read_bytes() == state.ca_cert.read_bytes()
    p12 = pkcs12.load_pkcs12(bundle.client_p12.read_bytes(), None)
    assert p12.cert is not None
    assert p12.cert.friendly_name == b"Cluster Cert"
    assert p12.key is not None
    assert p12.cert.certificate == certs.load_cert(bundle.client_pem)
    assert certs.common_name(p12.cert.certificate.subject) == CLUSTER
    with pytest.raises(certs.CertError, match="--force"):
        certs.client_bundle(state.root, CLUSTER, tmp_path / "out", force=False)
    certs.client_bundle(state.root, CLUSTER, tmp_path / "out", force=True)


def test_fingerprint_is_sha256_of_der(state: certs.StatePaths) -> None:
    """The token fingerprint is SHA-256 over the CA certificate's DER."""
    ca = certs.load_cert(state.ca_cert)
    assert certs.state_ca_fingerprint(state.root) == ca.fingerprint(hashes.SHA256())


def _self_signed(cn: str, tmp: Path, san: str | None = None) -> tuple[Path, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.datetime.now(datetime.UTC)
    cert = certs.issue(
        certs.make_ca(key, 1, now),
        key,
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]),
        key.public_key(),
        serial=2,
        now=now,
        dns_names=(san,) if san else (),
    )
    cert_path, key_path = tmp / f"{cn}.pem", tmp / f"{cn}.key"
    cert_path.write_bytes(certs.cert_pem(cert))
    key_path.write_bytes(certs.key_pem(key))
    return cert_path, key_path


def test_operator_pki_accepts_state_files(state: certs.StatePaths) -> None:
    """Our own state files pass the operator-PKI validation."""
    pki = certs.load_operator_pki(state.ca_cert, state.server_cert, state.server_key)
    assert pki.server_cert == state.server_cert


def test_operator_pki_refusals(state: certs.StatePaths, tmp_path: Path) -> None:
    """Wrong CA, wrong name, or a key of another certificate: each a one-line CertError."""
    other_ca, _ = _self_signed("Qnetd Server", tmp_path)
    with pytest.raises(certs.CertError, match="not signed by the CA"):
        certs.load_operator_pki(other_ca, state.server_cert, state.server_key)
    cert_path = tmp_path / "client.pem"
    cert_path.write_bytes(certs.cert_pem(certs.sign_request(state.root, _csr(CLUSTER), CLUSTER)))
    with pytest.raises(certs.CertError, match="not named 'Qnetd Server'"):
        certs.load_operator_pki(state.ca_cert, cert_path, state.server_key)
    with pytest.raises(certs.CertError, match="not the private key"):
        certs.load_operator_pki(state.ca_cert, state.server_cert, state.ca_key)
    ec_key = tmp_path / "ec.key"
    ec_key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(certs.CertError, match="not an RSA key"):
        certs.load_operator_pki(state.ca_cert, state.server_cert, ec_key)


def test_server_name_rules_follow_nss() -> None:
    """SAN DNS names win over the CN; matching is case-insensitive."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.datetime.now(datetime.UTC)
    ca = certs.make_ca(key, 1, now)

    def cert(cn: str, san: tuple[str, ...]) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        return certs.issue(ca, key, name, key.public_key(), serial=2, now=now, dns_names=san)

    assert certs.has_server_name(cert("qnetd server", ()))
    assert not certs.has_server_name(cert("Qnetd Server", ("other.example",)))
    assert certs.has_server_name(cert("x", ("QNETD SERVER",)))


def test_signed_certificate_verifies_with_ca_key(state: certs.StatePaths) -> None:
    """The CA signature is sha256WithRSA PKCS#1 v1.5 over the TBS bytes (what NSS verifies)."""
    cert = certs.sign_request(state.root, _csr(CLUSTER), CLUSTER)
    ca_key = certs.load_cert(state.ca_cert).public_key()
    assert isinstance(ca_key, rsa.RSAPublicKey)
    ca_key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), hashes.SHA256())


# --- CLI ---------------------------------------------------------------------------------------


def test_cli_init_sign_client(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`certs init`, `certs sign` (DER by default, PEM for .pem) and `certs client` exit 0."""
    sd = str(tmp_path / "s")
    assert main(["certs", "init", "--state-dir", sd]) == 0
    request = tmp_path / "req.crq"
    request.write_bytes(_csr(CLUSTER))
    der_out, pem_out = tmp_path / "c.crt", tmp_path / "c.pem"
    args = ["certs", "sign", str(request), "--cluster", CLUSTER, "--state-dir", sd, "--out"]
    assert main([*args, str(der_out)]) == 0
    assert main([*args, str(pem_out)]) == 0
    x509.load_der_x509_certificate(der_out.read_bytes())
    x509.load_pem_x509_certificate(pem_out.read_bytes())
    out = tmp_path / "node"
    assert (
        main(["certs", "client", "--cluster", CLUSTER, "--out", str(out), "--state-dir", sd]) == 0
    )
    assert (out / "client.p12").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["certs", "init"], "already exists; use --force"),
        (["certs", "sign", "{tmp}/missing.crq", "--cluster", CLUSTER], "cannot read"),
        (["certs", "sign", "{tmp}/other.crq", "--cluster", CLUSTER], "not cluster"),
        (["certs", "client", "--cluster", CLUSTER, "--out", "{tmp}/node"], "--force"),
    ],
)
def test_cli_user_mistakes_are_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    """Each user mistake prints one line naming the fix and exits 2, never a traceback."""
    sd = str(tmp_path / "s")
    assert main(["certs", "init", "--state-dir", sd]) == 0
    (tmp_path / "other.crq").write_bytes(_csr("other"))
    assert (
        main(
            [
                "certs",
                "client",
                "--cluster",
                CLUSTER,
                "--out",
                f"{tmp_path}/node",
                "--state-dir",
                sd,
            ]
        )
        == 0
    )
    capsys.readouterr()
    full = [a.format(tmp=tmp_path) for a in argv] + ["--state-dir", sd]
    assert main(full) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1
    assert "Traceback" not in err


def test_concurrent_first_starts_make_one_ca(tmp_path: Path) -> None:
    """CLI and server starting together on an empty dir: one CA, one server cert (flock)."""
    results: list[bytes] = []

    def start() -> None:
        paths = certs.ensure_state(tmp_path / "s")
        results.append(paths.ca_cert.read_bytes())

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1
    assert (tmp_path / "s" / "serial").read_text().strip() == "102"
    assert len(list((tmp_path / "s" / "issued").iterdir())) == 2


def test_lost_ca_gets_a_new_server_cert_too(tmp_path: Path) -> None:
    """If the CA pair is gone, the next start makes a new CA and a server cert under it."""
    paths = certs.ensure_state(tmp_path / "s")
    paths.ca_cert.unlink()
    paths.ca_key.unlink()
    certs.ensure_state(paths.root)
    certs.load_cert(paths.server_cert).verify_directly_issued_by(certs.load_cert(paths.ca_cert))


def test_server_cert_of_another_ca_is_a_clear_error(tmp_path: Path) -> None:
    """A server certificate that does not chain to the state CA stops the start with a fix."""
    paths = certs.ensure_state(tmp_path / "a")
    other = certs.ensure_state(tmp_path / "b")
    paths.server_cert.write_bytes(other.server_cert.read_bytes())
    with pytest.raises(certs.CertError, match="is not signed by"):
        certs.ensure_state(paths.root)


def test_host_names_follow_nss() -> None:
    """SAN extension present: its DNS entries only, even none; absent: the last CN."""
    assert cert_names.host_names(["a", "b"], None) == ["b"]
    assert cert_names.host_names([], None) == []
    assert cert_names.host_names(["alpha"], []) == []  # a SAN of IP addresses alone
    assert cert_names.host_names(["alpha"], ["x", "y"]) == ["x", "y"]


def test_matches_cluster_ignores_the_cn_under_any_san() -> None:
    """qnetd's cluster check uses the same rule (it fell back to the CN for a SAN with no DNS)."""
    assert matches_cluster(PeerNames(("alpha",)), b"alpha")
    assert not matches_cluster(PeerNames(("alpha",), ()), b"alpha")
    assert matches_cluster(PeerNames(("other",), ("ALPHA",)), b"alpha")
    assert not matches_cluster(PeerNames(("alpha", "other")), b"alpha")  # the last CN
