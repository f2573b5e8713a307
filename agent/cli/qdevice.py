"""`votemesh qdevice setup HOST[:PORT] --token T` and `votemesh qdevice remove`.

Adapter ring. The local agent enrolls with votemesh-qnetd (the token from `votemesh-qnetd token
create --cluster NAME`; no SSH) and puts the device settings and credentials into the cluster
configuration, so every node receives them (agent/runtime/qdevice_setup.py). Like pvecm, an odd
node count with ffsplit is refused unless --force.
"""

from __future__ import annotations

import argparse

from agent.cli.client import DEFAULT_SOCKET, UserError, ask

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

QNETD_PORT = 5403
ENROLL_PORT = 5404
APPLIED = "every node starts its qdevice client with it (votemesh status shows the Qdevice flag)"
REMOVED = "every node stops its qdevice client"


def add_arguments(sub: argparse._SubParsersAction[Any]) -> None:
    """Register `qdevice setup` and `qdevice remove`."""
    p = sub.add_parser("qdevice", help="add or remove a quorum device (votemesh-qnetd)")
    verbs = p.add_subparsers(dest="qdevice_verb", required=True)
    s = verbs.add_parser("setup", help="enroll with votemesh-qnetd and configure every node")
    s.add_argument("server", metavar="HOST[:PORT]", help=f"the qnetd (port {QNETD_PORT})")
    s.add_argument("--token", required=True, help="from `votemesh-qnetd token create`")
    s.add_argument("--algorithm", choices=("ffsplit", "lms"), default="ffsplit")
    s.add_argument("--tie-breaker", default="lowest", help="lowest, highest or a node id")
    s.add_argument("--enroll-port", type=int, default=ENROLL_PORT, help="qnetd's enrollment port")
    s.add_argument("--force", action="store_true", help="ffsplit with an odd node count")
    control_socket_options(s)
    s.set_defaults(verb="qdevice:cmd_setup")
    r = verbs.add_parser("remove", help="remove the quorum device from every node")
    control_socket_options(r)
    r.set_defaults(verb="qdevice:cmd_remove")


def control_socket_options(p: argparse.ArgumentParser) -> None:
    """--socket PATH | --config NODE_TOML (shared by the verbs that ask the local agent)."""
    where = p.add_mutually_exclusive_group()
    where.add_argument("--socket", help=f"the agent's control socket (default {DEFAULT_SOCKET})")
    where.add_argument("--config", help="take the control socket from this node.toml")


def cmd_setup(args: argparse.Namespace) -> int:
    """Ask the local agent to enroll and configure the device cluster-wide."""
    from proto.host_port import parse_host_port  # noqa: PLC0415

    try:
        host, port = parse_host_port(args.server, QNETD_PORT)
    except ValueError as exc:
        raise UserError(f"qdevice server {args.server[:60]!r}: {exc}") from None
    tie = args.tie_breaker.lower()
    if tie not in ("lowest", "highest") and not (tie.isdigit() and len(tie) <= 10):
        raise UserError("--tie-breaker: lowest, highest or a node id")
    if not 0 < args.enroll_port < 65536 or " " in args.token or not args.token:
        raise UserError("--enroll-port 1-65535 and one --token word are needed")
    request = (
        f"qdevice-setup {host} {port} {args.enroll_port} {args.token} {args.algorithm} {tie} "
        f"{1 if args.force else 0}"
    )
    doc = ask(args, request)
    print(f"{doc['text']}: cluster configuration version {doc['version']}")
    print(APPLIED)
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    """Ask the local agent to remove the device from the cluster configuration."""
    doc = ask(args, "qdevice-remove")
    print(f"{doc['text']}: cluster configuration version {doc['version']}")
    print(REMOVED)
    return 0
