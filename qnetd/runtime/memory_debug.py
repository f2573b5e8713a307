"""Diagnostics of the server's memory, off by default: tracemalloc snapshots on SIGUSR2.

With `VOTEMESH_QNETD_TRACEMALLOC=DIR` in the environment, `votemesh-qnetd run` starts tracemalloc
and writes `DIR/snapshot-N.pickle` on every SIGUSR2 (N = 1, 2, ...), logging the traced total,
the RSS (anonymous and file-backed) and the allocators' own figures (pymalloc arenas, glibc
heap). `python -m tests.bench.qnetd_memory --compare DIR` compares the first and the last
(`Snapshot.compare_to`): what grew between an idle moment and after a flood. Tracing costs CPU
and memory of its own; never set it in production.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import os
import re
import signal
import sys
import tempfile
import tracemalloc
from pathlib import Path

import structlog

from qnetd.runtime.server import rss_mb

ENV = "VOTEMESH_QNETD_TRACEMALLOC"
FRAMES_ENV = "VOTEMESH_QNETD_TRACEMALLOC_FRAMES"
"""Frames per traceback (default 10); 0 = no tracing, SIGUSR2 only logs the allocator figures."""
REGIONS_ENV = "VOTEMESH_QNETD_MEMORY_REGIONS"
"""1: each snapshot after the first also logs `sparse regions`: 1 MiB address regions new since
the first that hold few small objects, with what they hold (what pins a pymalloc arena)."""


def start_if_asked() -> Path | None:
    """Start tracing when the environment asks for it; return the snapshot directory."""
    target = os.environ.get(ENV)
    if not target:
        return None
    directory = Path(target)
    directory.mkdir(parents=True, exist_ok=True)
    frames = int(os.environ.get(FRAMES_ENV, "10") or 10)
    if frames > 0:
        tracemalloc.start(frames)
    return directory


def install_snapshot_signal(directory: Path) -> None:
    """SIGUSR2 writes the next snapshot into `directory` (and logs the totals)."""
    log = structlog.get_logger("votemesh.qnetd.memory")
    count = 0
    idle_regions: set[int] = set()

    def dump() -> None:
        nonlocal count, idle_regions
        count += 1
        if os.environ.get(REGIONS_ENV) == "1":  # costs memory of its own: the RSS figure grows
            regions = objects_by_region()
            if count == 1:
                idle_regions = set(regions)
            else:
                log.info("sparse regions", regions=sparse_regions(regions, idle_regions))
        path = directory / f"snapshot-{count}.pickle"
        if tracemalloc.is_tracing():
            tracemalloc.take_snapshot().dump(str(path))
        else:
            path.write_bytes(b"")
        current, peak = tracemalloc.get_traced_memory()
        log.info(
            "tracemalloc snapshot",
            path=str(path),
            traced_mb=round(current / 1048576, 2),
            traced_peak_mb=round(peak / 1048576, 2),
            rss_mb=rss_mb(),
            **rss_parts(),
            **pymalloc_stats(),
            **glibc_stats(),
        )

    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, dump)


def objects_by_region() -> dict[int, list[object]]:
    """Small objects reachable from the collector's lists, by 1 MiB address region (an arena of
    pymalloc is 1 MiB; one may straddle two regions)."""
    found: dict[int, object] = {}
    for obj in gc.get_objects():
        found[id(obj)] = obj
        for ref in gc.get_referents(obj):
            found.setdefault(id(ref), ref)
    regions: dict[int, list[object]] = {}
    for address, obj in found.items():
        if sys.getsizeof(obj, 1024) <= 512:
            regions.setdefault(address >> 20, []).append(obj)
    return regions


def sparse_regions(
    regions: dict[int, list[object]], idle: set[int], most: int = 400
) -> list[dict[str, object]]:
    """Regions not seen when idle that hold at most `most` small objects: what pins them."""
    out: list[dict[str, object]] = []
    for region, objs in sorted(regions.items()):
        if region in idle or len(objs) > most:
            continue
        kinds: dict[str, int] = {}
        for obj in objs:
            kinds[type(obj).__name__] = kinds.get(type(obj).__name__, 0) + 1
        samples = [_short_repr(o) for o in objs[:12]]
        out.append({"region": hex(region << 20), "objects": len(objs), "kinds": kinds,
                    "samples": samples})  # fmt: skip
    return out


def _short_repr(obj: object) -> str:
    try:
        return repr(obj)[:80]
    except Exception as exc:  # noqa: BLE001 (a half-built object's repr may fail)
        return f"<{type(obj).__name__}: repr failed: {exc!r}>"[:80]


def pymalloc_stats() -> dict[str, float]:
    """Python's small-object allocator, from `sys._debugmallocstats` (MB): arenas held, bytes in
    live blocks, free blocks and unused pools inside those arenas (fragmentation)."""
    with tempfile.TemporaryFile() as out:
        saved = os.dup(2)
        try:
            sys.stderr.flush()
            os.dup2(out.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        text = out.read().decode(errors="replace")
    wanted = {
        "pymalloc_arenas_mb": r"(\d[\d,]*) arenas \* \d+ bytes/arena\s+=\s+([\d,]+)",
        "pymalloc_arenas_peak": r"# arenas highwater mark\s+=\s+([\d,]+)",
        "pymalloc_used_mb": r"# bytes in allocated blocks\s+=\s+([\d,]+)",
        "pymalloc_free_blocks_mb": r"# bytes in available blocks\s+=\s+([\d,]+)",
        "pymalloc_unused_pools_mb": r"unused pools \* \d+ bytes\s+=\s+([\d,]+)",
    }
    stats: dict[str, float] = {}
    for key, pattern in wanted.items():
        match = re.search(pattern, text)
        if match:
            value = int(match.groups()[-1].replace(",", ""))
            stats[key] = value if key.endswith("_peak") else round(value / 1048576, 2)
    return stats


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
            "fordblks", "keepcost",
        )
    ]  # fmt: skip


def glibc_stats() -> dict[str, float]:
    """glibc malloc (OpenSSL and CPython's large blocks), MB: heap from the kernel, in use, free
    inside the heap, mmapped blocks; empty when this is not glibc >= 2.33."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        mallinfo2 = libc.mallinfo2
    except (OSError, AttributeError, TypeError):
        return {}
    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    mb = 1048576
    return {
        "malloc_heap_mb": round(info.arena / mb, 2),
        "malloc_used_mb": round(info.uordblks / mb, 2),
        "malloc_free_mb": round(info.fordblks / mb, 2),
        "malloc_mmap_mb": round(info.hblkhd / mb, 2),
    }


def rss_parts() -> dict[str, float]:
    """RssAnon (heap, arenas, stacks) and RssFile (mapped code) of this process, MB (Linux)."""
    parts: dict[str, float] = {}
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return parts
    for line in lines:
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile"):
            parts[key.lower() + "_mb"] = round(int(value.split()[0]) / 1024, 2)
    return parts
