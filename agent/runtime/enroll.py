"""Node side of enrollment: trade a one-time token for the cluster's client certificate.

    python -m agent.runtime.enroll --server HOST[:PORT] --token vmq1.... --out DIR [--force]

1. Fetch the CA over TLS without verifying and without sending anything secret, and refuse unless
   its SHA-256 equals the fingerprint inside the token (no trust on first use).
2. Open a new TLS connection that verifies the server against that CA, and check its certificate is
   named `Qnetd Server` ourselves (SAN DNS names, else the CN, case-insensitive, as NSS does: the
   space in the name defeats Python's host-name check).
3. Only then send the token and a PKCS#10 request made here; the private key never leaves the node.
4. Check the answer (our public key, signed by that CA, CN = cluster) and write ca.pem, client.pem,
   client.key (0600) and client.p12 (0600, no password, friendly name `Cluster Cert`, ready for
   `corosync-qdevice-net-certutil -m -c client.p12`).

Adapter ring: blocking sockets are fine for a one-shot command. Never imports `qnetd`.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import socket
import ssl
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from proto import cert_names
from proto.enrollment import (
    CA_PATH,
    DEFAULT_ENROLL_PORT,
    ENROLL_PATH,
    EnrollRequest,
    EnrollResponse,
    ErrorResponse,
    Token,
)
from proto.errors import DecodeError
from proto.host_port import parse_host_port

SERVER_NAME = cert_names.SERVER_NAME  # what qdevice expects of qnetd (reference 5.1)
CLIENT_NICKNAME = cert_names.CLIENT_NICKNAME  # qdevice's default client certificate nickname
KEY_BITS = 2048
TIMEOUT = 15.0
MAX_RESPONSE_BYTES = 65536


class EnrollError(Exception):
    """Enrollment failed; the message is one line that says what to do."""


@dataclass(frozen=True)
class EnrolledFiles:
    """What `enroll` wrote."""

    ca_pem: Path
    client_pem: Path
    client_key: Path
    client_p12: Path


# --- HTTP over TLS -----------------------------------------------------------------------------


def _exchange(
    server: str, port: int, context: ssl.SSLContext, request: bytes | None, check_name: bool
) -> tuple[int, bytes]:
    """Connect, optionally check the server's name, send `request`, return (status, body)."""
    try:
        with (
            socket.create_connection((server, port), TIMEOUT) as raw,
            context.wrap_socket(raw, server_hostname=None) as tls,
        ):
            if check_name:
                check_server_name(tls.getpeercert(binary_form=True))
            if request is None:
                return 0, b""
            tls.sendall(request)
            return _parse_response(_read_all(tls))
    except ssl.SSLCertVerificationError as exc:
        raise EnrollError(
            f"{server}:{port}: server certificate not signed by the CA: {exc}"
        ) from exc
    except (OSError, ssl.SSLError) as exc:
        raise EnrollError(f"cannot talk to {server}:{port}: {exc}") from exc


def _read_all(tls: ssl.SSLSocket) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := tls.recv(16384):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise EnrollError("response too large; is this a votemesh-qnetd enrollment port?")
    return b"".join(chunks)


def _parse_response(data: bytes) -> tuple[int, bytes]:
    head, sep, body = data.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split(b" ")
    if (
        not sep
        or len(status) < 2
        or not status[0].startswith(b"HTTP/1.")
        or not status[1].isdigit()
    ):
        raise EnrollError("not an HTTP answer; is this a votemesh-qnetd enrollment port?")
    return int(status[1]), body


def _http(method: str, path: str, body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: qnetd\r\nConnection: close\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def _refusal(status: int, body: bytes) -> EnrollError:
    try:
        error = ErrorResponse.from_json(body)
    except DecodeError:
        return EnrollError(f"server answered HTTP {status}")
    return EnrollError(f"server refused ({error.error}): {error.message}")


# --- checks ------------------------------------------------------------------------------------


def check_server_name(der: bytes | None) -> None:
    """Refuse a server whose certificate is not named `Qnetd Server`."""
    if der is None:
        raise EnrollError("server sent no certificate")
    names = cert_names.names_of(x509.load_der_x509_certificate(der))
    if not any(cert_names.is_server_name(n) for n in names):
        raise EnrollError(f"server certificate is named {names}, not {SERVER_NAME!r}; refusing")


def check_fingerprint(ca_pem: bytes, expected: bytes) -> x509.Certificate:
    """The CA the server offered, if its SHA-256 is the token's; EnrollError otherwise."""
    try:
        ca = x509.load_pem_x509_certificate(ca_pem)
    except ValueError as exc:
        raise EnrollError("server did not send a PEM CA certificate") from exc
    actual = hashlib.sha256(ca.public_bytes(serialization.Encoding.DER)).digest()
    if not hmac.compare_digest(actual, expected):
        raise EnrollError(
            f"CA fingerprint {actual.hex()[:16]}... is not the token's {expected.hex()[:16]}...; "
            "wrong server, or someone in between: not sending the token"
        )
    return ca


def check_issued(
    answer: EnrollResponse, ca: x509.Certificate, key: rsa.RSAPrivateKey
) -> x509.Certificate:
    """The certificate must carry our public key and be signed by the verified CA."""
    try:
        cert = x509.load_pem_x509_certificate(answer.certificate.encode())
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise EnrollError("server returned a certificate not signed by the CA") from exc
    if cert.public_key() != key.public_key():
        raise EnrollError("server returned a certificate for another key")
    return cert


# --- files -------------------------------------------------------------------------------------


def _write(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _files(out_dir: Path) -> EnrolledFiles:
    return EnrolledFiles(
        out_dir / "ca.pem", out_dir / "client.pem", out_dir / "client.key", out_dir / "client.p12"
    )


def _write_files(
    files: EnrolledFiles, ca: x509.Certificate, key: rsa.RSAPrivateKey, cert: x509.Certificate
) -> None:
    files.client_key.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    p12 = pkcs12.serialize_key_and_certificates(
        CLIENT_NICKNAME.encode(), key, cert, None, serialization.NoEncryption()
    )
    _write(files.client_key, key_pem, 0o600)
    _write(files.client_p12, p12, 0o600)
    _write(files.client_pem, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(files.ca_pem, ca.public_bytes(serialization.Encoding.PEM), 0o644)


# --- the procedure -----------------------------------------------------------------------------


def enroll(server: str, port: int, token: str, out_dir: Path, force: bool = False) -> EnrolledFiles:
    """Fetch and pin the CA, verify the server, send token + CSR, write the client files."""
    try:
        parsed = Token.parse(token)
    except DecodeError as exc:
        raise EnrollError(
            f"malformed token ({exc.detail}); copy it again from 'token create'"
        ) from exc
    problem = cert_names.reserved_cluster_name(parsed.cluster)
    if problem is not None:  # its certificate could pass as the arbitrator's: never ask for one
        raise EnrollError(f"token refused: cluster {problem}")
    files = _files(out_dir)
    for path in (files.ca_pem, files.client_pem, files.client_key, files.client_p12):
        if path.exists() and not force:
            raise EnrollError(f"{path} already exists; use --force to replace it")

    pinning = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    pinning.check_hostname = False
    pinning.verify_mode = ssl.CERT_NONE  # nothing secret is sent; the answer is checked below
    status, body = _exchange(server, port, pinning, _http("GET", CA_PATH), check_name=False)
    if status != 200:
        raise _refusal(status, body)
    ca = check_fingerprint(body, parsed.ca_sha256)

    verified = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    verified.check_hostname = False  # "Qnetd Server" is checked by check_server_name
    verified.verify_mode = ssl.CERT_REQUIRED
    verified.load_verify_locations(cadata=ca.public_bytes(serialization.Encoding.PEM).decode())
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, parsed.cluster)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    request = EnrollRequest(token, csr.public_bytes(serialization.Encoding.PEM).decode())
    status, body = _exchange(
        server, port, verified, _http("POST", ENROLL_PATH, request.to_json()), check_name=True
    )
    if status != 200:
        raise _refusal(status, body)
    try:
        answer = EnrollResponse.from_json(body)
    except DecodeError as exc:
        raise EnrollError(f"unexpected answer from the server: {exc.detail}") from exc
    cert = check_issued(answer, ca, key)
    _write_files(files, ca, key, cert)
    return files


def split_server(text: str) -> tuple[str, int]:
    """HOST, HOST:PORT, [V6], [V6]:PORT or a bare IPv6 address -> (host, port); default port
    5404 (the rule of proto/host_port.py). ValueError says what is wrong."""
    return parse_host_port(text, DEFAULT_ENROLL_PORT)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line; exit 0 on success, 2 with a one-line message on failure."""
    parser = argparse.ArgumentParser(prog="python -m agent.runtime.enroll", description=__doc__)
    parser.add_argument("--server", required=True, help="HOST[:PORT] of votemesh-qnetd (5404)")
    parser.add_argument("--token", required=True, help="from 'votemesh-qnetd token create'")
    parser.add_argument("--out", required=True, type=Path, help="directory for the client files")
    parser.add_argument("--force", action="store_true", help="replace existing files")
    args = parser.parse_args(argv)
    try:
        host, port = split_server(args.server)
    except ValueError as exc:
        print(
            f"enroll: bad --server {args.server!r}: {exc}; use HOST[:PORT] or [IPV6]:PORT "
            "with a port 1-65535",
            file=sys.stderr,
        )
        return 2
    try:
        files = enroll(host, port, args.token, args.out, args.force)
    except EnrollError as exc:
        print(f"enroll: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {files.ca_pem}, {files.client_pem}, {files.client_key}, {files.client_p12}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
