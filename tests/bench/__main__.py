"""`make bench`: run every tests/bench/bench_*.py module's main() and print its figures.

Benchmarks never fail on a timing. `python -m tests.bench NAME...` runs only the named modules
(e.g. `proto`, `qnetd_load`, `qnetd_abuse`). Those in ONLY_BY_NAME run only when named (`make
bench-lab` runs `lab_corosync`, hours long in its full form).
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import tests.bench

ONLY_BY_NAME = frozenset({"lab_corosync"})


def main(argv: list[str]) -> int:
    names = sorted(
        m.name.removeprefix("bench_")
        for m in pkgutil.iter_modules(tests.bench.__path__)
        if m.name.startswith("bench_")
    )
    chosen = argv or [name for name in names if name not in ONLY_BY_NAME]
    unknown = set(chosen) - set(names)
    if unknown:
        print(f"unknown benchmark(s): {', '.join(sorted(unknown))}; have: {', '.join(names)}")
        return 2
    for name in chosen:
        print(f"=== bench {name}", flush=True)
        importlib.import_module(f"tests.bench.bench_{name}").main()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
