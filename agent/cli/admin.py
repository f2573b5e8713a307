"""`votemesh expected`, `events`, `keygen`: change or inspect the agent, make a cluster key."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from agent.cli.client import UserError, ask


def _yes(value: object) -> str:
    return "Yes" if value else "No"


def cmd_expected(args: argparse.Namespace) -> int:
    """Override expected votes (like `pvecm expected`), or `reset` the override."""
    from agent.config import MAX_EXPECTED_VOTES  # noqa: PLC0415

    value = args.value.lower()
    digits = value.isdigit() and len(value) <= 10
    if value != "reset" and (not digits or not 1 <= int(value) <= MAX_EXPECTED_VOTES):
        raise UserError(
            f"expected votes must be a whole number from 1 to {MAX_EXPECTED_VOTES} or "
            f"'reset', not {args.value[:40]!r}"
        )
    doc = ask(args, f"expected {value}")
    print(f"expected votes {doc.get('expected_votes')}, quorum {doc.get('quorum')}, "
          f"quorate {_yes(doc.get('quorate'))}")  # fmt: skip
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    """Print the agent's recent events, one JSON object per line."""
    for event in ask(args, "events"):
        print(json.dumps(event, sort_keys=True))
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    """Write a new cluster key (32 random bytes, mode 0600); refuses to overwrite."""
    from agent.config import ConfigError  # noqa: PLC0415
    from agent.runtime.keys import keygen  # noqa: PLC0415

    path = Path(args.file)
    try:
        keygen(path)
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    print(f"wrote a new cluster key to {path}; copy it to every node (mode 0600)")
    return 0
