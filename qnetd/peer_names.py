"""Does a client certificate name the cluster it claims? (reference 5.2, NSS CERT_VerifyCertName)

Subject-alternative-name DNS entries are used when present, otherwise the subject common names;
names are compared as UTF-8 bytes with only ASCII letters case-insensitive (NSS's PORT_Strcasecmp:
a Unicode case mapping would let a look-alike name such as KELVIN SIGN + 'ube' name cluster 'kube');
a wildcard `*` may stand for the whole left-most label only.
Pure: works on names extracted by the adapter (`from_der`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class PeerNames:
    """The names a peer certificate carries."""

    common_names: tuple[str, ...] = ()
    dns_names: tuple[str, ...] = ()

    @classmethod
    def from_peercert(cls, cert: dict[str, Any]) -> PeerNames:
        """Names from a verified peer's `SSLObject.getpeercert()` dict (no `cryptography` import:
        the server starts and runs without it, issue 7 item 9)."""
        cns = tuple(
            str(value)
            for rdn in cert.get("subject", ())
            for key, value in rdn
            if key == "commonName"
        )
        dns = tuple(str(v) for k, v in cert.get("subjectAltName", ()) if k == "DNS")
        return cls(cns, dns)

    @classmethod
    def from_der(cls, der: bytes) -> PeerNames:
        """Names from a DER certificate (as `SSLObject.getpeercert(binary_form=True)` gives)."""
        from cryptography import x509  # noqa: PLC0415 (about 10 MB: only where DER is parsed)
        from cryptography.x509.oid import NameOID  # noqa: PLC0415

        cert = x509.load_der_x509_certificate(der)
        cns = tuple(str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME))
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            dns = tuple(san.value.get_values_for_type(x509.DNSName))
        except x509.ExtensionNotFound:
            dns = ()
        return cls(cns, dns)


def _label_match(pattern: bytes, name: bytes) -> bool:
    if pattern == name:
        return True
    if not pattern.startswith(b"*."):
        return False
    head, sep, rest = name.partition(b".")
    return bool(sep and head) and rest == pattern[2:]


def _folded(name: str) -> bytes | None:
    """UTF-8 bytes with ASCII letters lower-cased (`bytes.lower` touches nothing else)."""
    try:
        return name.encode("utf-8").lower()
    except UnicodeEncodeError:  # a lone surrogate: names nothing
        return None


def matches_cluster(names: PeerNames, cluster_name: bytes) -> bool:
    """True when the certificate names the cluster (SAN DNS if any, else CN; ASCII case only)."""
    wanted = cluster_name.lower()
    candidates = names.dns_names or names.common_names
    return any(
        (pattern := _folded(c)) is not None and _label_match(pattern, wanted) for c in candidates
    )
