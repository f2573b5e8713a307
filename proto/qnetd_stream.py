"""Incremental decoder for a qnetd TCP stream: arbitrary chunks in, whole messages out.

Reference sections 1.2, 1.5 and 4.4. It never consumes a byte past the message it returns, so an
adapter can hand what follows a STARTTLS (the peer's TLS ClientHello) to the TLS layer with
`take_buffered()`. Oversize and unknown-type messages are skipped whole, so the stream stays in
frame after every error. Memory is bounded by `max_message_size`. No clock, sockets or logging.

States: HEADER (collecting 6 header bytes) -> PAYLOAD (collecting `length` bytes) -> HEADER;
HEADER -> SKIP (discarding the payload of an unknown-type or oversize message) -> HEADER.

The type is checked before the size (qdevices/msgio.c). When a skipped message is reported
depends on the side: a client (qdevice) disconnects as soon as the header is bad, so by default
the error is raised at the header; a server (`defer_skip_errors=True`) reports it only once the
last byte has arrived, as corosync-qnetd 3.0.3 does, so a peer that announces 1 GiB and sends
less (an HTTP request read as a header, a message cut short by the peer closing) gets no error
reply, and an unknown type with an empty payload is reported with code 0 (`NO_ERROR`), the code
3.0.3 puts in that SERVER_ERROR.
"""

from __future__ import annotations

from enum import Enum, auto

from proto.errors import DecodeError, LocalProtocolError
from proto.qnetd_enums import MessageType, ReplyErrorCode
from proto.qnetd_messages import DEFAULT_MAX_MESSAGE_SIZE, QnetdMessage, decode_payload
from proto.tlv import MESSAGE_HEADER_SIZE, unpack_header

MESSAGE_TYPE_VALUES = frozenset(int(t) for t in MessageType)
MIN_MESSAGE_SIZE_LIMIT = 16  # qnetd refuses a smaller max_client_receive_size (reference 8.2)


class _State(Enum):
    HEADER = auto()
    PAYLOAD = auto()
    SKIP = auto()


class StreamDecoder:
    """Turns a byte stream into messages; call `feed()`, then `next_message()` until None."""

    def __init__(
        self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE, *, defer_skip_errors: bool = False
    ) -> None:
        self.max_message_size = max_message_size
        self.defer_skip_errors = defer_skip_errors
        self._buffer = bytearray()
        self._state = _State.HEADER
        self._msg_type = 0
        self._length = 0
        self._skip_left = 0
        self._skip_error: DecodeError | None = None
        self._pending: DecodeError | None = None
        self._skip_notice: DecodeError | None = None
        """The error of a skipped message whose last byte arrived, raised by next_message()."""
        self.last_raw = b""
        """The whole bytes (header included) of the last message returned or rejected."""

    @property
    def max_message_size(self) -> int:
        """Largest whole message accepted (header included); may change between messages."""
        return self._max_message_size

    @max_message_size.setter
    def max_message_size(self, value: int) -> None:
        if value < MIN_MESSAGE_SIZE_LIMIT:
            raise LocalProtocolError(f"max message size {value} < {MIN_MESSAGE_SIZE_LIMIT}")
        self._max_message_size = value

    def feed(self, data: bytes) -> None:
        """Add bytes received from the peer."""
        if self._state is _State.SKIP:
            dropped = min(len(data), self._skip_left)
            self._skip_left -= dropped
            data = data[dropped:]
            if self._skip_left == 0:
                self._state = _State.HEADER
                self._pending = self._skip_error
                self._skip_notice = None
        self._buffer += data

    def bytes_wanted(self) -> int:
        """How many more bytes complete the current header, payload or skip (never 0)."""
        if self._state is _State.SKIP:
            return self._skip_left
        if self._state is _State.HEADER:
            return max(1, MESSAGE_HEADER_SIZE - len(self._buffer))
        return max(1, self._length - len(self._buffer))

    def take_skip_notice(self) -> DecodeError | None:
        """Once per deferred skip still under way: its error, so the adapter can log the start
        of a skip it will answer only at the end (or never, if the peer stops sending)."""
        notice, self._skip_notice = self._skip_notice, None
        return notice if self._state is _State.SKIP else None

    def take_buffered(self) -> bytes:
        """Hand over (and forget) the bytes received after the last whole message."""
        if self._state is not _State.HEADER:
            raise LocalProtocolError("take_buffered() in the middle of a message")
        rest = bytes(self._buffer)
        self._buffer.clear()
        return rest

    def next_message(self) -> QnetdMessage | None:
        """The next whole message, None if more bytes are needed; DecodeError for a bad one.

        An error consumes exactly the offending message: call again to continue the stream.
        """
        if self._pending is not None:
            error, self._pending = self._pending, None
            raise error
        if self._state is _State.HEADER:
            if len(self._buffer) < MESSAGE_HEADER_SIZE:
                return None
            self._start_message()
        if self._state is not _State.PAYLOAD or len(self._buffer) < self._length:
            return None
        payload = bytes(self._buffer[: self._length])
        del self._buffer[: self._length]
        self._state = _State.HEADER
        self.last_raw = bytes(self._header) + payload
        return decode_payload(self._msg_type, payload)

    def _start_message(self) -> None:
        self._header = bytes(self._buffer[:MESSAGE_HEADER_SIZE])
        del self._buffer[:MESSAGE_HEADER_SIZE]
        self._msg_type, self._length = unpack_header(self._header)
        if self._msg_type not in MESSAGE_TYPE_VALUES:
            # 3.0.3 server quirk: an empty unknown message completes with its header, before
            # the reason is recorded, so its SERVER_ERROR carries code 0.
            quirk = self.defer_skip_errors and not self._length
            code = ReplyErrorCode.NO_ERROR if quirk else ReplyErrorCode.UNSUPPORTED_MESSAGE
            error = DecodeError("unknown_message_type", f"type {self._msg_type}", code=code)
        elif MESSAGE_HEADER_SIZE + self._length > self.max_message_size:
            error = DecodeError(
                "too_long",
                f"type {self._msg_type}, {self._length} byte payload",
                code=ReplyErrorCode.MESSAGE_TOO_LONG,
            )
        else:
            self._state = _State.PAYLOAD
            return
        self.last_raw = self._header
        dropped = min(len(self._buffer), self._length)
        del self._buffer[:dropped]
        self._skip_left = self._length - dropped
        if self._skip_left:
            self._state = _State.SKIP
            self._skip_error = error if self.defer_skip_errors else None
            if self.defer_skip_errors:
                self._skip_notice = error
                return  # raised by next_message() once the last byte is skipped
        raise error
