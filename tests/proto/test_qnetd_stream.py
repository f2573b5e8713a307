"""StreamDecoder: same results however the stream is split; garbage never escapes DecodeError."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proto.errors import DecodeError
from proto.qnetd_enums import MessageType, OptionType, ReplyErrorCode
from proto.qnetd_messages import EchoRequest, Preinit, StartTls, encode
from proto.qnetd_stream import StreamDecoder
from proto.tlv import pack_header, pack_tlv
from tests.proto.strategies import wire_messages

LIMIT = 2048


def oversize(n: int) -> bytes:
    return pack_header(MessageType.PREINIT, n) + b"z" * n


def garbage_frame(body: bytes) -> bytes:
    """A framed message whose TLVs are rubbish (undecodable, but correctly framed)."""
    return pack_header(MessageType.NODE_LIST, len(body) + 2) + b"\x00\x11" + body


frames = st.one_of(
    wire_messages.map(encode).filter(lambda b: len(b) <= LIMIT),
    st.integers(LIMIT, 3 * LIMIT).map(oversize),
    st.binary(max_size=40).map(garbage_frame),
    st.integers(18, 0xFFFF).map(lambda t: pack_header(t, 4) + b"\0\0\0\0"),
)


def drain(decoder: StreamDecoder) -> list[Any]:
    """Everything the decoder can produce now: messages and (reason, code) for errors."""
    out: list[Any] = []
    for _ in range(10_000):
        try:
            m = decoder.next_message()
        except DecodeError as e:
            out.append((e.reason, int(e.code)))
            continue
        if m is None:
            return out
        out.append(m)
    raise AssertionError("decoder did not stop producing")


def run(chunks: list[bytes]) -> list[Any]:
    decoder = StreamDecoder(max_message_size=LIMIT)
    out: list[Any] = []
    for chunk in chunks:
        decoder.feed(chunk)
        out += drain(decoder)
    return out


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=300)
@given(st.lists(frames, min_size=1, max_size=8), st.lists(st.integers(0, 10**6), max_size=30))
def test_same_result_whole_bytewise_and_randomly_split(
    stream: list[bytes], cuts: list[int]
) -> None:
    """Fed whole, byte by byte, or split anywhere: the same messages and errors, in order."""
    data = b"".join(stream)
    whole = run([data])
    assert len(whole) == len(stream)
    assert run([data[i : i + 1] for i in range(len(data))]) == whole
    assert run(split(data, cuts)) == whole


@settings(max_examples=500)
@given(st.binary(max_size=3000))
def test_random_garbage_decodes_or_raises_decode_error(data: bytes) -> None:
    """Arbitrary bytes produce messages or DecodeErrors only, and the decoder always stops."""
    decoder = StreamDecoder(max_message_size=LIMIT)
    decoder.feed(data)
    drain(decoder)  # any other exception, or a non-terminating loop, fails the test


def test_error_keeps_stream_in_frame() -> None:
    """After an oversize, an unknown-type and an undecodable message, the next one decodes."""
    echo = encode(EchoRequest(seq=5))
    data = oversize(LIMIT) + pack_header(40, 4) + b"\0" * 4 + garbage_frame(b"\xff") + echo
    assert run([data]) == [
        ("too_long", ReplyErrorCode.MESSAGE_TOO_LONG),
        ("unknown_message_type", ReplyErrorCode.UNSUPPORTED_MESSAGE),
        ("bad_message", ReplyErrorCode.ERROR_DECODING_MSG),
        EchoRequest(seq=5),
    ]


def test_oversize_payload_is_skipped_without_buffering_it() -> None:
    """Client side (default): an announced 4 GiB message is rejected from its header (qdevice
    disconnects there) and never buffered."""
    decoder = StreamDecoder()
    decoder.feed(pack_header(MessageType.INIT, 0xFFFFFFFF))
    with pytest.raises(DecodeError) as err:
        decoder.next_message()
    assert err.value.code == ReplyErrorCode.MESSAGE_TOO_LONG
    decoder.feed(b"x" * 100_000)
    assert decoder.next_message() is None
    assert decoder.bytes_wanted() == 0xFFFFFFFF - 100_000


def server_run(chunks: list[bytes]) -> list[Any]:
    decoder = StreamDecoder(max_message_size=LIMIT, defer_skip_errors=True)
    out: list[Any] = []
    for chunk in chunks:
        decoder.feed(chunk)
        out += drain(decoder)
    return out


def test_server_side_skips_without_buffering_and_without_early_error() -> None:
    """Server side: an announced 4 GiB message is never buffered and raises nothing early."""
    decoder = StreamDecoder(defer_skip_errors=True)
    decoder.feed(pack_header(MessageType.INIT, 0xFFFFFFFF))
    assert decoder.next_message() is None
    notice = decoder.take_skip_notice()
    assert notice is not None
    assert notice.reason == "too_long"
    assert decoder.take_skip_notice() is None  # once per skip
    decoder.feed(b"x" * 100_000)
    assert decoder.next_message() is None
    assert decoder.bytes_wanted() == 0xFFFFFFFF - 100_000
    assert len(decoder._buffer) == 0


def test_skipped_message_is_reported_after_its_last_byte() -> None:
    """As 3.0.3's msgio_read on the server: the error comes when the skip ends, then the stream
    goes on."""
    decoder = StreamDecoder(max_message_size=LIMIT, defer_skip_errors=True)
    data = oversize(LIMIT) + encode(EchoRequest(seq=5))
    decoder.feed(data[: LIMIT + 5])  # one byte short of the oversize message's end
    assert decoder.next_message() is None
    decoder.feed(data[LIMIT + 5 :])
    with pytest.raises(DecodeError) as err:
        decoder.next_message()
    assert (err.value.reason, err.value.code) == ("too_long", ReplyErrorCode.MESSAGE_TOO_LONG)
    assert decoder.next_message() == EchoRequest(seq=5)


def test_http_request_gets_no_error() -> None:
    """'GET / HTTP/1.1' reads as type 0x4745 announcing ~1.4 GB: skipped silently, no error."""
    decoder = StreamDecoder(defer_skip_errors=True)
    decoder.feed(b"GET / HTTP/1.1\r\nHost: qnetd\r\nUser-Agent: curl/8\r\n\r\n")
    assert drain(decoder) == []


@pytest.mark.parametrize("run_side", [run, server_run], ids=["client", "server"])
def test_unknown_type_is_checked_before_size(run_side: Any) -> None:
    """An oversize message of an unknown type is an unsupported message (4), not too long (5)."""
    assert run_side([pack_header(40, LIMIT) + b"\0" * LIMIT]) == [
        ("unknown_message_type", ReplyErrorCode.UNSUPPORTED_MESSAGE)
    ]


def test_empty_unknown_type_is_reported_with_code_0_by_a_server() -> None:
    """3.0.3 server quirk: an unknown type with an empty payload gets SERVER_ERROR code 0."""
    assert server_run([pack_header(40, 0)]) == [("unknown_message_type", ReplyErrorCode.NO_ERROR)]
    assert run([pack_header(40, 0)]) == [
        ("unknown_message_type", ReplyErrorCode.UNSUPPORTED_MESSAGE)
    ]


@settings(max_examples=200)
@given(st.lists(frames, min_size=1, max_size=8), st.lists(st.integers(0, 10**6), max_size=30))
def test_server_side_same_result_however_split(stream: list[bytes], cuts: list[int]) -> None:
    """Deferred errors too: whole, byte by byte or split anywhere, the same results in order."""
    data = b"".join(stream)
    whole = server_run([data])
    assert len(whole) == len(stream)
    assert server_run([data[i : i + 1] for i in range(len(data))]) == whole
    assert server_run(split(data, cuts)) == whole


def test_starttls_never_consumes_following_bytes() -> None:
    """Bytes after STARTTLS (a TLS ClientHello) stay buffered for the TLS layer, untouched."""
    hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc" + bytes(range(50))
    decoder = StreamDecoder()
    decoder.feed(encode(Preinit(seq=1, cluster_name=b"c")) + encode(StartTls(seq=2)) + hello)
    assert decoder.next_message() == Preinit(seq=1, cluster_name=b"c")
    assert decoder.next_message() == StartTls(seq=2)
    assert decoder.take_buffered() == hello
    assert decoder.next_message() is None


def test_bytes_wanted_reads_exactly_one_message() -> None:
    """Reading exactly bytes_wanted() each time yields each message with nothing left over."""
    data = encode(Preinit(seq=1, cluster_name=b"abc")) + encode(StartTls(seq=2))
    decoder, pos, got = StreamDecoder(), 0, []
    while pos < len(data):
        n = decoder.bytes_wanted()
        decoder.feed(data[pos : pos + n])
        pos += n
        if (m := decoder.next_message()) is not None:
            got.append(m)
            assert decoder.take_buffered() == b""
    assert got == [Preinit(seq=1, cluster_name=b"abc"), StartTls(seq=2)]


def test_last_raw_holds_whole_message_for_echo() -> None:
    """The server can echo the exact request bytes (reference: reply = copy of request)."""
    raw = (
        pack_header(MessageType.ECHO_REQUEST, 16)
        + pack_tlv(0, b"\0\0\0\1")
        + pack_tlv(OptionType.CLUSTER_NAME, b"abcd")
    )
    decoder = StreamDecoder()
    decoder.feed(raw)
    assert decoder.next_message() == EchoRequest(seq=1)
    assert decoder.last_raw == raw
