"""Framing of the qnetd protocol: the 6-byte message header and the 4-byte TLV item header.

Reference section 1.2-1.3. Owns byte layout only; what an option's value means lives in
`proto.qnetd_options`. No clock, sockets or logging.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from proto.errors import DecodeError, LocalProtocolError

MESSAGE_HEADER = struct.Struct(">HI")  # u16 message type, u32 payload length
TLV_HEADER = struct.Struct(">HH")  # u16 option type, u16 value length
MESSAGE_HEADER_SIZE = MESSAGE_HEADER.size  # 6; size limits include it (reference gotcha 1)
TLV_HEADER_SIZE = TLV_HEADER.size  # 4
MAX_TLV_VALUE = 0xFFFF
MAX_PAYLOAD = 0xFFFFFFFF


def pack_header(msg_type: int, payload_length: int) -> bytes:
    """The 6-byte header of a message whose payload is `payload_length` bytes."""
    if not 0 <= payload_length <= MAX_PAYLOAD:
        raise LocalProtocolError(f"payload of {payload_length} bytes does not fit u32")
    return MESSAGE_HEADER.pack(msg_type, payload_length)


def unpack_header(header: bytes) -> tuple[int, int]:
    """(message type, payload length) from exactly 6 header bytes."""
    msg_type, length = MESSAGE_HEADER.unpack(header)
    return int(msg_type), int(length)


def pack_tlv(option: int, value: bytes) -> bytes:
    """One TLV item."""
    if len(value) > MAX_TLV_VALUE:
        raise LocalProtocolError(f"option {option}: value of {len(value)} bytes exceeds 65535")
    return TLV_HEADER.pack(option, len(value)) + value


def iter_tlvs(payload: bytes | memoryview) -> Iterator[tuple[int, bytes]]:
    """Yield (option type, value) pairs; the last item must end exactly at the payload's end."""
    view = memoryview(payload)
    offset = 0
    end = len(view)
    while offset < end:
        if end - offset < TLV_HEADER_SIZE:
            raise DecodeError("bad_message", f"{end - offset} stray bytes after the last TLV")
        option, length = TLV_HEADER.unpack_from(view, offset)
        offset += TLV_HEADER_SIZE
        if offset + length > end:
            raise DecodeError("bad_message", f"option {option} runs {length} bytes past the end")
        yield int(option), bytes(view[offset : offset + length])
        offset += length
