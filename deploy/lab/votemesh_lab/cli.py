"""`votemesh-lab`: the chaos lab's command line (docs/lab.md "votemesh-lab commands").

argparse only; what each command does is in `labcmd.py`. `run`, `check` and `library` are loaded
when used (`votemesh_lab.runner`, `.report`, `.scenario`). Every user mistake (a bad argument, an
unknown node, no lab up, not root) is one line on stderr and exit 1, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import version
from typing import NoReturn

from votemesh_lab import labcmd
from votemesh_lab.labcmd import UserError

#: command -> (module, function) for the commands other parts of the package provide.
LAZY = {
    "run": ("votemesh_lab.runner", "command_run"),
    "check": ("votemesh_lab.report", "command_check"),
    "library": ("votemesh_lab.scenario", "command_library"),
}
SIGNAL_COMMANDS = ("kill", "stop", "pause", "cont", "resume", "term", "restart")


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line and exit 1 (not the usage block and 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(1, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _lab_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lab", metavar="ID", help="the lab's id (default: the only lab up)")


def _lab_commands(sub: argparse._SubParsersAction[OneLineParser]) -> None:
    up = sub.add_parser("up", help="build a lab and start its cluster")
    up.add_argument("--nodes", type=int, required=True, help="agents n1..nN")
    up.add_argument("--links", type=int, default=1, help="lab networks (default 1)")
    up.add_argument("--qnetd", metavar="ALGO", default="", help="votemesh-qnetd: ffsplit | lms")
    up.add_argument("--broker", action="store_true", help="mosquitto in host 'broker'")
    up.add_argument("--corosync", action="store_true", help="Debian's corosync instead of votemesh")
    up.add_argument("--seed", type=int, default=0, help="the switch's random seed")
    up.add_argument("--id", metavar="ID", help="6 hex digits (default: random)")
    up.add_argument("--wait", type=float, default=30.0, help="seconds for agents to answer")
    down = sub.add_parser("down", help="remove a lab (works after a crash too)")
    which = down.add_mutually_exclusive_group()
    which.add_argument("--lab", metavar="ID", help="the lab's id (default: the only one)")
    which.add_argument("--all", action="store_true", help="every lab up made, and dead leftovers")
    down.add_argument("--purge", action="store_true", help="also delete the work directory")
    sub.add_parser("list", help="labs up, and leftovers of crashed ones")
    status = sub.add_parser("status", help="per node: ring, members, quorum, qdevice, links")
    _lab_option(status)
    status.add_argument("--watch", action="store_true", help="redraw every second")
    status.add_argument("--json", action="store_true", help="the raw status document")
    run_in = sub.add_parser("exec", help="run a command in a node's namespaces")
    _lab_option(run_in)
    run_in.add_argument("node", help="node id or host name")
    run_in.add_argument(
        "argv", nargs=argparse.REMAINDER, metavar="CMD", help="the command and its arguments"
    )
    partition = sub.add_parser("partition", help="split into groups, e.g. 1,2 3,4,5")
    _lab_option(partition)
    partition.add_argument("groups", nargs="+", metavar="GROUP")
    cut = sub.add_parser("cut", help="one-way cut, e.g. '1->2'")
    _lab_option(cut)
    cut.add_argument("pairs", nargs="+", metavar="SRC->DST")
    heal = sub.add_parser("heal", help="lift every partition and cut")
    _lab_option(heal)
    shape = sub.add_parser("shape", help="[A B] key=value...: netem impairments")
    _lab_option(shape)
    shape.add_argument("--one-way", action="store_true", help="A -> B only")
    shape.add_argument("items", nargs=argparse.REMAINDER, metavar="[A B] KEY=VALUE")
    unshape = sub.add_parser("unshape", help="[A B]: remove impairments")
    _lab_option(unshape)
    unshape.add_argument("hosts", nargs="*", metavar="A B")
    for name in SIGNAL_COMMANDS:
        signal_parser = sub.add_parser(name, help=f"{name} a node's daemon")
        _lab_option(signal_parser)
        signal_parser.add_argument("node", help="node id or host name")


def _scenario_commands(sub: argparse._SubParsersAction[OneLineParser]) -> None:
    run = sub.add_parser("run", help="run a scenario file (or a library name)")
    run.add_argument("scenario", metavar="FILE|NAME")
    run.add_argument("--seed", type=int, default=None)
    run.add_argument("--out", default=None, metavar="DIR")
    run.add_argument("--backend", default="netns", choices=("netns", "ssh"))
    run.add_argument("--inventory", default=None, metavar="FILE")
    run.add_argument("--shaper", default=None, choices=("tap", "tc"))
    check = sub.add_parser("check", help="judge a stored run again")
    check.add_argument("dir", metavar="DIR")
    sub.add_parser("library", help="the scenarios shipped with the package")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="votemesh-lab",
        description="votemesh chaos lab: clusters in network namespaces, netem faults, checker",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('votemesh')}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    _lab_commands(sub)
    _scenario_commands(sub)
    return parser


def _handler(command: str) -> Callable[[argparse.Namespace], int]:
    if command in LAZY:
        module_name, function = LAZY[command]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            raise UserError(f"`{command}` is not in this build ({module_name} is missing)") from exc
        found: Callable[[argparse.Namespace], int] | None = getattr(module, function, None)
        if found is None:
            raise UserError(f"`{command}` is not in this build ({module_name}.{function})")
        return found
    if command in SIGNAL_COMMANDS:
        return labcmd.cmd_signal
    handler: Callable[[argparse.Namespace], int] = getattr(labcmd, f"cmd_{command}")
    return handler


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 1
    try:
        return _handler(args.command)(args)
    except ModuleNotFoundError as exc:
        if args.command not in LAZY or not (exc.name or "").startswith("votemesh_lab."):
            raise
        print(f"votemesh-lab: `{args.command}` needs {exc.name}, which is not in this build",
              file=sys.stderr)  # fmt: skip
        return 1
    except UserError as exc:
        print(f"votemesh-lab: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
