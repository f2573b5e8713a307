"""Does a client certificate name the cluster it claims? (reference 5.2, NSS CERT_VerifyCertName)

The names compared are NSS's (proto/cert_names.py `host_names`): the subject-alternative-name
DNS entries when the certificate has a SAN extension (the CN is then ignored, even when the SAN has
no DNS entry), the last subject common name only when it has no SAN extension;
names are compared as UTF-8 bytes with only ASCII letters case-insensitive (NSS's PORT_Strcasecmp:
a Unicode case mapping would let a look-alike name such as KELVIN SIGN + 'ube' name cluster 'kube');
a wildcard `*` may stand for the whole left-most label only.
Pure: works on names the adapter extracted (`PeerNames.from_peercert`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proto.cert_names import host_names


@dataclass(frozen=True, slots=True)
class PeerNames:
    """The names a peer certificate carries."""

    common_names: tuple[str, ...] = ()
    dns_names: tuple[str, ...] | None = None
    """The SAN's DNS entries, or None when the certificate has no SAN extension."""

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
        if "subjectAltName" not in cert:  # `ssl` sets the key exactly when the extension exists
            return cls(cns, None)
        return cls(cns, tuple(str(v) for k, v in cert["subjectAltName"] if k == "DNS"))


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
    """True when the certificate names the cluster (SAN DNS entries if it has a SAN extension,
    else its CN; ASCII case only)."""
    wanted = cluster_name.lower()
    candidates = host_names(names.common_names, names.dns_names)
    return any(
        (pattern := _folded(c)) is not None and _label_match(pattern, wanted) for c in candidates
    )
