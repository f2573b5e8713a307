"""`votemesh rotate-key` and `votemesh updatecerts` (design §3.12).

    votemesh rotate-key [--wait SECONDS] [--socket PATH | --config NODE_TOML]
    votemesh updatecerts [--force] [--config NODE_TOML]

Adapter ring. `rotate-key` asks the local agent (control request `rotate-key`) and follows the
rotation in the configuration until it is done or --wait runs out; `updatecerts` re-issues this
node's certificate from the cluster CA on disk and tells the running agent's join port
(`join-reload`). Every mistake is one line and exit status 1.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from agent.cli import qdevice
from agent.cli.client import UserError, ask

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEFAULT_NODE_TOML = "/etc/votemesh/node.toml"
CHANGE_TIMEOUT = 15.0
POLL = 0.2


def add_arguments(sub: argparse._SubParsersAction[Any]) -> None:
    """Register `rotate-key` and `updatecerts`."""
    p = sub.add_parser("rotate-key", help="a new cluster key on the running cluster")
    p.add_argument(
        "--wait", type=float, default=60.0, metavar="SECONDS",
        help="follow the rotation this long (default 60; 0: start it and return)",
    )  # fmt: skip
    qdevice.control_socket_options(p)
    p.set_defaults(verb="keys:cmd_rotate_key")
    p = sub.add_parser("updatecerts", help="renew this node's certificate (like pvecm)")
    p.add_argument("--force", action="store_true", help="also make a new node key")
    p.add_argument("--config", help=f"this node's node.toml (default {DEFAULT_NODE_TOML})")
    p.add_argument("--socket", help="the agent's control socket (default: from --config)")
    p.set_defaults(verb="keys:cmd_updatecerts")


def cmd_rotate_key(args: argparse.Namespace) -> int:
    """Start a rotation, then report its phases until it is done or --wait ends."""
    if not 0 <= args.wait <= 86400:
        raise UserError("--wait: seconds from 0 to 86400")
    started = ask(args, "rotate-key", CHANGE_TIMEOUT)
    key_id = str(started["key_id"])
    print(f"new cluster key {key_id}: distributing (configuration version {started['version']})")
    until = time.monotonic() + args.wait
    phase = "distribute"
    while True:  # at least once: --wait 0 still reports where the rotation is
        record = ask(args, "config").get("key_rotation") or {}
        if record.get("key_id") != key_id:
            raise UserError(f"the configuration no longer names key {key_id}; see config show")
        if record["phase"] != phase:
            phase = record["phase"]
            print(f"new cluster key {key_id}: {phase}")
        if phase == "done":
            print("every node seals with the new key; the old key is retired")
            return 0
        if time.monotonic() >= until:
            break
        time.sleep(POLL)
    waiting = ", ".join(str(i) for i in record.get("waiting_for", [])) or "none"
    print(
        f"rotation still in phase {phase}, waiting for node(s) {waiting}: the old key stays "
        "in use until they confirm (when they are back), or `votemesh delnode` them"
    )
    return 0


def cmd_updatecerts(args: argparse.Namespace) -> int:
    """Re-issue node.pem from the cluster CA (and node.key with --force); tell the agent."""
    from agent.config import ConfigError  # noqa: PLC0415
    from agent.runtime.config_file import local_of  # noqa: PLC0415

    node_toml = Path(args.config or DEFAULT_NODE_TOML)
    try:
        local = local_of(node_toml)
        written = renew(node_toml.parent, Path(local.state_dir), local.node_id, args.force)
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    print(f"renewed: {', '.join(written)}")
    if not args.socket:
        args.socket = local.control_socket
    try:
        doc = ask(args, "join-reload")
    except UserError as exc:
        print(f"the running agent was not told ({exc}); it uses the new files when restarted")
        return 0
    print(doc["text"])
    return 0


def renew(config_dir: Path, state_dir: Path, node_id: int, force: bool) -> list[str]:
    """Write a new node certificate (and key with `force`); the file names written."""
    from agent.runtime import join_files  # noqa: PLC0415
    from proto import certificates  # noqa: PLC0415

    files = join_files.ClusterFiles(config_dir, state_dir)
    ca, ca_key = join_files.load_ca(files)
    name = _node_name(state_dir, node_id)
    key = join_files.new_key() if force or not files.node_key.exists() else _node_key(files)
    cert = join_files.sign_node(ca, ca_key, name, key.public_key(), join_files.utcnow())
    written = []
    if force or not files.node_key.exists():
        join_files.write_file(files.node_key, certificates.key_pem(key), join_files.PRIVATE_MODE)
        written.append(f"{files.node_key} (0600)")
    join_files.write_file(files.node_cert, certificates.cert_pem(cert), join_files.PUBLIC_MODE)
    until = f"{cert.not_valid_after_utc:%Y-%m-%d}"
    written.append(f"{files.node_cert} (0644, CN={name}, valid until {until})")
    return written


def _node_name(state_dir: Path, node_id: int) -> str:
    from agent.config import ConfigError  # noqa: PLC0415
    from agent.runtime import cluster_store  # noqa: PLC0415

    try:
        stored = cluster_store.load(state_dir)
    except (ConfigError, OSError) as exc:
        raise ConfigError(f"cannot read the cluster configuration in {state_dir}: {exc}") from None
    node = None if stored is None else stored.committed.node(node_id)
    if node is None:
        raise ConfigError(
            f"the cluster configuration in {state_dir} does not name node {node_id}; is this "
            "node a member? (votemesh create / add)"
        )
    return node.name


def _node_key(files: Any) -> Any:
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: PLC0415

    from agent.config import ConfigError  # noqa: PLC0415

    try:
        key = serialization.load_pem_private_key(files.node_key.read_bytes(), password=None)
    except (OSError, ValueError):
        raise ConfigError(
            f"{files.node_key} cannot be read as a PEM key; make a new one: updatecerts --force"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError(f"{files.node_key} is not an RSA key; updatecerts --force")
    return key
