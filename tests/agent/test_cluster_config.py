"""The cluster configuration model: canonical encoding, digest, validation, bootstrap split."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv6Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent import cluster_config as cc
from agent.cluster_config import ClusterConfig, ClusterNode, NodeLink
from agent.config import AgentConfig, ConfigError, LinkConfig, PeerConfig, QuorumOptions, Timing
from agent.key_rotation import KeyRotation, Phase
from tests.agent.cluster_fixtures import cluster, node


@st.composite
def configs(draw: st.DrawFn) -> ClusterConfig:
    """Valid configurations: 1-40 nodes, 1-3 links, random votes, quorum options and timing."""
    ids = sorted(draw(st.sets(st.integers(1, 2**32 - 1), min_size=1, max_size=40)))
    links = draw(st.integers(1, 3))
    nodes = tuple(
        ClusterNode(
            i,
            f"n{i}",
            draw(st.integers(0, 255)),
            tuple(NodeLink(k, str(IPv6Address(0xFD00 << 112 | k << 40 | i))) for k in range(links)),
        )
        for i in ids
    )
    quorum = QuorumOptions(
        expected_votes=draw(st.none() | st.integers(1, 1000)),
        last_man_standing=draw(st.booleans()),
        wait_for_all=draw(st.none() | st.booleans()),
    )
    timing = Timing(heartbeat_interval=draw(st.sampled_from([0.1, 0.2, 1])))
    version = draw(st.integers(0, 2**32 - 1))
    return ClusterConfig("prod", version, nodes, quorum, timing, key_rotation=draw(rotations()))


@st.composite
def rotations(draw: st.DrawFn) -> KeyRotation | None:
    """No record, or a valid key rotation record in any phase (design §3.12)."""
    if draw(st.booleans()):
        return None
    phase = draw(st.sampled_from(list(Phase)))
    new, old = draw(
        st.lists(st.binary(min_size=4, max_size=4), min_size=2, max_size=2, unique=True)
    )
    wrapped = b"" if phase is Phase.DONE else draw(st.binary(min_size=60, max_size=200))
    confirmed = sorted(draw(st.sets(st.integers(1, 2**32 - 1), max_size=5)))
    return KeyRotation(phase, new, old, wrapped, tuple(confirmed))


@given(configs())
def test_encoding_round_trips_and_the_digest_names_the_content(config: ClusterConfig) -> None:
    """decode(encode(c)) == c, re-encoding gives the same bytes, and one changed field changes
    the digest."""
    data = cc.encode(config)
    back = cc.decode(data)
    assert back == config
    assert cc.encode(back) == data
    assert cc.digest(back) == cc.digest(config)
    assert cc.digest(config.with_version((config.version + 1) % 2**32)) != cc.digest(config)


def test_an_int_or_float_timing_gives_one_digest() -> None:
    """heartbeat_interval = 1 and 1.0 are one configuration (floats are canonical)."""
    a = replace(cluster(range(1, 4)), timing=Timing(heartbeat_interval=1))
    b = replace(cluster(range(1, 4)), timing=Timing(heartbeat_interval=1.0))
    assert cc.encode(a) == cc.encode(b)


@given(st.binary(max_size=200))
def test_garbage_decodes_or_raises_config_error(data: bytes) -> None:
    """Random bytes from a disk or a peer either are a valid canonical configuration or raise
    ConfigError with one line, nothing else."""
    try:
        cc.decode(data)
    except ConfigError as exc:
        message = str(exc)
    else:
        return
    assert "\n" not in message


def test_a_truncated_or_flipped_encoding_is_refused() -> None:
    """A corrupt file on one node's disk is refused (it then fetches the cluster's)."""
    data = cc.encode(cluster(range(1, 4)))
    with pytest.raises(ConfigError, match="corrupt"):
        cc.decode(data[:-3])
    flipped = data.replace(b"node2", b"node1")
    with pytest.raises(ConfigError, match="used twice"):
        cc.decode(flipped)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: replace(c, cluster_name="bad name"), 'cluster name "bad name" is not valid'),
        (lambda c: replace(c, nodes=(node(1), node(1))), "node ids must be unique"),
        (lambda c: replace(c, nodes=(node(2), node(1))), "node ids must be unique"),
        (lambda c: replace(c, nodes=()), "1 to 1024 nodes"),
        (
            lambda c: replace(c, nodes=(node(1), replace(node(2), name="node1"))),
            'node name "node1" is used twice',
        ),
        (lambda c: replace(c, nodes=(node(1), node(2, votes=256))), "votes must be between 0"),
        (lambda c: replace(c, nodes=(node(1), node(2, links=2))), "every node needs an address"),
        (
            lambda c: replace(
                c, nodes=(node(1), replace(node(2), links=(NodeLink(0, "10.0.0.1"),)))
            ),
            "address 10.0.0.1:5407 already used by node 1",
        ),
        (
            lambda c: replace(c, nodes=(replace(node(1), links=(NodeLink(0, "fd00:0::1"),)),)),
            'write link0 as "fd00::1"',
        ),
        (
            lambda c: replace(c, nodes=(replace(node(1), links=(NodeLink(0, "host1"),)),)),
            "is not an IP",
        ),
        (lambda c: replace(c, quorum=QuorumOptions(votes=2)), "quorum.votes is per node"),
        (lambda c: c.with_version(2**32), "config_version 4294967296 outside"),
    ],
)
def test_validation_names_what_to_change(change, message: str) -> None:  # type: ignore[no-untyped-def]
    """Each mistake gives one ConfigError line naming it."""
    with pytest.raises(ConfigError, match=message) as err:
        cc.validate(change(cluster(range(1, 4))))
    assert "\n" not in str(err.value)


def test_the_single_file_bootstraps_version_zero_and_two_nodes_files_agree() -> None:
    """Today's file of node 1 and of node 2 (each listing the other as a peer) give the same
    version-0 configuration: the same digest, so the replicated version 1 is what both wrote."""
    one = AgentConfig(
        "prod", 1, "node1",
        links=(LinkConfig(0, "10.0.0.1"),),
        peers=(PeerConfig(2, "node2", ((0, "10.0.0.2", 5407),)),),
    )  # fmt: skip
    two = AgentConfig(
        "prod", 2, "node2",
        links=(LinkConfig(0, "10.0.0.2"),),
        peers=(PeerConfig(1, "node1", ((0, "10.0.0.1", 5407),)),),
    )  # fmt: skip
    a, b = cc.from_agent_config(one), cc.from_agent_config(two)
    assert a.version == 0
    assert [n.node_id for n in a.nodes] == [1, 2]
    cc.validate(a)
    assert cc.digest(a) == cc.digest(b)
