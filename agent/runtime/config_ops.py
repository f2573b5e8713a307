"""Control-socket requests on the cluster configuration: `config`, `delnode X`, `leave`,
`link add INDEX NODE=ADDR[:PORT]... [priority=N]`, `link remove INDEX`.

Adapter ring. Each request is one line (proto/control_frame.py); the answer is JSON. The
changes go through `AgentRuntime.change_config`, so every refusal is the replication core's
one-line reason (not quorate, another change in progress, ...); the pure edits of a
configuration (`without_node`, `with_link`, `without_link`) are here and unit-tested.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from agent import cluster_config
from agent.cluster_config import ClusterConfig, ClusterNode, NodeLink
from agent.config import MAX_LINKS, ConfigError, TieBreaker
from agent.key_rotation import waiting_for
from proto.host_port import parse_host_port

if TYPE_CHECKING:
    from agent.runtime.main import AgentRuntime
    from agent.runtime.replication import ChangeOutcome

COMMANDS = ("config", "delnode", "leave", "link", "rotate-key", "keys")
LINK_USAGE = "link add INDEX NODE=ADDR[:PORT]... [priority=N] | link remove INDEX"


def config_document(config: ClusterConfig) -> dict[str, Any]:
    """The configuration as JSON (what `votemesh config show` prints)."""
    q, t, d = config.quorum, config.timing, config.qdevice
    return {
        "cluster_name": config.cluster_name,
        "config_version": config.version,
        "digest": cluster_config.digest(config).hex(),
        "nodes": [
            {
                "node_id": n.node_id,
                "name": n.name,
                "votes": n.votes,
                "links": [
                    {"index": k.index, "address": k.address, "port": k.port, "priority": k.priority}
                    for k in n.links
                ],
            }
            for n in config.nodes
        ],
        "quorum": {
            "expected_votes": q.expected_votes,
            "two_node": q.two_node,
            "wait_for_all": q.wait_for_all,
            "last_man_standing": q.last_man_standing,
            "last_man_standing_window": q.last_man_standing_window,
            "auto_tie_breaker": q.auto_tie_breaker,
            "auto_tie_breaker_node": q.auto_tie_breaker_node.value,
            "tie_breaker_nodes": list(q.tie_breaker_nodes),
        },
        "timing": {
            "heartbeat_interval": t.heartbeat_interval,
            "missed_heartbeats": t.missed_heartbeats,
            "jitter_allowance": t.jitter_allowance,
            "probe_interval": t.probe_interval,
            "agreement_rounds": t.agreement_rounds,
        },
        "qdevice": None
        if d is None
        else {
            "host": d.host,
            "port": d.port,
            "algorithm": d.algorithm,
            "tie_breaker": d.tie_breaker,
            "tls": d.tls,
            "votes": d.votes,
        },
        "key_rotation": key_document(config),
    }


def key_document(config: ClusterConfig) -> dict[str, Any] | None:
    """The key rotation record without the wrapped key (design §3.12)."""
    r = config.key_rotation
    if r is None:
        return None
    return {
        "phase": r.phase.name.lower(),
        "key_id": r.key_id.hex(),
        "old_key_id": r.old_key_id.hex(),
        "confirmed": list(r.confirmed),
        "waiting_for": waiting_for(r, {n.node_id for n in config.nodes}),
    }


def find_node(config: ClusterConfig, name_or_id: str) -> ClusterNode:
    """The node named `name_or_id` (or with that id); ConfigError saying where to look."""
    for node in config.nodes:
        if node.name == name_or_id or (name_or_id.isdigit() and node.node_id == int(name_or_id)):
            return node
    raise ConfigError(
        f"no node {name_or_id[:64]!r} in cluster {config.cluster_name} (version "
        f"{config.version}); see `votemesh config show`"
    )


def without_node(config: ClusterConfig, node_id: int) -> ClusterConfig:
    """`config` without node `node_id`: its votes leave the total (an expected_votes pinned above
    the new total comes down to it), and it leaves the tie-breaker list."""
    nodes = tuple(n for n in config.nodes if n.node_id != node_id)
    if not nodes:
        raise ConfigError(
            f"node {node_id} is the only member of cluster {config.cluster_name}; "
            "there is nothing to remove it from"
        )
    quorum = config.quorum
    total = sum(n.votes for n in nodes)
    if quorum.expected_votes is not None and quorum.expected_votes > total:
        quorum = replace(quorum, expected_votes=max(total, 1))
    if node_id in quorum.tie_breaker_nodes:
        left = tuple(i for i in quorum.tie_breaker_nodes if i != node_id)
        breaker = quorum.auto_tie_breaker_node
        if not left and breaker is TieBreaker.LIST:
            breaker = TieBreaker.LOWEST
        quorum = replace(quorum, tie_breaker_nodes=left, auto_tie_breaker_node=breaker)
    return replace(config, nodes=nodes, quorum=quorum)


def _address(node: ClusterNode, text: str) -> tuple[str, int]:
    default = node.links[0].port if node.links else 5407
    try:
        host, port = parse_host_port(text, default)
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        raise ConfigError(
            f"{node.name}={text[:64]}: write an IP address, e.g. {node.name}=192.0.2.11:5407"
        ) from None


def with_link(
    config: ClusterConfig, index: int, addresses: dict[str, str], priority: int = 0
) -> ClusterConfig:
    """`config` with link `index` added: every node needs an address on it (`addresses` by node
    name or id); the port defaults to the node's first link's port."""
    if not 0 <= index < MAX_LINKS:
        raise ConfigError(f"link index {index}: links are numbered 0 to {MAX_LINKS - 1}")
    if any(k.index == index for k in config.nodes[0].links):
        raise ConfigError(f"link{index} exists already; `votemesh link remove {index}` first")
    given = {find_node(config, key).node_id: text for key, text in addresses.items()}
    missing = [n.name for n in config.nodes if n.node_id not in given]
    if missing:
        raise ConfigError(
            f"every node needs an address on link{index}; missing: {', '.join(missing)}"
        )
    nodes = []
    for node in config.nodes:
        host, port = _address(node, given[node.node_id])
        link = NodeLink(index, host, port, priority)
        nodes.append(replace(node, links=tuple(sorted((*node.links, link), key=lambda k: k.index))))
    return replace(config, nodes=tuple(nodes))


def without_link(config: ClusterConfig, index: int) -> ClusterConfig:
    """`config` without link `index` on every node; the last link cannot go."""
    indexes = [k.index for k in config.nodes[0].links]
    if index not in indexes:
        raise ConfigError(f"there is no link{index}; the links are {indexes}")
    if len(indexes) == 1:
        raise ConfigError(f"link{index} is the only link; add another one first")
    nodes = tuple(
        replace(n, links=tuple(k for k in n.links if k.index != index)) for n in config.nodes
    )
    return replace(config, nodes=nodes)


def parse_link_request(args: list[str]) -> tuple[str, int, dict[str, str], int]:
    """(add|remove, index, addresses by node, priority) from a `link` request's words."""
    if len(args) < 2 or args[0] not in ("add", "remove") or not args[1].isdigit():
        raise ConfigError(f"usage: {LINK_USAGE}")
    action, index = args[0], int(args[1][:3])
    addresses: dict[str, str] = {}
    priority = 0
    for word in args[2:]:
        key, sep, value = word.partition("=")
        if not sep or not key or not value:
            raise ConfigError(f"{word[:64]!r}: write NODE=ADDR[:PORT] or priority=N")
        if key == "priority":
            if not value.isdigit() or int(value[:4]) > 255:
                raise ConfigError(f"priority={value[:8]}: a whole number from 0 to 255")
            priority = int(value)
        else:
            addresses[key] = value
    if action == "remove" and (addresses or priority):
        raise ConfigError(f"usage: {LINK_USAGE}")
    return action, index, addresses, priority


class ConfigOps:
    """The control socket's configuration requests for one runtime."""

    def __init__(self, runtime: AgentRuntime) -> None:
        self.runtime = runtime

    async def answer(self, command: str, args: list[str]) -> tuple[bool, str]:
        """(ok, body) for one request; the body is JSON, or a one-line reason."""
        if command == "config" and not args:
            return True, _json(config_document(self.runtime.cluster_config))
        if command == "delnode" and len(args) == 1:
            return await self._delnode(args[0])
        if command == "leave" and not args:
            return await self._leave()
        if command == "link":
            return await self._link(args)
        if command in ("rotate-key", "keys") and not args:
            return await self._keys(command)
        return False, f"usage: config | delnode NAME|ID | leave | {LINK_USAGE}\n"

    async def _keys(self, command: str) -> tuple[bool, str]:
        if command == "keys":
            return True, _json(self.runtime.keys.as_dict())
        return await self.runtime.keys.rotate()

    async def _link(self, args: list[str]) -> tuple[bool, str]:
        try:
            action, index, addresses, priority = parse_link_request(args)
        except ConfigError as exc:
            return False, f"{exc}\n"
        if action == "add":
            outcome = await self.runtime.change_config(
                lambda c: with_link(c, index, addresses, priority)
            )
        else:
            outcome = await self.runtime.change_config(lambda c: without_link(c, index))
        return _outcome(outcome)

    async def _delnode(self, name_or_id: str) -> tuple[bool, str]:
        committed = self.runtime.cluster_config
        try:
            node = find_node(committed, name_or_id)
        except ConfigError as exc:
            return False, f"{exc}\n"
        if node.node_id == self.runtime.local.node_id:
            return False, (
                f"{node.name} is this node; run `votemesh leave` on it, or `votemesh delnode "
                f"{node.name}` on another member\n"
            )
        node_id = node.node_id
        return _outcome(await self.runtime.change_config(lambda c: without_node(c, node_id)))

    async def _leave(self) -> tuple[bool, str]:
        me = self.runtime.local.node_id
        runtime = self.runtime
        if runtime.cluster_config.version == 0:
            return False, "this node holds no agreed cluster configuration (version 0)\n"
        runtime.leaving = True
        outcome = await runtime.change_config(lambda c: without_node(c, me))
        if not outcome.ok and runtime.removed is None:
            runtime.leaving = False
        if runtime.removed is not None:  # its Commit came before the answer
            return True, _json({"ok": True, "text": "left the cluster", "version": outcome.version})
        return _outcome(outcome)


def _outcome(outcome: ChangeOutcome) -> tuple[bool, str]:
    if not outcome.ok:
        return False, f"{outcome.text}\n"
    return True, _json({"ok": True, "text": outcome.text, "version": outcome.version})


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True) + "\n"
