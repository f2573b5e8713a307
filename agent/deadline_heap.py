"""Deadlines keyed by peer with a lazy min-heap: the earliest one in O(log N) amortized.

Used by the node core (heard expiries) and the link layer (expiries, sends) so that neither
scans every peer per `handle` (docs/design.md §3.14, "as built (scale-core)"). Pure data
structure: no clock, no I/O.

Invariant: for every key in `at`, an entry (at[key], key) is in the heap (pushed when the value
was set). So the first heap entry that equals its key's value in `at` is the minimum over all
keys; entries that no longer match are stale and dropped when they reach the top. Stale entries
are bounded: once the heap holds more than twice the keys plus SLACK it is rebuilt from `at`
(amortized O(1) per `set`), so it stays O(N) even when nobody asks for a long time.

The owner may keep a *lower bound* of a key's deadline in it (the caller's business: it must
replace a bound by the real value when the bound reaches the top, with `first`).
"""

from __future__ import annotations

import heapq
import math

SLACK = 64
"""Stale entries kept beyond twice the live keys before the heap is rebuilt."""


class Deadlines:
    """Each key's current deadline (`at`) and a lazy min-heap over them: `set` is O(log N),
    `earliest` and `pop_due` O(log N) amortized per entry they drop or return."""

    __slots__ = ("_heap", "at")

    def __init__(self) -> None:
        self.at: dict[int, float] = {}
        """The current deadline of every key that has one."""
        self._heap: list[tuple[float, int]] = []

    def __len__(self) -> int:
        return len(self._heap)

    def set(self, key: int, at: float) -> None:
        """`key`'s deadline is `at` (math.inf: none)."""
        current = self.at
        if at == math.inf:
            current.pop(key, None)
            return
        if current.get(key) == at:
            return
        current[key] = at
        heap = self._heap
        heapq.heappush(heap, (at, key))
        if len(heap) > 2 * len(current) + SLACK:
            self._heap = [(t, k) for k, t in current.items()]
            heapq.heapify(self._heap)

    def discard(self, key: int) -> None:
        self.at.pop(key, None)

    def earliest(self) -> float | None:
        """The smallest current deadline (None: no key has one)."""
        first = self.first()
        return None if first is None else first[0]

    def first(self) -> tuple[float, int] | None:
        """The smallest current (deadline, key), after dropping stale entries above it."""
        heap, current = self._heap, self.at
        while heap:
            at, key = heap[0]
            if current.get(key) == at:
                return at, key
            heapq.heappop(heap)
        return None

    def pop_due(self, now: float) -> list[int]:
        """Remove and return, in ascending order, the keys whose deadline is at or before
        `now`; the owner sets their next deadline once it has handled them."""
        heap, current, due = self._heap, self.at, []
        while heap and heap[0][0] <= now:
            at, key = heapq.heappop(heap)
            if current.get(key) == at:
                del current[key]
                due.append(key)
        due.sort()
        return due
