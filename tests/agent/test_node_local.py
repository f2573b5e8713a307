"""node.toml: NodeLocal round trip, agent_config from an agreed configuration, and the loader's
two kinds of file (node.toml needs a stored configuration; a single file bootstraps version 0)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent import cluster_config
from agent.config import ConfigError
from agent.config_replication import Persist, Ring
from agent.node_local import BindLink, NodeLocal, agent_config, to_toml
from agent.runtime import cluster_store
from agent.runtime.config_file import load_startup, local_of, parse_node_local
from tests.agent.cluster_fixtures import cluster

SINGLE = """
cluster_name = "prod"
node_id = 1
node_name = "node1"
key_files = ["cluster.key"]
state_dir = "state"
control_socket = "agent.sock"
discovery = false
[[link]]
index = 0
address = "10.0.0.1"
[[peer]]
node_id = 2
name = "node2"
link0 = "10.0.0.2"
"""


def test_to_toml_reads_back_to_the_same_node_local(tmp_path: Path) -> None:
    """What `to_toml` writes, the loader reads back equal (absolute paths stay as written)."""
    local = NodeLocal(
        node_id=7,
        key_files=(str(tmp_path / "cluster.key"), str(tmp_path / 'old "1".key')),
        state_dir=str(tmp_path / "state"),
        control_socket=str(tmp_path / "agent.sock"),
        discovery=True,
        links=(BindLink(0, "10.0.0.7", 5407), BindLink(1, "fd00::7", 6000)),
        join_port=6408,
        clock_skew_bound=2.5,
    )
    assert parse_node_local(to_toml(local), base=tmp_path) == local


def test_the_documented_node_toml_loads() -> None:
    """The node.toml example in docs/agent.md reads back as written."""
    root = Path(__file__).resolve().parents[2]
    text = (root / "docs" / "agent.md").read_text()
    match = re.search(r"## node.toml\n.*?```toml\n(.*?)```", text, re.S)
    assert match is not None
    local = parse_node_local(match.group(1), base=Path("/etc/votemesh"))
    assert local.node_id == 3
    assert local.key_files == ("/etc/votemesh/cluster.key",)
    assert local.links == (BindLink(0, "192.0.2.13", 5407),)
    assert local.join_port == 5408


def test_relative_paths_are_taken_from_the_file_directory(tmp_path: Path) -> None:
    """key_files, state_dir and control_socket relative to node.toml's directory; defaults:
    discovery off, join port 5408, no binds (= the cluster configuration's addresses)."""
    local = parse_node_local('node_id = 2\nkey_files = ["cluster.key"]\n', base=tmp_path)
    assert local.key_files == (str(tmp_path / "cluster.key"),)
    assert (local.discovery, local.join_port, local.links) == (False, 5408, ())


@pytest.mark.parametrize(
    ("text", "fix"),
    [
        ('node_id = 2\nkey_files = ["k"]\nvotes = 3\n', "unknown key votes"),
        ('key_files = ["k"]\n', "missing node_id"),
        ('node_id = 2\nkey_files = ["k"]\n[join]\nport = 0\n', "join.port = 0"),
        ('node_id = 2\nkey_files = ["k"]\n[[link]]\nindex = 9\naddress = "10.0.0.1"\n', "0 to 7"),
        ("node_id = 2\nkey_files = []\n", "missing key_files"),
    ],
)
def test_node_toml_mistakes_are_one_line(text: str, fix: str) -> None:
    """Each mistake: one ConfigError line naming the key."""
    with pytest.raises(ConfigError, match=fix) as err:
        parse_node_local(text)
    assert "\n" not in str(err.value)


def test_agent_config_takes_the_cluster_part_from_the_agreed_configuration() -> None:
    """Peers, votes, name and link priorities from the cluster configuration; binds and files
    from node.toml; without binds, this node's addresses in the configuration."""
    agreed = cluster([1, 2, 3], 4)
    local = NodeLocal(node_id=2, key_files=("/k",), state_dir="/s", control_socket="/c")
    config = agent_config(local, agreed)
    assert config.cluster_name == "prod"
    assert config.node_name == "node2"
    assert [p.node_id for p in config.peers] == [1, 3]
    assert config.peers[0].addresses == ((0, "10.0.0.1", 5407),)
    assert [(k.index, k.address) for k in config.links] == [(0, "10.0.0.2")]
    assert config.configured_votes() == {1: 1, 2: 1, 3: 1}
    bound = agent_config(NodeLocal(2, ("/k",), links=(BindLink(0, "10.9.9.9", 9),)), agreed)
    assert [(k.address, k.port) for k in bound.links] == [("10.9.9.9", 9)]


def test_agent_config_of_a_node_not_in_the_configuration_says_to_join_again() -> None:
    """A node removed from the cluster configuration cannot run on it: one line, what to do."""
    with pytest.raises(ConfigError, match="votemesh add JOIN-STRING"):
        agent_config(NodeLocal(9, ("/k",)), cluster([1, 2]))


def test_a_lone_created_node_with_discovery_runs_on_its_own_votes() -> None:
    """One node in the configuration, discovery on: expected votes are its own (AgentConfig
    would refuse discovery without peers and without expected votes)."""
    config = agent_config(NodeLocal(1, ("/k",), discovery=True), cluster([1]))
    assert config.quorum.expected_votes == 1


def test_node_toml_without_a_stored_configuration_says_create_or_add(tmp_path: Path) -> None:
    """node.toml alone cannot run: one line naming the state dir and both verbs."""
    path = tmp_path / "node.toml"
    path.write_text('node_id = 1\nkey_files = ["cluster.key"]\nstate_dir = "state"\n')
    with pytest.raises(ConfigError) as err:
        load_startup(path)
    text = str(err.value)
    assert text == (
        f"no cluster configuration in {tmp_path / 'state'}; run `votemesh create NAME` or "
        "`votemesh add JOIN-STRING`"
    )


def test_node_toml_runs_on_the_stored_configuration(tmp_path: Path) -> None:
    """With `<state_dir>/cluster-config`, node.toml starts on the agreed configuration."""
    path = tmp_path / "node.toml"
    path.write_text('node_id = 2\nkey_files = ["cluster.key"]\nstate_dir = "state"\n')
    stored = Persist(cluster([1, 2, 3], 5), None, Ring(4, 1))
    (tmp_path / "state").mkdir()
    cluster_store.save(tmp_path / "state", stored)
    start = load_startup(path)
    assert start.stored == stored
    assert start.promised_seq == 4  # the boot view starts above it (StateDir.boot_max_seq)
    assert not start.single_file
    assert start.agent.node_name == "node2"


def test_a_corrupt_store_starts_from_the_copy_addresses_without_its_version(
    tmp_path: Path,
) -> None:
    """The main file corrupt: refused (the reason kept), the agent config comes from the second
    copy so the node can find the cluster; no stored state is used (the replica starts at 0)."""
    path = tmp_path / "node.toml"
    path.write_text('node_id = 2\nkey_files = ["cluster.key"]\nstate_dir = "state"\n')
    (tmp_path / "state").mkdir()
    cluster_store.save(tmp_path / "state", Persist(cluster([1, 2, 3], 5), None, None))
    main = tmp_path / "state" / "cluster-config"
    main.write_bytes(main.read_bytes()[:20])
    start = load_startup(path)
    assert start.stored is None
    assert start.refused is not None
    assert "take the cluster's copy" in start.refused
    assert [p.node_id for p in start.agent.peers] == [1, 3]
    (tmp_path / "state" / "cluster-config.prev").write_bytes(b"junk")
    with pytest.raises(ConfigError, match="votemesh add JOIN-STRING --force"):
        load_startup(path)


def test_a_single_file_bootstraps_version_0_until_an_agreed_one_is_stored(tmp_path: Path) -> None:
    """Today's file: version-0 bootstrap; once a configuration is stored it wins, with a
    warning when the file's cluster part differs."""
    path = tmp_path / "agent.toml"
    path.write_text(SINGLE)
    start = load_startup(path)
    assert start.single_file
    assert start.bootstrap is not None
    assert start.bootstrap.version == 0
    assert start.stored is None
    agreed = cluster([1, 2, 3], 2)
    (tmp_path / "state").mkdir()
    cluster_store.save(tmp_path / "state", Persist(agreed, None, None))
    start = load_startup(path)
    assert [p.node_id for p in start.agent.peers] == [2, 3]
    assert start.warnings
    assert "agreed one is used" in start.warnings[0]
    same = cluster_config.from_agent_config(start.agent).with_version(0)
    assert same.nodes == agreed.nodes


def test_the_cli_finds_the_control_socket_in_either_kind_of_file(tmp_path: Path) -> None:
    """`votemesh --config FILE` reads node.toml (no stored configuration needed) or a single
    file: the control socket relative to the file's directory."""
    node_toml = tmp_path / "node.toml"
    node_toml.write_text('node_id = 1\nkey_files = ["k"]\ncontrol_socket = "a.sock"\n')
    single = tmp_path / "agent.toml"
    single.write_text(SINGLE)
    assert local_of(node_toml).control_socket == str(tmp_path / "a.sock")
    assert local_of(single).control_socket == str(tmp_path / "agent.sock")
    (tmp_path / "bad.toml").write_text("node_id = [")
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML"):
        local_of(tmp_path / "bad.toml")
