"""`votemesh-qnetd`'s entry point: `run` restarts itself once on the C library's malloc.

CPython's small-object allocator keeps a 1 MiB arena as long as one block in it is in use, and
never moves a block. A burst of 2,000 unauthenticated connections needs ~7 extra arenas; the
objects the server keeps re-creating while it serves (timer handles, futures, counters) land in
them and pin them: after every flood the server stayed 5-10 MB above its idle RSS
(docs/benchmarks.md "qnetd under abuse"). With `PYTHONMALLOC=malloc` each object is a glibc
chunk, and `malloc_trim(0)` after the burst hands every free page back: 2.5-3 MB above idle,
for ~1 MB more at idle. An explicit `PYTHONMALLOC` (e.g. `pymalloc`) is left alone.

Kept free of heavy imports: the restart happens before asyncio and the CLI are loaded.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

ALLOCATOR = "malloc"


def reexec_argv(
    args: Sequence[str], environ: dict[str, str], orig_argv: Sequence[str]
) -> list[str] | None:
    """The command line to restart with, or None: only `run`, only once, never over an
    explicit choice of allocator."""
    if not args or args[0] != "run" or "PYTHONMALLOC" in environ or len(orig_argv) < 2:
        return None
    if not sys.executable:
        return None
    return [sys.executable, *orig_argv[1:]]


def main() -> int:
    """`votemesh-qnetd` and `python -m qnetd`."""
    argv = reexec_argv(sys.argv[1:], dict(os.environ), getattr(sys, "orig_argv", []))
    if argv is not None:
        env = {**os.environ, "PYTHONMALLOC": ALLOCATOR}
        try:
            os.execve(sys.executable, argv, env)  # noqa: S606 (our own interpreter; same PID)
        except OSError as exc:  # pragma: no cover (the interpreter vanished under us)
            print(f"votemesh-qnetd: restart with PYTHONMALLOC={ALLOCATOR} failed ({exc}); "
                  "continuing with the default allocator", file=sys.stderr)  # fmt: skip
    from qnetd.cli import main as cli_main  # noqa: PLC0415 (after the restart: see above)

    return cli_main()
