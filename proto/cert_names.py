"""Certificate names shared by the arbitrator and the node: the server's identity and which
cluster names could be mistaken for it.

qdevice (and our agent) accept the arbitrator when its certificate is named `Qnetd Server` (SAN DNS
names, else the CN, case-insensitive: NSS host-name matching, reference 5.1). Every cluster's
client certificate comes from the same CA, so a cluster named like the server would get a
certificate that passes that check: whoever holds it could answer for the arbitrator. Such names
are refused wherever a cluster certificate or token is made. Pure: strings in, strings out.
"""

from __future__ import annotations

SERVER_NAME = "Qnetd Server"  # what qdevice expects of qnetd (net_nss_qnetd_cn, reference 5.1)
CA_NAME = "QNet CA"  # corosync-qnetd-certutil's CA subject
SERVER_NICKNAME = "QNetd Cert"  # corosync-qnetd's NSS nickname of its certificate
CLIENT_NICKNAME = "Cluster Cert"  # qdevice's NSS nickname of the cluster certificate
RESERVED_NAMES = (SERVER_NAME, CA_NAME, SERVER_NICKNAME, CLIENT_NICKNAME)


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
