"""Hooks on real agents (127.0.0.x, lab timing): quorum_gained and quorum_lost run the command
with the documented environment and stdin; a hook that hangs is killed at its timeout while the
agent keeps deciding and answering; a missing hook file is one clear line."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agent.live_agents import BIN, AgentCluster
from tests.agent.test_agents_live import SETTLE
from tests.agent.test_hooks import alive

RECORD = """#!/bin/sh
f="$1/node$VOTEMESH_NODE_ID.$VOTEMESH_SEQ"
env > "$f.env"
cat > "$f.tmp"
mv "$f.tmp" "$f.json"
"""
HANG = """#!/bin/sh
sleep 30 &
echo "$! $$" >> "$1/hang.pids"
wait
"""


def cli_status(cluster: AgentCluster, node_id: int) -> tuple[float, dict[str, Any]]:
    """`votemesh status --json` of one agent (exit 0 quorate, 2 not): (seconds taken, doc)."""
    socket = str(cluster.agents[node_id].control_socket)
    started = time.monotonic()
    result = subprocess.run(
        [str(BIN / "votemesh"), "status", "--json", "--socket", socket],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    doc: dict[str, Any] = json.loads(result.stdout)
    assert result.returncode == (0 if doc["quorate"] else 2), result.stderr
    return time.monotonic() - started, doc


def write_script(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def runs(out: Path, node: int, kind: str) -> list[tuple[dict[str, str], dict[str, Any]]]:
    """The (environment, stdin JSON) of each finished run of node `node` for `kind`."""
    found = []
    for doc_path in sorted(out.glob(f"node{node}.*.json"), key=lambda p: int(p.name.split(".")[1])):
        doc = json.loads(doc_path.read_text())
        if doc["event"] != kind:
            continue
        env_path = doc_path.with_suffix(".env")
        env = dict(line.split("=", 1) for line in env_path.read_text().splitlines() if "=" in line)
        found.append((env, doc))
    return found


@pytest.fixture
def hang_pids(tmp_path: Path) -> Iterator[Path]:
    """The hang script's pids file; whatever it started is killed at the end (by pid)."""
    path = tmp_path / "out" / "hang.pids"
    yield path
    if path.exists():
        for pid in (int(p) for line in path.read_text().split("\n") for p in line.split()):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_quorum_gained_and_lost_run_hooks_with_environment_and_stdin(tmp_path: Path) -> None:
    """Three agents: each runs its hook for quorum_gained (VOTEMESH_QUORATE=1, JSON on stdin
    with the event and a quorate status); after kill -9 of two, the survivor runs it for
    quorum_lost (VOTEMESH_QUORATE=0, members just itself)."""
    out = tmp_path / "out"
    out.mkdir()
    script = write_script(tmp_path / "record.sh", RECORD)
    extra = (
        f'[[hook]]\nevents = ["quorum_gained", "quorum_lost"]\n'
        f'command = ["{script}", "{out}"]\ntimeout = 5\n'
    )
    cluster = AgentCluster(tmp_path / "agents", 3, extra=extra)
    try:
        cluster.start_all()
        cluster.wait_for(lambda: cluster.one_view([1, 2, 3]), SETTLE, "a view of 3")
        for node in (1, 2, 3):
            gained = functools.partial(runs, out, node, "quorum_gained")
            cluster.wait_for(lambda: bool(gained()), 10, "hook")  # noqa: B023 (used at once)
            env, doc = runs(out, node, "quorum_gained")[-1]
            assert env["VOTEMESH_EVENT"] == "quorum_gained"
            assert env["VOTEMESH_QUORATE"] == "1"
            assert env["VOTEMESH_CLUSTER"] == "live"
            assert (env["VOTEMESH_NODE_ID"], env["VOTEMESH_NODE_NAME"]) == (
                str(node),
                f"node{node}",
            )
            assert env["VOTEMESH_SEQ"] == str(doc["seq"])
            assert doc["reason"] == env["VOTEMESH_REASON"]
            assert doc["status"]["quorate"] is True
            assert doc["status"]["node_id"] == node
        lost_before = len(runs(out, 1, "quorum_lost"))  # a start-up flap under load counts
        cluster.kill(2)
        cluster.kill(3)
        cluster.wait_for(
            lambda: len(runs(out, 1, "quorum_lost")) > lost_before, SETTLE, "quorum_lost hook"
        )
        env, doc = runs(out, 1, "quorum_lost")[-1]
        assert env["VOTEMESH_EVENT"] == "quorum_lost"
        assert env["VOTEMESH_QUORATE"] == "0"
        assert env["VOTEMESH_MEMBERS"] == "1"
        assert doc["event"] == "quorum_lost"
        assert doc["status"]["quorate"] is False
        assert doc["status"]["members"] == [1]

        def ran() -> list[dict[str, Any]]:
            return [r for r in cluster.agents[1].log_records() if r["event"] == "hook ran"]

        # "hook ran" is logged once the hook has exited, after it wrote its files
        cluster.wait_for(lambda: any(r["kind"] == "quorum_lost" for r in ran()), 10, "hook ran")
        assert {r["kind"] for r in ran()} == {"quorum_gained", "quorum_lost"}
        assert all(r["exit"] == 0 and r["hook"] == "hook:0" for r in ran())
    finally:
        cluster.close()


def test_a_hanging_hook_is_killed_and_the_agent_keeps_deciding(
    tmp_path: Path, hang_pids: Path
) -> None:
    """Every agent has a hook for every event that hangs (timeout 1 s), one whose file does not
    exist, a recorder for quorum_lost and one whose file is not executable. The view forms
    and, when two agents stop, the survivor loses quorum, runs its recorder, and `votemesh
    status` answers at once throughout; the hanging runs are logged as timed out and leave no
    process behind; the missing and the non-executable file are each one clear line at start
    and one per event they miss."""
    out = hang_pids.parent
    out.mkdir()
    hang = write_script(tmp_path / "hang.sh", HANG)
    record = write_script(tmp_path / "record.sh", RECORD)
    plain = tmp_path / "plain.sh"
    plain.write_text(RECORD)  # not executable
    extra = (
        f'[[hook]]\nevents = ["*"]\ncommand = ["{hang}", "{out}"]\ntimeout = 1\nqueue = 3\n'
        f'[[hook]]\nevents = ["quorum_lost"]\ncommand = ["{tmp_path / "absent.sh"}"]\n'
        f'[[hook]]\nevents = ["quorum_lost"]\ncommand = ["{record}", "{out}"]\n'
        f'[[hook]]\nevents = ["quorum_lost"]\ncommand = ["{plain}"]\n'
    )
    cluster = AgentCluster(tmp_path / "agents", 3, extra=extra)
    try:
        cluster.start_all()
        cluster.wait_for(lambda: cluster.one_view([1, 2, 3]), SETTLE, "a view of 3")
        took, doc = cli_status(cluster, 1)
        assert doc["quorate"] is True
        assert took < 5
        lost_before = len(runs(out, 1, "quorum_lost"))  # a start-up flap under load counts
        cluster.stop(2)
        cluster.stop(3)
        cluster.wait_for(
            lambda: len(runs(out, 1, "quorum_lost")) > lost_before, SETTLE, "quorum_lost hook"
        )

        def alone_and_inquorate() -> bool:
            took, doc = cli_status(cluster, 1)
            assert took < 5
            return (doc["quorate"], doc["members"]) == (False, [1])

        cluster.wait_for(alone_and_inquorate, SETTLE, "status: alone, not quorate")
        cluster.wait_for(
            lambda: any(r["event"] == "hook timed out" for r in cluster.agents[1].log_records()),
            10,
            "a hook timed out line",
        )
        records = cluster.agents[1].log_records()
        unusable = [r for r in records if r["event"].startswith("hook command cannot run")]
        assert [(r["hook"], r["level"]) for r in unusable] == [
            ("hook:1", "error"),
            ("hook:3", "error"),
        ]
        assert "does not exist" in unusable[0]["problem"]
        assert "is not executable" in unusable[1]["problem"]
        not_run = [r for r in records if r["event"] == "hook not run"]
        assert {(r["hook"], r["kind"]) for r in not_run} == {
            ("hook:1", "quorum_lost"),
            ("hook:3", "quorum_lost"),
        }
        assert not any("exception" in r for r in records)
    finally:
        cluster.close()
    # the stopped agents killed their hanging runs' groups; node 1's too when it stopped
    pids = [int(p) for p in hang_pids.read_text().split()]
    assert pids
    assert not [pid for pid in pids if alive(pid)]


def test_sighup_adds_and_removes_a_hook(tmp_path: Path) -> None:
    """A running agent without hooks: SIGHUP with a `[[hook]]` added starts it (`hook ready`),
    and it runs for the next quorum_lost; SIGHUP with it removed stops it: later events run
    nothing."""
    out = tmp_path / "out"
    out.mkdir()
    record = write_script(tmp_path / "record.sh", RECORD)
    cluster = AgentCluster(tmp_path / "agents", 2)
    agent = cluster.agents[1]
    original = agent.config_path.read_text()
    try:
        cluster.start_all()
        cluster.wait_for(lambda: cluster.one_view([1, 2]), SETTLE, "a view of 2")
        assert agent.process is not None
        agent.config_path.write_text(
            original + f'\n[[hook]]\nevents = ["*"]\ncommand = ["{record}", "{out}"]\n'
        )
        os.kill(agent.process.pid, signal.SIGHUP)
        cluster.wait_for(
            lambda: any(r["event"] == "hook ready" for r in agent.log_records()), 10, "hook ready"
        )
        cluster.kill(2)
        cluster.wait_for(lambda: bool(runs(out, 1, "quorum_lost")), SETTLE, "quorum_lost hook")
        agent.config_path.write_text(original)
        os.kill(agent.process.pid, signal.SIGHUP)
        cluster.wait_for(
            lambda: any(r["event"] == "reloaded event outputs" for r in agent.log_records()[-5:]),
            10,
            "hooks removed",
        )
        before = len(list(out.glob("node1.*.json")))
        cluster.start(2)
        cluster.wait_for(lambda: cluster.one_view([1, 2]), SETTLE, "a view of 2 again")
        time.sleep(0.5)
        assert len(list(out.glob("node1.*.json"))) == before
    finally:
        cluster.close()


def test_busy_hooks_are_stopped_together_at_shutdown(tmp_path: Path) -> None:
    """At SIGTERM every sink gets its 1 s grace at the same time, not one after the other: with
    five hooks each in the middle of a run the agent is gone in about 1 s (it took over 5 s, a
    second per hook, before the sinks were stopped concurrently)."""
    marker = tmp_path / "ran"
    script = tmp_path / "busy.sh"
    script.write_text(f'#!/bin/sh\necho x >> "{marker}"\nexec sleep 30\n')
    script.chmod(0o755)
    hooks = "".join(f'\n[[hook]]\nevents = ["*"]\ncommand = ["{script}"]\n' for _ in range(5))
    cluster = AgentCluster(tmp_path, 1, extra=hooks)
    try:
        cluster.start(1)
        cluster.wait_for(
            lambda: marker.exists() and len(marker.read_text().split()) >= 5, 10, "5 hook runs"
        )
        started = time.monotonic()
        assert cluster.stop(1) == 0
        assert time.monotonic() - started < 3.5
    finally:
        cluster.close()
