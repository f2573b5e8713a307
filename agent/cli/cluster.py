"""`votemesh create`, `join-info`, `add`: make a cluster, invite a node, join one (design §3.11).

    votemesh create NAME --link0 ADDR[,priority=N] [... --link7 ...] [--nodeid N] [--votes N]
    votemesh join-info [--ttl 1h]
    votemesh add JOIN-STRING --link0 ADDR[,priority=N] [...] [--nodeid N] [--votes N] [--force]

Adapter ring. Every mistake is one line (UserError) and exit status 1; nothing is written
before every check passed. Imports cryptography and the agent's file helpers only when run.
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

from agent.cli.client import DEFAULT_SOCKET, UserError, ask

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from agent.node_local import NodeLocal
    from agent.runtime.join_files import ClusterFiles

DEFAULT_CONFIG_DIR = "/etc/votemesh"
DEFAULT_STATE_DIR = "/var/lib/votemesh"
MAX_LINKS = 8
TTL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


# ---------------------------------------------------------------- argument parsing
def add_arguments(sub: argparse._SubParsersAction[Any]) -> None:
    """Register the three verbs on the `votemesh` parser."""
    p = sub.add_parser("create", help="create a new cluster with this node as its first member")
    p.add_argument("cluster", metavar="NAME", help="cluster name (letters, digits, hyphens)")
    _member_options(p)
    p.set_defaults(verb="cluster:cmd_create")
    p = sub.add_parser("join-info", help="print a one-time join string for a new node")
    p.add_argument("--ttl", default="1h", help="how long the token lives (60s..7d; default 1h)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--socket", help=f"the agent's control socket (default {DEFAULT_SOCKET})")
    where.add_argument("--config", help="take the control socket from this node.toml")
    p.set_defaults(verb="cluster:cmd_join_info")
    p = sub.add_parser("add", help="join this node to a cluster with a join string")
    p.add_argument("join_string", metavar="JOIN-STRING", help="from `votemesh join-info`")
    _member_options(p)
    p.set_defaults(verb="cluster:cmd_add")


def _member_options(p: argparse.ArgumentParser) -> None:
    first = "this node's address on link 0 (--link1 .. --link7 for more links)"
    for i in range(MAX_LINKS):
        p.add_argument(
            f"--link{i}", metavar="ADDR[,priority=N]", help=argparse.SUPPRESS if i else first
        )
    p.add_argument("--name", help="this node's name (default: the short host name)")
    p.add_argument("--nodeid", type=_whole, help="node id (default: 1 / the lowest free one)")
    p.add_argument("--votes", type=_whole, help="this node's votes (default 1)")
    p.add_argument("--force", action="store_true", help="replace an existing membership")
    p.add_argument("--config-dir", default=DEFAULT_CONFIG_DIR, help="where node.toml goes")
    p.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help="the agent's state directory")
    p.add_argument("--control-socket", default=DEFAULT_SOCKET, help="the agent's control socket")
    p.add_argument("--join-port", type=_whole, default=None, help="this node's join port (5408)")


def _whole(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 10:
        raise argparse.ArgumentTypeError(f"{text[:20]!r} is not a whole number")
    return int(text)


def parse_link(index: int, text: str) -> tuple[int, str, int]:
    """`ADDR[,priority=N]` -> (index, canonical address, priority)."""
    import ipaddress  # noqa: PLC0415

    address, *options = text.split(",")
    try:
        canonical = str(ipaddress.ip_address(address.strip().strip("[]")))
    except ValueError:
        raise UserError(f"--link{index} {address[:60]!r} is not an IP address") from None
    priority = 0
    for option in options:
        key, _, value = option.partition("=")
        if key.strip() != "priority" or not value.strip().isdigit() or int(value) > 255:
            raise UserError(f"--link{index}: write ADDR or ADDR,priority=N (N 0..255)")
        priority = int(value)
    return index, canonical, priority


def _links(args: argparse.Namespace) -> tuple[tuple[int, str, int], ...]:
    links = tuple(
        parse_link(i, getattr(args, f"link{i}"))
        for i in range(MAX_LINKS)
        if getattr(args, f"link{i}") is not None
    )
    if not links:
        raise UserError("give this node's address: --link0 ADDR (and --link1 ... for more links)")
    return links


def _node_name(args: argparse.Namespace) -> str:
    from proto.cert_names import node_name_problem  # noqa: PLC0415

    name = args.name or socket.gethostname().split(".", 1)[0]
    problem = node_name_problem(name)
    if problem is not None:
        raise UserError(f"{problem}; pass --name NAME")
    return name


def _files(args: argparse.Namespace) -> ClusterFiles:
    from agent.config import ConfigError  # noqa: PLC0415
    from agent.runtime import join_files  # noqa: PLC0415
    from agent.runtime.join_files import ClusterFiles  # noqa: PLC0415

    files = ClusterFiles(Path(args.config_dir).absolute(), Path(args.state_dir).absolute())
    problem = files.membership()
    if problem is not None and not args.force:
        raise UserError(f"{problem}; use --force to replace it")
    try:  # before a key is made or the cluster is asked: `add` cannot be undone from here
        join_files.check_writable(files.config_dir)
        join_files.check_writable(files.state_dir)
    except ConfigError as exc:
        raise UserError(f"{exc} (--config-dir, --state-dir)") from None
    return files


def _local(args: argparse.Namespace, node_id: int, key_count: int, state_dir: Path) -> NodeLocal:
    from agent.node_local import DEFAULT_JOIN_PORT, NodeLocal  # noqa: PLC0415
    from agent.runtime.join_files import key_file_names  # noqa: PLC0415

    local = NodeLocal(
        node_id=node_id,
        key_files=key_file_names(key_count),
        state_dir=str(state_dir),
        control_socket=str(Path(args.control_socket).absolute()),
        join_port=args.join_port or DEFAULT_JOIN_PORT,
    )
    local.validate()
    return local


def _start_hint(files: ClusterFiles) -> str:
    return (
        f"start the agent: votemesh-agent --config {files.node_toml}"
        " (or: systemctl enable --now votemesh-agent, deploy/systemd)"
    )


# ---------------------------------------------------------------- create
def cmd_create(args: argparse.Namespace) -> int:
    """A new cluster: key, CA, node certificate, configuration version 1, node.toml."""
    from agent import cluster_config  # noqa: PLC0415
    from agent.cluster_config import ClusterConfig, ClusterNode, NodeLink  # noqa: PLC0415
    from agent.config import ConfigError  # noqa: PLC0415
    from agent.runtime import join_files  # noqa: PLC0415
    from proto import certificates  # noqa: PLC0415
    from proto.cert_names import node_name_problem  # noqa: PLC0415

    problem = node_name_problem(args.cluster, "cluster name")
    if problem is not None:
        raise UserError(problem)
    name, links, files = _node_name(args), _links(args), _files(args)
    node_id = args.nodeid if args.nodeid is not None else 1
    votes = args.votes if args.votes is not None else 1
    node = ClusterNode(node_id, name, votes, tuple(NodeLink(i, a, 5407, p) for i, a, p in links))
    config = ClusterConfig(args.cluster, 1, (node,))
    try:
        cluster_config.validate(config)
        local = _local(args, node_id, 1, files.state_dir)
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    now = join_files.utcnow()
    ca, ca_key = join_files.new_ca(args.cluster, now)
    node_key = join_files.new_key()
    cert = join_files.sign_node(ca, ca_key, name, node_key.public_key(), now)
    membership = join_files.Membership(
        keys=(join_files.new_cluster_key(),),
        ca=certificates.cert_pem(ca),
        ca_key=certificates.key_pem(ca_key),
        node_cert=certificates.cert_pem(cert),
        node_key=certificates.key_pem(node_key),
        config=config,
        local=local,
    )
    try:
        join_files.write_membership(files, membership)
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    print(f"created cluster '{args.cluster}': node '{name}' (id {node_id}), config version 1")
    print(f"wrote {files.node_toml}, cluster key, CA and node certificate in {files.config_dir}")
    print(_start_hint(files))
    print("then add nodes: run `votemesh join-info` here and `votemesh add JOIN-STRING` there")
    return 0


# ---------------------------------------------------------------- join-info
def parse_ttl(text: str) -> int:
    """`90`, `90s`, `15m`, `1h`, `2d` -> seconds (60 s .. 7 d)."""
    value = text.strip().lower()
    unit = TTL_UNITS.get(value[-1:]) if value else None
    digits = value[:-1] if unit is not None else value
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 7:
        raise UserError(f"--ttl {text[:20]!r}: write e.g. 30m, 1h or 2d")
    seconds = int(digits) * (unit or 1)
    if not 60 <= seconds <= 7 * 86400:
        raise UserError(f"--ttl {text[:20]!r}: a join token lives 60s to 7d")
    return seconds


def cmd_join_info(args: argparse.Namespace) -> int:
    """Ask the local agent for a join string and print it (one line)."""
    seconds = parse_ttl(args.ttl)
    doc = ask(args, f"join-token {seconds}")
    print(doc["join"])
    print(
        f"valid for {args.ttl}, once; on the new node run: votemesh add '<the line above>' "
        "--link0 ADDR",
        file=sys.stderr,
    )
    return 0


# ---------------------------------------------------------------- add
def cmd_add(args: argparse.Namespace) -> int:
    """Join the cluster named by the join string; write everything the member handed back."""
    from agent.config import ConfigError  # noqa: PLC0415
    from agent.runtime import join_files  # noqa: PLC0415
    from agent.runtime.join_client import JoinError, join  # noqa: PLC0415
    from proto import certificates  # noqa: PLC0415
    from proto.errors import DecodeError  # noqa: PLC0415
    from proto.join import JoinString  # noqa: PLC0415

    name, links, files = _node_name(args), _links(args), _files(args)
    try:
        js = JoinString.parse(args.join_string)
    except DecodeError as exc:
        raise UserError(
            f"not a join string ({exc.detail}); copy the whole line `votemesh join-info` printed"
        ) from None
    node_key = join_files.new_key()
    try:
        joined = join(
            js, name, links, node_id=args.nodeid, votes=args.votes, force=args.force,
            node_key=node_key, log=lambda line: print(line, file=sys.stderr),
        )  # fmt: skip
    except JoinError as exc:
        raise UserError(str(exc)) from None
    grant = joined.grant
    try:
        local = _local(args, grant.node_id, len(grant.keys), files.state_dir)
        join_files.write_membership(
            files,
            join_files.Membership(
                keys=grant.keys,
                ca=grant.ca.encode(),
                ca_key=grant.ca_key.encode(),
                node_cert=grant.cert.encode(),
                node_key=certificates.key_pem(node_key),
                config=joined.config,
                local=local,
            ),
        )
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    print(
        f"joined cluster '{joined.config.cluster_name}' as node '{name}' (id {grant.node_id}) "
        f"through {joined.member}; config version {joined.config.version}, "
        f"{len(joined.config.nodes)} nodes"
    )
    print(_start_hint(files))
    return 0
