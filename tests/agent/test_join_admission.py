"""agent/join_admission.py: which joiner the cluster admits (pvecm addnode's checks)."""

from __future__ import annotations

import pytest

from agent.cluster_config import ClusterConfig, ClusterNode, NodeLink
from agent.join_admission import Joiner, JoinRefusedError, admit


def _node(node_id: int, name: str, *addresses: str, votes: int = 1) -> ClusterNode:
    return ClusterNode(
        node_id, name, votes, tuple(NodeLink(i, a, 5407 + i) for i, a in enumerate(addresses))
    )


CLUSTER = ClusterConfig(
    "prod", 4, (_node(1, "a", "10.0.0.1", "10.1.0.1"), _node(3, "c", "10.0.0.3", "10.1.0.3"))
)
LINKS = ((0, "10.0.0.2", 0), (1, "10.1.0.2", 1))


def test_the_lowest_free_id_with_the_clusters_ports() -> None:
    """No --nodeid: id 2 (the gap), votes 1, ports from the cluster's links, version unchanged
    (the replication bumps it)."""
    new = admit(CLUSTER, Joiner("b", LINKS))
    assert [n.node_id for n in new.nodes] == [1, 2, 3]
    b = new.node(2)
    assert b is not None
    assert b.votes == 1
    assert [(k.address, k.port, k.priority) for k in b.links] == [
        ("10.0.0.2", 5407, 0),
        ("10.1.0.2", 5408, 1),
    ]
    assert new.version == CLUSTER.version


def test_a_given_id_and_votes_are_used() -> None:
    """--nodeid 7 --votes 2."""
    new = admit(CLUSTER, Joiner("b", LINKS, node_id=7, votes=2))
    assert new.node(7) == ClusterNode(7, "b", 2, new.node(7).links)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("joiner", "says"),
    [
        (Joiner("b", LINKS[:1]), "link 1 exists in the cluster but was not given; add --link1"),
        (Joiner("b", (*LINKS, (2, "10.2.0.2", 0))), "link 2 is not a link of this cluster"),
        (Joiner("b", ((0, "10.0.0.3", 0), LINKS[1])), "address 10.0.0.3 already used on link0"),
        (Joiner("b", (LINKS[0], (1, "10.0.0.1", 0))), "address 10.0.0.1 already used on link0"),
        (Joiner("c", LINKS), "node name 'c' is already in cluster 'prod'"),
        (Joiner("b", LINKS, node_id=3), "node id 3 is already used by node 'c'"),
        (Joiner("b", ((0, "not-an-ip", 0), LINKS[1])), "is not an IP address"),
        (Joiner("c", LINKS, node_id=2, force=True), "--force re-adds it only with the same"),
        (Joiner("b", LINKS, votes=300), "would be invalid"),
    ],
)
def test_refusals_say_what_to_do(joiner: Joiner, says: str) -> None:
    """pvecm's checks, each one line: link set, reused address (on any link), name, id."""
    with pytest.raises(JoinRefusedError, match=says.replace("(", r"\(").replace(")", r"\)")):
        admit(CLUSTER, joiner)


def test_force_replaces_the_same_node() -> None:
    """--force with the same name, id and votes replaces the entry (new addresses allowed)."""
    new = admit(CLUSTER, Joiner("c", LINKS, node_id=3, force=True))
    c = new.node(3)
    assert c is not None
    assert c.name == "c"
    assert c.links[0].address == "10.0.0.2"
    assert len(new.nodes) == 2
