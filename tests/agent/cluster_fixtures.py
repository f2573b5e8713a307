"""Small cluster configurations for the configuration and replication tests."""

from __future__ import annotations

from agent.cluster_config import ClusterConfig, ClusterNode, NodeLink


def node(node_id: int, votes: int = 1, links: int = 1) -> ClusterNode:
    """Node `node_id` named node<id>, with `links` addresses 10.<link>.0.<id>."""
    return ClusterNode(
        node_id,
        f"node{node_id}",
        votes,
        tuple(NodeLink(k, f"10.{k}.0.{node_id}") for k in range(links)),
    )


def cluster(ids: range | list[int], version: int = 1, name: str = "prod") -> ClusterConfig:
    """A valid configuration of one-vote nodes."""
    return ClusterConfig(name, version, tuple(node(i) for i in ids))
