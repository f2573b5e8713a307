"""The replicated cluster configuration on real agents in the namespace lab (design §3.9).

Hosts n1..nN on a private bridge (names with a per-run random suffix; `LabFactory` removes every
namespace and process, pass or fail). Each agent starts from today's single file (static peers,
lab timing, its own copy of the cluster key), which bootstraps version 0; the verbs run as the
real `votemesh` CLI against the agents' control sockets. Partitions are iptables rules inside
the namespaces.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from votemesh_lab import netns
from votemesh_lab.agents import LabAgent, agent_config
from votemesh_lab.netns import Lab, LabFactory

from agent.config_replication import Persist
from agent.node_local import to_toml
from agent.runtime import cluster_store
from agent.runtime.config_file import local_of
from agent.runtime.keys import keygen
from tests.agent.live_agents import BIN

SETTLE = 20.0
EXIT_REMOVED = 3


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root: network namespaces, iptables inside them"
    return netns.missing_reason()


pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(_missing() is not None, reason=str(_missing())),
]


class Cluster:
    """N agents in lab hosts n1..nN, each with its own copy of one cluster key."""

    def __init__(self, lab: Lab, work: Path, count: int) -> None:
        self.lab = lab
        work.mkdir(parents=True, exist_ok=True)
        key = work / "cluster.key"
        keygen(key)
        self.agents = {i: LabAgent(i, lab[f"n{i}"], work / f"n{i}") for i in range(1, count + 1)}
        for agent in self.agents.values():
            agent.workdir.mkdir(parents=True)
            own_key = agent.workdir / "cluster.key"
            shutil.copyfile(key, own_key)
            own_key.chmod(0o600)
            peers = [p for p in self.agents.values() if p is not agent]
            agent.config_path.write_text(
                agent_config(agent, peers, own_key, cluster="cfglab", timing="lab")
            )

    def start(self, *ids: int) -> None:
        for i in ids or tuple(self.agents):
            self.agents[i].start()

    def status(self, node_id: int) -> dict[str, Any]:
        return self.agents[node_id].status()

    def statuses(self, ids: list[int]) -> dict[int, dict[str, Any]]:
        return {i: self.status(i) for i in ids}

    def config(self, node_id: int) -> dict[str, Any]:
        """The `config` document of one agent (version and digest included)."""
        out = self.cli(node_id, "config", "show", "--json")
        assert out.returncode == 0, out.stderr
        doc: dict[str, Any] = json.loads(out.stdout)
        return doc

    def cli(self, node_id: int, *words: str) -> subprocess.CompletedProcess[str]:
        """Run `votemesh WORDS --socket <agent's socket>` on the host side."""
        socket_path = str(self.agents[node_id].control_socket)
        args = [str(BIN / "votemesh"), *words, "--socket", socket_path]
        return subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)

    def wait(self, what: str, check: Callable[[], str | None], timeout: float = SETTLE) -> float:
        """Poll until `check` returns None; the seconds it took. Fails with the last reason."""
        start = time.monotonic()
        reason: str | None = "not checked"
        while time.monotonic() - start < timeout:
            reason = check()
            if reason is None:
                return time.monotonic() - start
            time.sleep(0.05)
        pytest.fail(f"{what}: not within {timeout} s: {reason}")

    def agreed(self, ids: list[int], version: int, members: list[int]) -> Callable[[], str | None]:
        """Every agent of `ids`: config_version `version`, one view of `members`, quorate."""

        def check() -> str | None:
            for i, doc in self.statuses(ids).items():
                got = (doc.get("config_version"), doc.get("members"), doc.get("quorate"))
                if got != (version, members, True):
                    return f"node {i}: version/members/quorate {got}"
            return None

        return check

    def exited(self, node_id: int) -> int | None:
        process = self.agents[node_id].process
        assert process is not None
        return process.process.poll()

    def log_events(self, node_id: int, event: str) -> list[dict[str, Any]]:
        return [r for r in self.agents[node_id].log_records() if r.get("event") == event]


def _digests(cluster: Cluster, ids: list[int]) -> set[str]:
    return {cluster.config(i)["digest"] for i in ids}


def test_three_agents_agree_version_1_and_delnode_reaches_every_node_within_a_second(
    lab_factory: LabFactory, tmp_path: Path
) -> None:
    """Three agents from single files agree version 1 (one digest); `votemesh delnode n3`
    on node 1 -> version 2 with 2 members and expected votes 2 on nodes 1 and 2 within a
    second; node 3, deleted while running, learns it and stops loudly (exit 3, an error line)."""
    lab = lab_factory(["n1", "n2", "n3"])
    cluster = Cluster(lab, tmp_path / "work", 3)
    cluster.start()
    cluster.wait("version 1 on all", cluster.agreed([1, 2, 3], 1, [1, 2, 3]))
    assert len(_digests(cluster, [1, 2, 3])) == 1

    started = time.monotonic()
    out = cluster.cli(1, "delnode", "n3")
    assert out.returncode == 0, out.stderr
    assert "applied as config_version 2" in out.stdout

    def two_left() -> str | None:
        for i, doc in cluster.statuses([1, 2]).items():
            got = (doc["config_version"], doc["members"], doc["expected_votes"], doc["quorate"])
            if got != (2, [1, 2], 2, True):
                return f"node {i}: version/members/expected/quorate {got}"
        return None

    cluster.wait("2 members, expected 2", two_left, timeout=5.0)
    assert time.monotonic() - started < 1.0 + 0.5  # the CLI's own start-up is ~0.3 s
    for i in (1, 2):
        text = cluster.cli(i, "status")
        assert text.returncode == 0, text.stderr
        assert "Config Version:   2\n" in text.stdout
    cluster.wait("node 3 stops", lambda: None if cluster.exited(3) is not None else "running")
    assert cluster.exited(3) == EXIT_REMOVED
    assert cluster.log_events(3, "removed from the cluster")[0]["level"] == "error"
    assert len(_digests(cluster, [1, 2])) == 1


def test_delnode_refuses_the_local_node_and_an_unknown_one(
    lab_factory: LabFactory, tmp_path: Path
) -> None:
    """delnode of this node or of a node not configured: exit 1, one line that says what to
    do, version unchanged."""
    lab = lab_factory(["n1", "n2"])
    cluster = Cluster(lab, tmp_path / "work", 2)
    cluster.start()
    cluster.wait("version 1", cluster.agreed([1, 2], 1, [1, 2]))
    mine = cluster.cli(1, "delnode", "n1")
    assert mine.returncode == 1
    assert "is this node; run `votemesh leave`" in mine.stderr
    assert mine.stderr.count("\n") == 1
    unknown = cluster.cli(1, "delnode", "n9")
    assert unknown.returncode == 1
    assert "see `votemesh config show`" in unknown.stderr
    assert cluster.status(1)["config_version"] == 1


def test_a_minority_change_is_refused_and_after_the_heal_all_have_the_majority_version(
    lab_factory: LabFactory, tmp_path: Path
) -> None:
    """Split {1,2,3} | {4}: delnode on node 4 is refused (not quorate, with the fix); delnode
    node3 on node 1 is applied; after the heal node 4 holds the majority's version and digest,
    and node 3, cut from nothing but removed, has stopped."""
    lab = lab_factory(["n1", "n2", "n3", "n4"])
    cluster = Cluster(lab, tmp_path / "work", 4)
    cluster.start()
    cluster.wait("version 1", cluster.agreed([1, 2, 3, 4], 1, [1, 2, 3, 4]))
    lab.partition(["n1", "n2", "n3"], ["n4"])
    cluster.wait("split", cluster.agreed([1, 2, 3], 1, [1, 2, 3]))
    cluster.wait(
        "node 4 inquorate", lambda: None if not cluster.status(4)["quorate"] else "quorate"
    )
    refused = cluster.cli(4, "delnode", "n1")
    assert refused.returncode == 1
    assert "not quorate: 1 of 4 votes; use `votemesh expected 1` to force" in refused.stderr
    applied = cluster.cli(1, "delnode", "n3")
    assert applied.returncode == 0, applied.stderr
    lab.heal()
    cluster.wait("healed on version 2", cluster.agreed([1, 2, 4], 2, [1, 2, 4]))
    assert len(_digests(cluster, [1, 2, 4])) == 1
    cluster.wait("node 3 stops", lambda: None if cluster.exited(3) is not None else "running")


def test_a_deleted_node_cut_off_at_the_time_learns_it_after_the_heal(
    lab_factory: LabFactory, tmp_path: Path
) -> None:
    """Node 3 is cut off when the others delete it; once the cut heals it is told the new
    configuration (it fetches it), logs an error and stops with exit status 3."""
    lab = lab_factory(["n1", "n2", "n3"])
    cluster = Cluster(lab, tmp_path / "work", 3)
    cluster.start()
    cluster.wait("version 1", cluster.agreed([1, 2, 3], 1, [1, 2, 3]))
    lab.partition(["n1", "n2"], ["n3"])
    cluster.wait("split", cluster.agreed([1, 2], 1, [1, 2]))
    out = cluster.cli(1, "delnode", "3")
    assert out.returncode == 0, out.stderr
    time.sleep(1.0)
    assert cluster.exited(3) is None  # it cannot know yet
    lab.heal()
    cluster.wait("node 3 stops", lambda: None if cluster.exited(3) is not None else "running")
    assert cluster.exited(3) == EXIT_REMOVED
    [removed] = cluster.log_events(3, "removed from the cluster")
    assert removed["version"] == 2


def test_a_node_that_was_down_catches_up_and_a_corrupt_store_is_replaced(
    lab_factory: LabFactory, tmp_path: Path
) -> None:
    """Node 4 is stopped while node 3 is deleted; restarted, it catches up to version 2. Then
    node 2 moves to node.toml and its cluster-config is truncated: it refuses the file loudly,
    starts at version 0 and takes the cluster's version 2 (same digest), stored whole again."""
    lab = lab_factory(["n1", "n2", "n3", "n4"])
    cluster = Cluster(lab, tmp_path / "work", 4)
    cluster.start()
    cluster.wait("version 1", cluster.agreed([1, 2, 3, 4], 1, [1, 2, 3, 4]))
    agent4 = cluster.agents[4].process
    assert agent4 is not None
    agent4.process.send_signal(signal.SIGTERM)
    agent4.process.wait(timeout=10)
    cluster.wait("without 4", cluster.agreed([1, 2, 3], 1, [1, 2, 3]))
    out = cluster.cli(1, "delnode", "n3")
    assert out.returncode == 0, out.stderr
    cluster.start(4)
    cluster.wait("4 caught up", cluster.agreed([1, 2, 4], 2, [1, 2, 4]))
    assert len(_digests(cluster, [1, 2, 4])) == 1

    node2 = cluster.agents[2]
    assert node2.process is not None
    local = local_of(node2.config_path)
    node2.process.process.send_signal(signal.SIGTERM)
    node2.process.process.wait(timeout=10)
    node2.config_path.write_text(to_toml(local))  # node.toml from now on (same state dir)
    state = Path(local.state_dir)
    stored = (state / "cluster-config").read_bytes()
    (state / "cluster-config").write_bytes(stored[: len(stored) // 2])
    node2.start()
    cluster.wait("2 took the cluster's", cluster.agreed([1, 2, 4], 2, [1, 2, 4]))
    [refused] = cluster.log_events(2, "stored cluster configuration refused")
    assert refused["level"] == "error"
    assert len(_digests(cluster, [1, 2, 4])) == 1
    persisted = cluster_store.load(state)
    assert isinstance(persisted, Persist)
    assert persisted.committed.version == 2


def test_two_changes_racing_in_one_partition_one_wins_the_other_is_told_to_retry(
    lab_factory: LabFactory, tmp_path: Path
) -> None:
    """While node 1's change waits for node 4's ack (node 4 paused), node 2 asks another
    change: refused with "another configuration change is in progress; retry". Node 4 resumes,
    node 1's change is applied."""
    lab = lab_factory(["n1", "n2", "n3", "n4"])
    cluster = Cluster(lab, tmp_path / "work", 4)
    cluster.start()
    cluster.wait("version 1", cluster.agreed([1, 2, 3, 4], 1, [1, 2, 3, 4]))
    paused = cluster.agents[4].process
    assert paused is not None
    results: dict[str, subprocess.CompletedProcess[str]] = {}
    paused.process.send_signal(signal.SIGSTOP)
    try:
        first = threading.Thread(
            target=lambda: results.__setitem__("first", cluster.cli(1, "delnode", "n3"))
        )
        first.start()
        time.sleep(0.5)  # node 1's proposal is out, node 4's ack cannot come
        results["second"] = cluster.cli(2, "delnode", "n4")
    finally:
        paused.process.send_signal(signal.SIGCONT)
    first.join(timeout=30)
    assert results["second"].returncode == 1
    assert "another configuration change is in progress; retry" in results["second"].stderr
    assert results["first"].returncode == 0, results["first"].stderr
    cluster.wait("version 2", cluster.agreed([1, 2, 4], 2, [1, 2, 4]))


def test_leave_is_refused_on_a_minority_then_removes_the_node_and_its_files(
    lab_factory: LabFactory, tmp_path: Path
) -> None:
    """`votemesh leave` on node 1 (the representative) while it is cut off: refused, nothing
    removed. After the heal: the others hold version 2 without it, its agent stops with exit 0,
    its key and cluster-config are gone and its configuration file is kept."""
    lab = lab_factory(["n1", "n2", "n3"])
    cluster = Cluster(lab, tmp_path / "work", 3)
    cluster.start()
    cluster.wait("version 1", cluster.agreed([1, 2, 3], 1, [1, 2, 3]))
    agent1 = cluster.agents[1]
    local = local_of(agent1.config_path)
    leave = [str(BIN / "votemesh"), "leave", "--config", str(agent1.config_path)]

    lab.partition(["n1"], ["n2", "n3"])
    cluster.wait("node 1 alone", lambda: None if not cluster.status(1)["quorate"] else "quorate")
    refused = subprocess.run(leave, capture_output=True, text=True, timeout=30, check=False)
    assert refused.returncode == 1
    assert "not quorate" in refused.stderr
    assert all(Path(k).exists() for k in local.key_files)
    lab.heal()
    cluster.wait("healed", cluster.agreed([1, 2, 3], 1, [1, 2, 3]))

    out = subprocess.run(leave, capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    assert "left the cluster" in out.stdout
    cluster.wait("2 and 3 on version 2", cluster.agreed([2, 3], 2, [2, 3]))
    cluster.wait("node 1 exits", lambda: None if cluster.exited(1) is not None else "running")
    assert cluster.exited(1) == 0
    assert not any(Path(k).exists() for k in local.key_files)
    assert not (Path(local.state_dir) / "cluster-config").exists()
    assert agent1.config_path.exists()


def test_link_add_on_a_running_cluster_then_cutting_the_old_link_changes_no_view(
    lab_factory: LabFactory, tmp_path: Path
) -> None:
    """Each host gets a second address (198.18.1.x); `votemesh link add 1 n1=... n2=... n3=...`
    -> version 2, every agent binds link1 without a restart; then link0 is cut between every
    pair (iptables drops the link0 sources): the view and its ring id stay, all quorate."""
    lab = lab_factory(["n1", "n2", "n3"])
    cluster = Cluster(lab, tmp_path / "work", 3)
    cluster.start()
    cluster.wait("version 1", cluster.agreed([1, 2, 3], 1, [1, 2, 3]))
    second = {i: f"198.18.1.{10 + i}" for i in (1, 2, 3)}
    for i, address in second.items():
        lab[f"n{i}"].run(["ip", "addr", "add", f"{address}/24", "dev", "eth0"])
    out = cluster.cli(1, "link", "add", "1", *(f"n{i}={a}" for i, a in second.items()))
    assert out.returncode == 0, out.stderr

    def bound() -> str | None:
        for i, doc in cluster.statuses([1, 2, 3]).items():
            links = doc["runtime"]["local_links"]
            if doc["config_version"] != 2 or "1" not in links:
                return f"node {i}: version {doc['config_version']}, links {links}"
            ups = {p["node_id"]: [k["link"] for k in p["links"] if k["up"]] for p in doc["peers"]}
            if any(1 not in up for up in ups.values()):
                return f"node {i}: links up {ups}"
        return None

    cluster.wait("link1 bound and up", bound)
    before = {i: doc["ring_id"] for i, doc in cluster.statuses([1, 2, 3]).items()}
    lab.partition(["n1"], ["n2"], ["n3"])  # drops the link0 (main) addresses only
    time.sleep(4.0)  # > 2 x the lab failure timeout (1.8 s)
    after = cluster.statuses([1, 2, 3])
    assert {i: doc["ring_id"] for i, doc in after.items()} == before
    assert all(doc["quorate"] and doc["members"] == [1, 2, 3] for doc in after.values())
