"""The eighteen qnetd message types as frozen dataclasses, with `encode` and `decode`.

Reference section 3. Every field is optional (None = TLV absent): which TLVs a message needs is
the session layer's business (it answers error 7), not the codec's. `FIELDS` lists each type's
TLVs in the order the C implementation writes them, so encoding is byte-exact with the real peers.
No clock, sockets or logging.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

from proto.errors import DecodeError
from proto.qnetd_enums import MessageType, OptionType, ReplyErrorCode
from proto.qnetd_options import CODECS, NodeInfo, RingId, TieBreaker
from proto.tlv import MESSAGE_HEADER_SIZE, iter_tlvs, pack_header, pack_tlv, unpack_header

O = OptionType
DEFAULT_MAX_MESSAGE_SIZE = 32768  # max_client_receive_size, header included (reference 1.5)
ALL_MESSAGE_TYPES: tuple[int, ...] = tuple(MessageType)
ALL_OPTION_TYPES: tuple[int, ...] = tuple(OptionType)


@dataclass(frozen=True, slots=True)
class QnetdMessage:
    """Base of every qnetd message: its type and its TLVs in emission order."""

    TYPE: ClassVar[MessageType]
    FIELDS: ClassVar[tuple[tuple[str, OptionType], ...]]
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class Preinit(QnetdMessage):
    """Client's first message: which cluster it belongs to."""

    TYPE = MessageType.PREINIT
    FIELDS = (("seq", O.MSG_SEQ_NUMBER), ("cluster_name", O.CLUSTER_NAME))
    cluster_name: bytes | None = None


@dataclass(frozen=True, slots=True)
class PreinitReply(QnetdMessage):
    """Server's TLS mode and whether it wants a client certificate."""

    TYPE = MessageType.PREINIT_REPLY
    FIELDS = (
        ("seq", O.MSG_SEQ_NUMBER),
        ("tls_supported", O.TLS_SUPPORTED),
        ("tls_client_cert_required", O.TLS_CLIENT_CERT_REQUIRED),
    )
    tls_supported: int | None = None
    tls_client_cert_required: bool | None = None


@dataclass(frozen=True, slots=True)
class StartTls(QnetdMessage):
    """Client asks to switch the connection to TLS right after this message; no reply."""

    TYPE = MessageType.STARTTLS
    FIELDS = (("seq", O.MSG_SEQ_NUMBER),)


@dataclass(frozen=True, slots=True)
class Init(QnetdMessage):
    """Client's identity and settings: node id, algorithm, heartbeat, tie-breaker, ring."""

    TYPE = MessageType.INIT
    FIELDS = (
        ("seq", O.MSG_SEQ_NUMBER),
        ("supported_messages", O.SUPPORTED_MESSAGES),
        ("supported_options", O.SUPPORTED_OPTIONS),
        ("node_id", O.NODE_ID),
        ("decision_algorithm", O.DECISION_ALGORITHM),
        ("heartbeat_interval", O.HEARTBEAT_INTERVAL),
        ("tie_breaker", O.TIE_BREAKER),
        ("ring_id", O.RING_ID),
    )
    supported_messages: tuple[int, ...] | None = None
    supported_options: tuple[int, ...] | None = None
    node_id: int | None = None
    decision_algorithm: int | None = None
    heartbeat_interval: int | None = None
    tie_breaker: TieBreaker | None = None
    ring_id: RingId | None = None


@dataclass(frozen=True, slots=True)
class InitReply(QnetdMessage):
    """Server's verdict on INIT (error code inside) and its limits and algorithms."""

    TYPE = MessageType.INIT_REPLY
    FIELDS = (
        ("reply_error_code", O.REPLY_ERROR_CODE),
        ("supported_messages", O.SUPPORTED_MESSAGES),
        ("supported_options", O.SUPPORTED_OPTIONS),
        ("seq", O.MSG_SEQ_NUMBER),
        ("server_maximum_request_size", O.SERVER_MAXIMUM_REQUEST_SIZE),
        ("server_maximum_reply_size", O.SERVER_MAXIMUM_REPLY_SIZE),
        ("supported_decision_algorithms", O.SUPPORTED_DECISION_ALGORITHMS),
    )
    reply_error_code: int | None = None
    supported_messages: tuple[int, ...] | None = None
    supported_options: tuple[int, ...] | None = None
    server_maximum_request_size: int | None = None
    server_maximum_reply_size: int | None = None
    supported_decision_algorithms: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True)
class ServerError(QnetdMessage):
    """Server's answer to a protocol error; the connection stays open."""

    TYPE = MessageType.SERVER_ERROR
    FIELDS = (("seq", O.MSG_SEQ_NUMBER), ("reply_error_code", O.REPLY_ERROR_CODE))
    reply_error_code: int | None = None


@dataclass(frozen=True, slots=True)
class SetOption(QnetdMessage):
    """Client changes its heartbeat interval and/or keep-active-partition flag."""

    TYPE = MessageType.SET_OPTION
    FIELDS = (
        ("seq", O.MSG_SEQ_NUMBER),
        ("heartbeat_interval", O.HEARTBEAT_INTERVAL),
        ("keep_active_partition_tie_breaker", O.KEEP_ACTIVE_PARTITION_TIE_BREAKER),
    )
    heartbeat_interval: int | None = None
    keep_active_partition_tie_breaker: bool | None = None


@dataclass(frozen=True, slots=True)
class SetOptionReply(QnetdMessage):
    """Current values of the options the SET_OPTION carried."""

    TYPE = MessageType.SET_OPTION_REPLY
    FIELDS = SetOption.FIELDS
    heartbeat_interval: int | None = None
    keep_active_partition_tie_breaker: bool | None = None


@dataclass(frozen=True, slots=True)
class EchoRequest(QnetdMessage):
    """Client heartbeat."""

    TYPE = MessageType.ECHO_REQUEST
    FIELDS = (("seq", O.MSG_SEQ_NUMBER),)


@dataclass(frozen=True, slots=True)
class EchoReply(QnetdMessage):
    """Server's copy of an ECHO_REQUEST with the type changed."""

    TYPE = MessageType.ECHO_REPLY
    FIELDS = (("seq", O.MSG_SEQ_NUMBER),)


@dataclass(frozen=True, slots=True)
class NodeList(QnetdMessage):
    """Config (types 0/1), membership (2) or quorum (3) node list."""

    TYPE = MessageType.NODE_LIST
    FIELDS = (
        ("seq", O.MSG_SEQ_NUMBER),
        ("node_list_type", O.NODE_LIST_TYPE),
        ("ring_id", O.RING_ID),
        ("config_version", O.CONFIG_VERSION),
        ("quorate", O.QUORATE),
        ("nodes", O.NODE_INFO),
        ("heuristics", O.HEURISTICS),
    )
    node_list_type: int | None = None
    ring_id: RingId | None = None
    config_version: int | None = None
    quorate: bool | None = None
    nodes: tuple[NodeInfo, ...] = ()
    heuristics: int | None = None


@dataclass(frozen=True, slots=True)
class NodeListReply(QnetdMessage):
    """Server's answer to a node list, with a vote."""

    TYPE = MessageType.NODE_LIST_REPLY
    FIELDS = (
        ("seq", O.MSG_SEQ_NUMBER),
        ("node_list_type", O.NODE_LIST_TYPE),
        ("ring_id", O.RING_ID),
        ("vote", O.VOTE),
    )
    node_list_type: int | None = None
    ring_id: RingId | None = None
    vote: int | None = None


@dataclass(frozen=True, slots=True)
class AskForVote(QnetdMessage):
    """Client asks for its current vote (qdevice 3.0.3 never sends it)."""

    TYPE = MessageType.ASK_FOR_VOTE
    FIELDS = (("seq", O.MSG_SEQ_NUMBER),)


@dataclass(frozen=True, slots=True)
class AskForVoteReply(QnetdMessage):
    """The vote asked for."""

    TYPE = MessageType.ASK_FOR_VOTE_REPLY
    FIELDS = (("seq", O.MSG_SEQ_NUMBER), ("vote", O.VOTE), ("ring_id", O.RING_ID))
    vote: int | None = None
    ring_id: RingId | None = None


@dataclass(frozen=True, slots=True)
class VoteInfo(QnetdMessage):
    """Unsolicited vote from the server; the seq is the server's per-client counter."""

    TYPE = MessageType.VOTE_INFO
    FIELDS = (("seq", O.MSG_SEQ_NUMBER), ("vote", O.VOTE), ("ring_id", O.RING_ID))
    vote: int | None = None
    ring_id: RingId | None = None


@dataclass(frozen=True, slots=True)
class VoteInfoReply(QnetdMessage):
    """Client acknowledges a VOTE_INFO (same seq)."""

    TYPE = MessageType.VOTE_INFO_REPLY
    FIELDS = (("seq", O.MSG_SEQ_NUMBER),)


@dataclass(frozen=True, slots=True)
class HeuristicsChange(QnetdMessage):
    """Client's regular heuristics result changed."""

    TYPE = MessageType.HEURISTICS_CHANGE
    FIELDS = (("seq", O.MSG_SEQ_NUMBER), ("heuristics", O.HEURISTICS))
    heuristics: int | None = None


@dataclass(frozen=True, slots=True)
class HeuristicsChangeReply(QnetdMessage):
    """Server's vote after a heuristics change, echoing the heuristics."""

    TYPE = MessageType.HEURISTICS_CHANGE_REPLY
    FIELDS = (
        ("seq", O.MSG_SEQ_NUMBER),
        ("vote", O.VOTE),
        ("ring_id", O.RING_ID),
        ("heuristics", O.HEURISTICS),
    )
    vote: int | None = None
    ring_id: RingId | None = None
    heuristics: int | None = None


MESSAGE_CLASSES: dict[MessageType, type[QnetdMessage]] = {
    cls.TYPE: cls
    for cls in (
        Preinit,
        PreinitReply,
        StartTls,
        Init,
        InitReply,
        ServerError,
        SetOption,
        SetOptionReply,
        EchoRequest,
        EchoReply,
        NodeList,
        NodeListReply,
        AskForVote,
        AskForVoteReply,
        VoteInfo,
        VoteInfoReply,
        HeuristicsChange,
        HeuristicsChangeReply,
    )
}
_REPEATED = frozenset({OptionType.NODE_INFO})
_CLASS_BY_VALUE: dict[int, type[QnetdMessage]] = {int(t): c for t, c in MESSAGE_CLASSES.items()}
_OPTION_BY_VALUE: dict[int, OptionType] = {int(o): o for o in OptionType}
_ATTR_BY_OPTION: dict[type[QnetdMessage], dict[OptionType, str]] = {
    cls: {option: attr for attr, option in cls.FIELDS} for cls in MESSAGE_CLASSES.values()
}


def encode_payload(msg: QnetdMessage) -> bytes:
    """The TLV sequence of `msg`, in the C implementation's order."""
    parts: list[bytes] = []
    for attr, option in msg.FIELDS:
        value = getattr(msg, attr)
        if value is None:
            continue
        codec = CODECS[option]
        items = value if option in _REPEATED else (value,)
        parts.extend(pack_tlv(option, codec.encode(item)) for item in items)
    return b"".join(parts)


def encode(msg: QnetdMessage) -> bytes:
    """The whole message: 6-byte header and TLVs."""
    payload = encode_payload(msg)
    return pack_header(msg.TYPE, len(payload)) + payload


def decode_payload(msg_type: int, payload: bytes) -> QnetdMessage:
    """Typed message from a message type and its payload (the bytes after the header)."""
    cls = _CLASS_BY_VALUE.get(msg_type)
    if cls is None:
        raise DecodeError(
            "unknown_message_type", f"type {msg_type}", code=ReplyErrorCode.UNSUPPORTED_MESSAGE
        )
    if not payload:
        raise DecodeError("bad_message", f"{cls.__name__} with an empty payload")
    by_option = _ATTR_BY_OPTION[cls]
    values: dict[str, Any] = {}
    repeated: list[NodeInfo] = []
    seq: int | None = None
    try:
        for option, raw in iter_tlvs(payload):
            known = _OPTION_BY_VALUE.get(option)
            if known is None:
                continue  # unknown options are skipped (forward compatibility)
            value = CODECS[known].decode(raw)  # validated even if this type does not use it
            if known is OptionType.MSG_SEQ_NUMBER:
                seq = value
            if known in _REPEATED:
                repeated.append(value)
            elif known in by_option:
                values[by_option[known]] = value
    except DecodeError as exc:
        # Like the C decoder, an error reply echoes the seq read so far (reference 4.2).
        exc.seq = seq
        raise
    if OptionType.NODE_INFO in by_option:
        values[by_option[OptionType.NODE_INFO]] = tuple(repeated)
    return cls(**values)


def decode(data: bytes, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> QnetdMessage:
    """Exactly one whole message (header included) to a typed message."""
    if len(data) < MESSAGE_HEADER_SIZE:
        raise DecodeError("bad_message", f"{len(data)} bytes is shorter than a header")
    msg_type, length = unpack_header(data[:MESSAGE_HEADER_SIZE])
    if MESSAGE_HEADER_SIZE + length > max_message_size:
        raise DecodeError(
            "too_long", f"{length} byte payload", code=ReplyErrorCode.MESSAGE_TOO_LONG
        )
    if len(data) != MESSAGE_HEADER_SIZE + length:
        raise DecodeError("bad_message", f"header says {length} bytes, got {len(data) - 6}")
    return decode_payload(msg_type, data[MESSAGE_HEADER_SIZE:])


def echo_reply_bytes(raw_request: bytes) -> bytes:
    """ECHO_REPLY as the real server builds it: the request's bytes with the type set to 9."""
    return (
        pack_header(MessageType.ECHO_REPLY, len(raw_request) - MESSAGE_HEADER_SIZE)
        + (raw_request[MESSAGE_HEADER_SIZE:])
    )


def field_names(cls: type[QnetdMessage]) -> tuple[str, ...]:
    """The dataclass field names of a message class (for tests and tools)."""
    return tuple(f.name for f in fields(cls))
