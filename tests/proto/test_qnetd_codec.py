"""The qnetd codec: round trips for every message type, and the reference's decoding rules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proto.errors import DecodeError, LocalProtocolError
from proto.qnetd_enums import MessageType, OptionType, ReplyErrorCode, Vote
from proto.qnetd_messages import (
    MESSAGE_CLASSES,
    EchoRequest,
    NodeList,
    Preinit,
    QnetdMessage,
    VoteInfo,
    decode,
    decode_payload,
    encode,
)
from proto.qnetd_options import NodeInfo, RingId
from proto.tlv import pack_header, pack_tlv
from tests.proto.strategies import qnetd_message_of, wire_messages


def msg(msg_type: int, *tlvs: bytes) -> bytes:
    payload = b"".join(tlvs)
    return pack_header(msg_type, len(payload)) + payload


SEQ1 = pack_tlv(OptionType.MSG_SEQ_NUMBER, b"\0\0\0\1")


@pytest.mark.parametrize("cls", list(MESSAGE_CLASSES.values()), ids=lambda c: c.__name__)
@given(data=st.data())
def test_every_message_type_round_trips(cls: type[QnetdMessage], data: st.DataObject) -> None:
    """decode(encode(m)) == m for every message type with any subset of its TLVs."""
    m = data.draw(qnetd_message_of(cls).filter(lambda x: encode(x)[6:] != b""))
    assert decode(encode(m)) == m


@given(wire_messages)
def test_encoding_is_stable(m: QnetdMessage) -> None:
    """Re-encoding a decoded message gives the same bytes (canonical form)."""
    raw = encode(m)
    assert encode(decode(raw)) == raw


def test_unknown_option_is_skipped() -> None:
    """An option type outside 0..23 is ignored; the rest of the message decodes."""
    raw = msg(MessageType.ECHO_REQUEST, pack_tlv(999, b"whatever"), SEQ1)
    assert decode(raw) == EchoRequest(seq=1)


def test_known_option_is_validated_even_where_unused() -> None:
    """VOTE=0 inside a PREINIT still makes the message undecodable, as in the C decoder."""
    raw = msg(MessageType.PREINIT, SEQ1, pack_tlv(OptionType.VOTE, b"\0"))
    with pytest.raises(DecodeError) as err:
        decode(raw)
    assert err.value.code == ReplyErrorCode.ERROR_DECODING_MSG


def test_last_scalar_wins_and_node_infos_accumulate() -> None:
    """Repeated scalar options: last wins; NODE_INFO items keep wire order."""
    info = [
        pack_tlv(OptionType.NODE_INFO, pack_tlv(OptionType.NODE_ID, bytes([0, 0, 0, n])))
        for n in (3, 1)
    ]
    raw = msg(
        MessageType.NODE_LIST,
        SEQ1,
        pack_tlv(OptionType.MSG_SEQ_NUMBER, b"\0\0\0\7"),
        info[0],
        pack_tlv(OptionType.NODE_LIST_TYPE, b"\2"),
        info[1],
    )
    assert decode(raw) == NodeList(seq=7, node_list_type=2, nodes=(NodeInfo(3), NodeInfo(1)))


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (msg(MessageType.ECHO_REQUEST), "empty payload"),
        (msg(MessageType.ECHO_REQUEST, SEQ1, b"\0\0\0"), "3 stray trailing bytes"),
        (msg(MessageType.ECHO_REQUEST, SEQ1[:-1] + b""), "TLV runs past the end"),
        (msg(MessageType.ECHO_REQUEST, pack_tlv(0, b"\0\0\1")), "seq of 3 bytes"),
        (msg(MessageType.INIT, pack_tlv(OptionType.RING_ID, b"\0" * 11)), "ring id of 11 bytes"),
        (msg(MessageType.INIT, pack_tlv(OptionType.TIE_BREAKER, b"\4\0\0\0\0")), "tie mode 4"),
        (msg(MessageType.INIT, pack_tlv(OptionType.SUPPORTED_OPTIONS, b"\0")), "odd array"),
        (msg(MessageType.PREINIT_REPLY, pack_tlv(OptionType.TLS_SUPPORTED, b"\3")), "tls 3"),
        (msg(MessageType.NODE_LIST, pack_tlv(OptionType.NODE_LIST_TYPE, b"\4")), "list type 4"),
        (msg(MessageType.VOTE_INFO, pack_tlv(OptionType.VOTE, b"\0")), "vote 0"),
        (msg(MessageType.VOTE_INFO, pack_tlv(OptionType.VOTE, b"\6")), "vote 6"),
        (msg(MessageType.NODE_LIST, pack_tlv(OptionType.QUORATE, b"\2")), "quorate 2"),
        (msg(MessageType.NODE_LIST, pack_tlv(OptionType.HEURISTICS, b"\0")), "heuristics 0"),
        (msg(MessageType.SET_OPTION, pack_tlv(23, b"\2")), "kap 2"),
        (msg(MessageType.NODE_LIST, pack_tlv(OptionType.NODE_STATE, b"\0")), "node state 0"),
        (msg(MessageType.NODE_LIST, pack_tlv(OptionType.NODE_INFO, b"")), "empty node info"),
        (
            msg(MessageType.NODE_LIST, pack_tlv(17, pack_tlv(OptionType.NODE_ID, b"\0\0\0\0"))),
            "node info with node id 0",
        ),
        (
            msg(
                MessageType.NODE_LIST,
                pack_tlv(17, pack_tlv(OptionType.DATA_CENTER_ID, b"\0\0\0\1")),
            ),
            "node info without node id",
        ),
    ],
    ids=lambda x: x if isinstance(x, str) else "",
)
def test_malformed_message_raises_decode_error_9(raw: bytes, why: str) -> None:
    """Each framing or value violation of reference 1.3/2.2 is a DecodeError with code 9."""
    with pytest.raises(DecodeError) as err:
        decode(raw)
    assert err.value.code == ReplyErrorCode.ERROR_DECODING_MSG, why
    assert err.value.reason == "bad_message"


def test_unknown_message_type_is_error_4() -> None:
    """Message type 18 and above answer 'unsupported message' (4)."""
    with pytest.raises(DecodeError) as err:
        decode(msg(18, SEQ1))
    assert err.value.code == ReplyErrorCode.UNSUPPORTED_MESSAGE


def test_too_long_message_is_error_5() -> None:
    """A message over the receive limit (header included) answers 'message too long' (5)."""
    raw = msg(MessageType.PREINIT, pack_tlv(OptionType.CLUSTER_NAME, b"x" * 100))
    assert decode(raw, max_message_size=len(raw)) == Preinit(cluster_name=b"x" * 100)
    with pytest.raises(DecodeError) as err:
        decode(raw, max_message_size=len(raw) - 1)
    assert err.value.code == ReplyErrorCode.MESSAGE_TOO_LONG


def test_decision_algorithm_and_error_code_accept_unknown_values() -> None:
    """DECISION_ALGORITHM / REPLY_ERROR_CODE are not range-checked at decode time."""
    raw = msg(MessageType.INIT, pack_tlv(OptionType.DECISION_ALGORITHM, b"\0\x63"))
    assert decode(raw).decision_algorithm == 99  # type: ignore[attr-defined]


def test_encoding_a_value_that_does_not_fit_is_local_error() -> None:
    """Our own out-of-range value is a LocalProtocolError, never silently truncated."""
    with pytest.raises(LocalProtocolError):
        encode(VoteInfo(seq=2**32, vote=Vote.ACK, ring_id=RingId(1, 1)))
    with pytest.raises(LocalProtocolError):
        encode(NodeList(seq=1, nodes=(NodeInfo(0),)))


def test_payload_decoder_rejects_unknown_type_before_contents() -> None:
    """decode_payload of type 18 raises code 4 whatever the payload holds."""
    with pytest.raises(DecodeError) as err:
        decode_payload(18, b"garbage")
    assert err.value.reason == "unknown_message_type"


@pytest.mark.parametrize(
    ("tlvs", "seq"),
    [
        (SEQ1 + pack_tlv(OptionType.VOTE, b"\7"), 1),  # bad value after the seq
        (pack_tlv(OptionType.VOTE, b"\7") + SEQ1, None),  # failure before the seq is read
        (SEQ1 + pack_tlv(0, b"\0\0\0\2") + b"\0\2", 2),  # stray bytes: the last seq read
        (SEQ1 + b"\0\2\0\x09", 1),  # a TLV running past the end
        (pack_tlv(0, b"\0\0\0\0\1"), None),  # the seq itself has a bad width
    ],
    ids=["bad_value_after_seq", "bad_value_before_seq", "stray_bytes", "overrun", "bad_seq"],
)
def test_decode_error_carries_the_seq_read_before_the_failure(tlvs: bytes, seq: int | None) -> None:
    """As the C decoder: the error reply can echo the seq when it was read (reference 4.2)."""
    with pytest.raises(DecodeError) as err:
        decode(msg(MessageType.ECHO_REQUEST, tlvs))
    assert err.value.seq == seq
