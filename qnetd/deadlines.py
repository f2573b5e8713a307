"""A set of named deadlines with O(log n) updates, for the sans-IO core's `next_deadline()`.

Moving or cancelling a key leaves its old heap row behind (skipped when it reaches the top).
Stale rows are bounded: once they outnumber the live keys (+ `SLACK`), the heap is rebuilt,
O(1) amortized. Unbounded, the rows of a flood of connections that never INIT stayed for their
180 s pre-INIT dead-peer time and kept the allocator's arenas from being freed.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
SLACK = 16


class Deadlines(Generic[K]):
    """Keyed deadlines; setting a key again replaces its deadline (stale heap rows are skipped)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, K]] = []
        self._current: dict[K, float] = {}
        self._tiebreak = 0

    def set(self, key: K, at: float) -> None:
        """Schedule (or move) `key` to fire at `at`."""
        self._current[key] = at
        self._tiebreak += 1
        heapq.heappush(self._heap, (at, self._tiebreak, key))
        self._bound_stale_rows()

    def cancel(self, key: K) -> None:
        """Forget `key` (no effect if it is not scheduled)."""
        if self._current.pop(key, None) is not None:
            self._bound_stale_rows()

    def __len__(self) -> int:
        """Rows in the heap, stale ones included (for tests of the bound)."""
        return len(self._heap)

    def earliest(self) -> float | None:
        """The next deadline, or None if nothing is scheduled."""
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list[K]:
        """Remove and return every key whose deadline is at or before `now`, earliest first."""
        due: list[K] = []
        while (at := self.earliest()) is not None and at <= now:
            _, _, key = heapq.heappop(self._heap)
            del self._current[key]
            due.append(key)
        return due

    def _drop_stale(self) -> None:
        while self._heap and self._current.get(self._heap[0][2]) != self._heap[0][0]:
            heapq.heappop(self._heap)

    def compact(self) -> None:
        """Drop every stale row and rebuild the tables at their present size."""
        self._current = dict(self._current)
        self._compact()

    def _bound_stale_rows(self) -> None:
        if len(self._heap) > 2 * len(self._current) + SLACK:
            self._compact()

    def _compact(self) -> None:
        self._heap = [row for row in self._heap if self._current.get(row[2]) == row[0]]
        heapq.heapify(self._heap)
