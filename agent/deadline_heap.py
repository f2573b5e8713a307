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


class _Keyed:
    """Each key's current deadline (`at`); the subclass files a changed one (`_file`)."""

    __slots__ = ("at",)

    def __init__(self) -> None:
        self.at: dict[int, float] = {}
        """The current deadline of every key that has one."""

    def set(self, key: int, at: float) -> None:
        """`key`'s deadline is `at` (math.inf: none)."""
        current = self.at
        if at == math.inf:
            current.pop(key, None)
            return
        if current.get(key) == at:
            return
        current[key] = at
        self._file(key, at)

    def _file(self, key: int, at: float) -> None:
        raise NotImplementedError

    def discard(self, key: int) -> None:
        self.at.pop(key, None)


class Deadlines(_Keyed):
    """Each key's current deadline (`at`) and a lazy min-heap over them: `set` is O(log N),
    `earliest` and `pop_due` O(log N) amortized per entry they drop or return."""

    __slots__ = ("_heap",)

    def __init__(self) -> None:
        super().__init__()
        self._heap: list[tuple[float, int]] = []

    def __len__(self) -> int:
        return len(self._heap)

    def _file(self, key: int, at: float) -> None:
        heap = self._heap
        heapq.heappush(heap, (at, key))
        if len(heap) > 2 * len(self.at) + SLACK:
            self._heap = [(t, k) for k, t in self.at.items()]
            heapq.heapify(self._heap)

    def replace_first(self, at: float) -> None:
        """`set(key, at)` for the key `first()` just returned, whose deadline `at` is not: one
        heap step (the entry is replaced in place instead of left stale on top)."""
        heap = self._heap
        key = heap[0][1]
        if at == math.inf:
            del self.at[key]
            heapq.heappop(heap)
        else:
            self.at[key] = at
            heapq.heapreplace(heap, (at, key))

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


class SharedDeadlines(_Keyed):
    """`Deadlines` for keys that mostly share a few values (every peer's next heartbeat falls
    on the same round instant, design §3.3): one bucket of keys per distinct deadline and a
    min-heap of the distinct deadlines, so a round's N keys cost one heap entry and `set_many`
    files them in one step (design §3.14, "as built (fast-core)"). Same semantics as
    `Deadlines` (`at`, `set`, `discard`, `earliest`, `first`, `pop_due`).

    Invariant: for every key in `at`, the key is in the bucket of at[key], and that value is in
    the heap. A bucket entry whose key now has another value (or none) is stale: skipped where
    met, dropped with its bucket; once the buckets hold more than twice the keys plus SLACK
    entries they are rebuilt from `at`."""

    __slots__ = ("_buckets", "_entries", "_times")

    def __init__(self) -> None:
        super().__init__()
        self._buckets: dict[float, list[int]] = {}
        self._times: list[float] = []
        self._entries = 0

    def __len__(self) -> int:
        """Bucket entries, stale ones included (what `Deadlines.__len__` counts)."""
        return self._entries

    def set_many(self, keys: list[int], at: float) -> None:
        """`set(key, at)` for each of `keys` (a finite `at`)."""
        current = self.at
        fresh = [key for key in keys if current.get(key) != at]
        if fresh:
            current.update(dict.fromkeys(fresh, at))
            self._file_all(fresh, at)

    def _file(self, key: int, at: float) -> None:
        self._file_all([key], at)

    def _file_all(self, keys: list[int], at: float) -> None:
        bucket = self._buckets.get(at)
        if bucket is None:
            self._buckets[at] = keys[:]
            heapq.heappush(self._times, at)
        else:
            bucket += keys
        self._entries += len(keys)
        if self._entries > 2 * len(self.at) + SLACK:
            self._rebuild()

    def _rebuild(self) -> None:
        buckets: dict[float, list[int]] = {}
        for key, at in self.at.items():
            buckets.setdefault(at, []).append(key)
        self._buckets, self._times = buckets, list(buckets)
        heapq.heapify(self._times)
        self._entries = len(self.at)

    def earliest(self) -> float | None:
        """The smallest current deadline (None: no key has one)."""
        times, buckets, current = self._times, self._buckets, self.at
        while times:
            at = times[0]
            for key in buckets[at]:
                if current.get(key) == at:
                    return at
            self._drop_first()
        return None

    def first(self) -> tuple[float, int] | None:
        """The smallest current (deadline, key), after dropping stale entries above it (the
        `Deadlines` interface; the core asks `earliest()`, the tests compare both classes)."""
        times, buckets, current = self._times, self._buckets, self.at
        while times:
            at = times[0]
            keys = [key for key in buckets[at] if current.get(key) == at]
            if keys:
                return at, min(keys)
            self._drop_first()
        return None

    def _drop_first(self) -> None:
        self._entries -= len(self._buckets.pop(heapq.heappop(self._times)))

    def pop_due(self, now: float) -> list[int]:
        """Remove and return, in ascending order, the keys whose deadline is at or before
        `now`; the owner sets their next deadline once it has handled them."""
        times, buckets, current, due = self._times, self._buckets, self.at, []
        while times and times[0] <= now:
            at = heapq.heappop(times)
            bucket = buckets.pop(at)
            self._entries -= len(bucket)
            for key in bucket:
                if current.get(key) == at:
                    del current[key]
                    due.append(key)
        due.sort()
        return due
