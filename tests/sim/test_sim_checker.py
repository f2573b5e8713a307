"""The checker itself: it flags broken nodes, and a failure report can be replayed."""

from __future__ import annotations

from pathlib import Path

from votemesh_lab.checker import Checker
from votemesh_lab.sim.network import Core, SimNetwork, cluster_configs
from votemesh_lab.sim.replay import main as replay_main
from votemesh_lab.sim.schedules import RunResult, random_schedule, run_seed
from votemesh_lab.timeline import Timeline, read_jsonl

from agent.config import AgentConfig
from tests.sim.fake_node import FakeNode, FaultyNode, FlickerNode


def faulty(config: AgentConfig, incarnation: int, max_seq: int) -> Core:
    return FaultyNode(config, incarnation, max_seq=max_seq)


def fake(config: AgentConfig, incarnation: int, max_seq: int) -> Core:
    return FakeNode(config, incarnation, max_seq=max_seq)


def split_run(factory: object) -> SimNetwork:
    net = SimNetwork(cluster_configs(5), 3, factory=factory)  # type: ignore[arg-type]
    for node in range(1, 6):
        net.start(node)
    net.run_until(2.0)
    net.partition({1, 2}, {3, 4, 5})
    net.run_until(8.0)
    return net


def test_checker_flags_disjoint_quorate_views() -> None:
    """A node that is quorate on any view it installs breaks S1 in a 2|3 split, and the
    minority's quorum breaks L1: the checker reports both, with times and member sets."""
    found = Checker(split_run(faulty).timeline()).check().violations
    props = {v.prop for v in found}
    assert {"S1", "L1"} <= props, found
    split = [v for v in found if v.prop == "S1" and v.t >= 2.0]
    assert split, found
    assert "disjoint" in split[0].detail
    assert len(split[0].nodes) == 2


def flicker(config: AgentConfig, incarnation: int, max_seq: int) -> Core:
    return FlickerNode(config, incarnation, max_seq=max_seq)


def settled_split_run(factory: object) -> SimNetwork:
    """5 nodes settle for longer than the settle time, then split 3|2 for longer than it."""
    net = SimNetwork(cluster_configs(5), 3, factory=factory)  # type: ignore[arg-type]
    for node in range(1, 6):
        net.start(node)
    net.run_until(3.5)
    net.partition({1, 2, 3}, {4, 5})
    net.run_until(7.5)
    return net


def test_checker_flags_a_flicker_on_the_side_that_keeps_quorum() -> None:
    """F1: the majority {1,2,3} of a settled split reporting inquorate for a moment is found;
    the same split with the reference fake is clean."""
    found = Checker(settled_split_run(flicker).timeline()).check().violations
    f1 = [v for v in found if v.prop == "F1"]
    assert f1, found
    assert "kept quorum across the split at t=3.5000" in f1[0].detail
    assert Checker(settled_split_run(fake).timeline()).check().status == "valid"


def test_checker_passes_a_correct_node() -> None:
    """The same split with the reference fake (cliques, matching proposals, majority) passes."""
    assert Checker(split_run(fake).timeline()).check().status == "valid"


def test_checker_flags_a_ring_id_with_two_member_sets() -> None:
    """S2: one ring id reported with two different member sets is a violation."""
    timeline = split_run(fake).timeline()
    last = [r for r in timeline if r["kind"] == "state" and r["node"] == 1][-1]
    forged = {**last, "t": last["t"] + 0.1, "node": 2, "members": [*last["members"], 9]}
    found = Checker(Timeline([*timeline, forged])).check().violations
    s2 = [v for v in found if v.prop == "S2"]
    assert s2, found
    assert set(s2[0].nodes) == {1, 2}


def test_failure_report_names_seed_replay_and_trace_tail() -> None:
    """A failing run's report starts with the seed and the replay command and ends with the
    last trace lines."""
    schedule = random_schedule(11)
    net = split_run(faulty)
    result = RunResult(schedule, net, Checker(net.timeline()).check().violations)
    report = result.report(tail=20)
    assert report.startswith("seed 11 FAILED")
    assert "python -m votemesh_lab.sim.replay 11" in report
    assert report.rstrip().endswith(net.trace[-1])


def test_replay_command_prints_schedule_and_verdict(capsys: object) -> None:
    """`python -m votemesh_lab.sim.replay SEED --tail N` prints the schedule, the trace and the
    verdict, and exits 0 when every property held."""
    code = replay_main(["3", "--tail", "5"])
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert out.startswith("seed 3:")
    assert "--- trace ---" in out
    assert code == 0
    assert "all properties hold" in out


def test_a_simulated_run_is_judged_the_same_from_its_jsonl(tmp_path: Path) -> None:
    """The simulator's records are the lab's format: written to timeline.jsonl, read back (and
    validated), they give the same verdict, violations and all, as the run's own timeline."""
    for factory, seed in ((faulty, 3), (fake, 3)):
        timeline = split_run(factory).timeline()
        again = read_jsonl(timeline.write_jsonl(tmp_path / f"{seed}.jsonl"))
        first, second = Checker(timeline).check(), Checker(again).check()
        assert (second.status, second.violations) == (first.status, first.violations)
    assert first.status == "valid"
    assert {"run", "state", "proc", "net", "config", "view_installed", "end"} <= {
        r["kind"] for r in again
    }


def test_a_qnetd_run_records_the_qnetd_votes() -> None:
    """With a qnetd, the simulator records who got its vote (`qnetd_vote`), and the run record
    names the device, so the checker counts its votes."""
    result = run_seed(0)  # seed 0 draws a qnetd
    timeline = result.net.timeline()
    assert timeline.run["qdevice"] is not None
    votes = timeline.of_kind("qnetd_vote")
    assert votes
    assert {r["vote"] for r in votes} <= {"ack", "nack"}
    assert Checker(timeline).device == 1
