"""The cluster configuration: what every member must agree on, with its version and digest.

Core ring: pure data. Owns the model (`ClusterConfig`: cluster name, nodes with votes and link
addresses, quorum options, timing, qdevice settings, `version`), its canonical encoding (the same
bytes on every node for the same content), the SHA-256 digest beside the version (S4, design
§3.9) and validation with one-line errors. It does not read files (`agent/runtime/`) or decide
who may change it (`agent/config_replication.py`).
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field, replace
from typing import Any

import msgpack

from agent.config import (
    MAX_LINKS,
    MAX_NODE_ID,
    MAX_NODE_VOTES,
    AgentConfig,
    ConfigError,
    QdeviceConfig,
    QuorumOptions,
    TieBreaker,
    Timing,
)
from agent.key_rotation import KeyRotation
from proto import cert_names
from proto.mesh_messages import CONFIG_VERSIONS

ENCODING_VERSION = 1
"""First item of the canonical encoding; a later layout gets a new number."""
MAX_NODES = 1024
NAME_RULE = cert_names.NODE_NAME_RULE
"""Node and cluster names: a DNS label (one rule, proto/cert_names.py)."""


@dataclass(frozen=True, slots=True)
class NodeLink:
    """One link address of a cluster node."""

    index: int
    """0..7: link0 .. link7."""
    address: str
    """IPv4 or IPv6 address, in its canonical text form."""
    port: int = 5407
    priority: int = 0
    """Higher wins: traffic uses the highest-priority link that is up."""


@dataclass(frozen=True, slots=True)
class ClusterNode:
    """A configured member."""

    node_id: int
    name: str
    votes: int = 1
    links: tuple[NodeLink, ...] = ()
    """One address per link of the cluster, sorted by index."""


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """Everything the members agree on. `version` 0 is a node's unagreed bootstrap (design §3.9);
    agreed configurations have version >= 1 and are unique per version (S4)."""

    cluster_name: str
    version: int
    nodes: tuple[ClusterNode, ...]
    """Sorted by node id."""
    quorum: QuorumOptions = field(default_factory=QuorumOptions)
    """Cluster-wide quorum options; `quorum.votes` is unused here (votes are per node) and
    must stay 1."""
    timing: Timing = field(default_factory=Timing)
    qdevice: QdeviceConfig | None = None
    key_rotation: KeyRotation | None = None
    """The cluster key's rotation record (design §3.12); None until the first `rotate-key`."""

    def node(self, node_id: int) -> ClusterNode | None:
        """The configured node with this id, if any."""
        return next((n for n in self.nodes if n.node_id == node_id), None)

    def votes(self) -> dict[int, int]:
        """Configured votes per node id."""
        return {n.node_id: n.votes for n in self.nodes}

    def total_votes(self) -> int:
        """Sum of the configured nodes' votes (no qdevice)."""
        return sum(n.votes for n in self.nodes)

    def with_version(self, version: int) -> ClusterConfig:
        """The same content under another version."""
        return replace(self, version=version)


def _timing_fields(t: Timing) -> list[Any]:
    return [
        float(t.heartbeat_interval),
        t.missed_heartbeats,
        float(t.jitter_allowance),
        float(t.probe_interval),
        t.agreement_rounds,
    ]


def _quorum_fields(q: QuorumOptions) -> list[Any]:
    return [
        q.expected_votes,
        q.two_node,
        q.wait_for_all,
        q.last_man_standing,
        float(q.last_man_standing_window),
        q.auto_tie_breaker,
        q.auto_tie_breaker_node.value,
        list(q.tie_breaker_nodes),
    ]


def _qdevice_fields(d: QdeviceConfig | None) -> list[Any] | None:
    if d is None:
        return None
    return [
        d.host, d.port, d.algorithm, d.tie_breaker, d.tls, d.allow_tls_downgrade, d.ca_pem,
        d.cert_pem, d.key_pem, d.votes, float(d.heartbeat_interval), list(d.heuristics),
        float(d.heuristics_timeout),
    ]  # fmt: skip


def encode(config: ClusterConfig) -> bytes:
    """Canonical bytes: msgpack arrays in a fixed field order, nodes by id and links by index,
    floats as float64, so equal content gives equal bytes on every node."""
    nodes = [
        [n.node_id, n.name, n.votes, [[k.index, k.address, k.port, k.priority] for k in n.links]]
        for n in config.nodes
    ]
    body = [
        ENCODING_VERSION,
        config.cluster_name,
        config.version,
        nodes,
        _quorum_fields(config.quorum),
        _timing_fields(config.timing),
        _qdevice_fields(config.qdevice),
    ]
    if config.key_rotation is not None:  # absent before the first rotation: older digests hold
        body.append(config.key_rotation.fields())
    return bytes(msgpack.packb(body, use_bin_type=True))


def digest(config: ClusterConfig) -> bytes:
    """SHA-256 of the canonical encoding: (version, digest) names one configuration."""
    return hashlib.sha256(encode(config)).digest()


def decode(data: bytes) -> ClusterConfig:
    """A validated configuration from `encode`'s bytes; ConfigError (one line) if corrupt."""
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
        config = _from_body(body)
        validate(config)
        canonical = encode(config)
    except ConfigError as exc:
        raise ConfigError(f"cluster configuration refused: {exc}") from None
    except (ValueError, TypeError, IndexError, KeyError, msgpack.UnpackException) as exc:
        raise ConfigError(f"corrupt cluster configuration ({type(exc).__name__})") from None
    if canonical != data:
        raise ConfigError("cluster configuration is not in canonical form")
    return config


def _from_body(body: Any) -> ClusterConfig:
    enc, name, version, nodes, quorum, timing, qdevice, *rest = body
    if len(rest) > 1:
        raise ValueError("trailing items")
    if enc != ENCODING_VERSION:
        raise ValueError("encoding version")
    q = QuorumOptions(
        1, quorum[0], quorum[1], quorum[2], quorum[3], quorum[4], quorum[5],
        TieBreaker(quorum[6]), tuple(quorum[7]),
    )  # fmt: skip
    return ClusterConfig(
        cluster_name=name,
        version=version,
        nodes=tuple(
            ClusterNode(i, n, v, tuple(NodeLink(*k) for k in links)) for i, n, v, links in nodes
        ),
        quorum=q,
        timing=Timing(*timing),
        qdevice=None
        if qdevice is None
        else QdeviceConfig(*qdevice[:11], tuple(qdevice[11]), qdevice[12]),  # type: ignore[call-arg]
        key_rotation=KeyRotation.from_fields(rest[0]) if rest else None,
    )


def validate(config: ClusterConfig) -> None:
    """Raise ConfigError (one line: what to change) for a configuration that cannot work."""
    _check_name(config.cluster_name, "cluster name")
    if not CONFIG_VERSIONS[0] <= config.version <= CONFIG_VERSIONS[1]:
        raise ConfigError(f"config_version {config.version} outside 0..{CONFIG_VERSIONS[1]}")
    if not 1 <= len(config.nodes) <= MAX_NODES:
        raise ConfigError(f"a cluster has 1 to {MAX_NODES} nodes")
    if [n.node_id for n in config.nodes] != sorted({n.node_id for n in config.nodes}):
        raise ConfigError("node ids must be unique (nodes sorted by id)")
    link_set = [k.index for k in config.nodes[0].links]
    seen_names: set[str] = set()
    seen_addresses: dict[tuple[str, int], int] = {}
    for node in config.nodes:
        _check_node(node, link_set, seen_names, seen_addresses)
    if config.quorum.votes != 1:
        raise ConfigError("quorum.votes is per node in a cluster configuration; remove it")
    config.quorum.validate()
    config.timing.validate()
    if config.qdevice is not None:
        config.qdevice.validate()
    if config.key_rotation is not None:
        config.key_rotation.validate()


def _check_name(name: str, what: str) -> None:
    problem = cert_names.node_name_problem(name, what)
    if problem is not None:
        raise ConfigError(problem)


def _check_node(
    node: ClusterNode, link_set: list[int], names: set[str], addresses: dict[tuple[str, int], int]
) -> None:
    if not 0 < node.node_id <= MAX_NODE_ID:
        raise ConfigError(f"node id {node.node_id} outside 1..{MAX_NODE_ID}")
    _check_name(node.name, f"node {node.node_id}: name")
    if node.name in names:
        raise ConfigError(f'node name "{node.name}" is used twice; names must be unique')
    names.add(node.name)
    if not 0 <= node.votes <= MAX_NODE_VOTES:
        raise ConfigError(f"node {node.name}: votes must be between 0 and {MAX_NODE_VOTES}")
    indexes = [k.index for k in node.links]
    if not indexes or indexes != sorted(set(indexes)) or indexes[-1] >= MAX_LINKS:
        raise ConfigError(f"node {node.name}: give each link 0..7 once, sorted by index")
    if indexes != link_set:
        raise ConfigError(
            f"node {node.name} has links {indexes}, the cluster has {link_set}: "
            "every node needs an address on every link"
        )
    for link in node.links:
        _check_link(node, link, addresses)


def _check_link(node: ClusterNode, link: NodeLink, addresses: dict[tuple[str, int], int]) -> None:
    try:
        canonical = str(ipaddress.ip_address(link.address))
    except ValueError:
        raise ConfigError(
            f'node {node.name}: link{link.index} "{link.address}" is not an IP'
        ) from None
    if canonical != link.address:
        raise ConfigError(f'node {node.name}: write link{link.index} as "{canonical}"')
    if not 0 < link.port < 65536:
        raise ConfigError(f"node {node.name}: link{link.index} port {link.port} not in 1-65535")
    key = (link.address, link.port)
    if key in addresses and addresses[key] != node.node_id:
        raise ConfigError(
            f"address {link.address}:{link.port} already used by node {addresses[key]}"
        )
    addresses[key] = node.node_id


def from_agent_config(config: AgentConfig) -> ClusterConfig:
    """Today's single-file configuration -> this node's version-0 bootstrap (design §3.9): the
    cluster part of the file; the agreed version 1 is made from it by replication."""
    me = ClusterNode(
        config.node_id,
        config.node_name or f"node{config.node_id}",
        config.quorum.votes,
        tuple(
            NodeLink(k.index, k.address, k.port, k.priority)
            for k in sorted(config.links, key=lambda k: k.index)
        ),
    )
    peers = [
        ClusterNode(
            p.node_id,
            p.name or f"node{p.node_id}",
            p.votes,
            tuple(NodeLink(i, a, port) for i, a, port in sorted(p.addresses)),
        )
        for p in config.peers
    ]
    return ClusterConfig(
        cluster_name=config.cluster_name,
        version=0,
        nodes=tuple(sorted([me, *peers], key=lambda n: n.node_id)),
        quorum=replace(config.quorum, votes=1),
        timing=config.timing,
        qdevice=config.qdevice,
    )
