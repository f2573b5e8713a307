"""Run Debian's corosync-qnetd on 127.0.0.1 in a throwaway directory, for compatibility tests.

The corosync-*-certutil scripts hard-code /etc/corosync/qnetd, so they run in a private mount
namespace with a temporary directory bind-mounted there (root only); the host's files are never
touched. The daemon itself takes its NSS, lock and socket paths from -S options.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

QNETD = "corosync-qnetd"
CERTUTIL = "corosync-qnetd-certutil"
QNETD_CONFIG_DIR = "/etc/corosync/qnetd"


def missing_reason() -> str | None:
    """Why the Debian qnetd cannot run here, or None if it can."""
    for tool in (QNETD, CERTUTIL, "certutil", "unshare"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt-get install corosync-qnetd libnss3-tools)"
    if os.geteuid() != 0:
        return "needs root: corosync-qnetd-certutil must run in a private mount namespace"
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _in_private_etc(config_dir: Path, command: str) -> None:
    script = f'mount --bind "{config_dir}" {QNETD_CONFIG_DIR} && {command}'
    subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "bash", "-c", script],
        check=True,
        capture_output=True,
        timeout=60,
    )


@dataclass
class ClientCredentials:
    """PEM files a qdevice-side TLS client presents, signed by the qnetd CA."""

    ca_pem: Path
    cert_pem: Path
    key_pem: Path


class DebianQnetd:
    """One corosync-qnetd process and its NSS database in `workdir`."""

    def __init__(self, workdir: Path, tls: str = "on", client_cert_required: bool = True) -> None:
        self.workdir = workdir
        self.config_dir = workdir / "etc-qnetd"
        self.nssdb = self.config_dir / "nssdb"
        self.tls = tls
        self.client_cert_required = client_cert_required
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "qnetd.log"

    def init_ca(self) -> None:
        """corosync-qnetd-certutil -i: the CA 'QNet CA' and server cert 'QNetd Cert'."""
        self.config_dir.mkdir(parents=True, exist_ok=True)
        _in_private_etc(self.config_dir, f"{CERTUTIL} -i -G")

    def ca_pem(self) -> bytes:
        """The CA certificate PEM block from the exported qnetd-cacert.crt listing."""
        text = (self.nssdb / "qnetd-cacert.crt").read_text()
        return text[text.index("-----BEGIN CERTIFICATE-----") :].encode()

    def sign_request(self, csr_der: bytes, cluster: str) -> bytes:
        """corosync-qnetd-certutil -s: sign a DER request; returns the DER certificate."""
        request = self.workdir / f"{cluster}.crq"
        request.write_bytes(csr_der)
        _in_private_etc(self.config_dir, f'{CERTUTIL} -s -c "{request}" -n "{cluster}"')
        return (self.nssdb / f"cluster-{cluster}.crt").read_bytes()

    def client_credentials(self, cluster: str, common_name: str | None = None) -> ClientCredentials:
        """A client key and a certificate for CN=`common_name` (default: the cluster name)."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name or cluster)])
        csr = (
            x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
        )
        cert = x509.load_der_x509_certificate(
            self.sign_request(csr.public_bytes(serialization.Encoding.DER), cluster)
        )
        creds = ClientCredentials(
            self.workdir / "ca.pem",
            self.workdir / f"{cluster}.pem",
            self.workdir / f"{cluster}.key",
        )
        creds.ca_pem.write_bytes(self.ca_pem())
        creds.cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        creds.key_pem.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        creds.key_pem.chmod(0o600)
        return creds

    def start(self) -> None:
        """Start the daemon in the foreground mode and wait until it accepts connections."""
        options = ",".join(
            [
                f"nss_db_dir={self.nssdb}",
                f"lock_file={self.workdir / 'qnetd.pid'}",
                f"local_socket_file={self.workdir / 'qnetd.sock'}",
            ]
        )
        args = [QNETD, "-f", "-l", "127.0.0.1", "-p", str(self.port), "-s", self.tls]
        args += ["-c", "on" if self.client_cert_required else "off", "-S", options]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"corosync-qnetd exited: {self.log_path.read_text()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                return
            time.sleep(0.05)
        raise RuntimeError("corosync-qnetd did not start listening within 15 s")

    def stop(self) -> None:
        """Stop the daemon we started (by its PID) and reap it."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


@contextlib.contextmanager
def running_qnetd(workdir: Path, **kwargs: object) -> Iterator[DebianQnetd]:
    """A started DebianQnetd with a fresh CA, stopped on exit whatever happens."""
    qnetd = DebianQnetd(workdir, **kwargs)  # type: ignore[arg-type]
    qnetd.init_ca()
    try:
        qnetd.start()
        yield qnetd
    finally:
        qnetd.stop()
