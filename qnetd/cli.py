"""`votemesh-qnetd`: run the arbitrator, show its status, manage certificates and tokens.

Adapter ring: parses arguments, turns user mistakes into one-line errors with a non-zero exit.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from qnetd import cli_certs

DEFAULT_STATE_DIR = "/var/lib/votemesh-qnetd"


class UserError(Exception):
    """A mistake the user can fix; printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    parser = argparse.ArgumentParser(
        prog="votemesh-qnetd", description="votemesh quorum arbitrator (corosync-qnetd compatible)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    cli_certs.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except UserError as exc:
        print(f"votemesh-qnetd: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
