"""Scenario files (design §4.5): every library file parses, validates and gives every node a
config the agent's own loader accepts; a bad file is refused with one line naming the key."""

from __future__ import annotations

import argparse
import os
import signal
import time
from pathlib import Path

import pytest
from votemesh_lab import nodeconf, scenario
from votemesh_lab.backends import LabPlan, check_node_configs
from votemesh_lab.runner import _deferred_interrupts, command_run
from votemesh_lab.scenario import ScenarioError

from agent.runtime.config_file import parse_config

LIBRARY = scenario.library()
CI_SUBSET = ("split-3-2", "oneway-cut", "majorities-ring", "bridge", "pause-5s", "kill-restart",
             "qdevice-2-2", "loss-20", "link-failover", "zeroconf-discovery")  # fmt: skip

GOOD = """
name = "t"
purpose = "a test"
duration = "20s"
[topology]
nodes = 3
[[nemesis]]
id = "split"
at = "2s"
f = "partition"
groups = [[1, 2], [3]]
duration = "5s"
[[expect]]
after = "split"
within = "3s"
quorate = [1, 2]
"""


def test_the_library_has_at_least_20_scenarios_with_a_one_line_purpose() -> None:
    """Design §4.5's library: >= 20 files, each named as its file, each with a purpose line."""
    assert len(LIBRARY) >= 20
    for path in LIBRARY:
        s = scenario.load(path)
        assert s.name == path.stem
        assert s.purpose
        assert "\n" not in s.purpose


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: p.stem)
def test_every_library_scenario_validates_and_its_node_configs_load(path: Path) -> None:
    """Every library file is a valid scenario whose generated agent configs the agent's own
    loader accepts (what `run` checks before anything starts)."""
    s = scenario.load(path)
    parsed = check_node_configs(LabPlan.of(s))
    assert parsed["timing"]["heartbeat_interval"] > 0
    assert s.timeline() == sorted(s.timeline(), key=lambda n: n.at)


def test_the_ci_subset_is_in_the_library_and_each_is_short() -> None:
    """The CI subset exists and each scenario's timeline is at most 30 s (the 6-minute budget)."""
    names = {p.stem for p in LIBRARY}
    for name in CI_SUBSET:
        assert name in names
        assert scenario.load(scenario.find(name)).duration <= 30


def test_repeats_and_durations_expand_into_ids_and_undos() -> None:
    """`repeat = 3, every = 10s` makes <id>#1..#3; a duration makes <id>#k.undo at at+duration."""
    text = GOOD.replace('duration = "5s"', 'duration = "5s"\nrepeat = 3\nevery = "6s"')
    s = scenario.parse(text.replace('after = "split"', 'after = "split#2"'))
    got = [(n.id, n.f, n.at) for n in s.timeline()]
    assert got == [
        ("split#1", "partition", 2.0), ("split#1.undo", "heal", 7.0),
        ("split#2", "partition", 8.0), ("split#2.undo", "heal", 13.0),
        ("split#3", "partition", 14.0), ("split#3.undo", "heal", 19.0),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("nodes = 3", "nodes = 3\ncolour = 1"), "unknown key topology.colour"),
        (('f = "partition"', 'f = "explode"'), "nemesis[0].f: 'explode'"),
        (('at = "2s"', 'at = "2 parsecs"'), "nemesis[0].at: '2 parsecs' is not a time"),
        (("groups = [[1, 2], [3]]", "groups = [[1, 2], [3, 9]]"), "nemesis[0]: no host n9"),
        (('after = "split"', 'after = "splat"'), "expect[0].after: no nemesis 'splat'"),
        (("quorate = [1, 2]", "quorate = [1, 7]"), "expect[0].quorate: 7 must be"),
        (("quorate = [1, 2]", "max_view_changes = 1"), "expect[0]: give after"),
        (('duration = "20s"', 'duration = "3s"'), "comes after the end"),
        (
            ('duration = "5s"\n[[expect]]', 'duration = "5s"\nloss = "5%"\n[[expect]]'),
            "unknown key nemesis[0].loss",
        ),
        (("nodes = 3", 'nodes = 3\nshape = { loss = "120%" }'), "topology.shape.loss"),
        (("nodes = 3", "nodes = 3\n[cluster]\nnode_id = 4"), "cluster.node_id: the lab sets it"),
        (("nodes = 3", "nodes = 3\n[cluster]\ntimmy = 4"), "unknown key cluster.timmy"),
        (("nodes = 3", 'nodes = 3\nqnetd = "paxos"'), "topology.qnetd: 'paxos'"),
        (('name = "t"', 'name = "T T"'), "name: 'T T'"),
        (('purpose = "a test"\n', ""), "missing purpose"),
        (('f = "partition"', "f = []"), "nemesis[0].f: []"),
        (("quorate = [1, 2]", "during = [[1], [1]]"), "expect[0].during: no nemesis [1]"),
    ],
)
def test_a_bad_file_is_one_line_naming_the_key(change: tuple[str, str], message: str) -> None:
    """Every mistake is one ScenarioError line that names the key (and the fix)."""
    old, new = change
    assert old in GOOD
    with pytest.raises(ScenarioError) as caught:
        scenario.parse(GOOD.replace(old, new, 1), "bad.toml")
    text = str(caught.value)
    assert "\n" not in text
    assert text.startswith("bad.toml: ")
    assert message in text, text


def test_a_cluster_table_the_agent_refuses_is_refused_before_anything_runs() -> None:
    """[cluster] is the agent's own keys: a value the agent's loader refuses is one line."""
    s = scenario.parse(GOOD.replace("nodes = 3", "nodes = 3\n[cluster]\ntiming = { preset = 'x' }"))
    with pytest.raises(ScenarioError, match=r"n1 a config the agent refuses: .*timing\.preset"):
        check_node_configs(LabPlan.of(s))


def test_a_cluster_value_toml_cannot_hold_is_one_line() -> None:
    """`[cluster] ... = inf` is valid TOML the agent's file cannot carry: one ScenarioError line
    (was a ValueError traceback out of the TOML writer)."""
    s = scenario.parse(GOOD.replace("nodes = 3", "nodes = 3\n[cluster]\ntiming = { x = inf }"))
    with pytest.raises(ScenarioError, match=r"n1 a config the agent refuses: TOML has no inf"):
        check_node_configs(LabPlan.of(s))


def test_node_config_merges_cluster_keys_over_the_labs_and_writes_loadable_toml() -> None:
    """The lab's [qdevice] keys are overlaid by the scenario's; the TOML loads in the agent."""
    spec = nodeconf.NodeSpec(1, "n1", ("198.18.0.2", "198.18.1.2"))
    peer = nodeconf.NodeSpec(2, "n2", ("198.18.0.3", "198.18.1.3"))
    config = nodeconf.node_config(
        {"timing": {"preset": "lab"}, "qdevice": {"tie_breaker": "highest"}}, spec, [peer],
        key_file="k", state_dir="s",
        qdevice={"host": "198.18.0.9", "algorithm": "ffsplit", "tie_breaker": "lowest",
                 "tls": "off"},
    )  # fmt: skip
    parsed = parse_config(nodeconf.toml_text(config))
    assert parsed.qdevice is not None
    assert str(parsed.qdevice.tie_breaker) == "highest"
    assert [link.address for link in parsed.links] == ["198.18.0.2", "198.18.1.2"]
    assert parsed.peers[0].node_id == 2
    assert not parsed.discovery


def test_find_names_the_library_and_refuses_what_is_not_there() -> None:
    """`run split-3-2` finds the library file; an unknown name is one line saying what to do."""
    assert scenario.find("split-3-2").name == "split-3-2.toml"
    with pytest.raises(ScenarioError, match="votemesh-lab library"):
        scenario.find("no-such-scenario")


def test_command_library_lists_every_name_and_purpose(capsys: pytest.CaptureFixture[str]) -> None:
    """`votemesh-lab library` prints one line per scenario: name, then its purpose."""
    assert scenario.command_library(argparse.Namespace()) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(LIBRARY)
    assert any(line.startswith("split-3-2 ") and "majority" in line for line in lines)


def test_run_refuses_a_bad_file_with_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`votemesh-lab run bad.toml`: one line on stderr naming the key, exit 1, nothing ran."""
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace("nodes = 3", "nodes = 3\ncolour = 1"))
    args = argparse.Namespace(scenario=str(bad), seed=None, out=str(tmp_path / "out"),
                              backend="netns", inventory=None, shaper=None)  # fmt: skip
    assert command_run(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "unknown key topology.colour" in err
    assert not (tmp_path / "out").exists()


def test_a_ctrl_c_during_teardown_is_deferred_not_raised() -> None:
    """Seen in make chaos: a SIGINT that arrived while the lab was being torn down cut
    Lab.close short and left the lab's namespaces. During teardown it is only noted."""
    with _deferred_interrupts() as got:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
    assert got == [signal.SIGINT]
