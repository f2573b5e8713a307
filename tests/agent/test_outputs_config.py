"""`[mqtt]`, `[[hook]]`, `[metrics]` (design §3.13): parsed from node.toml and the single file,
mistakes in one line, and SIGHUP re-reads them in a running agent."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from agent.config import ConfigError
from agent.outputs import HookConfig, MetricsConfig, MqttConfig, Outputs
from agent.runtime.config_file import load_outputs, load_startup
from tests.agent.live_agents import AgentCluster

FULL = """
[mqtt]
host = "127.0.0.1"
port = 18830
tls = true
ca_file = "ca.pem"
username = "node1"
password_file = "mqtt.pass"
home_assistant = true

[[hook]]
events = ["quorum_gained", "quorum_lost"]
command = ["hooks/on-quorum", "--why"]
timeout = 2.5

[[hook]]
events = "*"
command = "/usr/bin/logger"

[metrics]
port = 9555
"""


def node_toml(extra: str) -> str:
    return f'node_id = 1\nkey_files = ["cluster.key"]\n{extra}'


def test_outputs_parse_with_paths_relative_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(node_toml(FULL))
    outputs = load_outputs(path)
    assert outputs.mqtt == MqttConfig(
        host="127.0.0.1",
        port=18830,
        tls=True,
        ca_file=str(tmp_path / "ca.pem"),
        username="node1",
        password_file=str(tmp_path / "mqtt.pass"),
        home_assistant=True,
    )
    assert outputs.hooks == (
        HookConfig(
            ("quorum_gained", "quorum_lost"), (str(tmp_path / "hooks/on-quorum"), "--why"), 2.5
        ),
        HookConfig(("*",), ("/usr/bin/logger",)),
    )
    assert outputs.hooks[1].wants("stalled")
    assert not outputs.hooks[0].wants("stalled")
    assert outputs.metrics == MetricsConfig("127.0.0.1", 9555)


def test_everything_is_off_by_default(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(node_toml(""))
    assert load_outputs(path) == Outputs()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("[mqtt]\nport = 1883\n", "missing mqtt.host"),
        ('[mqtt]\nhost = "h"\nport = 0\n', "not a TCP port"),
        ('[mqtt]\nhost = "h"\ncert_file = "c.pem"\ntls = true\n', "go together"),
        ('[mqtt]\nhost = "h"\nca_file = "c.pem"\n', "need `tls = true`"),
        ('[mqtt]\nhost = "h"\ntopic_prefix = "a/#"\n', "not a topic prefix"),
        ('[mqtt]\nhost = "h"\nbroker = "x"\n', "unknown key mqtt.broker"),
        ('[[hook]]\nevents = ["quorum_won"]\ncommand = ["/bin/true"]\n', "unknown kinds"),
        ('[[hook]]\nevents = ["quorum_lost"]\ncommand = []\n', "command is empty"),
        ('[[hook]]\nevents = ["quorum_lost"]\ncommand = ["/bin/true"]\ntimeout = 0\n', "timeout"),
        ('[[hook]]\ncommand = ["/bin/true"]\n', r"missing hook\[0\]\.events"),
        ('[metrics]\nhost = "localhost"\n', "not an IP address"),
        ("[metrics]\nport = 70000\n", "not a UDP/TCP port"),
    ],
)
def test_mistakes_are_one_line(tmp_path: Path, extra: str, expected: str) -> None:
    path = tmp_path / "node.toml"
    path.write_text(node_toml(extra))
    with pytest.raises(ConfigError, match=expected) as info:
        load_outputs(path)
    assert "\n" not in str(info.value)
    assert str(path) in str(info.value)


def test_the_single_file_takes_them_too(tmp_path: Path) -> None:
    cluster = AgentCluster(tmp_path, 1, extra="[metrics]\nport = 9556\n")
    startup = load_startup(cluster.agents[1].config_path)
    assert startup.outputs == Outputs(metrics=MetricsConfig("127.0.0.1", 9556))


def test_sighup_rereads_outputs_and_a_broken_file_changes_nothing(tmp_path: Path) -> None:
    cluster = AgentCluster(tmp_path, 1)
    agent = cluster.agents[1]
    original = agent.config_path.read_text()
    try:
        cluster.start(1)
        assert agent.process is not None
        cluster.wait_for(lambda: bool((agent.status() or {}).get("quorate")), 10, "quorate")

        def logged(event: str) -> list[dict[str, object]]:
            return [r for r in agent.log_records() if r.get("event") == event]

        agent.config_path.write_text(original + "\n[mqtt\n")  # not TOML
        os.kill(agent.process.pid, signal.SIGHUP)
        cluster.wait_for(
            lambda: bool(logged("reload refused; the running settings stay")), 5, "refusal"
        )
        assert "not valid TOML" in str(
            logged("reload refused; the running settings stay")[0]["reason"]
        )

        agent.config_path.write_text(
            original.replace("discovery = false", "discovery = false\nclock_skew_bound = 2.0")
        )
        os.kill(agent.process.pid, signal.SIGHUP)
        cluster.wait_for(lambda: bool(logged("reloaded; event outputs unchanged")), 5, "reload")
        assert any("next restart" in str(r["event"]) for r in agent.log_records())

        agent.config_path.write_text(
            original + '\n[[hook]]\nevents = ["stalled"]\ncommand = ["/bin/true"]\n'
        )
        os.kill(agent.process.pid, signal.SIGHUP)
        cluster.wait_for(lambda: bool(logged("reloaded event outputs")), 5, "outputs reloaded")
        assert agent.running
        assert (agent.status() or {}).get("quorate") is True
    finally:
        cluster.close()


def test_sighups_in_a_row_leave_one_sink_per_output(tmp_path: Path) -> None:
    """A SIGHUP that arrives while an earlier reload is still stopping the old sinks (a hook run
    in progress holds it for up to its 1 s grace) waits for it: the new outputs are applied
    once, so no [[hook]] ends up with two sinks (each event would run it twice, and the extra
    one is never stopped)."""
    busy = '\n[[hook]]\nevents = ["*"]\ncommand = ["/bin/sleep", "5"]\n'
    cluster = AgentCluster(tmp_path, 1, extra=busy)
    agent = cluster.agents[1]
    try:
        cluster.start(1)
        assert agent.process is not None
        cluster.wait_for(lambda: bool((agent.status() or {}).get("quorate")), 10, "quorate")
        agent.config_path.write_text(
            agent.config_path.read_text().replace(busy, '\n[[hook]]\nevents = ["stalled"]\n'
                                                  'command = ["/bin/true"]\n')
        )  # fmt: skip
        os.kill(agent.process.pid, signal.SIGHUP)  # stops the running hook: up to 1 s
        time.sleep(0.3)
        os.kill(agent.process.pid, signal.SIGHUP)

        def reloads() -> list[dict[str, object]]:
            return [r for r in agent.log_records() if str(r.get("event")).startswith("reloaded")]

        cluster.wait_for(lambda: len(reloads()) >= 2, 5, "both reloads")
        assert [r["event"] for r in reloads()] == [
            "reloaded event outputs",
            "reloaded; event outputs unchanged",
        ]
        assert reloads()[0]["sinks"] == ["log", "recent", "hook:0"]
    finally:
        cluster.close()
