"""`votemesh config show`, `delnode`, `leave`, `link add|remove`: the cluster configuration.

Adapter ring. Each verb is one control-socket request to the local agent, which asks the
cluster (design §3.9); a refusal is printed as the replication core's one-line reason with exit
status 1 and nothing changed. `leave` then removes this node's cluster key and its copy of the
cluster configuration once its agent has stopped, and keeps node.toml.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from agent.cli.client import UserError, ask, socket_path

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

CHANGE_TIMEOUT = 15.0
"""Seconds a change may take: the agent answers within its own 10 s limit."""
STOP_WAIT = 10.0
DEFAULT_NODE_TOML = "/etc/votemesh/node.toml"
CLUSTER_FILES = ("cluster-ca.key", "cluster-ca.pem", "node.key", "node.pem")
"""Files `votemesh create` / `add` leave next to node.toml that belong to the cluster."""


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_value(v)}" for k, v in value.items()) + "}"
    return repr(value)


def show_text(doc: dict[str, Any]) -> str:
    """The configuration document as TOML (unset options left out), version and digest first."""
    lines = [
        f"# cluster configuration, version {doc['config_version']}, sha256 {doc['digest']}",
        "# kept by the agents (state_dir/cluster-config); change it with votemesh verbs",
        f"cluster_name = {_value(doc['cluster_name'])}",
        f"config_version = {doc['config_version']}",
    ]
    for table in ("quorum", "timing", "qdevice", "key_rotation"):
        body = doc.get(table)
        if body is None:
            continue
        lines += ["", f"[{table}]"]
        lines += [f"{k} = {_value(v)}" for k, v in body.items() if v is not None]
    for node in doc["nodes"]:
        lines += ["", "[[node]]"]
        lines += [f"{k} = {_value(node[k])}" for k in ("node_id", "name", "votes", "links")]
    return "\n".join(lines) + "\n"


def cmd_config_show(args: argparse.Namespace) -> int:
    """Print the committed cluster configuration (or its JSON with --json)."""
    doc = ask(args, "config")
    if args.json:
        sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    else:
        sys.stdout.write(show_text(doc))
    return 0


def cmd_delnode(args: argparse.Namespace) -> int:
    """Remove a node from the cluster configuration (quorate only; not the local node)."""
    name = args.node
    if not name or len(name) > 64 or any(c.isspace() for c in name):
        raise UserError(f"give a node name or id as shown by `votemesh config show`, not {name!r}")
    doc = ask(args, f"delnode {name}", CHANGE_TIMEOUT)
    print(f"removed node {name}: {doc['text']}")
    return 0


def cmd_link_add(args: argparse.Namespace) -> int:
    """Add a redundant link: every node's address on it; bound by the agents at run time."""
    words = ["link", "add", str(args.index), *args.addresses]
    if args.priority is not None and not 0 <= args.priority <= 255:
        raise UserError(f"--priority {args.priority}: a whole number from 0 to 255")
    if args.priority is not None:
        words.append(f"priority={args.priority}")
    if any(any(c.isspace() for c in w) for w in words):
        raise UserError("write each address as NODE=ADDR[:PORT], without spaces")
    doc = ask(args, " ".join(words), CHANGE_TIMEOUT)
    print(f"link{args.index} added: {doc['text']}")
    return 0


def cmd_link_remove(args: argparse.Namespace) -> int:
    """Remove a link from every node (not the last one)."""
    doc = ask(args, f"link remove {args.index}", CHANGE_TIMEOUT)
    print(f"link{args.index} removed: {doc['text']}")
    return 0


def cmd_leave(args: argparse.Namespace) -> int:
    """Ask the cluster to remove this node, then remove its key and cluster configuration."""
    from agent.config import ConfigError  # noqa: PLC0415
    from agent.runtime.config_file import local_of  # noqa: PLC0415

    config = Path(args.config or DEFAULT_NODE_TOML)
    try:
        local = local_of(config)
    except ConfigError as exc:
        raise UserError(f"{exc}; give this node's file with --config FILE") from None
    if not args.socket:
        args.socket = local.control_socket
    state_dir = Path(local.state_dir)
    gone = _removed_version(local.node_id, state_dir)
    if gone is not None and not _listening(socket_path(args)):
        text = f"the cluster had removed this node already (config_version {gone})"
    else:
        doc = ask(args, "leave", CHANGE_TIMEOUT)
        _wait_stopped(socket_path(args))
        text = f"{doc['text']} (config_version {doc['version']})"
    removed = _remove_files(local.key_files, state_dir, config.parent)
    print(f"{text}; removed: {', '.join(removed)}")
    print(f"kept {config}: run `votemesh create NAME` or `votemesh add JOIN-STRING` to start again")
    return 0


def _removed_version(node_id: int, state_dir: Path) -> int | None:
    """The stored cluster configuration's version when it no longer lists this node (the
    cluster deleted it and its agent stopped: nobody is left to tell), else None."""
    from agent.config import ConfigError  # noqa: PLC0415
    from agent.runtime import cluster_store  # noqa: PLC0415

    try:
        stored = cluster_store.load(state_dir)
    except ConfigError:
        return None
    if stored is None or stored.committed.version < 1:
        return None
    listed = {n.node_id for n in stored.committed.nodes}
    return None if node_id in listed else stored.committed.version


def _listening(path: Path) -> bool:
    """Some process answers on the control socket at `path`."""
    import socket  # noqa: PLC0415

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def _wait_stopped(path: Path) -> None:
    """Wait until the agent stopped (its control socket is gone); UserError if it does not."""
    until = time.monotonic() + STOP_WAIT
    while path.exists() and time.monotonic() < until:
        time.sleep(0.05)
    if path.exists():
        raise UserError(
            f"the cluster removed this node but its agent still runs ({path}); stop "
            "votemesh-agent, then run `votemesh leave` again to remove the key"
        )


def _remove_files(keys: tuple[str, ...], state_dir: Path, here: Path) -> list[str]:
    from agent.runtime import cluster_store  # noqa: PLC0415

    paths = [Path(k) for k in keys]
    paths += [Path(keys[0] + ".new")] if keys else []  # a key a rotation distributed (§3.12)
    paths += [state_dir / cluster_store.FILE_NAME, state_dir / cluster_store.BACKUP_NAME]
    paths += [here / name for name in CLUSTER_FILES]
    removed = []
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise UserError(
                f"cannot remove {path}: {exc.strerror or exc}; remove it by hand"
            ) from None
        removed.append(str(path))
    return removed
