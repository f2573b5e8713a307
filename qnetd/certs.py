"""The arbitrator's certificates with `cryptography`: CA, server, cluster client certificates.

Owns the certificate files of the state directory (docs/design.md 2.1) and nothing else: no
sockets, no TLS contexts, no logging. Parameters mirror what corosync-qnetd-certutil makes with
NSS (reference 5.3): RSA 2048, sha256WithRSAEncryption, X.509 v3, 1200 months of validity, the CA
`CN=QNet CA` with basicConstraints CA:TRUE pathlen 0 (critical), the server `CN=Qnetd Server`,
serial numbers from a counter that starts at 100 (so the CA is 101, the server 102). On top of NSS
we add subject/authority key identifiers (strict X.509 verifiers want them), keyUsage on the CA,
and a SAN DNS name "Qnetd Server" on the server certificate; NSS's host-name check, which qdevice
uses, matches SAN names first and accepts that one (tests/interop/test_nss_cert_tools.py).

Writes are atomic (temp file + rename), keys are 0600, the directory 0700, and a flock on
`.lock` serialises the CLI and the server process. Existing files are never overwritten unless the
caller says `force`.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from proto import cert_names, certificates
from qnetd import state_files

# The state directory's file helpers live in qnetd/state_files.py (no cryptography import).
DIR_MODE = state_files.DIR_MODE
PRIVATE_MODE = state_files.PRIVATE_MODE
PUBLIC_MODE = state_files.PUBLIC_MODE
CertError = state_files.CertError
StatePaths = state_files.StatePaths
locked = state_files.locked
make_dir = state_files.make_dir
pair_complete = state_files.pair_complete
server_running = state_files.server_running
server_using = state_files.server_using
write_atomic = state_files.write_atomic

# corosync-qnetd-certutil's CA subject, what qdevice expects of the server (net_nss_qnetd_cn) and
# qdevice's net_nss_client_cert_nickname (reference 5.1): one definition in proto/cert_names.py
CA_NAME = cert_names.CA_NAME
SERVER_NAME = cert_names.SERVER_NAME
CLIENT_NICKNAME = cert_names.CLIENT_NICKNAME
KEY_BITS = certificates.KEY_BITS
FIRST_SERIAL = 100  # serial.txt starts at 100; every certificate takes the next number

# Building certificates is shared with the agent's cluster CA: proto/certificates.py.
key_pem = certificates.key_pem
cert_pem = certificates.cert_pem
_name = certificates.name
_rsa_public = certificates.rsa_public
issue = certificates.issue
ca_fingerprint = certificates.ca_fingerprint
common_name = certificates.common_name
make_request = certificates.make_request
parse_request = certificates.parse_request


def make_ca(key: rsa.RSAPrivateKey, serial: int, now: datetime.datetime) -> x509.Certificate:
    """Self-signed `CN=QNet CA`, CA:TRUE pathlen 0 critical, as corosync-qnetd-certutil -i."""
    return certificates.make_ca(key, serial, now, CA_NAME)


@dataclass(frozen=True)
class ServerPki:
    """What the TLS server needs: the CA to trust and the server's own certificate and key."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


@dataclass(frozen=True)
class ClientBundle:
    """Files written for a cluster node by `client_bundle`."""

    ca_pem: Path
    client_pem: Path
    client_key: Path
    client_p12: Path


def load_cert(path: Path) -> x509.Certificate:
    """A PEM or DER certificate from a file, or a one-line CertError."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CertError(f"cannot read certificate {path}: {exc.strerror}") from exc
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise CertError(f"{path} is not a PEM or DER X.509 certificate") from exc


def load_key(path: Path) -> rsa.RSAPrivateKey:
    """An unencrypted RSA private key from a PEM file, or a one-line CertError."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise CertError(f"cannot read private key {path}: {exc.strerror}") from exc
    except (ValueError, TypeError) as exc:
        raise CertError(f"{path} is not an unencrypted PEM private key") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise CertError(f"{path} is not an RSA key (NSS-based qdevice peers expect RSA)")
    return key


def next_serial(paths: StatePaths) -> int:
    """Take the next serial number (caller holds the lock); the file keeps the last one used."""
    try:
        last = int(paths.serial.read_text().strip())
    except FileNotFoundError:
        last = FIRST_SERIAL
    except ValueError as exc:
        raise CertError(
            f"{paths.serial} is corrupt; write the last used serial number in it"
        ) from exc
    write_atomic(paths.serial, f"{last + 1}\n".encode(), PRIVATE_MODE)
    return last + 1


# --- certificates ------------------------------------------------------------------------------


def _utcnow(now: datetime.datetime | None) -> datetime.datetime:
    return now if now is not None else datetime.datetime.now(datetime.UTC)


def new_key() -> rsa.RSAPrivateKey:
    """A fresh RSA key with NSS's default size."""
    return rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)


def check_request_key(csr: x509.CertificateSigningRequest) -> None:
    """CertError for a request whose key `sign_request` would refuse (checked before a token is
    spent)."""
    _rsa_public(csr.public_key())


def _record_issued(paths: StatePaths, cert: x509.Certificate, label: str) -> None:
    make_dir(paths.issued)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
    write_atomic(paths.issued / f"{cert.serial_number}-{safe}.pem", cert_pem(cert), PUBLIC_MODE)


def _create_ca(paths: StatePaths, now: datetime.datetime) -> None:
    key = new_key()
    cert = make_ca(key, next_serial(paths), now)
    write_atomic(paths.ca_key, key_pem(key), PRIVATE_MODE)
    write_atomic(paths.ca_cert, cert_pem(cert), PUBLIC_MODE)
    _record_issued(paths, cert, CA_NAME)


def _create_server(paths: StatePaths, now: datetime.datetime) -> None:
    ca_cert, ca_key = load_cert(paths.ca_cert), load_key(paths.ca_key)
    key = new_key()
    cert = issue(
        ca_cert,
        ca_key,
        _name(SERVER_NAME),
        key.public_key(),
        serial=next_serial(paths),
        now=now,
        dns_names=(SERVER_NAME,),
    )
    write_atomic(paths.server_key, key_pem(key), PRIVATE_MODE)
    write_atomic(paths.server_cert, cert_pem(cert), PUBLIC_MODE)
    _record_issued(paths, cert, SERVER_NAME)


def ensure_state(state_dir: Path, *, now: datetime.datetime | None = None) -> StatePaths:
    """Create the CA and server certificate if missing; never overwrite; fine on an empty dir."""
    paths = StatePaths(state_dir)
    with locked(paths):
        new_ca = not pair_complete(paths.ca_cert, paths.ca_key)
        if new_ca:
            _create_ca(paths, _utcnow(now))
        if new_ca or not pair_complete(paths.server_cert, paths.server_key):
            _create_server(paths, _utcnow(now))  # a server cert of a lost CA is worthless
        _check_chain(paths)
    return paths


def _check_chain(paths: StatePaths) -> None:
    try:
        load_cert(paths.server_cert).verify_directly_issued_by(load_cert(paths.ca_cert))
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise CertError(
            f"{paths.server_cert} is not signed by {paths.ca_cert}; "
            "restore the matching files or run 'certs init --force'"
        ) from exc


def init(state_dir: Path, force: bool, *, now: datetime.datetime | None = None) -> StatePaths:
    """`certs init`: a new CA and server certificate; replaces existing ones only when forced."""
    paths = StatePaths(state_dir)
    with locked(paths):
        existing = [
            p
            for p in (paths.ca_cert, paths.ca_key, paths.server_cert, paths.server_key)
            if p.exists()
        ]
        if existing and not force:
            raise CertError(
                f"{existing[0]} already exists; use --force to replace the CA "
                "(every issued client certificate becomes invalid)"
            )
        _create_ca(paths, _utcnow(now))
        _create_server(paths, _utcnow(now))
    return paths


def load_ca(paths: StatePaths) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """The CA certificate and key of a state directory."""
    if not (paths.ca_cert.exists() and paths.ca_key.exists()):
        raise CertError(f"no CA in {paths.root}; run 'votemesh-qnetd certs init' first")
    return load_cert(paths.ca_cert), load_key(paths.ca_key)


def state_ca_fingerprint(state_dir: Path) -> bytes:
    """SHA-256 fingerprint of the state directory's CA certificate."""
    return ca_fingerprint(load_cert(StatePaths(state_dir).ca_cert))


def check_cluster_name(cluster: str) -> None:
    """CertError when a certificate for `cluster` could pass as the arbitrator's (or match other
    clusters): such a certificate must never be signed (proto/cert_names.py)."""
    problem = cert_names.reserved_cluster_name(cluster)
    if problem is not None:
        raise CertError(f"{problem}; choose another totem.cluster_name")


def sign_request(
    state_dir: Path, csr_bytes: bytes, cluster: str, *, now: datetime.datetime | None = None
) -> x509.Certificate:
    """Sign a cluster's request like `corosync-qnetd-certutil -s`: the CN comes from the request.

    qnetd checks the client certificate's name against the cluster name, so a request whose CN is
    not exactly `cluster` is refused here rather than producing a certificate that cannot work.
    Requested extensions are not copied.
    """
    check_cluster_name(cluster)
    csr = parse_request(csr_bytes)
    cn = common_name(csr.subject)
    if cn != cluster:
        raise CertError(
            f"the request is for CN={cn!r}, not cluster {cluster!r}; "
            f"make it with: corosync-qdevice-net-certutil -r -n {cluster}"
        )
    public_key = _rsa_public(csr.public_key())
    paths = StatePaths(state_dir)
    with locked(paths):
        ca_cert, ca_key = load_ca(paths)
        serial = next_serial(paths)
        cert = issue(ca_cert, ca_key, _name(cluster), public_key, serial=serial, now=_utcnow(now))
        _record_issued(paths, cert, cluster)
    return cert


def p12_bytes(key: rsa.RSAPrivateKey, cert: x509.Certificate) -> bytes:
    """PKCS#12 with friendly name `Cluster Cert` and no password, imported by `pk12util -W ""`."""
    return pkcs12.serialize_key_and_certificates(
        CLIENT_NICKNAME.encode(), key, cert, None, serialization.NoEncryption()
    )


def client_bundle(
    state_dir: Path,
    cluster: str,
    out_dir: Path,
    force: bool,
    *,
    now: datetime.datetime | None = None,
) -> ClientBundle:
    """Write ca.pem, client.pem, client.key, client.p12 for a node of `cluster` to `out_dir`."""
    check_cluster_name(cluster)
    bundle = ClientBundle(
        out_dir / "ca.pem", out_dir / "client.pem", out_dir / "client.key", out_dir / "client.p12"
    )
    refuse_overwrite(bundle, force)
    key = new_key()
    csr = make_request(key, cluster)
    cert = sign_request(state_dir, csr.public_bytes(serialization.Encoding.DER), cluster, now=now)
    ca_pem = StatePaths(state_dir).ca_cert.read_bytes()
    write_bundle(bundle, ca_pem, key, cert)
    return bundle


def refuse_overwrite(bundle: ClientBundle, force: bool) -> None:
    """CertError if any bundle file exists and the caller did not say --force."""
    for path in (bundle.ca_pem, bundle.client_pem, bundle.client_key, bundle.client_p12):
        if path.exists() and not force:
            raise CertError(f"{path} already exists; use --force to replace it")


def write_bundle(
    bundle: ClientBundle, ca_pem: bytes, key: rsa.RSAPrivateKey, cert: x509.Certificate
) -> None:
    """Write the four client files (keys and the PKCS#12 0600)."""
    make_dir(bundle.client_key.parent)
    write_atomic(bundle.client_key, key_pem(key), PRIVATE_MODE)
    write_atomic(bundle.client_p12, p12_bytes(key, cert), PRIVATE_MODE)
    write_atomic(bundle.client_pem, cert_pem(cert), PUBLIC_MODE)
    write_atomic(bundle.ca_pem, ca_pem, PUBLIC_MODE)


# --- operator-provided PKI ---------------------------------------------------------------------


def has_server_name(cert: x509.Certificate) -> bool:
    """True when qdevice would accept `cert` as `Qnetd Server` (case-insensitive, SAN else CN)."""
    return any(cert_names.is_server_name(n) for n in cert_names.names_of(cert))


def load_operator_pki(ca: Path, cert: Path, key: Path) -> ServerPki:
    """Validate --ca-cert/--server-cert/--server-key: chain, name `Qnetd Server`, matching key."""
    ca_cert, server_cert, server_key = load_cert(ca), load_cert(cert), load_key(key)
    try:
        server_cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise CertError(
            f"{cert} is not signed by the CA in {ca}; pass the CA that issued it"
        ) from exc
    if not has_server_name(server_cert):
        raise CertError(
            f"{cert} is not named 'Qnetd Server' (CN, or a SAN DNS name); qdevice would refuse it"
        )
    if (
        server_key.public_key().public_numbers()
        != _rsa_public(server_cert.public_key()).public_numbers()
    ):
        raise CertError(f"{key} is not the private key of {cert}")
    return ServerPki(ca, cert, key)


def state_pki(paths: StatePaths) -> ServerPki:
    """The CA and server files of a state directory, as the TLS server loads them."""
    return ServerPki(paths.ca_cert, paths.server_cert, paths.server_key)
