"""Differential fuzzing of two qnetd servers: generated malformed sequences, replies compared.

A *case* is one TCP connection: a protocol phase to reach first (`fresh`, `preinit`, `tls`,
`init`), then a byte sequence built from generated chunks (valid, mutated, truncated, oversize,
unknown-type and out-of-order messages, garbage). The same case is sent to Debian's
corosync-qnetd 3.0.3 and to votemesh-qnetd; each reply is decoded and reduced to what must be
equal (type, seq, reply code, which TLVs are present, the vote; an ECHO_REPLY, a copy of the
request, byte for byte), plus whether the server closed the connection. Every case derives
from one integer seed, so a failure is replayed with

    FUZZ_CASE_SEED=<seed> .venv/bin/python -m pytest tests/interop/test_qnetd_differential_fuzz.py

How a case ends. The runner models 3.0.3's framing (qdevices/msgio.c: 6-byte header, then the
announced payload) to find the end of the last whole message. It sends the bytes up to there,
then a *sentinel* ECHO_REQUEST whose reply (ECHO_REPLY or SERVER_ERROR, both echo the seq) marks
the end of the replies; then the unfinished tail, if any, and a half-close, and reads until the
server closes. A STARTTLS the server accepts ends the case there: the sentinel then meets the TLS
layer. Nothing waits for a fixed time except a server that never answers (then "timeout").

What may differ. The reference (shared/ref/qnetd-protocol.md 4.8) says a server that closes a
connection discards what it still had queued, so when a server closes on its own the shorter
reply list need only be a prefix of the longer. Everything else that differs must be one of the
deliberate differences in `EXPECTED_DIFFERENCES` (documented in docs/qnetd.md): each names the
message that triggers it, and the case cut just before that message must show no difference.
"""

from __future__ import annotations

import contextlib
import random
import socket
import ssl
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from proto.errors import DecodeError
from proto.qnetd_enums import MessageType, OptionType, TieBreakerMode
from proto.qnetd_messages import (
    EchoReply,
    EchoRequest,
    Init,
    InitReply,
    Preinit,
    PreinitReply,
    QnetdMessage,
    ServerError,
    StartTls,
    decode,
    encode,
)
from proto.qnetd_options import RingId, TieBreaker
from proto.qnetd_stream import StreamDecoder
from proto.tlv import MESSAGE_HEADER_SIZE, pack_header, pack_tlv
from tests.interop.debian_qnetd import ClientCredentials

PHASES = ("fresh", "preinit", "tls", "init")
MAX_RECEIVE = 32768  # both servers' default max_client_receive_size (reference 1.5)
SENTINEL_SEQ = 0xFEED5EED
SETUP_SEQ = 0x5E7
READ_TIMEOUT = 10.0  # only a server that never answers waits this long
TAIL = "tail sent, half-closed"  # marks where our half-close starts in the events
OPT = OptionType
MT = MessageType
CLIENT_TYPES: tuple[MessageType, ...] = (
    MT.PREINIT,
    MT.STARTTLS,
    MT.INIT,
    MT.SET_OPTION,
    MT.ECHO_REQUEST,
    MT.NODE_LIST,
)
CLIENT_TYPES += (MT.ASK_FOR_VOTE, MT.VOTE_INFO_REPLY, MT.HEURISTICS_CHANGE)
SERVER_TYPES: tuple[MessageType, ...] = (
    MT.PREINIT_REPLY,
    MT.INIT_REPLY,
    MT.SERVER_ERROR,
    MT.SET_OPTION_REPLY,
    MT.ECHO_REPLY,
)
SERVER_TYPES += (
    MT.NODE_LIST_REPLY,
    MT.ASK_FOR_VOTE_REPLY,
    MT.VOTE_INFO,
    MT.HEURISTICS_CHANGE_REPLY,
)
#: value ranges checked while decoding (reference 2.2): (good values, bad values)
ENUM_OPTIONS: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {
    OPT.TLS_SUPPORTED: ((0, 1, 2), (3, 255)),
    OPT.NODE_STATE: ((1, 2, 3), (0, 4)),
    OPT.NODE_LIST_TYPE: ((0, 1, 2, 3), (4, 200)),
    OPT.VOTE: ((1, 2, 3, 4, 5), (0, 6)),
    OPT.QUORATE: ((0, 1), (2,)),
    OPT.HEURISTICS: ((1, 2), (0, 3)),
    OPT.KEEP_ACTIVE_PARTITION_TIE_BREAKER: ((0, 1), (2, 9)),
}
WIDTH: dict[int, int] = {
    OPT.MSG_SEQ_NUMBER: 4,
    OPT.TLS_SUPPORTED: 1,
    OPT.TLS_CLIENT_CERT_REQUIRED: 1,
}
WIDTH |= {
    OPT.REPLY_ERROR_CODE: 2,
    OPT.SERVER_MAXIMUM_REQUEST_SIZE: 4,
    OPT.SERVER_MAXIMUM_REPLY_SIZE: 4,
}
WIDTH |= {OPT.NODE_ID: 4, OPT.DECISION_ALGORITHM: 2, OPT.HEARTBEAT_INTERVAL: 4, OPT.RING_ID: 12}
WIDTH |= {OPT.CONFIG_VERSION: 8, OPT.DATA_CENTER_ID: 4, OPT.NODE_STATE: 1, OPT.NODE_LIST_TYPE: 1}
WIDTH |= {OPT.VOTE: 1, OPT.QUORATE: 1, OPT.TIE_BREAKER: 5, OPT.HEURISTICS: 1}
WIDTH |= {OPT.KEEP_ACTIVE_PARTITION_TIE_BREAKER: 1}

Tlv = tuple[int, bytes]


# ---------------------------------------------------------------- cases
@dataclass(frozen=True)
class Chunk:
    """A labelled piece of the byte sequence (a message, a mutation of one, or garbage)."""

    label: str
    data: bytes


@dataclass(frozen=True)
class Case:
    """One connection's worth of fuzz; everything derives from `seed`."""

    seed: int
    phase: str
    cluster: str
    node_id: int
    algorithm: int
    chunks: tuple[Chunk, ...]

    @property
    def data(self) -> bytes:
        return b"".join(c.data for c in self.chunks)

    def describe(self) -> str:
        lines = [
            (
                f"case seed {self.seed}: phase {self.phase}, cluster {self.cluster}, "
                f"node {self.node_id}, algorithm {self.algorithm}"
            )
        ]
        lines += [f"  {c.label}: {short_hex(c.data)}" for c in self.chunks]
        lines.append(f"  bytes after the phase set-up: {short_hex(self.data)}")
        return "\n".join(lines)


def short_hex(data: bytes) -> str:
    """Hex, with runs of 16 or more equal bytes written as `xx*count` (oversize fillers)."""
    out, i = [], 0
    while i < len(data):
        j = i
        while j < len(data) and data[j] == data[i]:
            j += 1
        out.append(f" {data[i]:02x}*{j - i} " if j - i >= 16 else data[i:j].hex())
        i = j
    return "".join(out).strip()


def case_seed(master_seed: int, index: int) -> int:
    """The seed of case `index` of a run; consecutive cases rotate through the cluster names."""
    return master_seed * 1_000_000 + index


def _u8(v: int) -> bytes:
    return struct.pack(">B", v)


def _u16(v: int) -> bytes:
    return struct.pack(">H", v)


def _u32(v: int) -> bytes:
    return struct.pack(">I", v)


def _u64(v: int) -> bytes:
    return struct.pack(">Q", v)


def message(msg_type: int, tlvs: list[Tlv]) -> bytes:
    body = b"".join(pack_tlv(o, v) for o, v in tlvs)
    return pack_header(msg_type, len(body)) + body


class Generator:
    """Builds cases from a seeded `random.Random`."""

    def __init__(self, rng: random.Random, case: Case) -> None:
        self.rng = rng
        self.case = case

    # --------------------------------------------------------------- values
    def seq(self) -> int:
        r = self.rng
        return r.choice([1, 2, 3, r.randrange(1 << 32), 0, 0xFFFFFFFF])

    def node_id(self) -> int:
        r = self.rng
        return r.choice([self.case.node_id, self.case.node_id, r.randrange(1, 9), 0, 0xFFFFFFFF])

    def ring(self) -> bytes:
        r = self.rng
        return _u32(r.choice([1, self.case.node_id, 0])) + _u64(r.choice([0, 1, 0x10, 1 << 40]))

    def enum(self, option: int) -> bytes:
        good, bad = ENUM_OPTIONS[option]
        return _u8(self.rng.choice(good) if self.rng.random() < 0.85 else self.rng.choice(bad))

    def node_info(self) -> bytes:
        r = self.rng
        inner: list[Tlv] = [(OPT.NODE_ID, _u32(self.node_id()))]
        if r.random() < 0.3:
            inner.append((OPT.DATA_CENTER_ID, _u32(r.randrange(0, 4))))
        if r.random() < 0.4:
            inner.append((OPT.NODE_STATE, self.enum(OPT.NODE_STATE)))
        if r.random() < 0.1:
            inner = inner[1:]  # no node id: an error
        if r.random() < 0.1:
            inner.append((r.randrange(24, 0x10000), r.randbytes(r.randrange(0, 5))))
        return b"".join(pack_tlv(o, v) for o, v in inner)

    def tlvs_for(self, msg_type: int) -> list[Tlv]:  # noqa: PLR0912 (one branch per type)
        """Mostly valid TLVs for a message type, in the C emission order."""
        r = self.rng
        out: list[Tlv] = []
        if r.random() < 0.92:
            out.append((OPT.MSG_SEQ_NUMBER, _u32(self.seq())))
        if msg_type == MT.PREINIT:
            if r.random() < 0.9:
                names = [self.case.cluster.encode(), b"", r.randbytes(r.randrange(1, 20))]
                out.append((OPT.CLUSTER_NAME, r.choice(names)))
        elif msg_type == MT.INIT:
            algorithm = self.case.algorithm if r.random() < 0.7 else r.choice([0, 1, 2, 3, 4])
            mode = r.choice([1, 2, 3])
            candidates: list[Tlv] = [
                (OPT.SUPPORTED_MESSAGES, b"".join(_u16(t) for t in range(18))),
                (OPT.SUPPORTED_OPTIONS, b"".join(_u16(t) for t in range(24))),
                (OPT.NODE_ID, _u32(self.node_id())),
                (OPT.DECISION_ALGORITHM, _u16(algorithm)),
                (OPT.HEARTBEAT_INTERVAL, _u32(r.choice([8000, 8000, 999, 1000, 120000, 120001]))),
                (OPT.TIE_BREAKER, _u8(mode) + _u32(r.randrange(1, 9) if mode == 3 else 0)),
                (OPT.RING_ID, self.ring()),
            ]
            out += [t for t in candidates if r.random() < 0.93]
        elif msg_type == MT.SET_OPTION:
            if r.random() < 0.5:
                out.append((OPT.HEARTBEAT_INTERVAL, _u32(r.choice([1000, 8000, 500, 200000]))))
            if r.random() < 0.7:
                kap = OPT.KEEP_ACTIVE_PARTITION_TIE_BREAKER
                out.append((kap, self.enum(kap)))
        elif msg_type == MT.NODE_LIST:
            list_type = self.enum(OPT.NODE_LIST_TYPE)
            if r.random() < 0.95:
                out.append((OPT.NODE_LIST_TYPE, list_type))
            if r.random() < (0.9 if list_type == b"\x02" else 0.2):
                out.append((OPT.RING_ID, self.ring()))
            if r.random() < 0.3:
                out.append((OPT.CONFIG_VERSION, _u64(r.randrange(0, 10))))
            if r.random() < (0.9 if list_type == b"\x03" else 0.2):
                out.append((OPT.QUORATE, self.enum(OPT.QUORATE)))
            for _ in range(r.choice([0, 1, 2, 2, 3])):
                out.append((OPT.NODE_INFO, self.node_info()))
            if r.random() < 0.3:
                out.append((OPT.HEURISTICS, self.enum(OPT.HEURISTICS)))
        elif msg_type == MT.HEURISTICS_CHANGE:
            if r.random() < 0.9:
                out.append((OPT.HEURISTICS, self.enum(OPT.HEURISTICS)))
        elif msg_type in SERVER_TYPES:
            for option in r.sample(sorted(WIDTH), r.randrange(0, 3)):
                if option == OPT.MSG_SEQ_NUMBER:
                    continue
                value = self.enum(option) if option in ENUM_OPTIONS else r.randbytes(WIDTH[option])
                out.append((option, value))
        return out

    # --------------------------------------------------------------- chunks
    def valid_message(self) -> Chunk:
        r = self.rng
        msg_type = r.choice(CLIENT_TYPES * 3 + SERVER_TYPES)
        if msg_type == MT.STARTTLS and r.random() < 0.6:
            msg_type = MT.ECHO_REQUEST  # a STARTTLS ends the case: keep them rarer
        if msg_type == MT.INIT and self.case.phase == "init" and r.random() < 0.8:
            msg_type = MT.NODE_LIST  # a second INIT is a deliberate difference: keep them rarer
        return Chunk(f"{MT(msg_type).name}", message(msg_type, self.tlvs_for(msg_type)))

    def mutated_message(self) -> Chunk:  # noqa: PLR0912 (one branch per mutation)
        r = self.rng
        msg_type = r.choice(CLIENT_TYPES + SERVER_TYPES[:3])
        if msg_type == MT.STARTTLS:
            msg_type = MT.INIT
        tlvs: list[Tlv] = self.tlvs_for(msg_type) or [(OPT.MSG_SEQ_NUMBER, _u32(self.seq()))]
        kind = r.choice(
            ["bad_width", "bad_value", "unknown_option", "duplicate", "drop", "tlv_overrun",
             "tlv_short", "stray", "empty", "length_plus", "length_minus", "flip", "node_info"]
        )  # fmt: skip
        name = f"{MT(msg_type).name} {kind}"
        i = r.randrange(len(tlvs))
        if kind == "bad_width":
            option: int = r.choice(sorted(WIDTH))
            width = WIDTH[option]
            bad = r.choice([w for w in (0, 1, 2, 3, 4, 5, 8, 12, 13) if w != width])
            tlvs.insert(i, (option, r.randbytes(bad)))
            name += f" {OPT(option).name}={bad}"
        elif kind == "bad_value":
            option = r.choice(sorted(ENUM_OPTIONS))
            bad_values = ENUM_OPTIONS[option][1]
            tlvs.insert(i, (option, _u8(r.choice(bad_values))))
            if r.random() < 0.3:
                tlvs.insert(i, (OPT.TIE_BREAKER, _u8(r.choice([0, 4])) + _u32(0)))
            name += f" {OPT(option).name}"
        elif kind == "unknown_option":
            tlvs.insert(i, (r.randrange(24, 0x10000), r.randbytes(r.randrange(0, 9))))
        elif kind == "duplicate":
            option, value = tlvs[i]
            if r.random() < 0.5 and option in WIDTH:
                value = r.randbytes(WIDTH[option])
            tlvs.insert(r.randrange(len(tlvs) + 1), (option, value))
        elif kind == "drop":
            del tlvs[i]
        elif kind == "node_info":
            tlvs.insert(
                i, (OPT.NODE_INFO, r.choice([b"", b"\0\x09\0\x04\0\0\0\0", r.randbytes(5)]))
            )
        data = message(msg_type, tlvs)
        payload = bytearray(data[MESSAGE_HEADER_SIZE:])
        if kind == "tlv_overrun" and payload:
            struct.pack_into(">H", payload, 2, struct.unpack_from(">H", payload, 2)[0] + 1)
        elif kind == "tlv_short" and payload:
            struct.pack_into(">H", payload, 2, max(0, struct.unpack_from(">H", payload, 2)[0] - 1))
        elif kind == "stray":
            payload += r.randbytes(r.randrange(1, 4))
        elif kind == "empty":
            payload = bytearray()
        elif kind == "flip" and payload:
            payload[r.randrange(len(payload))] ^= 1 << r.randrange(8)
        length = len(payload)
        if kind == "length_plus":
            length += r.randrange(1, 5)
            payload += r.randbytes(length - len(payload))
        elif kind == "length_minus" and length:
            length = r.randrange(0, length)
        return Chunk(name, pack_header(msg_type, length) + bytes(payload))

    def unknown_type(self) -> Chunk:
        r = self.rng
        msg_type = r.choice([18, 19, 255, 0x4745, r.randrange(18, 0x10000)])
        size = r.choice([0, 0, 4, 8, r.randrange(0, 64), MAX_RECEIVE, MAX_RECEIVE + 100])
        body = pack_tlv(OPT.MSG_SEQ_NUMBER, _u32(self.seq())) if size == 8 else r.randbytes(size)
        return Chunk(f"unknown type {msg_type} size {size}", pack_header(msg_type, size) + body)

    def oversize(self) -> Chunk:
        r = self.rng
        msg_type = r.choice((*CLIENT_TYPES, MT.SERVER_ERROR))
        total = r.choice([MAX_RECEIVE, MAX_RECEIVE + 1, MAX_RECEIVE + 7, 40000])
        tlvs: list[Tlv] = [(OPT.MSG_SEQ_NUMBER, _u32(self.seq()))]
        filler = total - MESSAGE_HEADER_SIZE - 8 - 4
        tlvs.append((OPT.CLUSTER_NAME if msg_type == MT.PREINIT else 200, b"x" * filler))
        label = f"{MT(msg_type).name} of {total} bytes"
        return Chunk(label, message(msg_type, tlvs))

    def garbage(self) -> Chunk:
        r = self.rng
        choices = [
            ("random bytes", r.randbytes(r.randrange(1, 48))),
            ("HTTP request", b"GET / HTTP/1.1\r\nHost: qnetd\r\n\r\n"),
            ("TLS ClientHello start", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
            ("zeros", bytes(r.randrange(1, 20))),
            ("header only", pack_header(r.choice(CLIENT_TYPES), r.randrange(1, 100))),
        ]
        label, data = r.choice(choices)
        return Chunk(label, data)

    def chunk(self) -> Chunk:
        r = self.rng.random()
        if r < 0.30:
            return self.valid_message()
        if r < 0.72:
            return self.mutated_message()
        if r < 0.82:
            return self.unknown_type()
        if r < 0.90:
            return self.oversize()
        return self.garbage()


CLUSTERS = ("fuzz-a", "fuzz-b", "fuzz-c", "fuzz-d")


def generate_case(seed: int) -> Case:
    """The case of `seed`: phase, INIT parameters and 1-6 chunks, cut at an accepted STARTTLS."""
    rng = random.Random(seed)
    case = Case(
        seed=seed,
        phase=rng.choice(PHASES),
        cluster=CLUSTERS[seed % len(CLUSTERS)],
        node_id=rng.randrange(1, 9),
        algorithm=rng.choice([0, 1, 2, 3]),
        chunks=(),
    )
    gen = Generator(rng, case)
    chunks = tuple(gen.chunk() for _ in range(rng.randrange(1, 7)))
    case = replace(case, chunks=chunks)
    frame = model_framing(case)
    if frame.starttls_end is not None:  # nothing after an accepted STARTTLS is protocol
        label = "cut at an accepted STARTTLS: " + " | ".join(c.label for c in chunks)
        case = replace(case, chunks=(Chunk(label, case.data[: frame.starttls_end]),))
    return case


# ---------------------------------------------------------------- framing model
@dataclass(frozen=True)
class Framing:
    """Where the whole messages of a case's bytes end, as 3.0.3's msgio_read frames them."""

    boundaries: tuple[int, ...]  # end offset of each whole message, in order
    messages: tuple[QnetdMessage | None, ...]  # each whole message decoded (None: it cannot be)
    starttls_end: int | None  # end of the first STARTTLS the server would act on

    @property
    def in_frame_end(self) -> int:
        return self.boundaries[-1] if self.boundaries else 0


def model_framing(case: Case) -> Framing:
    data = case.data
    pos, boundaries, messages = 0, [], []
    preinit_seen = case.phase != "fresh"
    starttls_end = None
    while pos + MESSAGE_HEADER_SIZE <= len(data):
        length = struct.unpack_from(">I", data, pos + 2)[0]
        end = pos + MESSAGE_HEADER_SIZE + length
        if end > len(data):
            break
        msg: QnetdMessage | None = None
        if end - pos <= MAX_RECEIVE:
            with contextlib.suppress(DecodeError):
                msg = decode(data[pos:end])
        boundaries.append(end)
        messages.append(msg)
        pos = end
        if isinstance(msg, Preinit) and msg.cluster_name is not None:
            preinit_seen = True
        if isinstance(msg, StartTls) and preinit_seen and starttls_end is None:
            starttls_end = end
    return Framing(tuple(boundaries), tuple(messages), starttls_end)


# ---------------------------------------------------------------- client connection
class FuzzConnection:
    """A blocking TCP connection that can switch to TLS (memory BIOs, so EOF stays ours)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), 5)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.tls: ssl.SSLObject | None = None
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.decoder = StreamDecoder(max_message_size=1 << 24)
        self.closed = False
        self.raws: list[bytes] = []  # the bytes of every message read, in order

    def send(self, data: bytes) -> None:
        if self.tls is None:
            self.sock.sendall(data)
            return
        self.tls.write(data)
        self._flush()

    def _flush(self) -> None:
        pending = self.outgoing.read()
        if pending:
            self.sock.sendall(pending)

    def start_tls(self, creds: ClientCredentials) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False  # 'Qnetd Server' is not a host name (reference 5.1)
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=str(creds.ca_pem))
        ctx.load_cert_chain(str(creds.cert_pem), str(creds.key_pem))
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_side=False)
        self.sock.settimeout(5)
        while True:
            try:
                self.tls.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                raw = self.sock.recv(65536)
                if not raw:
                    raise ConnectionError("closed during the TLS handshake") from None
                self.incoming.write(raw)
                continue
            self._flush()
            return

    def _recv(self, timeout: float) -> bytes | None:
        """Plain bytes from the server; b'' when it closed; None on timeout."""
        self.sock.settimeout(max(timeout, 0.001))
        while True:
            if self.tls is not None:
                try:
                    return self.tls.read(65536)  # b"" once the TLS stream ended
                except ssl.SSLWantReadError:
                    pass  # need more bytes from the socket
                except ssl.SSLError:
                    return b""
            try:
                raw = self.sock.recv(65536)
            except TimeoutError:
                return None
            except OSError:
                return b""
            if self.tls is None:
                return raw
            if not raw:
                self.incoming.write_eof()
            else:
                self.incoming.write(raw)

    def read_until(self, done: Callable[[QnetdMessage], bool], timeout: float) -> list[object]:
        """Replies until one satisfies `done`, the server closes ('closed'), or 'timeout'."""
        out: list[object] = []
        deadline = time.monotonic() + timeout
        while True:
            while True:
                try:
                    msg = self.decoder.next_message()
                except DecodeError as exc:  # e.g. a SET_OPTION_REPLY with nothing to echo
                    raw = self.decoder.last_raw.hex()
                    out.append(f"reply our decoder refuses ({exc.reason}): {raw[:96]}")
                    continue
                if msg is None:
                    break
                out.append(msg)
                self.raws.append(self.decoder.last_raw)
                if done(msg):
                    return out
            data = self._recv(deadline - time.monotonic())
            if data is None:
                out.append("timeout")
                return out
            if not data:
                self.closed = True
                out.append("closed")
                return out
            self.decoder.feed(data)

    def shutdown_write(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


# ---------------------------------------------------------------- running a case
@dataclass
class Observation:
    """What one server did with a case: set-up replies, then the normalised replies."""

    events: list[object] = field(default_factory=list)
    setup_failed: str | None = None
    raws: list[bytes] = field(default_factory=list)  # bytes of each message in `events`

    def normalised(self) -> list[object]:
        raws = iter(self.raws)
        return [normalise(e, next(raws, b"")) if isinstance(e, QnetdMessage) else e
                for e in self.events]  # fmt: skip


def normalise(event: object, raw: bytes = b"") -> object:
    """A reply reduced to what must be equal: type, seq, reply code, TLVs present, vote; and
    for ECHO_REPLY, a copy of the request whatever it held, the bytes."""
    if not isinstance(event, QnetdMessage):
        return event
    if isinstance(event, EchoReply):
        return (event.TYPE.name, raw.hex())
    present = tuple(name for name, _ in event.FIELDS if getattr(event, name) not in (None, ()))
    return (
        event.TYPE.name,
        event.seq,
        getattr(event, "reply_error_code", None),
        present,
        getattr(event, "vote", None),
    )


def _is_reply_to(seq: int) -> Callable[[QnetdMessage], bool]:
    return lambda m: m.seq == seq and isinstance(m, (EchoReply, ServerError))


def setup_phase(  # noqa: PLR0911 (one exit per phase and per failure)
    conn: FuzzConnection, case: Case, creds: ClientCredentials
) -> tuple[list[object], str | None]:
    """Bring the connection to the case's phase; its replies, or why it failed."""
    seen: list[object] = []
    if case.phase == "fresh":
        return seen, None
    conn.send(encode(Preinit(seq=SETUP_SEQ, cluster_name=case.cluster.encode())))
    seen += conn.read_until(lambda m: isinstance(m, PreinitReply), READ_TIMEOUT)
    if not isinstance(seen[-1], PreinitReply):
        return seen, "no PREINIT_REPLY"
    if case.phase == "preinit":
        return seen, None
    conn.send(encode(StartTls(seq=SETUP_SEQ + 1)))
    try:
        conn.start_tls(creds)
    except (OSError, ssl.SSLError) as exc:
        return seen, f"TLS handshake failed: {exc}"
    if case.phase == "tls":
        return seen, None
    init = Init(
        seq=SETUP_SEQ + 2,
        supported_messages=tuple(range(18)),
        supported_options=tuple(range(24)),
        node_id=case.node_id,
        decision_algorithm=case.algorithm,
        heartbeat_interval=8000,
        tie_breaker=TieBreaker(TieBreakerMode.LOWEST),
        ring_id=RingId(case.node_id, 1),
    )
    conn.send(encode(init))
    replies = conn.read_until(lambda m: isinstance(m, InitReply), READ_TIMEOUT)
    seen += replies
    last = replies[-1]
    if not isinstance(last, InitReply) or last.reply_error_code != 0:
        return seen, f"INIT refused: {last}"
    return seen, None


def run_case(
    port: int, creds: ClientCredentials, case: Case, cut: int | None = None
) -> Observation:
    """Send `case` (its bytes up to `cut`, if given) and observe the server."""
    obs = Observation()
    data = case.data if cut is None else case.data[:cut]
    frame = model_framing(case)
    in_frame = min(frame.in_frame_end, len(data))
    sentinel = encode(EchoRequest(seq=SENTINEL_SEQ))  # answered in every phase
    conn = FuzzConnection(port)
    first = 0
    try:
        setup, failed = setup_phase(conn, case, creds)
        if failed is not None:
            obs.setup_failed = f"{failed}; replies {setup}"
            return obs
        conn.send(data[:in_frame] + sentinel)
        first = len(conn.raws)
        obs.events += conn.read_until(_is_reply_to(SENTINEL_SEQ), READ_TIMEOUT)
        tail = data[in_frame:]
        if obs.events[-1] not in ("closed", "timeout") and tail:
            conn.send(tail)
            conn.shutdown_write()
            obs.events.append(TAIL)
            obs.events += conn.read_until(lambda _m: False, READ_TIMEOUT)
    except (OSError, ssl.SSLError) as exc:
        obs.events.append(f"client error {type(exc).__name__}")
    finally:
        obs.raws = conn.raws[first:]
        conn.close()
    return obs


# ---------------------------------------------------------------- comparing
@dataclass(frozen=True)
class Difference:
    """Why two observations of a case are not equal."""

    case: Case
    reference: list[object]
    ours: list[object]
    explained_by: str | None = None

    def report(self) -> str:
        lines = [self.case.describe(), "  corosync-qnetd 3.0.3:"]
        lines += [f"    {e}" for e in self.reference]
        lines.append("  votemesh-qnetd:")
        lines += [f"    {e}" for e in self.ours]
        lines.append(f"  replay: FUZZ_CASE_SEED={self.case.seed} make fuzz")
        return "\n".join(lines)


def _closed_by_server(events: list[object]) -> list[object] | None:
    """The replies before the server closed on its own (not after our half-close), or None."""
    if "closed" not in events:
        return None
    before = events[: events.index("closed")]
    return None if TAIL in before else before


def same(reference: list[object], ours: list[object]) -> bool:
    """Equal; or both servers closed on their own and one reply list is a prefix of the other
    (reference 4.8: a server that closes a connection discards the replies still queued)."""
    if reference == ours:
        return True
    a, b = _closed_by_server(reference), _closed_by_server(ours)
    if a is None or b is None:
        return False
    short, long_ = (a, b) if len(a) <= len(b) else (b, a)
    return long_[: len(short)] == short


@dataclass(frozen=True)
class ExpectedDifference:
    """A deliberate difference from 3.0.3 (docs/qnetd.md): where in a case it starts."""

    name: str
    doc: str
    trigger: Callable[[Case, Framing], int | None]  # byte offset of the triggering message


def _messages_at(case: Case, frame: Framing) -> list[tuple[int, QnetdMessage | None]]:
    """(start offset, decoded message) of each whole message of the case."""
    starts = (0, *frame.boundaries)[: len(frame.boundaries)]
    return list(zip(starts, frame.messages, strict=True))


def _late_starttls(case: Case, frame: Framing) -> int | None:
    if case.phase not in ("tls", "init"):
        return None
    for start, msg in _messages_at(case, frame):
        if isinstance(msg, StartTls):
            return start
    return None


def _second_init(case: Case, frame: Framing) -> int | None:
    """A decodable INIT after one that may have succeeded (the set-up INIT, or an earlier one)."""
    inits = [start for start, msg in _messages_at(case, frame) if isinstance(msg, Init)]
    if case.phase == "init" and inits:
        return inits[0]
    return inits[1] if len(inits) > 1 else None


def _second_preinit(case: Case, frame: Framing) -> int | None:
    """Any decodable PREINIT after one that named a cluster (the set-up one or an earlier one)."""
    accepted = case.phase != "fresh"
    for start, msg in _messages_at(case, frame):
        if isinstance(msg, Preinit):
            if accepted:
                return start
            accepted = msg.cluster_name is not None
    return None


EXPECTED_DIFFERENCES: tuple[ExpectedDifference, ...] = (
    ExpectedDifference(
        "starttls_inside_tls",
        "a STARTTLS on a connection already in TLS: 3.0.3 starts a second TLS session inside "
        "the first; votemesh closes the connection",
        _late_starttls,
    ),
    ExpectedDifference(
        "second_init",
        "a second INIT on a connection whose INIT succeeded: 3.0.3 overwrites the registered "
        "client's node id, ring id, tie-breaker and algorithm even when it refuses the INIT "
        "(and may list the client in a second cluster, answer 10 or stop answering); votemesh "
        "answers with the same code but changes nothing",
        _second_init,
    ),
    ExpectedDifference(
        "second_preinit",
        "a second PREINIT on a connection: 3.0.3 takes the new cluster name (issue 7 item 1: "
        "a certificate for one cluster then admits the client into another); votemesh answers "
        "SERVER_ERROR 8 and keeps the first name",
        _second_preinit,
    ),
)
#: Expected differences after which 3.0.3's state may be corrupt: restart it before the next case.
CORRUPTING = ("second_init", "second_preinit")


def triggers(case: Case) -> list[str]:
    """Names of the expected differences whose triggering message the case contains."""
    frame = model_framing(case)
    return [e.name for e in EXPECTED_DIFFERENCES if e.trigger(case, frame) is not None]


def explain(
    case: Case,
    reference: Observation,
    ours: Observation,
    rerun: Callable[[Case, int], tuple[Observation, Observation]],
) -> Difference | None:
    """None if equal; else a Difference, `explained_by` naming the deliberate one if it is."""
    ref_events, our_events = reference.normalised(), ours.normalised()
    if reference.setup_failed or ours.setup_failed:
        return Difference(case, [reference.setup_failed], [ours.setup_failed])
    if same(ref_events, our_events):
        return None
    frame = model_framing(case)
    for expected in EXPECTED_DIFFERENCES:
        cut = expected.trigger(case, frame)
        if cut is None:
            continue
        ref_cut, ours_cut = rerun(case, cut)
        if same(ref_cut.normalised(), ours_cut.normalised()):
            return Difference(case, ref_events, our_events, expected.name)
    return Difference(case, ref_events, our_events)
