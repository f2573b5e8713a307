"""Certificate names shared by the arbitrator and the node: the server's identity and which
cluster names could be mistaken for it.

qdevice (and our agent) accept the arbitrator when its certificate is named `Qnetd Server` (NSS
host-name matching, reference 5.1: the SAN's DNS names when the certificate has a SAN extension,
the CN only when it has none; case-insensitive), and qnetd accepts a client whose certificate
names its cluster by the same rule (`host_names`, reference 5.2). Every cluster's
client certificate comes from the same CA, so a cluster named like the server would get a
certificate that passes that check: whoever holds it could answer for the arbitrator. Such names
are refused wherever a cluster certificate or token is made. Pure: strings in, strings out
(`names_of` reads a parsed `cryptography` certificate; it imports `cryptography` only when called,
so the arbitrator, which extracts names from `ssl`'s dict instead, starts without it).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography import x509

SERVER_NAME = "Qnetd Server"  # what qdevice expects of qnetd (net_nss_qnetd_cn, reference 5.1)
CA_NAME = "QNet CA"  # corosync-qnetd-certutil's CA subject
SERVER_NICKNAME = "QNetd Cert"  # corosync-qnetd's NSS nickname of its certificate
CLIENT_NICKNAME = "Cluster Cert"  # qdevice's NSS nickname of the cluster certificate
RESERVED_NAMES = (SERVER_NAME, CA_NAME, SERVER_NICKNAME, CLIENT_NICKNAME)
NODE_NAME_RULE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
"""Node and cluster names of votemesh clusters, and the CN of a node certificate: a DNS label
(RFC 1123: letters, digits, inner hyphens, 1-63 chars), as Proxmox requires of node names."""
CLUSTER_CA_PREFIX = "votemesh CA "  # a cluster CA is `CN=votemesh CA <cluster name>`


def node_name_problem(name: str, what: str = "node name") -> str | None:
    """Why `name` is not a valid node or cluster name (one line that says what to use), or None."""
    if NODE_NAME_RULE.fullmatch(name):
        return None
    return f'{what} "{name}" is not valid: use 1-63 letters, digits or inner hyphens'


def host_names(common_names: Sequence[str], san_dns_names: Sequence[str] | None) -> list[str]:
    """The names NSS compares with the expected host name (CERT_VerifyCertName).

    `san_dns_names` is None when the certificate has no subjectAltName extension: then the last
    subject CN (CERT_GetCommonName). With a SAN extension, only its DNS entries, even when there
    are none (a SAN of IP addresses or e-mails alone): NSS then never looks at the CN.
    """
    if san_dns_names is None:
        return list(common_names[-1:])
    return list(san_dns_names)


def names_of(cert: x509.Certificate) -> list[str]:
    """`host_names` of a parsed certificate (the node's check of the arbitrator, `certs`)."""
    from cryptography import x509  # noqa: PLC0415 (see the module docstring)
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    cns = [
        value if isinstance(value, str) else value.decode(errors="replace")
        for value in (a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME))
    ]
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return host_names(cns, None)
    return host_names(cns, san.get_values_for_type(x509.DNSName))


def _canonical(name: str) -> str:
    """How a name compares for identity: no case, no surrounding or repeated blanks, no final dot
    (NSS ignores a trailing dot and case in host-name matching)."""
    return " ".join(name.split()).rstrip(".").casefold()


def is_server_name(name: str) -> bool:
    """True when a certificate name identifies the arbitrator: ASCII letters case-insensitive,
    nothing else folded (NSS's PORT_Strcasecmp; `casefold()` would also take LONG S for 's')."""
    return name.isascii() and name.lower() == SERVER_NAME.lower()


def reserved_cluster_name(name: str) -> str | None:
    """Why `name` must not be a cluster name (a certificate for it could pass as the server's,
    the CA's, or, with a wildcard, another cluster's), or None when it is fine."""
    canonical = _canonical(name)
    for reserved in RESERVED_NAMES:
        if canonical == _canonical(reserved):
            return f"{name!r} is reserved (it reads as {reserved!r}, a name of the arbitrator)"
    if "*" in name:
        return f"{name!r} contains '*': a certificate for it would match other cluster names"
    return None
