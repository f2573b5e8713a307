"""A lazy min-heap of deadlines keyed by peer: the earliest one in O(log N) amortized.

Owns nothing but the heap (docs/design.md §3.14, "as built (scale-core)"). The owner keeps the
current deadline of every key itself and pushes a key's new value whenever it changes; `earliest`
drops entries that no longer match the owner's current value as they reach the top. Pure data
structure: no clock, no I/O.

Invariant: for every key whose current deadline is not None, an entry (current, key) is in the
heap (the owner pushed it when the value was set). So the first entry that matches its key's
current value is the minimum over all keys. Stale entries are bounded: once they outnumber twice
the live keys plus SLACK the heap is rebuilt from the owner's values (amortized O(1) per push),
so it stays O(N) even when nobody asks for a long time.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable

SLACK = 64
"""Stale entries kept beyond twice the live keys before the heap is rebuilt."""


class DeadlineHeap:
    """(deadline, key) entries; a key's entry counts while it equals the owner's current value."""

    __slots__ = ("_heap",)

    def __init__(self) -> None:
        self._heap: list[tuple[float, int]] = []

    def __len__(self) -> int:
        return len(self._heap)

    def push(
        self, at: float, key: int, live: int, current: Callable[[], Iterable[tuple[float, int]]]
    ) -> None:
        """`key`'s deadline is now `at`. `live` is how many keys have a deadline; `current`
        lists every (deadline, key) when the heap must be rebuilt."""
        heap = self._heap
        heapq.heappush(heap, (at, key))
        if len(heap) > 2 * live + SLACK:
            self._heap = list(current())
            heapq.heapify(self._heap)

    def earliest(self, valid: Callable[[float, int], bool]) -> float | None:
        """The smallest deadline whose entry is `valid` (matches its key's current value), after
        dropping the stale entries above it; None when no entry is valid."""
        heap = self._heap
        while heap:
            at, key = heap[0]
            if valid(at, key):
                return at
            heapq.heappop(heap)
        return None
