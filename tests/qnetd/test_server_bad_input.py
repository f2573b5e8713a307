"""votemesh qnetd under bad input: it keeps serving a good client and leaks no descriptors.

A real server process on 127.0.0.1 with TLS and client certificates; a well-behaved client of
another cluster holds an ACK vote throughout while each kind of bad input is thrown at the server.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import socket
import ssl
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from proto.qnetd_enums import MessageType, ReplyErrorCode, Vote
from proto.qnetd_messages import InitReply, NodeList, Preinit, ServerError, StartTls, decode, encode
from proto.qnetd_options import NodeInfo, RingId
from proto.qnetd_stream import StreamDecoder
from proto.tlv import pack_header
from tests.interop.debian_qnetd import ClientCredentials
from tests.qnetd.async_client import AsyncQdevice, client_context
from tests.qnetd.core_helpers import init_msg
from tests.qnetd.our_qnetd import OurQnetd, running_our_qnetd

RING = RingId(1, 5)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OurQnetd]:
    # heartbeat-max 2000 ms makes the pre-INIT dead-peer timeout 3 s (1.5 x 2 s) for the test
    with running_our_qnetd(
        tmp_path_factory.mktemp("bad"),
        "on",
        True,
        "--heartbeat-max",
        "2000",
        "--log-level",
        "debug",
    ) as qnetd:
        yield qnetd


def exchange(port: int, data: bytes, wait: float = 0.5) -> list[object]:
    """Send raw bytes on a fresh plain connection; decoded replies (or 'closed')."""
    out: list[object] = []
    decoder = StreamDecoder()
    with socket.create_connection(("127.0.0.1", port), 5) as sock:
        sock.sendall(data)
        sock.settimeout(wait)
        try:
            while chunk := sock.recv(65536):
                decoder.feed(chunk)
                while (msg := decoder.next_message()) is not None:
                    out.append(msg)
        except TimeoutError:
            return out
    out.append("closed")
    return out


def foreign_credentials(workdir: Path, cluster: str) -> ClientCredentials:
    """A CA of our own (not the server's) and a client cert for `cluster` signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Rogue CA")])
    ca = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(ca_key.public_key()).serial_number(1)
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cluster)])
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(name)
        .public_key(key.public_key()).serial_number(2)
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    creds = ClientCredentials(
        workdir / "rogue-ca.pem", workdir / "rogue.pem", workdir / "rogue.key"
    )
    creds.ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    creds.cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    creds.key_pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return creds


def tls_attempt(port: int, cluster: str, creds: ClientCredentials, trust: Path) -> str:
    """PREINIT, STARTTLS, handshake with `creds`, INIT: what happened."""
    with socket.create_connection(("127.0.0.1", port), 5) as raw:
        raw.sendall(encode(Preinit(seq=1, cluster_name=cluster.encode())))
        raw.recv(100)
        raw.sendall(encode(StartTls(seq=2)))
        ctx = client_context(ClientCredentials(trust, creds.cert_pem, creds.key_pem))
        try:
            with ctx.wrap_socket(raw) as tls:
                tls.sendall(encode(init_msg(1)))
                tls.settimeout(3)
                data = tls.recv(4096)
        except (ssl.SSLError, ConnectionError, OSError) as exc:
            return f"refused: {type(exc).__name__}"
    return "closed" if not data else f"answered {decode(data)}"


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_bad_input_never_disturbs_a_good_client(server: OurQnetd, tmp_path: Path) -> None:
    """Garbage, oversize lengths, out-of-order messages, a silent client, an unknown CA, a
    certificate for another cluster and 1,000 dropped connections: the good client keeps its ACK
    and its echoes answered; every bad input is logged with its reason; descriptors return."""
    # 2 s heartbeat (echo every 1 s, dropped after 2.4 s of silence): the churn thread below
    # competes for this process's GIL, and with 1 s the good client's own echoes were late
    # enough under a loaded CI machine for the server to drop it (seen once, 2026-12-07)
    good = AsyncQdevice(
        server.port, b"good", 1, server.client_credentials("good"), heartbeat_ms=2000
    )
    await good.start(RING, (1,), (1,))
    await asyncio.sleep(0.3)
    assert good.votes == [Vote.ACK]
    baseline = server.fd_count()

    loop = asyncio.get_running_loop()
    # a framed message with a broken TLV (certain decode error), then random bytes
    garbage = pack_header(MessageType.NODE_LIST, 7) + b"\x00\x11\x00\x09abc" + os.urandom(3000)
    replies = await loop.run_in_executor(None, exchange, server.port, garbage)
    assert replies, "the framed undecodable message got no answer"
    assert all(isinstance(r, ServerError) or r == "closed" for r in replies), replies
    # answered once the whole oversize message is skipped (3.0.3 waits for it too)
    oversize = pack_header(3, 40000) + b"\0" * 40000
    too_long = await loop.run_in_executor(None, exchange, server.port, oversize)
    assert too_long[0] == ServerError(reply_error_code=ReplyErrorCode.MESSAGE_TOO_LONG)
    endless = await loop.run_in_executor(None, exchange, server.port, pack_header(3, 2**32 - 1))
    assert endless == []  # a 4 GiB announcement is skipped silently, never buffered
    disorder = encode(NodeList(seq=7, node_list_type=2, ring_id=RING, nodes=(NodeInfo(1),)))
    disorder += encode(init_msg(1, heartbeat_interval=1000))
    out_of_order = await loop.run_in_executor(None, exchange, server.port, disorder)
    assert out_of_order[0] == ServerError(seq=7, reply_error_code=ReplyErrorCode.INIT_REQUIRED)
    assert isinstance(out_of_order[1], InitReply)
    assert out_of_order[1].reply_error_code == ReplyErrorCode.PREINIT_REQUIRED

    silent = socket.create_connection(("127.0.0.1", server.port))
    rogue = foreign_credentials(tmp_path, "good2")
    assert (
        await loop.run_in_executor(None, tls_attempt, server.port, "good2", rogue, rogue.ca_pem)
    ).startswith(("refused", "closed"))
    other = server.client_credentials("other")
    verdict = await loop.run_in_executor(
        None, tls_attempt, server.port, "good2", other, other.ca_pem
    )
    assert not verdict.startswith("answered"), verdict  # closed silently, no INIT_REPLY

    def churn() -> tuple[int, int]:
        """1,000 connections opened 100 at a time and dropped: (made, refused). A starved
        server's guard may reset some (CI, 2026-12-07, load 26): refused is not a failure, and
        every socket is closed whatever happens (else the next test sees them collected)."""
        made = refused = 0
        for _ in range(10):
            socks: list[socket.socket] = []
            try:
                for _ in range(100):
                    try:
                        socks.append(socket.create_connection(("127.0.0.1", server.port)))
                        made += 1
                    except ConnectionError:
                        refused += 1
            finally:
                for s in socks:
                    s.close()
        return made, refused

    made, refused = await loop.run_in_executor(None, churn)
    assert made + refused == 1000, (made, refused)
    assert made >= 100, (made, refused)
    await asyncio.sleep(3.5)  # the silent client's pre-INIT dead-peer timeout (3 s) passes
    assert silent.recv(10) == b""  # dropped by the server
    silent.close()

    assert await good.echo(), "the good client's echo went unanswered"
    assert not good.closed.is_set()
    (cluster,) = [c for c in server.status()["clusters"] if c["name"] == "good"]
    assert cluster["clients"][0]["last_ack_nack"] == "ACK"
    assert good.votes == [Vote.ACK]  # never re-voted: the attacks changed nothing
    deadline = time.monotonic() + 10
    while server.fd_count() > baseline and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert server.fd_count() == baseline

    reasons = Counter(
        (r.get("event"), r.get("reason")) for r in server.log_records() if r.get("reason")
    )
    assert reasons[("bad message", "bad_message")] >= 1
    assert reasons[("bad message", "too_long")] >= 1
    assert reasons[("skipping message", "too_long")] >= 1  # the 4 GiB one, never answered
    assert reasons[("client dropped", "dead_peer")] == 1
    assert reasons[("client dropped", "certificate_name_mismatch")] == 1
    assert reasons[("connection failed", "tls_handshake_failed")] == 1
    await good.close()
