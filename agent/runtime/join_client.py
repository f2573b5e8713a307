"""The joiner's side of the join port (`votemesh add`; design §3.11).

Adapter ring, blocking sockets (a one-shot command). For each address of the join string in
turn: TLS without a CA (we have none yet), ask `ca`, compare its SHA-256 with the string's
fingerprint and check that the certificate the handshake presented is signed by it and valid
now; only then send the token and a CSR made here (the node key never leaves this machine).
The answer is verified completely (certificate for our key signed by that CA, the CA key is the
CA's, the configuration decodes, names this cluster and holds us under the granted id) before
the caller writes anything (J4). A connection error moves on to the next address; a refusal is
final (another address is the same member: it would refuse the same way).
"""

from __future__ import annotations

import hmac
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from agent import cluster_config
from agent.cluster_config import ClusterConfig
from agent.config import ConfigError
from agent.runtime import join_files
from proto import certificates
from proto.errors import DecodeError
from proto.join import (
    HEADER,
    MAX_REPLY_FRAME,
    PROTOCOL_VERSION,
    JoinGrant,
    JoinRequest,
    JoinString,
    Refusal,
    decode_body,
    encode_frame,
    frame_length,
)

CONNECT_TIMEOUT = 10.0
ANSWER_TIMEOUT = 45.0  # the member's change may take up to its CHANGE_TIMEOUT (30 s)


class JoinError(Exception):
    """The join failed; the message is one line that says what to do."""


class _UnreachableError(Exception):
    """This address did not answer; try the next one."""


@dataclass(frozen=True)
class Joined:
    """A verified grant and what the joiner made locally."""

    grant: JoinGrant
    config: ClusterConfig
    node_key: rsa.RSAPrivateKey
    member: str


def join(
    js: JoinString,
    name: str,
    links: tuple[tuple[int, str, int], ...],
    *,
    node_id: int | None,
    votes: int | None,
    force: bool,
    node_key: rsa.RSAPrivateKey,
    log: Callable[[str], None] = lambda _line: None,
    source: str | None = None,
) -> Joined:
    """Try the string's addresses in turn; JoinError (one line) when none admits us."""
    csr = certificates.make_request(node_key, name).public_bytes(serialization.Encoding.PEM)
    request = JoinRequest(js.token, name, links, csr.decode(), node_id, votes, force)
    problems = []
    for host, port in js.addresses:
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        log(f"contacting {where} ...")
        try:
            grant, ca = _exchange(host, port, js.ca_sha256, request, source)
        except _UnreachableError as exc:
            problems.append(f"{where}: {exc}")
            continue
        config = _verify(grant, ca, node_key, js.cluster, name)
        return Joined(grant, config, node_key, where)
    raise JoinError(
        "no member answered (" + "; ".join(problems) + "); check the addresses are reachable "
        "and the member's agent runs"
    )


def _exchange(
    host: str, port: int, fingerprint: bytes, request: JoinRequest, source: str | None
) -> tuple[JoinGrant, x509.Certificate]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # we check the chain ourselves against the pinned CA
    try:
        with (
            socket.create_connection(
                (host, port), CONNECT_TIMEOUT, None if source is None else (source, 0)
            ) as raw,
            context.wrap_socket(raw) as tls,
        ):
            ca = _pinned_ca(tls, fingerprint)
            tls.settimeout(ANSWER_TIMEOUT)
            answer = _ask(tls, request.to_message())
            try:
                return JoinGrant.from_message(answer), ca
            except DecodeError as exc:
                raise JoinError(f"the member's answer is malformed: {exc.detail}") from None
    except (OSError, ssl.SSLError) as exc:
        raise _UnreachableError(str(exc) or type(exc).__name__) from None


def _pinned_ca(tls: ssl.SSLSocket, fingerprint: bytes) -> x509.Certificate:
    """The member's CA if it is the string's, and the member's certificate is signed by it (J1:
    nothing secret was sent yet)."""
    answer = _ask(tls, {"v": PROTOCOL_VERSION, "op": "ca"})
    try:
        ca = x509.load_pem_x509_certificate(str(answer.get("ca", "")).encode())
    except ValueError:
        raise JoinError("the member sent no CA; is this a votemesh join port?") from None
    actual = certificates.ca_fingerprint(ca)
    if not hmac.compare_digest(actual, fingerprint):
        raise JoinError(
            f"the member's CA fingerprint {actual.hex()[:16]}... does not match the join "
            f"string's {fingerprint.hex()[:16]}...; wrong member or someone in between: "
            "token not sent"
        )
    der = tls.getpeercert(binary_form=True)
    if der is None or not certificates.issued_by(
        x509.load_der_x509_certificate(der), ca, join_files.utcnow()
    ):
        raise JoinError(
            "the member's TLS certificate is not signed by the cluster CA; token not sent"
        )
    return ca


def _ask(tls: ssl.SSLSocket, message: dict[str, Any]) -> dict[str, Any]:
    """One request frame, one reply frame; a refusal becomes JoinError with its message."""
    tls.sendall(encode_frame(message))
    try:
        header = _read_exactly(tls, HEADER.size)
        answer = decode_body(_read_exactly(tls, frame_length(header, MAX_REPLY_FRAME)))
    except DecodeError as exc:
        raise JoinError(f"not a votemesh join port ({exc.detail})") from None
    if answer.get("ok") is not True:
        refusal = Refusal.from_message(answer)
        raise JoinError(f"the cluster refused ({refusal.error}): {refusal.message}")
    return answer


def _read_exactly(tls: ssl.SSLSocket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = tls.recv(min(left, 65536))
        if not chunk:
            raise ConnectionError("the member closed the connection")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _verify(
    grant: JoinGrant, ca: x509.Certificate, key: rsa.RSAPrivateKey, cluster: str, name: str
) -> ClusterConfig:
    """J4: everything checks out before anything is written."""
    try:
        cert = x509.load_pem_x509_certificate(grant.cert.encode())
        ca_key = serialization.load_pem_private_key(grant.ca_key.encode(), password=None)
    except ValueError:
        raise JoinError("the member sent an unreadable certificate or CA key") from None
    if not certificates.issued_by(cert, ca, join_files.utcnow()) or cert.public_key() != (
        key.public_key()
    ):
        raise JoinError("the member's node certificate is not for this node's key or CA")
    if ca_key.public_key() != ca.public_key():
        raise JoinError("the member sent a CA key that is not the cluster CA's")
    try:
        config = cluster_config.decode(grant.config)
    except ConfigError as exc:
        raise JoinError(f"the member sent a configuration this node refuses: {exc}") from None
    me = config.node(grant.node_id)
    if config.cluster_name != cluster or me is None or me.name != name:
        raise JoinError("the member's configuration does not hold this node; try again")
    return config
