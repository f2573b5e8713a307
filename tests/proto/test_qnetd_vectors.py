"""The reference's test vectors (section 10) decode to the right values and re-encode exactly."""

from __future__ import annotations

import pytest

from proto.qnetd_enums import (
    DecisionAlgorithm,
    Heuristics,
    NodeListType,
    ReplyErrorCode,
    TieBreakerMode,
    TlsSupported,
    Vote,
)
from proto.qnetd_messages import (
    ALL_MESSAGE_TYPES,
    ALL_OPTION_TYPES,
    EchoReply,
    EchoRequest,
    Init,
    InitReply,
    NodeList,
    NodeListReply,
    Preinit,
    PreinitReply,
    QnetdMessage,
    ServerError,
    StartTls,
    VoteInfo,
    VoteInfoReply,
    decode,
    echo_reply_bytes,
    encode,
)
from proto.qnetd_options import NodeInfo, RingId, TieBreaker
from tests.proto import vectors as tv

RING = RingId(1, 0x10)

EXPECTED: list[tuple[str, QnetdMessage]] = [
    (tv.TV1_PREINIT, Preinit(seq=1, cluster_name=b"testcluster")),
    (
        tv.TV2_PREINIT_REPLY,
        PreinitReply(seq=1, tls_supported=TlsSupported.SUPPORTED, tls_client_cert_required=True),
    ),
    (
        tv.TV2_PREINIT_REPLY_NO_SEQ_TLS_OFF,
        PreinitReply(tls_supported=TlsSupported.UNSUPPORTED, tls_client_cert_required=True),
    ),
    (tv.TV3_STARTTLS, StartTls(seq=2)),
    (
        tv.TV4_INIT,
        Init(
            seq=3,
            supported_messages=ALL_MESSAGE_TYPES,
            supported_options=ALL_OPTION_TYPES,
            node_id=1,
            decision_algorithm=DecisionAlgorithm.FFSPLIT,
            heartbeat_interval=8000,
            tie_breaker=TieBreaker(TieBreakerMode.LOWEST),
            ring_id=RING,
        ),
    ),
    (
        tv.TV5_INIT_REPLY,
        InitReply(
            seq=3,
            reply_error_code=ReplyErrorCode.NO_ERROR,
            supported_messages=ALL_MESSAGE_TYPES,
            supported_options=ALL_OPTION_TYPES,
            server_maximum_request_size=32768,
            server_maximum_reply_size=32768,
            supported_decision_algorithms=(0, 1, 2, 3),
        ),
    ),
    (
        tv.TV6_MEMBERSHIP,
        NodeList(
            seq=6,
            node_list_type=NodeListType.MEMBERSHIP,
            ring_id=RING,
            nodes=(NodeInfo(1), NodeInfo(2)),
            heuristics=Heuristics.PASS,
        ),
    ),
    (
        tv.TV6_CONFIG,
        NodeList(
            seq=5,
            node_list_type=NodeListType.INITIAL_CONFIG,
            config_version=7,
            nodes=(NodeInfo(1), NodeInfo(2, data_center_id=3)),
        ),
    ),
    (tv.TV7_VOTE_INFO, VoteInfo(seq=1, vote=Vote.ACK, ring_id=RING)),
    (
        tv.TV7_NODE_LIST_REPLY,
        NodeListReply(
            seq=6, node_list_type=NodeListType.MEMBERSHIP, ring_id=RING, vote=Vote.NO_CHANGE
        ),
    ),
    (tv.TV7_VOTE_INFO_REPLY, VoteInfoReply(seq=1)),
    (tv.TV8_ECHO_REQUEST, EchoRequest(seq=1)),
    (tv.TV8_ECHO_REPLY, EchoReply(seq=1)),
    (tv.TV9_SERVER_ERROR, ServerError(seq=9, reply_error_code=ReplyErrorCode.INIT_REQUIRED)),
    (
        tv.TV9_SERVER_ERROR_NO_SEQ,
        ServerError(reply_error_code=ReplyErrorCode.UNSUPPORTED_MESSAGE),
    ),
]


@pytest.mark.parametrize(("hex_text", "message"), EXPECTED, ids=lambda x: type(x).__name__)
def test_vector_decodes_to_expected_message(hex_text: str, message: QnetdMessage) -> None:
    """Each vector decodes to exactly the message the reference describes."""
    assert decode(tv.unhex(hex_text)) == message


@pytest.mark.parametrize(("hex_text", "message"), EXPECTED, ids=lambda x: type(x).__name__)
def test_vector_encodes_byte_exactly(hex_text: str, message: QnetdMessage) -> None:
    """Encoding the described message yields the vector's bytes, TLV order included."""
    assert encode(message) == tv.unhex(hex_text)


def test_vector_lengths_match_reference() -> None:
    """The byte counts the reference states for TV1-TV6 hold."""
    sizes = {
        tv.TV1_PREINIT: 29,
        tv.TV2_PREINIT_REPLY: 24,
        tv.TV3_STARTTLS: 14,
        tv.TV4_INIT: 153,
        tv.TV5_INIT_REPLY: 140,
        tv.TV6_MEMBERSHIP: 64,
    }
    assert {len(tv.unhex(h)) for h in sizes} == set(sizes.values())
    for hex_text, size in sizes.items():
        assert len(tv.unhex(hex_text)) == size


def test_echo_reply_is_request_copy_with_type_changed() -> None:
    """TV8: the server's echo reply is the request's bytes with the type set to 9."""
    assert echo_reply_bytes(tv.unhex(tv.TV8_ECHO_REQUEST)) == tv.unhex(tv.TV8_ECHO_REPLY)
