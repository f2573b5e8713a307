"""Certificate authority building shared by the arbitrator and the agents: pure, `now` passed in.

What `qnetd/certs.py` (the arbitrator's CA, corosync-qnetd-certutil parameters) and the agent's
cluster CA (`votemesh create` / `add`, design §3.11) both make: a self-signed CA (CA:TRUE,
pathlen 0, keyCertSign and cRLSign, critical), end-entity certificates signed by it (subject and
authority key identifiers, optional SAN DNS names), PKCS#10 requests and their checks, the CA's
SHA-256 fingerprint, and PEM encodings. RSA only: NSS-based qdevice peers expect RSA, and one
key type keeps every check simple. No files, no clock (every builder takes `now`), no key
generation (keys come from the adapters: `new_key` there). Errors are `CertificateError`, one
line that says what to do.
"""

from __future__ import annotations

import datetime
import hashlib

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from proto.errors import CertificateError

KEY_BITS = 2048  # NSS certutil default on Debian 12
VALIDITY = datetime.timedelta(days=36525)  # 1200 months, as certutil -v 1200
BACKDATE = datetime.timedelta(minutes=5)  # tolerate small clock skew between nodes


def key_pem(key: rsa.RSAPrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM, the form both OpenSSL and our loaders read."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    """PEM encoding of a certificate."""
    return cert.public_bytes(serialization.Encoding.PEM)


def name(common_name: str) -> x509.Name:
    """A subject of one CN."""
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def rsa_public(key: object) -> rsa.RSAPublicKey:
    """`key` as an RSA public key, or CertificateError."""
    if not isinstance(key, rsa.RSAPublicKey):
        raise CertificateError("only RSA keys are supported (NSS-based qdevice peers expect RSA)")
    return key


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: rsa.RSAPublicKey,
    serial: int,
    now: datetime.datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def make_ca(
    key: rsa.RSAPrivateKey, serial: int, now: datetime.datetime, common_name: str
) -> x509.Certificate:
    """Self-signed `CN=<common_name>`, CA:TRUE pathlen 0 critical (corosync-qnetd-certutil -i)."""
    subject = name(common_name)
    return (
        _builder(subject, subject, key.public_key(), serial, now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )


def issue(
    ca_cert: x509.Certificate,
    ca_key: rsa.RSAPrivateKey,
    subject: x509.Name,
    public_key: rsa.RSAPublicKey,
    *,
    serial: int,
    now: datetime.datetime,
    dns_names: tuple[str, ...] = (),
) -> x509.Certificate:
    """An end-entity certificate for `subject` signed by the CA (SAN DNS names if given)."""
    builder = _builder(subject, ca_cert.subject, public_key, serial, now).add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(rsa_public(ca_key.public_key())),
        critical=False,
    )
    if dns_names:
        san = x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names])
        builder = builder.add_extension(san, critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def ca_fingerprint(cert: x509.Certificate) -> bytes:
    """SHA-256 over the certificate's DER encoding (what tokens and join strings carry)."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()


def common_name(subject: x509.Name) -> str | None:
    """The subject's (last) CN as text, or None."""
    attrs = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attrs:
        return None
    value = attrs[-1].value
    return value if isinstance(value, str) else value.decode(errors="replace")


def make_request(key: rsa.RSAPrivateKey, common_name: str) -> x509.CertificateSigningRequest:
    """A PKCS#10 request `CN=<common_name>` (as `corosync-qdevice-net-certutil -r` makes)."""
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(name(common_name))
        .sign(key, hashes.SHA256())
    )


def parse_request(csr_bytes: bytes) -> x509.CertificateSigningRequest:
    """A PKCS#10 request in PEM or DER with a valid self-signature, or CertificateError."""
    try:
        if b"-----BEGIN" in csr_bytes:
            csr = x509.load_pem_x509_csr(csr_bytes)
        else:
            csr = x509.load_der_x509_csr(csr_bytes)
    except ValueError as exc:
        raise CertificateError("not a PKCS#10 certificate request (PEM or DER)") from exc
    if not csr.is_signature_valid:
        raise CertificateError(
            "the certificate request's signature does not verify; make a new request"
        )
    return csr


def issued_by(cert: x509.Certificate, ca: x509.Certificate, now: datetime.datetime) -> bool:
    """True when `ca` signed `cert` directly and `cert` is valid at `now`."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc
