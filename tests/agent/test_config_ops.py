"""The pure edits behind `delnode`, `leave` and `link add|remove`, and `config show`'s text."""

from __future__ import annotations

import tomllib
from dataclasses import replace

import pytest

from agent import cluster_config
from agent.cli.config import show_text
from agent.config import ConfigError, TieBreaker
from agent.node_local import BindLink, NodeLocal, agent_config
from agent.runtime.config_ops import (
    config_document,
    find_node,
    parse_link_request,
    with_link,
    without_link,
    without_node,
)
from tests.agent.cluster_fixtures import cluster, node


def test_without_node_lowers_a_pinned_expected_votes_and_the_tie_breaker_list() -> None:
    """Removing node 3 of 3: an expected_votes of 3 comes down to 2, node 3 leaves the
    tie-breaker list (an emptied list falls back to `lowest`); the result validates."""
    base = cluster([1, 2, 3], 4)
    quorum = replace(
        base.quorum,
        expected_votes=3,
        auto_tie_breaker=True,
        auto_tie_breaker_node=TieBreaker.LIST,
        tie_breaker_nodes=(3,),
    )
    after = without_node(replace(base, quorum=quorum), 3)
    assert [n.node_id for n in after.nodes] == [1, 2]
    assert after.quorum.expected_votes == 2
    assert after.quorum.tie_breaker_nodes == ()
    assert after.quorum.auto_tie_breaker_node is TieBreaker.LOWEST
    cluster_config.validate(after.with_version(5))


def test_without_node_refuses_to_empty_the_cluster() -> None:
    """The last node cannot be removed: one line."""
    with pytest.raises(ConfigError, match="only member"):
        without_node(cluster([1]), 1)


def test_find_node_by_name_or_id() -> None:
    """A node by its name or its id; an unknown one says where to look."""
    config = cluster([1, 2, 3])
    assert find_node(config, "node2").node_id == 2
    assert find_node(config, "3").name == "node3"
    with pytest.raises(ConfigError, match="votemesh config show"):
        find_node(config, "node9")


def test_with_link_gives_every_node_an_address_and_validates() -> None:
    """link1 for every node (ports default to their link0 port); a missing node, an existing
    link or a bad address are one-line refusals."""
    base = cluster([1, 2], 2)
    after = with_link(base, 1, {"node1": "10.1.0.1", "2": "10.1.0.2:6000"}, priority=5)
    assert [(k.index, k.address, k.port, k.priority) for k in after.nodes[1].links] == [
        (0, "10.0.0.2", 5407, 0),
        (1, "10.1.0.2", 6000, 5),
    ]
    cluster_config.validate(after.with_version(3))
    with pytest.raises(ConfigError, match="missing: node2"):
        with_link(base, 1, {"node1": "10.1.0.1"})
    with pytest.raises(ConfigError, match="exists already"):
        with_link(base, 0, {"node1": "10.1.0.1", "node2": "10.1.0.2"})
    with pytest.raises(ConfigError, match="write an IP address"):
        with_link(base, 1, {"node1": "host.example", "node2": "10.1.0.2"})


def test_without_link_keeps_at_least_one_link() -> None:
    """link1 goes from every node; link0 alone cannot."""
    two = cluster([1, 2])
    two = replace(two, nodes=tuple(node(i, links=2) for i in (1, 2)))
    one = without_link(two, 1)
    assert all([k.index for k in n.links] == [0] for n in one.nodes)
    with pytest.raises(ConfigError, match="only link"):
        without_link(one, 0)
    with pytest.raises(ConfigError, match="there is no link5"):
        without_link(one, 5)


def test_link_requests_parse_or_say_the_usage() -> None:
    """`link add 1 a=ip b=ip priority=3` and `link remove 1`; anything else: the usage."""
    assert parse_link_request(["add", "1", "n1=10.1.0.1", "priority=3"]) == (
        "add",
        1,
        {"n1": "10.1.0.1"},
        3,
    )
    assert parse_link_request(["remove", "1"]) == ("remove", 1, {}, 0)
    for bad in (["add"], ["move", "1"], ["add", "x"], ["remove", "1", "n1=1.2.3.4"]):
        with pytest.raises(ConfigError, match="usage"):
            parse_link_request(bad)
    with pytest.raises(ConfigError, match="0 to 255"):
        parse_link_request(["add", "1", "priority=900"])


def test_config_show_prints_toml_with_version_and_digest() -> None:
    """`config show` is valid TOML carrying the version, the digest and every node."""
    config = cluster([1, 2, 3], 7)
    doc = config_document(config)
    text = show_text(doc)
    assert f"version 7, sha256 {cluster_config.digest(config).hex()}" in text
    parsed = tomllib.loads(text)
    assert parsed["config_version"] == 7
    assert [n["name"] for n in parsed["node"]] == ["node1", "node2", "node3"]
    assert parsed["node"][0]["links"][0]["address"] == "10.0.0.1"


def test_a_link_added_to_the_configuration_is_bound_without_editing_node_toml() -> None:
    """node.toml binds link0 only; the configuration's link1 address of this node is bound too."""
    two = replace(cluster([1, 2]), nodes=tuple(node(i, links=2) for i in (1, 2)))
    local = NodeLocal(2, ("/k",), links=(BindLink(0, "10.9.9.9", 9),))
    config = agent_config(local, two)
    assert [(k.index, k.address) for k in config.links] == [(0, "10.9.9.9"), (1, "10.1.0.2")]
