"""The agent's TOML file: the documented example loads, mistakes are one line naming the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.config import ConfigError, TieBreaker, Timing
from agent.runtime.config_file import load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]
MINIMAL = """
cluster_name = "c"
node_id = 1
key_files = ["cluster.key"]
[[link]]
index = 0
address = "127.0.0.1"
port = 6000
[[peer]]
node_id = 2
link0 = "127.0.0.2"
"""

QDEVICE = """[qdevice]
host = "192.0.2.9"
tls = "on"
allow_tls_downgrade = true
ca_pem = "ca.pem"
cert_pem = "client.pem"
key_pem = "client.key"
"""


def documented_example() -> str:
    """The ```toml block under "## The configuration file" in docs/agent.md."""
    text = (ROOT / "docs" / "agent.md").read_text()
    match = re.search(r"## The configuration file\n.*?```toml\n(.*?)```", text, re.S)
    assert match is not None
    return match.group(1)


def test_documented_example_loads(tmp_path: Path) -> None:
    """The full example in docs/agent.md is a valid config and maps onto AgentConfig."""
    config = parse_config(documented_example(), base=tmp_path)
    assert config.cluster_name == "prod"
    assert config.node_id == 1
    assert config.node_name == "pve1"
    assert config.key_files == ("/etc/votemesh/cluster.key",)
    assert [(link.index, link.address, link.port, link.priority) for link in config.links] == [
        (0, "192.0.2.1", 5407, 1),
        (1, "198.51.100.1", 5407, 0),
    ]
    assert config.peers[0].addresses == ((0, "192.0.2.2", 5407), (1, "198.51.100.2", 5407))
    assert config.peers[1].name == "pve3"
    assert config.timing == Timing.lan()
    assert config.quorum.auto_tie_breaker_node is TieBreaker.LOWEST
    assert config.qdevice is None


def test_relative_paths_follow_the_file(tmp_path: Path) -> None:
    """Relative key, state and socket paths are resolved against the config file's directory;
    a peer's link port defaults to our own link's port."""
    path = tmp_path / "agent.toml"
    path.write_text(MINIMAL.replace("key_files", 'state_dir = "state"\nkey_files'))
    config = load_config(path)
    assert config.key_files == (str(tmp_path / "cluster.key"),)
    assert config.state_dir == str(tmp_path / "state")
    assert config.peers[0].addresses == ((0, "127.0.0.2", 6000),)
    assert config.discovery is True


def test_lab_preset_with_override() -> None:
    """`timing.preset = "lab"` starts from Timing.lab(); keys given override single values."""
    config = parse_config(MINIMAL + '[timing]\npreset = "lab"\nmissed_heartbeats = 10\n')
    assert config.timing.heartbeat_interval == Timing.lab().heartbeat_interval
    assert config.timing.missed_heartbeats == 10


def test_peer_address_forms() -> None:
    """Peers take HOST, HOST:PORT, [V6]:PORT and bare IPv6 per link."""
    text = MINIMAL.replace('link0 = "127.0.0.2"', 'link0 = "127.0.0.2:7000"\nlink1 = "[::1]:7001"')
    text += '[[peer]]\nnode_id = 3\nlink2 = "fd00::3"\n'
    config = parse_config(text)
    assert config.peers[0].addresses == ((0, "127.0.0.2", 7000), (1, "::1", 7001))
    assert config.peers[1].addresses == ((2, "fd00::3", 5407),)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("node_id = 1", 'node_id = "one"'), "node_id = 'one' has the wrong type; write e.g."),
        (("node_id = 1\n", ""), "missing node_id; add e.g. `node_id = 1`"),
        (("cluster_name", "clustr_name"), "unknown key clustr_name; known keys here:"),
        (('link0 = "127.0.0.2"', 'link0 = "host.example"'), 'peer[0].link0 = "host.example" is'),
        (('link0 = "127.0.0.2"', 'link0 = "127.0.0.2:99999"'), "is not a number from 1 to 65535"),
        (('link0 = "127.0.0.2"', 'name = "x"'), "peer[0] has no address; add e.g."),
        (("port = 6000", "port = 0"), "link[0].port = 0 is not a UDP/TCP port"),
        (("index = 0", "index = 9"), "link[0].index = 9; links are numbered 0 to 7"),
        (('key_files = ["cluster.key"]', ""), "missing key_files; add e.g."),
        (("node_id = 2", "node_id = 1"), "peer node ids must be unique"),
        (("[[link]]", "[timing]\npreset = 'wan'\n[[link]]"), 'timing.preset = "wan" is unknown'),
        (("[[link]]", "[quorum]\nauto_tie_breaker_node = 'x'\n[[link]]"), 'write "lowest"'),
        (("[[link]]", "[timing]\nheartbeat_interval = 0\n[[link]]"), "timing.heartbeat_interval"),
        (("[[link]]", "[qdevice]\nport = 5403\n[[link]]"), "missing qdevice.host"),
        (
            ("[[link]]", QDEVICE.replace('tls = "on"', 'tls = "required"') + "[[link]]"),
            'qdevice.allow_tls_downgrade = true needs tls = "on" (it is "required")',
        ),
        (
            ("[[link]]", QDEVICE.replace("true", '"yes"') + "[[link]]"),
            "qdevice.allow_tls_downgrade = 'yes' has the wrong type",
        ),
        (("[[link]]", "[quorum]\ntwo_node = 1\n[[link]]"), "quorum.two_node = 1 has the wrong"),
        (("cluster_name = ", "cluster_name == "), "not valid TOML"),
    ],
)
def test_mistakes_are_one_line_naming_the_key(change: tuple[str, str], expected: str) -> None:
    """Each mistake raises ConfigError whose single line names the key and what to write."""
    with pytest.raises(ConfigError) as info:
        parse_config(MINIMAL.replace(*change))
    message = str(info.value)
    assert "\n" not in message
    assert expected in message


def test_qdevice_tls_defaults_to_on_without_downgrade_and_the_downgrade_is_explicit() -> None:
    """Issue 7 item 3: no [qdevice] TLS keys -> tls on, no downgrade; the downgrade is its own
    key, read as a boolean."""
    plain = QDEVICE.replace('tls = "on"\nallow_tls_downgrade = true\n', "")
    config = parse_config(MINIMAL.replace("[[link]]", plain + "[[link]]", 1))
    assert config.qdevice is not None
    assert (config.qdevice.tls, config.qdevice.allow_tls_downgrade) == ("on", False)
    config = parse_config(MINIMAL.replace("[[link]]", QDEVICE + "[[link]]", 1))
    assert config.qdevice is not None
    assert config.qdevice.allow_tls_downgrade is True


def test_load_config_names_the_file(tmp_path: Path) -> None:
    """load_config prefixes the file name; a missing file is a one-line error too."""
    path = tmp_path / "agent.toml"
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(path)
    path.write_text(MINIMAL.replace("node_id = 1", "node_id = 0"))
    with pytest.raises(ConfigError, match=re.escape(f"{path}: node_id must be between")):
        load_config(path)
