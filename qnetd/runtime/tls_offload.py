"""Server-side TLS after STARTTLS with the handshake's CPU work off the event-loop thread.

asyncio's own TLS (`connect_accepted_socket(ssl=...)`) runs the whole handshake on the loop
thread: when a ClientHello is read, the server's RSA-2048 signature, the key exchange and the
certificate checks (0.5-1.5 ms) hold the loop, and an established client's ECHO that arrives
meanwhile waits (docs/benchmarks.md "qnetd under abuse": echo p99 2.0 ms against 0.4-0.7 ms
quiet while 2,000 connections were held). Here the handshake runs on an `ssl.SSLObject` with
memory BIOs: the loop reads the socket, buffers whole TLS records, and hands each
`do_handshake()` step to a small pool of worker threads (`HandshakeWorkers`; OpenSSL releases
the GIL while it works); the loop then sends what OpenSSL wrote. After the handshake the
connection runs on a plain asyncio transport through `TlsStream`, which encrypts and decrypts
on the loop (the record crypto of a qnetd message is microseconds).

Same context, same certificate checks (they run inside `do_handshake`), same wire bytes. Bounds:
one step per connection in flight, so queued steps <= pending connections (capped by the
connection guard); the caller's timeout; a record header that cannot be TLS ends the handshake
on the loop without calling OpenSSL; renegotiation is off (`server_ssl_context`), so nothing
after the handshake can make the loop sign.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import queue
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

READ_SIZE = 16384
MAX_RECORD = 16384 + 2048
"""Largest TLSCiphertext length field (RFC 5246 6.2.3; TLS 1.3 allows less)."""
RECORD_TYPES = frozenset({20, 21, 22, 23})  # change_cipher_spec, alert, handshake, app data
WORKER_NICE = 10
"""Workers run at a lower scheduling priority than the loop thread: on a busy machine a
handshake waits for a core rather than an established client's ECHO. Measured on 2 shared
cores during a 2,000-connection burst (in-process 2 ms timer, lateness p99): worker at nice 0
8-35 ms, as bad as handshakes on the loop (4-34 ms); at nice 5, 10 or 19: 3-10 ms. CFS gives a
nice-10 thread ~10% of a core a nice-0 thread wants: a handshake (~1 ms) still gets through."""
FLUSH_LIMIT = 64 * 1024
"""Plaintext decrypted per `data_received` before it is handed on (MAX_READ-sized reads)."""

T = TypeVar("T")


class TlsRecordError(ssl.SSLError):
    """Bytes after STARTTLS that are not TLS records (dropped without calling OpenSSL)."""


def whole_records(buf: bytes | bytearray) -> int:
    """Length of the prefix of `buf` made of complete TLS records; raise on a bad header.

    A record header is 5 bytes: content type, version (major 3), length <= `MAX_RECORD`.
    """
    pos = 0
    while len(buf) - pos >= 5:
        kind, major, length = buf[pos], buf[pos + 1], int.from_bytes(buf[pos + 3 : pos + 5])
        if kind not in RECORD_TYPES or major != 3 or length > MAX_RECORD:
            raise TlsRecordError(f"not a TLS record header: {bytes(buf[pos : pos + 5]).hex()}")
        if len(buf) - pos - 5 < length:
            break
        pos += 5 + length
    bad_start = len(buf) > 0 and buf[0] not in RECORD_TYPES
    if pos == 0 and (bad_start or (len(buf) > 1 and buf[1] != 3)):
        raise TlsRecordError(f"not a TLS record: {bytes(buf[:2]).hex()}")
    return pos


@dataclass(eq=False)
class _Job(Generic[T]):
    step: Callable[[], T]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[T]
    cancelled: bool = False

    def settle(self, result: T | None, error: BaseException | None) -> None:
        """On the loop: hand the worker's outcome to the waiting coroutine."""
        if self.future.done():
            return
        if error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(cast(T, result))


@dataclass
class HandshakeWorkers:
    """A few threads that run TLS handshake steps, lowest priority number first (FIFO within)."""

    threads: int
    steps: int = 0
    """Steps run (a counter for tests and /metrics)."""
    _queue: queue.PriorityQueue[tuple[int, int, _Job[Any] | None]] = field(
        default_factory=queue.PriorityQueue
    )
    _seq: itertools.count[int] = field(default_factory=itertools.count)
    _workers: list[threading.Thread] = field(default_factory=list)
    _queued: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.threads <= 16:
            raise ValueError("threads must be between 1 and 16")

    @property
    def waiting(self) -> int:
        """Steps queued or running now."""
        return self._queued

    def start(self) -> None:
        """Start the threads (daemons: a handshake in OpenSSL never holds up the exit)."""
        for i in range(self.threads - len(self._workers)):
            thread = threading.Thread(target=self._work, name=f"qnetd-tls-{i}", daemon=True)
            thread.start()
            self._workers.append(thread)

    def stop(self) -> None:
        """Ask the threads to end once their current step is done (does not wait)."""
        for _ in self._workers:
            self._queue.put((-1, next(self._seq), None))
        self._workers.clear()

    async def run(self, priority: int, step: Callable[[], T]) -> T:
        """Run `step` on a worker; cancelling the caller skips it if it has not started."""
        if not self._workers:
            self.start()
        loop = asyncio.get_running_loop()
        job: _Job[T] = _Job(step, loop, loop.create_future())
        self._queued += 1
        self._queue.put((max(priority, 0), next(self._seq), job))
        try:
            result = await job.future
        except asyncio.CancelledError:
            job.cancelled = True  # a plain store: the worker reads it before it starts the step
            raise
        finally:
            self._queued -= 1
        self.steps += 1
        return result

    def _work(self) -> None:
        with contextlib.suppress(OSError, AttributeError):  # per thread on Linux
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICE)
        while True:
            _, _, job = self._queue.get()
            if job is None:
                return
            if job.cancelled:
                continue
            result: Any = None
            error: BaseException | None = None
            try:
                result = job.step()
            except Exception as exc:  # noqa: BLE001 (handed to the waiting coroutine)
                error = exc
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                job.loop.call_soon_threadsafe(job.settle, result, error)
            # not kept until the next step arrives: the job references the SSL object
            job = result = error = None


@dataclass(frozen=True)
class TlsSession:
    """A completed server handshake: the SSL object, its BIOs, and plaintext already decrypted."""

    tls: ssl.SSLObject
    incoming: ssl.MemoryBIO
    outgoing: ssl.MemoryBIO
    early: bytes


def _handshake_step(tls: ssl.SSLObject) -> bool:
    """One `do_handshake()` (on a worker): True when the handshake is complete."""
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        return False
    return True


def _decrypt(tls: ssl.SSLObject) -> tuple[bytes, bool]:
    """Everything readable now, and whether the peer sent close_notify."""
    chunks: list[bytes] = []
    size = 0
    while size < FLUSH_LIMIT:
        try:
            chunk = tls.read(READ_SIZE)
        except ssl.SSLWantReadError:
            return b"".join(chunks), False
        if not chunk:
            return b"".join(chunks), True
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks), False


async def server_handshake(
    sock: Any,
    context: ssl.SSLContext,
    workers: HandshakeWorkers,
    priority: Callable[[], int],
) -> TlsSession:
    """Run the server side of a TLS handshake on `sock` (non-blocking, owned by the caller).

    Raises `ssl.SSLError` (including `TlsRecordError`), `OSError` or `ConnectionError`; the
    caller bounds the time. `priority()` is asked at each step (lower runs first).
    """
    loop = asyncio.get_running_loop()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_side=True)
    buf = bytearray()
    done = False
    while not done:
        data = await loop.sock_recv(sock, READ_SIZE)
        if not data:
            raise ConnectionResetError("peer closed during the TLS handshake")
        buf += data
        whole = whole_records(buf)
        if whole == 0:  # wait for a whole record (its header bounds the length)
            continue
        incoming.write(bytes(buf[:whole]))
        del buf[:whole]
        done = await workers.run(priority(), lambda: _handshake_step(tls))
        out = outgoing.read()
        if out:
            await loop.sock_sendall(sock, out)
    if buf:
        incoming.write(bytes(buf))
    early, closed = _decrypt(tls)
    if closed:
        raise ConnectionResetError("peer closed right after the TLS handshake")
    return TlsSession(tls, incoming, outgoing, early)


class TlsTransport(asyncio.Transport):
    """What the application protocol sees: writes are encrypted, the rest is the raw transport's."""

    def __init__(self, stream: TlsStream, raw: asyncio.Transport) -> None:
        super().__init__()
        self._stream, self._raw = stream, raw

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._stream.send(bytes(data))

    def get_write_buffer_size(self) -> int:
        return self._raw.get_write_buffer_size()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        tls = self._stream.session.tls
        if name == "ssl_object":
            return tls
        if name == "peercert":
            return tls.getpeercert()
        if name == "cipher":
            return tls.cipher()
        return self._raw.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self._raw.is_closing()

    def close(self) -> None:
        self._raw.close()

    def abort(self) -> None:
        self._raw.abort()

    def pause_reading(self) -> None:
        self._raw.pause_reading()

    def resume_reading(self) -> None:
        self._raw.resume_reading()

    def is_reading(self) -> bool:
        return self._raw.is_reading()


class TlsStream(asyncio.Protocol):
    """The raw socket's protocol after `server_handshake`: decrypts into `app`, encrypts for it.

    close_notify from the peer ends the connection like an EOF; a TLS error (bad record, alert)
    aborts it and reaches `app.connection_lost` as the exception.
    """

    def __init__(self, session: TlsSession, app: asyncio.Protocol) -> None:
        self.session, self.app = session, app
        self._raw: asyncio.Transport | None = None
        self._error: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._raw = transport  # type: ignore[assignment]
        self.app.connection_made(TlsTransport(self, self._raw))  # type: ignore[arg-type]
        if self.session.early:
            self.app.data_received(self.session.early)

    def data_received(self, data: bytes) -> None:
        if self._raw is None or self._raw.is_closing():
            return
        self.session.incoming.write(data)
        while True:
            try:
                plain, closed = _decrypt(self.session.tls)
            except ssl.SSLError as exc:
                self._fail(exc)
                return
            self._flush()  # alerts, key update replies
            if plain:
                self.app.data_received(plain)
            if closed:
                self._raw.abort()
                return
            if len(plain) < FLUSH_LIMIT or self._raw.is_closing():
                return

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.app.connection_lost(self._error or exc)

    def send(self, data: bytes) -> None:
        """Encrypt `data` for the peer (the application protocol's `write`)."""
        if self._raw is None or self._raw.is_closing():
            return
        try:
            self.session.tls.write(data)
        except ssl.SSLError as exc:
            self._fail(exc)
            return
        self._flush()

    def _flush(self) -> None:
        out = self.session.outgoing.read()
        if out and self._raw is not None:
            self._raw.write(out)

    def _fail(self, exc: Exception) -> None:
        self._error = exc
        if self._raw is not None:
            self._raw.abort()
