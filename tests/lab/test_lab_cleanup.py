"""Cleanup invariants C1-C5 of docs/design.md §4.2 (root): after `down`, after a failed `up`,
after a failed test, and after kill -9 of the lab's supervisor followed by `votemesh-lab down`,
no namespace, link, TAP device, process or mount of the lab remains.

Each test checks twice: `netns.leftovers(id)` (what `down` and `list` use) AND independently,
from a footprint taken while the lab ran: `ip netns list`, `ip -o link` in the root namespace,
every /proc/*/ns/net against the lab's namespace inodes, the recorded PIDs with their start
times, /proc/self/mountinfo, and the state directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from votemesh_lab import labcmd, netns, state
from votemesh_lab.netns import LabFactory

from tests.lab.lab_cli_support import (
    BIN,
    REASON,
    Footprint,
    footprint,
    fresh_id,
    lab_cli,
    one_line_error,
    traces,
    wait_no_traces,
)

pytestmark = [
    pytest.mark.root,
    pytest.mark.timeout(60),
    pytest.mark.skipif(REASON is not None, reason=REASON or ""),
]


def _up(lab_id: str, *extra: str) -> None:
    result = lab_cli("up", "--nodes", "2", "--id", lab_id, *extra)
    if result.returncode != 0:
        lab_cli("down", "--lab", lab_id, "--purge")
    assert result.returncode == 0, result.stderr


def _kill_supervisor(lab_id: str) -> Footprint:
    """kill -9 the lab's supervisor; the lab's footprint taken just before."""
    before = footprint(lab_id)
    record = state.read(lab_id)
    assert record is not None
    supervisor = record.process("supervisor")
    assert supervisor is not None
    os.kill(supervisor.pid, signal.SIGKILL)
    return before


def test_down_leaves_nothing() -> None:
    """up (2 agents, a background process started with `exec`) then `down`: leftovers() empty,
    and nothing found independently; `down` again is a no-op that still exits 0 (idempotent);
    --purge removed the work directory."""
    lab_id = fresh_id()
    _up(lab_id)
    try:
        lab_cli("exec", "--lab", lab_id, "1", "sh", "-c", "sleep 300 >/dev/null 2>&1 &")
        before = footprint(lab_id)
        assert len(before.netns_inodes) == 3, before  # sw, n1, n2
        assert len(before.pids) >= 7, before  # supervisor, switch, 2 anchors, 2 agents, sleep
        assert traces(before), "the independent checks see nothing of a running lab"
    finally:
        down = lab_cli("down", "--lab", lab_id, "--purge")
    assert down.returncode == 0, down.stdout + down.stderr
    assert f"lab {lab_id}: removed supervisor" in down.stdout, down.stdout
    assert f"namespace vml-{lab_id}-n1" in down.stdout, down.stdout
    assert netns.leftovers(lab_id).empty(), netns.leftovers(lab_id)
    assert wait_no_traces(before) == []
    assert not state.default_workdir(lab_id).exists()
    again = lab_cli("down", "--lab", lab_id)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == f"lab {lab_id}: removed nothing"


def test_failed_up_leaves_nothing() -> None:
    """An `up` that fails after its namespaces and processes exist (--wait too short for the
    agents to answer) runs the same teardown: one line, exit 1, nothing of the lab left."""
    lab_id = fresh_id()
    result = lab_cli("up", "--nodes", "2", "--id", lab_id, "--wait", "0.001")
    line = one_line_error(result)
    assert "up failed: timed out after 0.0 s waiting for every agent to answer" in line, line
    assert "lab removed" in line
    log = (state.default_workdir(lab_id) / "supervisor.log").read_text()
    assert "down" in log, log  # the supervisor had built the lab, then tore it down
    assert netns.leftovers(lab_id).empty(), netns.leftovers(lab_id)
    assert traces(footprint(lab_id)) == []
    lab_cli("down", "--lab", lab_id, "--purge")


@pytest.mark.parametrize("after", [0.05, 0.6, 2.0])
def test_interrupted_up_leaves_nothing(after: float) -> None:
    """SIGTERM to `up` while it waits (before the supervisor exists, while it builds, or once
    the agents run): exit 130, one line, and nothing of the lab left, its supervisor included."""
    lab_id = fresh_id()
    up = subprocess.Popen(
        [str(BIN / "votemesh-lab"), "up", "--nodes", "2", "--id", lab_id],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(after)
        up.send_signal(signal.SIGTERM)
        _out, err = up.communicate(timeout=50)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    if up.returncode == 0:  # it was up before the signal came: a plain down then
        lab_cli("down", "--lab", lab_id, "--purge")
        pytest.skip(f"up finished within {after} s on this machine")
    if up.returncode == -signal.SIGTERM:  # before Python ran our code: nothing was made
        assert not state.default_workdir(lab_id).exists()
    else:
        assert up.returncode == 130, err
        assert err.splitlines() == [f"votemesh-lab: interrupted; lab {lab_id} removed"], err
    assert netns.leftovers(lab_id).empty(), netns.leftovers(lab_id)
    assert wait_no_traces(footprint(lab_id), timeout=2.0) == []
    lab_cli("down", "--lab", lab_id, "--purge")


def test_kill_9_of_the_supervisor_then_down_leaves_nothing() -> None:
    """kill -9 of the supervisor: its daemons die with it (pdeathsig) but a process started
    with `exec` lives on in a lab namespace, and the namespaces and lab.json stay. `list`
    shows the lab as leftover; `down` (from lab.json's id alone) kills that process by
    namespace membership, deletes the namespaces and the state dir: nothing left."""
    lab_id = fresh_id()
    _up(lab_id)
    try:
        lab_cli("exec", "--lab", lab_id, "2", "sh", "-c", "sleep 300 >/dev/null 2>&1 &")
        before = _kill_supervisor(lab_id)
        found = netns.leftovers(lab_id)
        assert found.namespaces, found
        assert found.processes, found  # the sleep, at least
        listed = lab_cli("list")
        assert f"{lab_id}  leftover" in listed.stdout, listed.stdout
        refused = one_line_error(lab_cli("status", "--lab", lab_id))
        assert f"lab {lab_id} is not up" in refused
    finally:
        down = lab_cli("down", "--lab", lab_id, "--purge")
    assert down.returncode == 0, down.stdout + down.stderr
    assert "namespace vml-" in down.stdout, down.stdout
    assert netns.leftovers(lab_id).empty(), netns.leftovers(lab_id)
    assert wait_no_traces(before) == []


def test_down_without_lab_json_works_from_the_id_alone() -> None:
    """C3: lab.json deleted as well (a crash before it was written): `down --lab ID` finds the
    namespaces by their vml-<id>- prefix and removes them and their processes."""
    lab_id = fresh_id()
    _up(lab_id)
    try:
        before = _kill_supervisor(lab_id)
        (state.state_dir(lab_id) / state.STATE_FILE).unlink()
    finally:
        down = lab_cli("down", "--lab", lab_id, "--purge")
    assert down.returncode == 0, down.stdout + down.stderr
    assert netns.leftovers(lab_id).empty(), netns.leftovers(lab_id)
    assert wait_no_traces(before) == []


FAILING_TEST = """
from pathlib import Path

from votemesh_lab.netns import LabFactory


def test_fails(tmp_path: Path) -> None:
    with LabFactory(tmp_path) as factory:
        lab = factory(["n1", "n2"], switch="tap", private_dirs=("/etc/votemesh", "/run"))
        lab["n1"].start(["sleep", "300"], label="sleeper")
        Path({out!r}).write_text(lab.lab_id)
        assert False, "this test fails on purpose"
"""


def test_a_failed_test_leaves_nothing(tmp_path: Path) -> None:
    """A pytest run whose test fails inside a lab (a tap switch, private mounts, a process in
    a host): the test fails, and the lab it made is gone entirely."""
    out = tmp_path / "lab_id"
    test_file = tmp_path / "test_failing_lab.py"
    test_file.write_text(textwrap.dedent(FAILING_TEST.format(out=str(out))))
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(root),
         "-c", str(root / "pyproject.toml"), str(test_file)],
        capture_output=True, text=True, timeout=50, check=False, cwd=root,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout[-2000:]
    assert "this test fails on purpose" in result.stdout
    lab_id = out.read_text()
    assert netns.leftovers(lab_id).empty(), netns.leftovers(lab_id)
    assert traces(footprint(lab_id)) == []


def test_down_without_an_id_never_picks_a_running_test_lab(tmp_path: Path) -> None:
    """A lab made by a test (LabFactory: no state directory) with a process in it is not one
    `down` or `down --all` picks by itself; once nothing runs in it, it is a dead leftover
    they may remove."""
    with LabFactory(tmp_path) as factory:
        lab = factory(["n1"], switch="tap")
        lab["n1"].start(["sleep", "300"], label="sleeper")
        assert not labcmd.ours_to_remove(lab.lab_id)
        assert lab.lab_id in netns.lab_ids_found()
    assert netns.leftovers(lab.lab_id).empty()
