"""Value codecs of the qnetd TLV options: widths, ranges and the nested NODE_INFO.

Reference sections 1.3-1.4 and 2.2. Each option type has one codec that turns a TLV value into a
Python value (raising `DecodeError` on a bad width or an out-of-range enumeration) and back
(raising `LocalProtocolError` on a value that does not fit). No clock, sockets or logging.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from proto.errors import DecodeError, LocalProtocolError
from proto.qnetd_enums import (
    DecisionAlgorithm,
    Heuristics,
    NodeListType,
    NodeState,
    OptionType,
    ReplyErrorCode,
    TieBreakerMode,
    TlsSupported,
    Vote,
)
from proto.tlv import iter_tlvs, pack_tlv

_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_RING_ID = struct.Struct(">IQ")  # 12 bytes: leader node id, ring sequence
_TIE_BREAKER = struct.Struct(">BI")  # 5 bytes: mode, node id (meaningful only in mode 3)


@dataclass(frozen=True, slots=True)
class RingId:
    """A corosync ring id: the ring leader's node id and the ring sequence number."""

    node_id: int
    seq: int

    def __str__(self) -> str:
        return f"{self.node_id:x}.{self.seq:x}"


@dataclass(frozen=True, slots=True)
class TieBreaker:
    """Tie-breaker: lowest / highest node id, or one named node (node_id only in mode NODE_ID)."""

    mode: TieBreakerMode
    node_id: int = 0


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One node of a node list; data_center_id 0 and state None mean 'not sent'."""

    node_id: int
    data_center_id: int = 0
    state: NodeState | None = None


@dataclass(frozen=True, slots=True)
class OptionCodec:
    """How one option's value travels: `decode(value bytes)` and `encode(python value)`."""

    decode: Callable[[bytes], Any]
    encode: Callable[[Any], bytes]


def _fixed(st: struct.Struct, what: str, raw: bytes) -> tuple[Any, ...]:
    if len(raw) != st.size:
        raise DecodeError("bad_message", f"{what}: {len(raw)} bytes, expected {st.size}")
    return st.unpack(raw)


def _pack(st: struct.Struct, what: str, *values: int) -> bytes:
    try:
        return st.pack(*values)
    except struct.error as exc:
        raise LocalProtocolError(f"{what}: {values} does not fit: {exc}") from exc


def _uint(st: struct.Struct, what: str) -> OptionCodec:
    return OptionCodec(
        decode=lambda raw: int(_fixed(st, what, raw)[0]),
        encode=lambda value: _pack(st, what, value),
    )


def _enum_u8(enum: type[IntEnum], what: str) -> OptionCodec:
    members = {int(m): m for m in enum}

    def decode(raw: bytes) -> IntEnum:
        if len(raw) != 1:
            raise DecodeError("bad_message", f"{what}: {len(raw)} bytes, expected 1")
        member = members.get(raw[0])
        if member is None:
            raise DecodeError("bad_message", f"{what}: value {raw[0]} out of range")
        return member

    return OptionCodec(decode=decode, encode=lambda value: _pack(_U8, what, int(value)))


def _strict_bool(what: str) -> OptionCodec:
    def decode(raw: bytes) -> bool:
        (value,) = _fixed(_U8, what, raw)
        if value > 1:
            raise DecodeError("bad_message", f"{what}: value {value} is not 0 or 1")
        return bool(value)

    return OptionCodec(decode=decode, encode=lambda value: _pack(_U8, what, int(value)))


def _any_bool(what: str) -> OptionCodec:
    return OptionCodec(
        decode=lambda raw: bool(_fixed(_U8, what, raw)[0]),
        encode=lambda value: _pack(_U8, what, int(value)),
    )


def _known_or_int(enum: type[IntEnum], st: struct.Struct, what: str) -> OptionCodec:
    """A value the decoder accepts whatever it is; known values come back as the enum."""

    def decode(raw: bytes) -> int:
        (value,) = _fixed(st, what, raw)
        try:
            return enum(value)
        except ValueError:
            return int(value)

    return OptionCodec(decode=decode, encode=lambda value: _pack(st, what, int(value)))


def _u16_array(what: str) -> OptionCodec:
    def decode(raw: bytes) -> tuple[int, ...]:
        if len(raw) % 2:
            raise DecodeError("bad_message", f"{what}: odd length {len(raw)}")
        return tuple(v for (v,) in _U16.iter_unpack(raw))

    def encode(values: tuple[int, ...]) -> bytes:
        return b"".join(_pack(_U16, what, v) for v in values)

    return OptionCodec(decode=decode, encode=encode)


def _decode_ring_id(raw: bytes) -> RingId:
    node_id, seq = _fixed(_RING_ID, "ring id", raw)
    return RingId(node_id, seq)


def _decode_tie_breaker(raw: bytes) -> TieBreaker:
    mode, node_id = _fixed(_TIE_BREAKER, "tie-breaker", raw)
    try:
        known = TieBreakerMode(mode)
    except ValueError:
        raise DecodeError("bad_message", f"tie-breaker mode {mode} out of range") from None
    return TieBreaker(known, node_id if known is TieBreakerMode.NODE_ID else 0)


def _encode_tie_breaker(tb: TieBreaker) -> bytes:
    node_id = tb.node_id if tb.mode is TieBreakerMode.NODE_ID else 0
    return _pack(_TIE_BREAKER, "tie-breaker", int(tb.mode), node_id)


def _decode_node_info(raw: bytes) -> NodeInfo:
    node_id = data_center_id = 0
    state: NodeState | None = None
    for option, value in iter_tlvs(raw):
        if option == OptionType.NODE_ID:
            node_id = CODECS[OptionType.NODE_ID].decode(value)
        elif option == OptionType.DATA_CENTER_ID:
            data_center_id = CODECS[OptionType.DATA_CENTER_ID].decode(value)
        elif option == OptionType.NODE_STATE:
            state = CODECS[OptionType.NODE_STATE].decode(value)
    if node_id == 0:
        raise DecodeError("bad_message", "node info without a non-zero node id")
    return NodeInfo(node_id, data_center_id, state)


def _encode_node_info(info: NodeInfo) -> bytes:
    if info.node_id == 0:
        raise LocalProtocolError("node info needs a non-zero node id")
    parts = [pack_tlv(OptionType.NODE_ID, _pack(_U32, "node id", info.node_id))]
    if info.data_center_id:
        parts.append(pack_tlv(OptionType.DATA_CENTER_ID, _pack(_U32, "dc id", info.data_center_id)))
    if info.state is not None:
        parts.append(pack_tlv(OptionType.NODE_STATE, _pack(_U8, "node state", int(info.state))))
    return b"".join(parts)


CODECS: dict[OptionType, OptionCodec] = {
    OptionType.MSG_SEQ_NUMBER: _uint(_U32, "seq"),
    OptionType.CLUSTER_NAME: OptionCodec(decode=bytes, encode=bytes),
    OptionType.TLS_SUPPORTED: _enum_u8(TlsSupported, "tls supported"),
    OptionType.TLS_CLIENT_CERT_REQUIRED: _any_bool("tls client cert required"),
    OptionType.SUPPORTED_MESSAGES: _u16_array("supported messages"),
    OptionType.SUPPORTED_OPTIONS: _u16_array("supported options"),
    OptionType.REPLY_ERROR_CODE: _known_or_int(ReplyErrorCode, _U16, "reply error code"),
    OptionType.SERVER_MAXIMUM_REQUEST_SIZE: _uint(_U32, "max request size"),
    OptionType.SERVER_MAXIMUM_REPLY_SIZE: _uint(_U32, "max reply size"),
    OptionType.NODE_ID: _uint(_U32, "node id"),
    OptionType.SUPPORTED_DECISION_ALGORITHMS: _u16_array("supported algorithms"),
    OptionType.DECISION_ALGORITHM: _known_or_int(DecisionAlgorithm, _U16, "algorithm"),
    OptionType.HEARTBEAT_INTERVAL: _uint(_U32, "heartbeat interval"),
    OptionType.RING_ID: OptionCodec(
        decode=_decode_ring_id,
        encode=lambda r: _pack(_RING_ID, "ring id", r.node_id, r.seq),
    ),
    OptionType.CONFIG_VERSION: _uint(_U64, "config version"),
    OptionType.DATA_CENTER_ID: _uint(_U32, "data center id"),
    OptionType.NODE_STATE: _enum_u8(NodeState, "node state"),
    OptionType.NODE_INFO: OptionCodec(decode=_decode_node_info, encode=_encode_node_info),
    OptionType.NODE_LIST_TYPE: _enum_u8(NodeListType, "node list type"),
    OptionType.VOTE: _enum_u8(Vote, "vote"),
    OptionType.QUORATE: _strict_bool("quorate"),
    OptionType.TIE_BREAKER: OptionCodec(decode=_decode_tie_breaker, encode=_encode_tie_breaker),
    OptionType.HEURISTICS: _enum_u8(Heuristics, "heuristics"),
    OptionType.KEEP_ACTIVE_PARTITION_TIE_BREAKER: _strict_bool("keep active partition"),
}
