"""Node-local settings (`/etc/votemesh/node.toml`) and how they meet the cluster configuration.

Core ring: pure data and pure functions. `NodeLocal` says who this machine is and where it works
(node id, key files, state dir, control socket, discovery, the link addresses it binds, the join
port); it is never replicated and changes only with a restart (design §3.9). `agent_config`
combines it with the agreed `ClusterConfig` into the `AgentConfig` the node core runs on;
`to_toml` writes the file `votemesh create` / `add` leave behind. Reading the file is the
runtime's (`agent/runtime/config_file.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from agent.cluster_config import ClusterConfig, ClusterNode
from agent.config import MAX_LINKS, AgentConfig, ConfigError, LinkConfig, PeerConfig

DEFAULT_JOIN_PORT = 5408
"""TCP port of the join server (`votemesh add` talks to it; owned by the join work)."""
DEFAULT_DIR = "/etc/votemesh"
DEFAULT_STATE_DIR = "/var/lib/votemesh"
DEFAULT_CONTROL_SOCKET = "/run/votemesh/agent.sock"


@dataclass(frozen=True, slots=True)
class BindLink:
    """One link this node binds: link index, local address and UDP port."""

    index: int
    """0..7: link0 .. link7 (the cluster configuration gives its address to the others)."""
    address: str
    """Local address to bind (IPv4 or IPv6)."""
    port: int = 5407


@dataclass(frozen=True, slots=True)
class NodeLocal:
    """Who this node is and where it works; never replicated (design §3.9)."""

    node_id: int
    """This node's id in the cluster configuration."""
    key_files: tuple[str, ...] = ("cluster.key",)
    """Cluster key files; the first seals, all open (rotation). Relative to the file's dir."""
    state_dir: str = DEFAULT_STATE_DIR
    """Incarnation, max_seq and `cluster-config` (the agreed configuration) live here."""
    control_socket: str = DEFAULT_CONTROL_SOCKET
    discovery: bool = False
    """Announce and browse `_votemesh._udp.local.` (the cluster configuration lists every
    member, so it is off unless asked for)."""
    links: tuple[BindLink, ...] = ()
    """What to bind. A link of the cluster configuration without a table here is bound at this
    node's address in the configuration (so `votemesh link add` needs no edit of this file)."""
    join_port: int = DEFAULT_JOIN_PORT
    """`[join] port`: TCP port of the join server on this node."""
    clock_skew_bound: float = 1.0
    """Seconds of wall-clock difference to a peer that raise a ClockSkew event."""

    def validate(self) -> None:
        """Raise ConfigError (one line) for settings that cannot work."""
        if not 0 < self.node_id <= 0xFFFFFFFF:
            raise ConfigError("node_id must be between 1 and 4294967295")
        if not self.key_files:
            raise ConfigError('missing key_files; add e.g. `key_files = ["cluster.key"]`')
        indexes = [k.index for k in self.links]
        if len(set(indexes)) != len(indexes) or any(not 0 <= i < MAX_LINKS for i in indexes):
            raise ConfigError("[[link]] index must be 0..7, each at most once")
        if any(not 0 <= k.port < 65536 for k in self.links):
            raise ConfigError("[[link]] port must be 0-65535")
        if not 0 < self.join_port < 65536:
            raise ConfigError("join.port must be 1-65535")


def from_agent_config(config: AgentConfig, join_port: int = DEFAULT_JOIN_PORT) -> NodeLocal:
    """The node-local part of today's single-file configuration (design §3.9, bootstrap)."""
    return NodeLocal(
        node_id=config.node_id,
        key_files=config.key_files,
        state_dir=config.state_dir,
        control_socket=config.control_socket,
        discovery=config.discovery,
        links=tuple(BindLink(k.index, k.address, k.port) for k in config.links),
        join_port=join_port,
        clock_skew_bound=config.clock_skew_bound,
    )


def agent_config(local: NodeLocal, cluster: ClusterConfig) -> AgentConfig:
    """The configuration the node core runs on: the cluster's nodes, quorum, timing and qdevice,
    this node's binds and files. ConfigError (one line) if this node is not a member."""
    me = cluster.node(local.node_id)
    if me is None:
        raise ConfigError(
            f"node {local.node_id} is not in cluster {cluster.cluster_name}'s configuration "
            f"(version {cluster.version}); it was removed: run `votemesh leave` to clear it, "
            "then `votemesh add JOIN-STRING` to join again"
        )
    priorities = {k.index: k.priority for k in me.links}
    bound = {b.index for b in local.links}
    binds = local.links + tuple(
        BindLink(k.index, k.address, k.port) for k in me.links if k.index not in bound
    )
    quorum = replace(cluster.quorum, votes=me.votes)
    peers = tuple(_peer(n) for n in cluster.nodes if n.node_id != local.node_id)
    if local.discovery and not peers and quorum.expected_votes is None:
        # Alone in an agreed configuration: its total is the expected votes (AgentConfig
        # refuses discovery without peers and without expected votes; see its validate()).
        quorum = replace(quorum, expected_votes=max(me.votes, 1))
    config = AgentConfig(
        cluster_name=cluster.cluster_name,
        node_id=local.node_id,
        node_name=me.name,
        links=tuple(
            LinkConfig(b.index, b.address, b.port, priorities.get(b.index, 0)) for b in binds
        ),
        peers=peers,
        timing=cluster.timing,
        quorum=quorum,
        qdevice=cluster.qdevice,
        clock_skew_bound=local.clock_skew_bound,
        key_files=local.key_files,
        state_dir=local.state_dir,
        control_socket=local.control_socket,
        discovery=local.discovery,
    )
    config.validate()
    return config


def _peer(node: ClusterNode) -> PeerConfig:
    return PeerConfig(
        node_id=node.node_id,
        name=node.name,
        addresses=tuple((k.index, k.address, k.port) for k in node.links),
        votes=node.votes,
    )


def _quote(text: str) -> str:
    """A TOML basic string."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def to_toml(local: NodeLocal) -> str:
    """node.toml text for `local` (what the loader reads back to an equal `NodeLocal`)."""
    lines = [
        "# votemesh node-local settings (never replicated; the cluster configuration is kept",
        "# by the agents in state_dir/cluster-config: see `votemesh config show`)",
        f"node_id = {local.node_id}",
        f"key_files = [{', '.join(_quote(f) for f in local.key_files)}]",
        f"state_dir = {_quote(local.state_dir)}",
        f"control_socket = {_quote(local.control_socket)}",
        f"discovery = {'true' if local.discovery else 'false'}",
        f"clock_skew_bound = {float(local.clock_skew_bound)!r}",
    ]
    for link in local.links:
        lines += [
            "",
            "[[link]]",
            f"index = {link.index}",
            f"address = {_quote(link.address)}",
            f"port = {link.port}",
        ]
    lines += ["", "[join]", f"port = {local.join_port}", ""]
    return "\n".join(lines)
