"""A tiny asyncio runtime for `QdeviceSession`, test-only: executes its effects over TCP/TLS.

What the real adapter (agent/runtime) has to do, in the smallest form: one executor task runs
effect lists strictly in order (SendMsg bytes before StartTls, StartTls before INIT), one timer
task calls `tick()` at `next_deadline()`, one reader task per connection feeds a StreamDecoder.
Every connection has a generation number; callbacks of a connection we closed are dropped, so
`disconnected()` is never reported after our own Close.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any

from agent.config import QdeviceConfig
from agent.qdevice_session import (
    Close,
    Connect,
    QdEffect,
    QdeviceSession,
    RunHeuristics,
    SendMsg,
    SessionEvent,
    StartTls,
    VoteChanged,
)
from proto.errors import DecodeError
from proto.qnetd_messages import QnetdMessage
from proto.qnetd_stream import StreamDecoder

SessionCall = Callable[[float], list[QdEffect]]


def tls_context(cfg: QdeviceConfig) -> ssl.SSLContext:
    """Client context: trust cfg.ca_pem, present cfg.cert_pem/key_pem (paths to PEM files)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # qnetd's name 'Qnetd Server' is no host name
    ctx.load_verify_locations(cafile=cfg.ca_pem)
    ctx.load_cert_chain(cfg.cert_pem, cfg.key_pem)
    return ctx


class QdeviceDriver:
    """Runs one session against cfg.host:cfg.port; records messages, votes and events."""

    def __init__(self, session: QdeviceSession, cfg: QdeviceConfig) -> None:
        self.session = session
        self.cfg = cfg
        self.received: list[QnetdMessage] = []
        self.votes: list[VoteChanged] = []
        self.events: list[SessionEvent] = []
        self.tls_versions: list[str] = []
        """TLS version of every connection upgraded by StartTls."""
        self._ctx = tls_context(cfg) if cfg.tls != "off" else None
        self._queue: asyncio.Queue[list[QdEffect]] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._gen = 0
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> QdeviceDriver:
        self._spawn(self._execute_loop(), "qdevice-effects")
        self._spawn(self._timer_loop(), "qdevice-timer")
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._gen += 1
        for task in list(self._tasks):
            task.cancel()
        results = await asyncio.gather(*self._tasks, return_exceptions=True)
        self._close_writer()
        await asyncio.sleep(0.05)  # let the transports finish closing
        errors = [r for r in results if isinstance(r, Exception)]
        if errors:
            raise errors[0]

    def call(self, fn: SessionCall) -> None:
        """Feed one input to the session now and queue its effects."""
        self._queue.put_nowait(fn(asyncio.get_running_loop().time()))
        self._wake.set()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 15.0) -> None:
        """Poll `predicate` until true, then let the queued effects run (recorded lists)."""
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.02)
            await self.settled()

    async def settled(self) -> None:
        """Wait until every queued effect list has been executed."""
        await self._queue.join()

    # ----- effects -----------------------------------------------------------------------------

    async def _execute_loop(self) -> None:
        while True:
            for effect in await self._queue.get():
                await self._execute(effect)
            self._queue.task_done()

    async def _execute(self, effect: QdEffect) -> None:
        match effect:
            case Connect():
                self._gen += 1
                self._spawn(self._connect(self._gen), "qdevice-connect")
            case SendMsg(data) if self._writer is not None:
                self._writer.write(data)
            case StartTls():
                await self._start_tls(self._gen)
            case Close():
                self._gen += 1
                self._close_writer()
            case RunHeuristics():
                self._spawn(self._heuristics(), "qdevice-heuristics")
            case VoteChanged():
                self.votes.append(effect)
            case SessionEvent():
                self.events.append(effect)

    async def _connect(self, gen: int) -> None:
        try:
            reader, writer = await asyncio.open_connection(self.cfg.host, self.cfg.port)
        except OSError as exc:
            self._lost(gen, f"connect: {exc}")
            return
        if gen != self._gen:
            writer.close()
            return
        self._writer = writer
        self._spawn(self._read_loop(gen, reader), "qdevice-read")
        self.call(self.session.connected)

    async def _start_tls(self, gen: int) -> None:
        if self._writer is None or self._ctx is None:
            return
        try:
            await self._writer.drain()
            await self._writer.start_tls(self._ctx)
        except (OSError, ssl.SSLError) as exc:
            self._lost(gen, f"TLS: {exc}")
            return
        if gen == self._gen:
            self.tls_versions.append(self._writer.get_extra_info("ssl_object").version())
            self.call(self.session.tls_established)

    async def _heuristics(self) -> None:
        passed = True
        for command in self.cfg.heuristics:
            proc = await asyncio.create_subprocess_shell(command)
            try:
                async with asyncio.timeout(self.cfg.heuristics_timeout):
                    passed = passed and await proc.wait() == 0
            except TimeoutError:
                proc.kill()
                await proc.wait()
                passed = False
        self.call(lambda now: self.session.heuristics_result(passed, now))

    # ----- reading and timers ------------------------------------------------------------------

    async def _read_loop(self, gen: int, reader: asyncio.StreamReader) -> None:
        decoder = StreamDecoder(self.session.max_receive_size)
        try:
            while gen == self._gen:
                data = await reader.read(decoder.bytes_wanted())
                if not data:
                    self._lost(gen, "server closed the connection")
                    return
                decoder.feed(data)
                while gen == self._gen and (msg := decoder.next_message()) is not None:
                    self._deliver(msg)
                    decoder.max_message_size = self.session.max_receive_size
        except DecodeError as exc:
            self._lost(gen, f"decode error: {exc}")
        except (OSError, ssl.SSLError) as exc:
            self._lost(gen, f"read: {exc}")

    def _deliver(self, msg: QnetdMessage) -> None:
        self.received.append(msg)
        self.call(lambda now: self.session.received(msg, now))

    def _lost(self, gen: int, reason: str) -> None:
        if gen == self._gen:
            self.call(lambda now: self.session.disconnected(reason, now))

    async def _timer_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            deadline = self.session.next_deadline()
            delay = None if deadline is None else max(0.0, deadline - loop.time())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            self._wake.clear()
            self._queue.put_nowait(self.session.tick(loop.time()))

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
