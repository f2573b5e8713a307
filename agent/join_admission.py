"""Which joiner a cluster admits, and the configuration that admits it (design §3.11).

Core ring: a pure function of the committed configuration and the joiner's request, run inside
`AgentRuntime.change_config`'s mutate (so on the committed configuration, under the one-change
lock). The checks are pvecm's `addnode` ones: equal link sets, no reused address, no reused
name (unless forced with the same id and votes), a free node id (the lowest from 1 unless
given), votes default 1, then `cluster_config.validate`. It does not look at tokens, quorum or
certificates (the adapter and the replication own those).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace

from agent.cluster_config import ClusterConfig, ClusterNode, NodeLink, validate
from agent.config import MAX_NODE_ID, ConfigError

DEFAULT_LINK_PORT = 5407


class JoinRefusedError(Exception):
    """The cluster refuses this joiner; the message is one line that says what to do."""


@dataclass(frozen=True)
class Joiner:
    """What the joiner asks for."""

    name: str
    links: tuple[tuple[int, str, int], ...]
    """(index, address, priority)."""
    node_id: int | None = None
    votes: int | None = None
    force: bool = False


def admit(config: ClusterConfig, joiner: Joiner) -> ClusterConfig:
    """The configuration with the joiner added (same version: the replication bumps it), or
    JoinRefusedError with pvecm's reason."""
    existing = next((n for n in config.nodes if n.name == joiner.name), None)
    others = tuple(n for n in config.nodes if n is not existing or not joiner.force)
    if existing is not None and not joiner.force:
        raise JoinRefusedError(
            f"node name '{joiner.name}' is already in cluster '{config.cluster_name}'; pick "
            f"another with --name, or remove it first: votemesh delnode {joiner.name}"
        )
    if existing is not None:
        _check_forced(existing, joiner)
    links = _links(config, joiner)
    _check_addresses(others, links)
    node_id = _node_id(others, joiner)
    votes = 1 if joiner.votes is None else joiner.votes
    new = ClusterNode(node_id, joiner.name, votes, links)
    nodes = tuple(sorted((*others, new), key=lambda n: n.node_id))
    admitted = replace(config, nodes=nodes)
    try:
        validate(admitted)
    except ConfigError as exc:
        raise JoinRefusedError(f"the cluster configuration would be invalid: {exc}") from None
    return admitted


def _check_forced(existing: ClusterNode, joiner: Joiner) -> None:
    """pvecm: a forced re-add must keep the node's id and votes."""
    same_id = joiner.node_id in (None, existing.node_id)
    same_votes = joiner.votes in (None, existing.votes)
    if not (same_id and same_votes):
        raise JoinRefusedError(
            f"node '{joiner.name}' exists with id {existing.node_id} and {existing.votes} "
            "vote(s); --force re-adds it only with the same --nodeid and --votes"
        )


def _links(config: ClusterConfig, joiner: Joiner) -> tuple[NodeLink, ...]:
    cluster = {k.index: k.port for k in config.nodes[0].links} if config.nodes else {}
    given = {index for index, _, _ in joiner.links}
    if len(given) != len(joiner.links):
        raise JoinRefusedError("a link index is given twice; give each --linkN once")
    for index in sorted(set(cluster) - given):
        raise JoinRefusedError(
            f"link {index} exists in the cluster but was not given; add --link{index} ADDR"
        )
    for index in sorted(given - set(cluster)):
        raise JoinRefusedError(
            f"link {index} is not a link of this cluster (it has links "
            f"{', '.join(map(str, sorted(cluster)))}); remove --link{index}"
        )
    links = []
    for index, address, priority in sorted(joiner.links):
        try:
            canonical = str(ipaddress.ip_address(address))
        except ValueError:
            raise JoinRefusedError(f"--link{index} {address!r} is not an IP address") from None
        links.append(NodeLink(index, canonical, cluster.get(index, DEFAULT_LINK_PORT), priority))
    return tuple(links)


def _check_addresses(others: tuple[ClusterNode, ...], links: tuple[NodeLink, ...]) -> None:
    """pvecm: "that can crash the whole cluster!" - no address used by another node."""
    mine = {k.address for k in links}
    for node in others:
        for link in node.links:
            if link.address in mine:
                raise JoinRefusedError(
                    f"address {link.address} already used on link{link.index} by node "
                    f"'{node.name}'; give this node its own address"
                )


def _node_id(others: tuple[ClusterNode, ...], joiner: Joiner) -> int:
    taken = {n.node_id for n in others}
    if joiner.node_id is not None:
        if joiner.node_id in taken:
            holder = next(n.name for n in others if n.node_id == joiner.node_id)
            raise JoinRefusedError(
                f"node id {joiner.node_id} is already used by node '{holder}'; "
                "leave out --nodeid to get the lowest free one"
            )
        return joiner.node_id
    node_id = 1
    while node_id in taken:
        node_id += 1
    if node_id > MAX_NODE_ID:
        raise JoinRefusedError("no free node id left")
    return node_id
