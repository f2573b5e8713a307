"""`votemesh status`, `nodes`, `explain`: read the agent's status and print it.

Exit status like `corosync-quorumtool -s`: 0 quorate, 2 not quorate (`status`, `explain`),
1 an error (raised as UserError / StatusError and printed by `agent.cli.main`).

The fast path of a monitoring poll: `parse_words` reads the usual command lines of these three
verbs without argparse; anything else (help, an abbreviation, a mistake) returns None and
argparse handles it, so what argparse accepts and says stays the one behaviour. Imports: `_json`,
`_socket`, our renderer and record reader, nothing else (`json` for --json only; see
agent/cli/__init__.py).
"""

from __future__ import annotations

import sys
import time

from agent.cli import FAST_VERBS
from agent.cli.client import ask
from agent.cli.render import explain_text, nodes_text, status_text
from agent.cli.status_reader import read_status

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~10 ms per CLI call
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from typing import Any

    from agent.status import NodeStatus

EXIT_OK, EXIT_NOT_QUORATE = 0, 2


class StatusArgs:
    """The parsed command line of `status`, `nodes` or `explain` (argparse.Namespace's names)."""

    def __init__(self, command: str) -> None:
        self.command = command
        self.verb = f"status:cmd_{command}"
        self.socket: str | None = None
        self.config: str | None = None
        self.json = False
        self.decimal = False


def parse_words(words: Sequence[str]) -> StatusArgs | None:
    """`status|nodes|explain [--json] [--decimal] [--socket PATH | --config FILE]` (the flags
    status only; `--opt VALUE` or `--opt=VALUE`, each at most once); None for anything else."""
    if not words or words[0] not in FAST_VERBS:
        return None
    args = StatusArgs(words[0])
    flags = ("--json", "--decimal") if args.command == "status" else ()
    seen: set[str] = set()
    rest = list(words[1:])
    while rest:
        name, eq, value = rest.pop(0).partition("=")
        if name in seen:
            return None
        seen.add(name)
        if name in flags and not eq:
            setattr(args, name[2:], True)
            continue
        if name not in ("--socket", "--config"):
            return None
        if not eq:
            value = rest.pop(0) if rest else ""
        if not value or value.startswith("-"):
            return None  # argparse decides what a missing or dash-led value means
        setattr(args, name[2:], value)
    return None if {"--socket", "--config"} <= seen else args


def fetch_status(args: StatusArgs | argparse.Namespace) -> tuple[NodeStatus, dict[str, Any]]:
    """The typed status (agent/cli/status_reader.py) and its JSON document."""
    doc = ask(args, "status")
    return read_status(doc), doc


def cmd_status(args: StatusArgs | argparse.Namespace) -> int:
    """pvecm status layout, or the schema-1 document with --json."""
    st, doc = fetch_status(args)
    if args.json:
        import json  # noqa: PLC0415 - its encoder is needed here only

        sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    else:
        sys.stdout.write(status_text(st, time.ctime(), hex_ids=not args.decimal))
    return EXIT_OK if st.quorate else EXIT_NOT_QUORATE


def cmd_nodes(args: StatusArgs | argparse.Namespace) -> int:
    """pvecm nodes layout (exit 0 whenever the agent answered, like corosync-quorumtool -l)."""
    st, _ = fetch_status(args)
    sys.stdout.write(nodes_text(st))
    return EXIT_OK


def cmd_explain(args: StatusArgs | argparse.Namespace) -> int:
    """Why this node is or is not quorate."""
    st, _ = fetch_status(args)
    sys.stdout.write(explain_text(st))
    return EXIT_OK if st.quorate else EXIT_NOT_QUORATE
