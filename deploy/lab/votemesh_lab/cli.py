"""`votemesh-lab`: the chaos lab's command line (docs/lab.md)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import version


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="votemesh-lab",
        description="votemesh chaos lab: clusters in network namespaces, netem faults, checker",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('votemesh')}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    parser.parse_args(argv)
    parser.print_help(sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
