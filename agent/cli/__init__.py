"""`votemesh`: talk to the local agent and make cluster keys (one module per verb group).

    votemesh status [--json] [--decimal] [--socket PATH | --config FILE]
    votemesh nodes [--socket PATH | --config FILE]
    votemesh explain [--socket PATH | --config FILE]
    votemesh expected N|reset [--socket PATH | --config FILE]
    votemesh events [--socket PATH | --config FILE]
    votemesh keygen FILE
    votemesh create NAME --link0 ADDR | join-info [--ttl 1h] | add JOIN-STRING --link0 ADDR
    votemesh qdevice setup HOST[:PORT] --token T [--algorithm ffsplit|lms] | qdevice remove
    votemesh config show [--json] [--socket PATH | --config FILE]
    votemesh delnode NAME|ID [--socket PATH | --config FILE]
    votemesh leave [--config NODE_TOML]
    votemesh link add INDEX NODE=ADDR[:PORT]... [--priority N] | link remove INDEX
    votemesh rotate-key [--wait S] | updatecerts [--force] [--config NODE_TOML]
    votemesh --version

Exit status like corosync-quorumtool: 0 success (`status`/`explain`: quorate), 2 not quorate,
1 an error (one line on stderr saying what to do; never a traceback).

Adapter ring. A monitoring script polls `status`, `nodes` and `explain`, so their usual command
lines take a fast path (agent.cli.status.parse_words) that imports `_json`, `_socket`,
`proto.control_frame`, `proto.runtime.control_client`, `agent.cli.client`, `.render`,
`.status_reader` and nothing else (`json` for `status --json`): no argparse, `re`, `typing`,
`dataclasses`, `pathlib`, `agent.status`, asyncio, structlog, cryptography, msgpack or agent core
(tests/agent/test_cli_fast.py pins the list; `make bench` -> bench cli measures it). This module
therefore imports only `agent.cli.client` at its top; argparse and the other verbs' modules load
when the command line needs them.
"""

from __future__ import annotations

import sys

from agent.cli.client import DEFAULT_SOCKET, UserError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~10 ms per CLI call
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from typing import NoReturn

    from agent.cli.status import StatusArgs

    _Parser = argparse.ArgumentParser

EXIT_OK, EXIT_ERROR, EXIT_NOT_QUORATE = 0, 1, 2


def _parser_class() -> type[argparse.ArgumentParser]:
    """argparse with one-line errors: what is wrong and where to look, exit status 1
    (made on first use: importing argparse is off the fast path)."""
    import argparse  # noqa: PLC0415

    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:
            self.exit(EXIT_ERROR, f"{self.prog}: {message} (see {self.prog} --help)\n")

    return Parser


def _version_action() -> type[argparse.Action]:
    """`--version`: the installed package's version (read only when asked: importlib.metadata
    is off the fast path)."""
    import argparse  # noqa: PLC0415

    class Version(argparse.Action):
        def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
            from importlib.metadata import version  # noqa: PLC0415

            print(f"votemesh {version('votemesh')}")
            parser.exit(0)

    return Version


def _where(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--socket", help=f"the agent's control socket (default {DEFAULT_SOCKET})")
    group.add_argument("--config", help="take the control socket from this agent config")


def _status_verbs(sub: argparse._SubParsersAction[_Parser], only: str) -> None:
    if only in ("", "status"):
        p = sub.add_parser("status", help="quorum and membership (pvecm status layout)")
        p.add_argument("--json", action="store_true", help="the status document (schema 1)")
        p.add_argument("--decimal", action="store_true", help="decimal node ids (default hex)")
        _where(p)
        p.set_defaults(verb="status:cmd_status")
    if only in ("", "nodes"):
        p = sub.add_parser("nodes", help="the members of this node's view (pvecm nodes layout)")
        _where(p)
        p.set_defaults(verb="status:cmd_nodes")
    if only in ("", "explain"):
        p = sub.add_parser("explain", help="why this node is or is not quorate")
        _where(p)
        p.set_defaults(verb="status:cmd_explain")


def _admin_verbs(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("expected", help="override expected votes (like pvecm expected)")
    p.add_argument("value", metavar="N", help="expected votes, or 'reset'")
    _where(p)
    p.set_defaults(verb="admin:cmd_expected")
    p = sub.add_parser("events", help="the agent's recent events (JSON lines)")
    _where(p)
    p.set_defaults(verb="admin:cmd_events")
    p = sub.add_parser("keygen", help="create a new cluster key file (0600)")
    p.add_argument("file", metavar="FILE")
    p.set_defaults(verb="admin:cmd_keygen")


def _config_verbs(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("config", help="the replicated cluster configuration")
    config_sub = p.add_subparsers(dest="config_command", required=True, prog="votemesh config")
    show = config_sub.add_parser("show", help="print it (TOML) with its version and digest")
    show.add_argument("--json", action="store_true", help="the JSON document")
    _where(show)
    show.set_defaults(verb="config:cmd_config_show")
    p = sub.add_parser("delnode", help="remove a node from the cluster (like pvecm delnode)")
    p.add_argument("node", metavar="NAME|ID")
    _where(p)
    p.set_defaults(verb="config:cmd_delnode")
    p = sub.add_parser("leave", help="remove this node from the cluster; keeps node.toml")
    p.add_argument("--config", help="this node's node.toml (default /etc/votemesh/node.toml)")
    p.add_argument("--socket", help="the agent's control socket (default: from --config)")
    p.set_defaults(verb="config:cmd_leave")
    p = sub.add_parser("link", help="add or remove a redundant link on the running cluster")
    link_sub = p.add_subparsers(dest="link_command", required=True, prog="votemesh link")
    add = link_sub.add_parser("add", help="a new link: every node's address on it")
    add.add_argument("index", type=int, choices=range(8), metavar="INDEX")
    add.add_argument("addresses", nargs="+", metavar="NODE=ADDR[:PORT]")
    add.add_argument("--priority", type=int, metavar="N", help="0-255, higher wins (default 0)")
    _where(add)
    add.set_defaults(verb="config:cmd_link_add")
    remove = link_sub.add_parser("remove", help="remove a link from every node")
    remove.add_argument("index", type=int, choices=range(8), metavar="INDEX")
    _where(remove)
    remove.set_defaults(verb="config:cmd_link_remove")


FAST_VERBS = ("status", "nodes", "explain")


def build_parser(only: str = "") -> argparse.ArgumentParser:
    """The whole command line; `only` (a FAST_VERBS name) builds just that verb, because
    building every subparser costs a few ms on each monitoring poll."""
    parser = _parser_class()(prog="votemesh", description="votemesh cluster membership and quorum")
    parser.add_argument("--version", nargs=0, action=_version_action(), help="print the version")
    sub = parser.add_subparsers(dest="command", required=True, prog="votemesh")
    _status_verbs(sub, only)
    if not only:
        _admin_verbs(sub)
        from agent.cli import cluster, keys, qdevice  # noqa: PLC0415

        cluster.add_arguments(sub)
        qdevice.add_arguments(sub)
        keys.add_arguments(sub)
        _config_verbs(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    words = sys.argv[1:] if argv is None else list(argv)
    only = words[0] if words and words[0] in FAST_VERBS else ""
    if only:
        from agent.cli.status import parse_words  # noqa: PLC0415

        fast = parse_words(words)
        if fast is not None:
            return _run(fast)
    return _run(build_parser(only).parse_args(words))


def _run(args: argparse.Namespace | StatusArgs) -> int:
    """Call the verb's function; a user's mistake is one line on stderr and exit status 1."""
    module, _, name = str(args.verb).partition(":")
    try:
        if module == "status":
            from agent.cli import status as verbs  # noqa: PLC0415
        elif module == "cluster":
            from agent.cli import cluster as verbs  # type: ignore[no-redef]  # noqa: PLC0415
        elif module == "qdevice":
            from agent.cli import qdevice as verbs  # type: ignore[no-redef]  # noqa: PLC0415
        elif module == "config":
            from agent.cli import config as verbs  # type: ignore[no-redef]  # noqa: PLC0415
        elif module == "keys":
            from agent.cli import keys as verbs  # type: ignore[no-redef]  # noqa: PLC0415
        else:
            from agent.cli import admin as verbs  # type: ignore[no-redef]  # noqa: PLC0415
        return int(getattr(verbs, name)(args))
    except (UserError, ValueError) as exc:  # ValueError: ConfigError, StatusError, FrameError
        print(f"votemesh: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
