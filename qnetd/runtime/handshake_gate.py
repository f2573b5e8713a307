"""How many TLS handshakes may start per event-loop turn; the rest wait, quiet sources first.

A server-side TLS handshake costs 0.5-1.3 ms of CPU in the event loop (an RSA-2048 signature, the
key exchange, asyncio's SSL protocol set-up) when the client's first flight is read, a turn or
two after the handshake starts. A flood of ClientHellos read in one turn held the loop for tens
of milliseconds, and every established client's ECHO waited behind it. The gate starts at most
`per_turn` handshakes per turn; the others wait. Waiters are served by `priority` (the adapter
passes how many unauthenticated connections the waiter's source has open: a real client retrying
has one or two, a flooding source many), first come first served within a priority, so a new
client is not queued behind a flood from a few sources. Throughput is not capped: a loop that is
not flooded runs thousands of turns per second.
"""

from __future__ import annotations

import asyncio
from collections import deque

PRIORITIES = 16
"""Priorities 0..15; anything higher is served as 15."""


class HandshakeGate:
    """`await gate.enter(priority)` before starting a TLS handshake (lower goes first)."""

    def __init__(self, per_turn: int) -> None:
        if per_turn < 1:
            raise ValueError("per_turn must be at least 1")
        self.per_turn = per_turn
        self.started_this_turn = 0
        self.delayed = 0
        """Handshakes that had to wait for a later turn (a counter for /metrics)."""
        self._queues: list[deque[asyncio.Future[None]]] = [deque() for _ in range(PRIORITIES)]
        """FIFO per priority; futures of cancelled waiters stay until popped or compacted away."""
        self._rows = 0
        self._live = 0
        self._turn_scheduled = False

    @property
    def waiting(self) -> int:
        """Handshakes waiting now."""
        return self._live

    async def enter(self, priority: int = 0) -> None:
        """Return when this handshake may start (a cancelled waiter leaves the queue)."""
        self._schedule_turn()
        if not self._live and self.started_this_turn < self.per_turn:
            self.started_this_turn += 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queues[min(max(priority, 0), PRIORITIES - 1)].append(future)
        self._rows += 1
        self._live += 1
        self.delayed += 1
        try:
            await future
        except asyncio.CancelledError:
            if future.cancelled():  # still queued when cancelled: forget it, O(1) amortized
                self._live -= 1
                if self._rows > 2 * self._live + 16:
                    self._compact()
            raise

    def _compact(self) -> None:
        for i, queue in enumerate(self._queues):
            self._queues[i] = deque(f for f in queue if not f.done())
        self._rows = self._live

    def _schedule_turn(self) -> None:
        if not self._turn_scheduled:
            self._turn_scheduled = True
            asyncio.get_running_loop().call_soon(self._next_turn)

    def _next_turn(self) -> None:
        """Runs once at the start of the next turn: a new budget, spent on the first waiters."""
        self._turn_scheduled = False
        self.started_this_turn = 0
        for queue in self._queues:
            while queue and self.started_this_turn < self.per_turn:
                future = queue.popleft()
                self._rows -= 1
                if not future.done():
                    future.set_result(None)
                    self._live -= 1
                    self.started_this_turn += 1
        if self._live or self.started_this_turn:
            self._schedule_turn()
