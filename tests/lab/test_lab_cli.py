"""`votemesh-lab` as a user runs it (root): up 3 nodes, status, partition/heal, kill/stop/cont/
restart, exec inside a host's namespaces, and one-line errors for every mistake.

One lab (3 agents) serves the module; each test leaves it healed with every agent running. The
command runs as a separate process (the venv's entry point), its supervisor detached as `up`
leaves it; the fixture's `down` must leave nothing (test_lab_cleanup.py pins that in detail).
"""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from votemesh_lab import cli, corostack, netns, state, statusview

from tests.lab.lab_cli_support import (
    BIN,
    REASON,
    agents,
    fresh_id,
    lab_cli,
    one_line_error,
    root_lab_routes,
    status,
    wait_for,
)

ALL: dict[str, tuple[tuple[int, ...], bool]] = {
    "n1": ((1, 2, 3), True),
    "n2": ((1, 2, 3), True),
    "n3": ((1, 2, 3), True),
}


@pytest.fixture(scope="module")
def lab_id() -> Iterator[str]:
    if REASON is not None:
        pytest.skip(REASON)
    lab = fresh_id()
    result = lab_cli("up", "--nodes", "3", "--id", lab)
    try:
        assert result.returncode == 0, result.stderr
        yield lab
    finally:
        down = lab_cli("down", "--lab", lab, "--purge")
        assert down.returncode == 0, down.stdout + down.stderr
        assert netns.leftovers(lab).empty()


@pytest.mark.root
@pytest.mark.timeout(60)
def test_up_then_status_shows_every_node_quorate(lab_id: str) -> None:
    """After `up --nodes 3` the table shows n1..n3 running, one ring, members 1,2,3, quorate,
    votes 3/3; lab.json names every namespace and records each process with its start time."""
    wait_for(lab_id, ALL)
    table = lab_cli("status", "--lab", lab_id)
    assert table.returncode == 0, table.stderr
    rows = {line.split()[0]: line.split() for line in table.stdout.splitlines() if line.split()}
    for host in ("n1", "n2", "n3"):
        assert rows[host][1:2] + rows[host][3:6] == ["running", "1,2,3", "yes", "3/3"], rows
    assert len({rows[h][2] for h in ("n1", "n2", "n3")}) == 1, rows  # one ring id
    assert "network g0: blocks none; shapes none" in table.stdout
    assert "last change: applied g0: open; verified 6/6 pairs" in table.stdout
    record = state.read(lab_id)
    assert record is not None
    assert sorted(record.namespaces) == sorted(netns.lab_namespaces(lab_id))
    roles = [p.role for p in record.live_processes()]
    assert roles.count("agent") == 3, roles
    assert roles.count("anchor") == 3, roles
    assert {"supervisor", "switch"} <= set(roles), roles
    for process in record.live_processes():
        assert state.start_time(process.pid) == process.start
    assert root_lab_routes() == []  # C1: nothing of the lab in the root namespace


@pytest.mark.root
@pytest.mark.timeout(60)
def test_status_watch_redraws_until_ctrl_c(lab_id: str) -> None:
    """`status --watch` draws the table, keeps redrawing, and ends with exit 0 on Ctrl-C."""
    watch = subprocess.Popen(
        [str(BIN / "votemesh-lab"), "status", "--watch", "--lab", lab_id],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(3.0)
    watch.send_signal(signal.SIGINT)
    out, err = watch.communicate(timeout=20)
    assert watch.returncode == 0, err
    assert err == ""
    assert "n3" in out
    assert "last change: applied g" in out


@pytest.mark.root
@pytest.mark.timeout(60)
def test_partition_then_heal(lab_id: str) -> None:
    """`partition 1 2,3`: n1 alone and inquorate, n2+n3 quorate; `heal`: one view of three."""
    wait_for(lab_id, ALL)
    result = lab_cli("partition", "--lab", lab_id, "1", "2,3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("applied g")
    assert ": 1 | 2,3; verified 6/6 pairs in" in result.stdout
    wait_for(lab_id, {"n1": ((1,), False), "n2": ((2, 3), True), "n3": ((2, 3), True)})
    healed = lab_cli("heal", "--lab", lab_id)
    assert healed.returncode == 0, healed.stderr
    wait_for(lab_id, ALL)


@pytest.mark.root
@pytest.mark.timeout(60)
def test_cut_is_one_way_and_shape_applies(lab_id: str) -> None:
    """`cut '1->2'` blocks n1 -> n2 only (the matrix holds that one block, verified by probes
    over all 6 ordered pairs); `shape` and `unshape` answer with the applied, verified line;
    `heal` + `unshape` restore one view of three."""
    wait_for(lab_id, ALL)
    cut = lab_cli("cut", "--lab", lab_id, "1->2")
    assert cut.returncode == 0, cut.stdout + cut.stderr
    assert "cut 1->2" in cut.stdout, cut.stdout + cut.stderr
    assert "verified 6/6 pairs" in cut.stdout
    assert status(lab_id)["matrix"]["blocks"] == [["n1", "n2"]]
    shaped = lab_cli("shape", "--lab", lab_id, "1", "3", "delay=5ms", "loss=1%")
    assert shaped.returncode == 0, shaped.stderr
    assert "shape 1<->3 delay=5ms loss=1% (+1 shape rule); verified" in shaped.stdout
    doc = status(lab_id)
    assert "(+1 shape rule)" in doc["network"]
    assert doc["matrix"]["pairs"]["n1>n3"] == {"delay": "5ms", "loss": "1%"}
    assert lab_cli("unshape", "--lab", lab_id).returncode == 0
    assert lab_cli("heal", "--lab", lab_id).returncode == 0
    wait_for(lab_id, ALL)


@pytest.mark.root
@pytest.mark.timeout(60)
def test_kill_stop_cont_restart(lab_id: str) -> None:
    """kill 3 -> n3 down, n1+n2 a quorate view of two; restart n3 -> back in one view of three;
    stop 2 -> paused (SIGSTOP: its process state is T), cont 2 -> running again."""
    wait_for(lab_id, ALL)
    assert lab_cli("kill", "--lab", lab_id, "3").stdout.strip() == "n3: kill sent"
    wait_for(lab_id, {"n1": ((1, 2), True), "n2": ((1, 2), True)})
    assert {n["host"]: n["daemon"] for n in status(lab_id)["nodes"]}["n3"] == "down"
    restarted = lab_cli("restart", "--lab", lab_id, "n3")
    assert restarted.returncode == 0, restarted.stderr
    assert "started again" in restarted.stdout, restarted.stderr
    wait_for(lab_id, ALL)
    assert lab_cli("stop", "--lab", lab_id, "2").returncode == 0
    node = {n["host"]: n for n in status(lab_id)["nodes"]}["n2"]
    assert node["daemon"] == "paused"
    assert Path(f"/proc/{node['pid']}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
    assert lab_cli("cont", "--lab", lab_id, "2").returncode == 0
    assert {n["host"]: n["daemon"] for n in status(lab_id)["nodes"]}["n2"] == "running"
    wait_for(lab_id, ALL)


@pytest.mark.root
@pytest.mark.timeout(60)
def test_exec_runs_inside_the_hosts_namespaces(lab_id: str) -> None:
    """`exec 1 votemesh status` reaches n1's agent at its default socket; n1 routes only the lab
    subnet; a file written to /etc/votemesh in n1 lands in the lab's work directory, is not in
    n2's, and /etc/votemesh never appears on the real host."""
    wait_for(lab_id, ALL)
    shown = lab_cli("exec", "--lab", lab_id, "1", "votemesh", "status")
    assert shown.returncode == 0, shown.stderr
    assert "Quorate:" in shown.stdout, shown.stdout
    assert "Yes" in shown.stdout, shown.stdout
    routes = lab_cli("exec", "--lab", lab_id, "n1", "ip", "-4", "route").stdout.splitlines()
    assert [r.split()[0] for r in routes] == ["198.18.0.0/24"], routes
    write = lab_cli("exec", "--lab", lab_id, "1", "sh", "-c", "echo here > /etc/votemesh/mark")
    assert write.returncode == 0, write.stderr
    mark = state.default_workdir(lab_id) / "hosts" / "n1" / "etc" / "votemesh" / "mark"
    assert mark.read_text() == "here\n"
    other = lab_cli("exec", "--lab", lab_id, "2", "ls", "/etc/votemesh")
    assert other.returncode == 0
    assert "mark" not in other.stdout
    assert not Path("/etc/votemesh/mark").exists()
    failed = lab_cli("exec", "--lab", lab_id, "1", "false")
    assert failed.returncode == 1
    assert failed.stderr == ""


@pytest.mark.root
@pytest.mark.timeout(60)
def test_user_mistakes_are_one_line_exit_1(lab_id: str) -> None:
    """Every mistake: exit 1, one line on stderr saying what to do, nothing else; the lab is
    untouched (an `up` with its id is refused without removing anything)."""
    cases = {
        ("up", "--nodes", "0"): "--nodes 0: use 1 to 32",
        ("up", "--nodes", "3", "--qnetd", "raft"): "--qnetd raft: use ffsplit or lms",
        ("up", "--nodes", "3", "--id", "XYZ"): "lab id 'XYZ': use 6 hex digits",
        ("up", "--nodes", "3", "--id", lab_id): f"lab {lab_id} exists",
        ("up",): "required: --nodes",
        ("frobnicate",): "invalid choice: 'frobnicate'",
        ("status", "--lab", "000000"): "lab 000000 is not up",
        ("partition", "--lab", lab_id, "1"): "two groups or more",
        ("partition", "--lab", lab_id, "1", "9"): "no node '9'",
        ("partition", "--lab", lab_id, "1,2", "2,3"): "one group only",
        ("cut", "--lab", lab_id, "1-2"): "SRC->DST",
        ("kill", "--lab", lab_id, "7"): "no node '7'",
        ("shape", "--lab", lab_id, "1", "loss=5%"): "name both sides or neither",
        ("shape", "--lab", lab_id, "loss=150%"): "loss",
        ("shape", "--lab", lab_id, "bogus=1"): "unknown key 'bogus'",
        ("shape", "--lab", lab_id, "delay=fast"): "delay: 'fast' is not a value",
        ("unshape", "--lab", lab_id, "1", "2"): "no shape between those hosts",
        ("exec", "--lab", lab_id, "1"): "say what to run",
        ("down", "--lab", "nothex"): "use 6 hex digits",
        ("up", "--nodes", "2", "--wait", "nan"): "--wait nan: use a number of seconds",
        ("up", "--nodes", "2", "--wait", "inf"): "--wait inf: use a number of seconds",
    }
    for args, needle in cases.items():
        line = one_line_error(lab_cli(*args))
        assert line.startswith("votemesh-lab"), line
        assert needle in line, (args, line)
    assert netns.lab_namespaces(lab_id), "a refused command removed the lab"
    wait_for(lab_id, ALL)


def test_not_root_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Run by a user who is not root, a lab command says so in one line and exits 1."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    for argv in (["up", "--nodes", "3"], ["down"], ["status"], ["kill", "1"], ["list"]):
        assert cli.main(argv) == 1
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1, err
        assert "needs root" in err[0], err


def test_missing_scenario_module_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`run` is loaded when used; a build without its module says so in one line, exit 1."""
    monkeypatch.setitem(cli.LAZY, "library", ("votemesh_lab.no_such_module", "command_library"))
    assert cli.main(["library"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [("votemesh-lab: `library` is not in this build "
                   "(votemesh_lab.no_such_module is missing)")]  # fmt: skip


@pytest.mark.root
@pytest.mark.interop
@pytest.mark.timeout(60)
def test_corosync_stack_under_the_same_commands() -> None:
    """`up --corosync --qnetd ffsplit`: Debian's corosync + corosync-qdevice on n1..n3 with
    votemesh-qnetd; status reads corosync-quorumtool: all quorate with the device vote;
    `partition 1 2,3` leaves n1 alone and inquorate, {2,3} quorate; kill 3 + restart 3 brings
    n3 back into one view of three; `down` leaves nothing."""
    if REASON is not None:
        pytest.skip(REASON)
    if (reason := corostack.unavailable_reason()) is not None:
        pytest.skip(reason)
    lab = fresh_id()
    result = lab_cli("up", "--nodes", "3", "--corosync", "--qnetd", "ffsplit", "--id", lab)
    try:
        assert result.returncode == 0, result.stderr
        doc = wait_for(lab, ALL)
        assert all(d["qdevice"]["vote"] for d in agents(doc).values()), doc
        assert lab_cli("partition", "--lab", lab, "1", "2,3").returncode == 0
        doc = wait_for(lab, {"n1": ((1,), False), "n2": ((2, 3), True), "n3": ((2, 3), True)})
        assert lab_cli("heal", "--lab", lab).returncode == 0
        wait_for(lab, ALL)
        assert lab_cli("kill", "--lab", lab, "3").returncode == 0
        wait_for(lab, {"n1": ((1, 2), True), "n2": ((1, 2), True)})
        restarted = lab_cli("restart", "--lab", lab, "3")
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
        wait_for(lab, ALL)
    finally:
        down = lab_cli("down", "--lab", lab, "--purge")
    assert down.returncode == 0, down.stdout + down.stderr
    assert netns.leftovers(lab).empty()


def needs_a_missing_module(_args: object) -> int:
    """A stand-in `run` that imports a part of the package this build lacks."""
    importlib.import_module("votemesh_lab.no_such_part")
    return 0


def test_a_command_needing_a_missing_part_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A lazily loaded command that itself needs a missing votemesh_lab module: one line, 1."""
    monkeypatch.setitem(cli.LAZY, "run", (__name__, "needs_a_missing_module"))
    assert cli.main(["run", "x.toml"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "votemesh-lab: `run` needs votemesh_lab.no_such_part, which is not in this build"
    ]


def test_status_rows_from_a_reply() -> None:
    """The table's rows: an agent's ring, members, quorate, votes, qdevice and per-link counts;
    a paused agent and the qnetd host get dashes; an inquorate node says NO."""
    link = {"link": 0, "up": True}
    reply = {
        "nodes": [
            {"host": "n1", "role": "agent", "daemon": "running", "status": {
                "ring": "1.4", "members": [1, 2], "quorate": True, "total_votes": 3,
                "expected_votes": 3, "qdevice": {"configured": True, "vote": True, "votes": 1},
                "peers": [{"links": [link, {"link": 1, "up": False}]}]}},
            {"host": "n2", "role": "agent", "daemon": "running", "status": {
                "ring": "2.5", "members": [2], "quorate": False, "total_votes": 1,
                "expected_votes": 3, "qdevice": {"configured": True, "connected": True},
                "peers": [{"links": [{"link": 0, "up": False}]}]}},
            {"host": "n3", "role": "agent", "daemon": "paused", "status": {}},
            {"host": "qnetd", "role": "qnetd", "daemon": "running", "status": {}},
        ],
    }  # fmt: skip
    assert statusview.status_rows(reply) == [
        ["n1", "running", "1.4", "1,2", "yes", "3/3", "vote (1)", "L0 1/1 L1 0/1"],
        ["n2", "running", "2.5", "2", "NO", "1/3", "no vote", "L0 0/1"],
        ["n3", "paused", "-", "-", "-", "-", "-", "-"],
        ["qnetd", "running", "-", "-", "-", "-", "-", "-"],
    ]
