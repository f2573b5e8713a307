"""One qdevice-style walk, two servers: Debian's corosync-qnetd 3.0.3 and votemesh's qnetd.

Every message is built and parsed with proto/ only; every reply must decode, re-encode to the same
bytes, and carry the values the reference says; the same assertions hold for both servers, which
is what "drop-in replacement" means on the wire.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from proto.qnetd_enums import MessageType, NodeListType, ReplyErrorCode, TlsSupported, Vote
from proto.qnetd_messages import (
    EchoReply,
    EchoRequest,
    NodeListReply,
    Preinit,
    PreinitReply,
    ServerError,
    SetOptionReply,
    StartTls,
    VoteInfo,
    decode,
    encode,
)
from proto.tlv import pack_header, pack_tlv
from tests.interop.debian_qnetd import DebianQnetd, missing_reason, running_qnetd
from tests.interop.wire_walk import RING, Transcript, WireClient, full_walk, walk_into
from tests.proto import vectors as tv
from tests.qnetd.our_qnetd import OurQnetd, running_our_qnetd

pytestmark = [pytest.mark.interop]
CLUSTER = "testcluster"
Server = DebianQnetd | OurQnetd
SERVERS = [
    pytest.param(
        "debian",
        marks=[
            pytest.mark.root,
            pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason())),
        ],
    ),
    "votemesh",
]


@pytest.fixture(scope="module", params=SERVERS)
def qnetd(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp(f"qnetd-{request.param}")
    if request.param == "debian":
        with running_qnetd(workdir) as debian:
            yield debian
    else:
        # Debian's defaults (-s on -c on); ours are stricter (TLS required, docs/qnetd.md)
        with running_our_qnetd(workdir, "on", True) as ours:
            yield ours


def test_full_walk_over_tls(qnetd: Server) -> None:
    """PREINIT, STARTTLS, TLS, INIT, SET_OPTION, ECHO, NODE_LISTs: values as the reference."""
    creds = qnetd.client_credentials(CLUSTER)
    t = full_walk(qnetd.port, CLUSTER, creds)
    got = t.received()
    assert got == [
        PreinitReply(seq=1, tls_supported=TlsSupported.SUPPORTED, tls_client_cert_required=True),
        decode(tv.unhex(tv.TV5_INIT_REPLY)),  # reference vector TV5, field for field
        SetOptionReply(seq=4, keep_active_partition_tie_breaker=True),
        EchoReply(seq=1),
        # initial config list: ffsplit answers "ask later"; ring id is INIT's
        NodeListReply(
            seq=5, node_list_type=NodeListType.INITIAL_CONFIG, ring_id=RING, vote=Vote.ASK_LATER
        ),
        # membership of both configured nodes: an ACK via VOTE_INFO first, then NO_CHANGE
        VoteInfo(seq=1, vote=Vote.ACK, ring_id=RING),
        NodeListReply(
            seq=6, node_list_type=NodeListType.MEMBERSHIP, ring_id=RING, vote=Vote.NO_CHANGE
        ),
        NodeListReply(seq=7, node_list_type=NodeListType.QUORUM, ring_id=RING, vote=Vote.NO_CHANGE),
    ]
    assert t.tls_version in {"TLSv1.2", "TLSv1.3"}
    assert t.server_subject == "Qnetd Server"


def test_every_reply_reencodes_byte_exactly(qnetd: Server) -> None:
    """Our encoding of each decoded reply equals the bytes the C server sent (TV7 included)."""
    t = full_walk(qnetd.port, CLUSTER, qnetd.client_credentials(CLUSTER))
    received = [(m, raw) for d, m, raw in t.entries if d == "<-"]
    assert len(received) == 8
    for message, raw in received:
        assert encode(message) == raw, type(message).__name__
    raws = [raw for _, raw in received]
    assert tv.unhex(tv.TV5_INIT_REPLY) in raws
    assert tv.unhex(tv.TV7_VOTE_INFO) in raws
    assert tv.unhex(tv.TV7_NODE_LIST_REPLY) in raws


def _plain_client(qnetd: Server) -> WireClient:
    return WireClient(qnetd.port, Transcript())


def test_error_replies_decode_and_keep_the_connection(qnetd: Server) -> None:
    """Protocol errors get SERVER_ERROR with the reference's codes; the stream stays usable."""
    c = _plain_client(qnetd)
    try:
        c.send(StartTls(seq=9))  # before PREINIT
        assert c.receive() == ServerError(seq=9, reply_error_code=ReplyErrorCode.PREINIT_REQUIRED)
        c.send(Preinit(seq=10, cluster_name=CLUSTER.encode()))
        assert isinstance(c.receive(), PreinitReply)
        c.send(EchoRequest(seq=11))  # before INIT
        assert c.receive() == ServerError(seq=11, reply_error_code=ReplyErrorCode.INIT_REQUIRED)
        c.send_raw(pack_header(40, 8) + pack_tlv(0, b"\0\0\0\x0c"))  # unknown message type
        reply = c.receive()
        assert reply == ServerError(reply_error_code=ReplyErrorCode.UNSUPPORTED_MESSAGE)
        assert c.decoder.last_raw == tv.unhex(tv.TV9_SERVER_ERROR_NO_SEQ)
        c.send_raw(pack_header(MessageType.ECHO_REQUEST, 0))  # empty payload
        assert c.receive() == ServerError(reply_error_code=ReplyErrorCode.ERROR_DECODING_MSG)
        c.send_raw(pack_header(MessageType.PREINIT, 40000) + b"\0" * 40000)  # over 32768
        assert c.receive() == ServerError(reply_error_code=ReplyErrorCode.MESSAGE_TOO_LONG)
        c.send(VoteInfo(seq=13, vote=Vote.ACK, ring_id=RING))  # a server->client type
        assert c.receive() == ServerError(
            seq=13, reply_error_code=ReplyErrorCode.UNEXPECTED_MESSAGE
        )
    finally:
        c.close()


def test_certificate_for_another_cluster_is_refused(qnetd: Server) -> None:
    """A CA-signed certificate whose CN is another cluster's name: the server closes silently."""
    creds = qnetd.client_credentials("othercluster")
    t = Transcript()
    with pytest.raises((ConnectionError, OSError)):
        walk_into(t, qnetd.port, CLUSTER, creds, node_id=1)
    assert t.tls_version is not None  # the handshake itself succeeded (the CA is right) ...
    assert [type(m) for m in t.received()] == [PreinitReply]  # ... and INIT got no reply
