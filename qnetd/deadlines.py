"""A set of named deadlines with O(log n) updates, for the sans-IO core's `next_deadline()`."""

from __future__ import annotations

import heapq
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


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
        if len(self._heap) > 4 * len(self._current) + 64:
            self._compact()

    def cancel(self, key: K) -> None:
        """Forget `key` (no effect if it is not scheduled)."""
        self._current.pop(key, None)

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

    def _compact(self) -> None:
        self._heap = [row for row in self._heap if self._current.get(row[2]) == row[0]]
        heapq.heapify(self._heap)
