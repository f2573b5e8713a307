"""The one seam every event and status change leaves the agent through (design §3.13).

Adapter ring. `FanOut.publish` is called from the core's loop callback with each `Emit` (already
made JSON-ready by the runtime) and hands it, once, to every sink: the log line, the control
socket's recent-events ring, MQTT, hooks, metrics, systemd's STATUS=. It never blocks and never
raises: a sink's `offer` only appends to memory. Sinks that do I/O are `QueuedSink`s: a bounded
queue (the oldest item is dropped when full, and counted) drained by the sink's own task, so a
slow or failing broker, hook or scraper never delays the core or another sink.

Status changes are coalesced: after any event (at most once per loop turn) every sink's
`status_changed()` is called; a sink that publishes the status reads `SinkContext.status()` when
it gets round to it, so a burst of events costs one status document per sink, not one per event.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

log = structlog.get_logger("votemesh.agent")


@dataclass(frozen=True, slots=True)
class Published:
    """One event as every sink sees it."""

    seq: int
    """1, 2, ... per agent process: a gap seen by a sink means its queue dropped events."""
    wall_ms: int
    """Wall-clock time of the event, milliseconds since the epoch."""
    kind: str
    """The `EventKind` value, e.g. "quorum_lost"."""
    record: Mapping[str, Any]
    """JSON-ready: {"event": kind, "reason": ..., details...} (as `votemesh events` shows)."""
    level: str = "info"
    """Log level: "info", or "warning"/"error" for events that need an operator."""

    def as_dict(self) -> dict[str, Any]:
        """The record with its sequence number and time: MQTT payload, hook stdin."""
        return {**self.record, "seq": self.seq, "wall_ms": self.wall_ms}


@dataclass(frozen=True, slots=True)
class SinkContext:
    """What a sink may know about its agent (read from the loop thread only)."""

    cluster: str
    node_id: int
    node_name: str
    status: Callable[[], dict[str, Any]]
    """The same document as `votemesh status --json` (schema 1); costs a snapshot per call."""
    stats: Callable[[], dict[str, dict[str, int]]]
    """Every sink's counters by sink name (what `FanOut.stats` returns)."""


class Sink(Protocol):
    """One destination of events. `offer` and `status_changed` run on the core's callback:
    they must be cheap and must not block; I/O belongs in `run`."""

    name: str

    def offer(self, item: Published) -> None: ...

    def status_changed(self) -> None: ...

    async def run(self) -> None:
        """The sink's lifetime (connect, deliver, reconnect); cancelled when the agent stops."""

    def stats(self) -> dict[str, int]: ...


class QueuedSink:
    """Base of the sinks that do I/O: a bounded queue of events plus a "status is stale" flag,
    drained by `run`. Subclasses implement `deliver` (one event) and may override
    `deliver_status` (called when the status may have changed, after queued events) and
    `wants` (which events to queue at all)."""

    name = "queued"

    def __init__(self, capacity: int) -> None:
        self.queue: deque[Published] = deque()
        self.capacity = capacity
        self.offered = 0
        self.dropped = 0
        self.delivered = 0
        self.failed = 0
        self._status_stale = False
        self._draining = False
        self._wake = asyncio.Event()

    # ------------------------------------------------------------ from the core's callback
    def wants(self, item: Published) -> bool:  # noqa: ARG002 (subclasses filter)
        return True

    def offer(self, item: Published) -> None:
        if not self.wants(item):
            return
        self.offered += 1
        if len(self.queue) >= self.capacity:
            self.queue.popleft()
            self.dropped += 1
        self.queue.append(item)
        self._wake.set()

    def status_changed(self) -> None:
        self._status_stale = True
        self._wake.set()

    # ------------------------------------------------------------ the sink's task
    async def deliver(self, item: Published) -> None:
        raise NotImplementedError

    async def deliver_status(self) -> None:
        """Publish the current status (default: nothing)."""

    async def run(self) -> None:
        """Deliver until cancelled; a failing delivery is logged and counted, never raised."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.drain()

    @property
    def busy(self) -> bool:
        """Something is queued, being delivered, or the status is stale."""
        return bool(self.queue) or self._draining or self._status_stale

    async def drain(self) -> None:
        """Deliver everything queued, then the status if stale."""
        self._draining = True
        try:
            await self._drain()
        finally:
            self._draining = False

    async def _drain(self) -> None:
        while self.queue:
            item = self.queue.popleft()
            try:
                await self.deliver(item)
            except Exception as exc:  # noqa: BLE001 (a sink's failure is its own)
                self.failed += 1
                log.warning("event sink failed", sink=self.name, kind=item.kind, error=str(exc))
            else:
                self.delivered += 1
        if self._status_stale:
            self._status_stale = False
            try:
                await self.deliver_status()
            except Exception as exc:  # noqa: BLE001
                self.failed += 1
                log.warning("event sink failed", sink=self.name, kind="status", error=str(exc))

    def stats(self) -> dict[str, int]:
        return {
            "queued": len(self.queue),
            "offered": self.offered,
            "delivered": self.delivered,
            "dropped": self.dropped,
            "failed": self.failed,
        }


class LogSink:
    """Each event as one structlog JSON line (`event` = the kind, `reason`, details)."""

    name = "log"

    def offer(self, item: Published) -> None:
        details = {k: v for k, v in item.record.items() if k != "event"}
        getattr(log, item.level)(item.kind, **details)

    def status_changed(self) -> None:
        pass

    async def run(self) -> None:
        await asyncio.Event().wait()

    def stats(self) -> dict[str, int]:
        return {}


class RecentSink:
    """The last `size` events for `votemesh events` (the control socket)."""

    name = "recent"

    def __init__(self, size: int) -> None:
        self.events: deque[dict[str, Any]] = deque(maxlen=size)

    def offer(self, item: Published) -> None:
        self.events.append({**item.record, "wall_ms": item.wall_ms, "seq": item.seq})

    def status_changed(self) -> None:
        pass

    async def run(self) -> None:
        await asyncio.Event().wait()

    def stats(self) -> dict[str, int]:
        return {"kept": len(self.events)}


@dataclass
class FanOut:
    """Every event to every sink, once, without blocking (design §3.13)."""

    sinks: list[Sink] = field(default_factory=list)
    seq: int = 0
    sink_errors: int = 0
    """`offer`/`status_changed` calls that raised (a sink bug; the sink is skipped for it)."""
    _tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    _status_pending: bool = False

    def publish(
        self, kind: str, record: Mapping[str, Any], level: str = "info", wall_ms: int | None = None
    ) -> None:
        """One event to every sink; the status is marked changed (coalesced per loop turn)."""
        self.seq += 1
        if wall_ms is None:
            wall_ms = time.time_ns() // 1_000_000
        item = Published(self.seq, wall_ms, kind, record, level)
        for sink in self.sinks:
            try:
                sink.offer(item)
            except Exception:
                self.sink_errors += 1
                log.exception("event sink refused an event", sink=sink.name, kind=kind)
        self.changed()

    def changed(self) -> None:
        """The status may have changed: every sink hears it once this loop turn ends."""
        if self._status_pending:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # not running (tests of the core path, shutdown): nobody to tell
        self._status_pending = True
        loop.call_soon(self._notify)

    def _notify(self) -> None:
        self._status_pending = False
        for sink in self.sinks:
            try:
                sink.status_changed()
            except Exception:
                self.sink_errors += 1
                log.exception("event sink failed on a status change", sink=sink.name)

    # ------------------------------------------------------------ lifetime
    def start(self, sink: Sink) -> None:
        """Add a sink and start its task (inside a running loop)."""
        self.sinks.append(sink)
        self._tasks[sink.name] = asyncio.create_task(self._run(sink), name=f"sink:{sink.name}")
        sink.status_changed()  # its first status

    async def _run(self, sink: Sink) -> None:
        try:
            await sink.run()
        except asyncio.CancelledError:
            raise
        except Exception:  # a sink's bug stops that sink only
            self.sink_errors += 1
            log.exception("event sink stopped", sink=sink.name)

    async def stop(self, name: str, grace: float = 0.0) -> None:
        """Remove one sink; with `grace`, let it deliver what is queued for up to that long."""
        sink = next((s for s in self.sinks if s.name == name), None)
        if sink is None:
            return
        self.sinks.remove(sink)
        task = self._tasks.pop(name, None)
        if grace > 0 and isinstance(sink, QueuedSink):
            deadline = time.monotonic() + grace  # its task delivers what is queued meanwhile
            while sink.busy and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        closer = getattr(sink, "close", None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if closer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(closer(), max(grace, 1.0))

    async def close(self, grace: float = 0.0) -> None:
        """Stop every sink started with `start` (each may drain for up to `grace` seconds,
        concurrently); the inline sinks given to the constructor (log, recent) stay."""
        await asyncio.gather(*(self.stop(name, grace) for name in list(self._tasks)))

    def stats(self) -> dict[str, dict[str, int]]:
        """Each sink's counters (queued, offered, delivered, dropped, failed, ...)."""
        return {sink.name: sink.stats() for sink in self.sinks}
