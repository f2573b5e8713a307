"""Give back the memory a burst of short-lived connections leaves behind (docs/benchmarks.md).

After 2,000 unauthenticated connections are gone, every object of theirs is freed, yet CPython's
small-object allocator keeps each 1 MiB arena in which a single block is still in use, and every
hash table that once held 2,000 entries keeps its size until it is rebuilt (CPython never
shrinks a dict or set on deletion). What stayed behind, found with tracemalloc
(`python -m tests.bench.qnetd_memory`):

- asyncio's free list of future iterators (`_asyncio.FutureIter`, up to 255 kept for reuse): the
  last ones freed by the flood, scattered over the arenas the flood added, one or two per pool;
- the tables of the server's, the core's and the connection guard's per-connection dicts and
  sets, of the event loop's selector map (fd -> key) and of asyncio's set of all tasks.

`release_after_burst` moves both: the free list is refilled with iterators allocated now (packed
together in one or two pools) and the old ones are freed; the tables are rebuilt at their
present size. The caller then runs `gc.collect()` and `malloc_trim(0)`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

FUTURE_ITER_FREE_LIST = 255
"""CPython 3.11-3.13's `FI_FREELIST_MAXLEN` in Modules/_asynciomodule.c."""


def refill_future_iter_free_list(loop: asyncio.AbstractEventLoop) -> None:
    """Replace the iterators on asyncio's free list with new, densely packed ones.

    Taking `FUTURE_ITER_FREE_LIST` iterators empties the list (those are the old ones); the next
    `FUTURE_ITER_FREE_LIST` come from the allocator, next to each other; freeing the new ones
    first fills the list again, so that the old ones are then really freed.
    """
    old = [loop.create_future().__await__() for _ in range(FUTURE_ITER_FREE_LIST)]
    new = [loop.create_future().__await__() for _ in range(FUTURE_ITER_FREE_LIST)]
    del new
    del old


def rebuild_loop_tables(loop: asyncio.AbstractEventLoop) -> int:
    """Rebuild the selector's fd -> key map and asyncio's all-tasks set; return how many.

    Both are private to asyncio and selectors; when they are not there (another loop or Python)
    nothing is done.
    """
    rebuilt = 0
    selector = getattr(loop, "_selector", None)
    table = getattr(selector, "_fd_to_key", None)
    if isinstance(table, dict):
        selector._fd_to_key = dict(table)  # type: ignore[union-attr]
        rebuilt += 1
    all_tasks: Any = getattr(asyncio.tasks, "_all_tasks", None)
    data = getattr(all_tasks, "data", None)
    if isinstance(data, set) and not getattr(all_tasks, "_iterating", True):
        all_tasks.data = set(data)  # its weakref callbacks look the set up on each call
        rebuilt += 1
    return rebuilt


def release_after_burst(loop: asyncio.AbstractEventLoop, *compactors: Callable[[], None]) -> None:
    """Refill the free list, rebuild the loop's tables and run each of `compactors`."""
    refill_future_iter_free_list(loop)
    rebuild_loop_tables(loop)
    for compact in compactors:
        compact()
