"""The agent config of one lab node, as data and as TOML text (pure).

A scenario's `[cluster]` table holds the agent's own keys (docs/agent.md); the lab adds what
only it knows: who the node is, its links on the lab networks, its static peers, the qnetd's
address and credentials, the broker. `node_config()` merges the two (a table the scenario gives,
e.g. `[qdevice]`, overlays the lab's table key by key) and `toml_text()` writes the result; the
runner then has the agent's own loader check the text before anything starts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

AGENT_PORT = 5407
CONTROL_SOCKET = "/run/votemesh/agent.sock"
#: Keys of the agent's config that only the lab may set (per node, from the topology).
LAB_KEYS = frozenset({"node_id", "node_name", "key_files", "link", "peer", "state_dir"})
#: Top-level keys a scenario's [cluster] may set: the agent's (agent/runtime/config_file.py
#: TOP_KEYS) minus LAB_KEYS.
CLUSTER_KEYS = frozenset(
    {"cluster_name", "control_socket", "discovery", "clock_skew_bound", "timing", "quorum",
     "qdevice", "mqtt", "hook", "metrics"}
)  # fmt: skip
DEFAULT_CLUSTER_NAME = "vmlab"


@dataclass(frozen=True)
class NodeSpec:
    """What the lab knows about one node: id, name, one address per lab network."""

    node_id: int
    name: str
    addresses: tuple[str, ...]


def node_config(
    cluster: Mapping[str, Any],
    node: NodeSpec,
    peers: Sequence[NodeSpec],
    *,
    key_file: str,
    state_dir: str,
    qdevice: Mapping[str, Any] | None = None,
    mqtt: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The agent config of `node` as a TOML-ready dict (peers: the static ones, maybe none)."""
    config: dict[str, Any] = {
        "cluster_name": DEFAULT_CLUSTER_NAME,
        "node_id": node.node_id,
        "node_name": node.name,
        "key_files": [key_file],
        "state_dir": state_dir,
        "control_socket": CONTROL_SOCKET,
        "discovery": False,
    }
    lab_tables: dict[str, Mapping[str, Any]] = {}
    if qdevice is not None:
        lab_tables["qdevice"] = qdevice
    if mqtt is not None:
        lab_tables["mqtt"] = mqtt
    for key, value in cluster.items():
        if key in lab_tables and isinstance(value, Mapping):
            lab_tables[key] = {**lab_tables[key], **value}
        else:
            config[key] = value
    config.update(lab_tables)
    config["link"] = [
        {"index": k, "address": address, "port": AGENT_PORT, "priority": 1 if k == 0 else 0}
        for k, address in enumerate(node.addresses)
    ]
    if peers:
        config["peer"] = [
            {"node_id": p.node_id, "name": p.name}
            | {f"link{k}": f"{a}:{AGENT_PORT}" for k, a in enumerate(p.addresses)}
            for p in peers
        ]
    return config


# ------------------------------------------------------------------------- TOML out
def toml_text(document: Mapping[str, Any]) -> str:
    """TOML for a dict of scalars, lists of scalars, tables and arrays of tables."""
    lines: list[str] = []
    _table(lines, document, ())
    return "\n".join(lines).strip() + "\n"


def _is_table_array(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _table(lines: list[str], table: Mapping[str, Any], path: tuple[str, ...]) -> None:
    nested = []
    for key, value in table.items():
        if isinstance(value, Mapping) or _is_table_array(value):
            nested.append((key, value))
        else:
            lines.append(f"{_key(key)} = {_value(value)}")
    for key, value in nested:
        name = ".".join(_key(k) for k in (*path, key))
        if isinstance(value, Mapping):
            lines += ["", f"[{name}]"]
            _table(lines, value, (*path, key))
        else:
            for item in value:
                lines += ["", f"[[{name}]]"]
                _table(lines, item, (*path, key))


def _key(key: str) -> str:
    bare = key and all(c.isalnum() or c in "_-" for c in key) and key.isascii()
    return key if bare else json.dumps(key)


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"TOML has no {value}")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    raise ValueError(f"cannot write {type(value).__name__} as TOML")
