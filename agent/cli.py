"""`votemesh`: talk to the local agent (status, expected votes) and make cluster keys.

    votemesh status [--json] [--socket PATH | --config FILE]
    votemesh expected N|reset [--socket PATH | --config FILE]
    votemesh events [--socket PATH | --config FILE]
    votemesh keygen FILE

Adapter ring: user mistakes are one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from agent.config import MAX_EXPECTED_VOTES, ConfigError

DEFAULT_SOCKET = "/run/votemesh/agent.sock"


class UserError(Exception):
    """A mistake the user can fix; printed as one line, exit status 2."""


def _socket(args: argparse.Namespace) -> Path:
    if args.socket:
        return Path(args.socket)
    if args.config:
        from agent.runtime.config_file import load_config  # noqa: PLC0415

        return Path(load_config(Path(args.config)).control_socket)
    return Path(DEFAULT_SOCKET)


def _ask(args: argparse.Namespace, line: str) -> Any:
    from agent.runtime.control import request  # noqa: PLC0415

    path = _socket(args)
    try:
        ok, body = asyncio.run(request(path, line))
    except (FileNotFoundError, ConnectionRefusedError):
        raise UserError(
            f"no agent is listening on {path}; is votemesh-agent running? (--socket PATH)"
        ) from None
    except PermissionError:
        raise UserError(f"{path}: permission denied; run as root or the votemesh group") from None
    except TimeoutError:
        raise UserError(f"the agent on {path} did not answer within 5 s") from None
    if not ok:
        raise UserError(body.strip())
    return json.loads(body)


def _yes(value: Any) -> str:
    return "Yes" if value else "No"


def _counting(s: dict[str, Any]) -> str:
    """What quorum counts (design §3.4): the members, and why when it is not the plain view."""
    counted = s.get("counted")
    if counted is None:
        return "-"
    basis, why = s.get("basis") or "-", s.get("basis_why") or ""
    return f"{counted} ({basis}: {why})" if why else f"{counted} ({basis})"


def format_status(s: dict[str, Any]) -> str:
    """The human view of `status --json`, in the spirit of `pvecm status`."""
    ring = s.get("ring_id") or ["?", "?"]
    qdevice = s.get("qdevice") or {}
    lines = [
        "Cluster information",
        "-------------------",
        f"Name:             {s.get('cluster')}",
        f"Node:             {s.get('node_id')} ({s.get('node_name') or '-'})",
        f"Ring ID:          {ring[0]}.{ring[1]}",
        f"Quorate:          {_yes(s.get('quorate'))}",
        f"Why:              {s.get('why') or '-'}",
        f"Counting:         {_counting(s)}",
        "",
        "Votequorum information",
        "----------------------",
        f"Expected votes:   {s.get('expected_votes')}",
        f"Total votes:      {s.get('total_votes')}",
        f"Quorum:           {s.get('quorum')}",
        f"Flags:            {' '.join(s.get('flags') or []) or '-'}",
        f"Qdevice:          connected {_yes(qdevice.get('connected'))}, vote "
        + _yes(qdevice.get("vote")),
        "",
        "Membership information",
        "----------------------",
        f"{'Nodeid':>8}  {'Member':<6}  {'Name':<16}  Links",
    ]
    members = set(s.get("members") or [])
    lines.append(f"{s.get('node_id'):>8}  {'yes':<6}  {(s.get('node_name') or '-'):<16}  (local)")
    for pid, peer in sorted((s.get("peers") or {}).items(), key=lambda kv: int(kv[0])):
        links = ", ".join(_link_text(link) for link in peer.get("links") or []) or "-"
        member = "yes" if int(pid) in members else "no"
        lines.append(f"{pid:>8}  {member:<6}  {(peer.get('name') or '-'):<16}  {links}")
    return "\n".join(lines) + "\n"


def _link_text(link: dict[str, Any]) -> str:
    index = link.get("link", link.get("index", "?"))
    state = "up" if link.get("up") else "down"
    rtt = link.get("rtt_ms", link.get("rtt"))
    if isinstance(rtt, int | float) and link.get("rtt_ms") is None:
        rtt = rtt * 1000  # seconds -> ms
    rtt_text = f" {rtt:.1f}ms" if isinstance(rtt, int | float) else ""
    return f"link{index} {state}{rtt_text}"


def cmd_status(args: argparse.Namespace) -> int:
    """Print the local agent's view: a table, or the JSON document with --json."""
    doc = _ask(args, "status")
    if args.json:
        sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    else:
        sys.stdout.write(format_status(doc))
    return 0


def cmd_expected(args: argparse.Namespace) -> int:
    """Override expected votes (like `pvecm expected`), or `reset` the override."""
    value = args.value.lower()
    digits = value.isdigit() and len(value) <= 10
    if value != "reset" and (not digits or not 1 <= int(value) <= MAX_EXPECTED_VOTES):
        raise UserError(
            f"expected votes must be a whole number from 1 to {MAX_EXPECTED_VOTES} or "
            f"'reset', not {args.value[:40]!r}"
        )
    doc = _ask(args, f"expected {value}")
    print(f"expected votes {doc.get('expected_votes')}, quorum {doc.get('quorum')}, "
          f"quorate {_yes(doc.get('quorate'))}")  # fmt: skip
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    """Print the agent's recent events, one JSON object per line."""
    for event in _ask(args, "events"):
        print(json.dumps(event, sort_keys=True))
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    """Write a new cluster key (32 random bytes, mode 0600); refuses to overwrite."""
    from agent.runtime.keys import keygen  # noqa: PLC0415

    path = Path(args.file)
    try:
        keygen(path)
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    print(f"wrote a new cluster key to {path}; copy it to every node (mode 0600)")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: what is wrong and where to look, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _where(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--socket", help=f"the agent's control socket (default {DEFAULT_SOCKET})")
    group.add_argument("--config", help="take the control socket from this agent config")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    parser = _Parser(prog="votemesh", description="votemesh cluster membership and quorum")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("status", help="membership and quorum as this node sees them")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _where(p)
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("expected", help="override expected votes (like pvecm expected)")
    p.add_argument("value", metavar="N", help="expected votes, or 'reset'")
    _where(p)
    p.set_defaults(func=cmd_expected)
    p = sub.add_parser("events", help="the agent's recent events (JSON lines)")
    _where(p)
    p.set_defaults(func=cmd_events)
    p = sub.add_parser("keygen", help="create a new cluster key file (0600)")
    p.add_argument("file", metavar="FILE")
    p.set_defaults(func=cmd_keygen)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (UserError, ConfigError) as exc:
        print(f"votemesh: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
