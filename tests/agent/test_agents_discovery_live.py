"""Agents find each other by zeroconf alone: real multicast on a lab bridge, no static peers.

Three `votemesh-agent` processes, one per network namespace (bridge in its own namespace, no
route out), configured with their own link address only. They announce `_votemesh._udp.local.`,
learn each other's addresses, and form one quorate view of three.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from votemesh_lab import netns
from votemesh_lab.netns import LabFactory, TrackedProcess

from agent.runtime.keys import keygen
from tests.agent.live_agents import BIN, control_request

PORT = 5407


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root: network namespaces for real multicast"
    return netns.missing_reason()


pytestmark = [pytest.mark.root, pytest.mark.skipif(_missing() is not None, reason=str(_missing()))]


@pytest.fixture
def lab_factory(tmp_path: Path) -> Iterator[LabFactory]:
    """Labs for one test; every namespace and process is gone afterwards, pass or fail."""
    with LabFactory(tmp_path / "lab") as factory:
        yield factory


def agent_toml(node_id: int, name: str, address: str, key: Path) -> str:
    return f"""
cluster_name = "disco"
node_id = {node_id}
node_name = "{name}"
key_files = ["{key}"]
state_dir = "state"
control_socket = "agent.sock"
discovery = true

[timing]
preset = "lab"

[quorum]
expected_votes = 3

[[link]]
index = 0
address = "{address}"
port = {PORT}
"""


def status(workdir: Path, process: TrackedProcess) -> dict[str, Any]:
    assert process.alive(), process.log_tail()
    try:
        ok, body = control_request(workdir / "agent.sock", "status")
    except OSError:
        return {}
    result: dict[str, Any] = json.loads(body) if ok else {}
    return result


@pytest.mark.timeout(90)
def test_agents_discover_each_other_and_form_one_quorate_view(
    lab_factory: LabFactory, tmp_path: Path
) -> None:
    """No [[peer]] entries anywhere: within seconds all three agents are in one view {1,2,3}
    with the same ring id, quorate with 3 of 3 votes, having learned the addresses by mDNS."""
    lab = lab_factory(["n1", "n2", "n3"])
    key = tmp_path / "cluster.key"
    keygen(key)
    agents: list[tuple[Path, TrackedProcess]] = []
    for i in (1, 2, 3):
        host = lab[f"n{i}"]
        workdir = tmp_path / f"n{i}"
        workdir.mkdir()
        config = workdir / "agent.toml"
        config.write_text(agent_toml(i, host.name, host.address, key))
        process = host.start([str(BIN / "votemesh-agent"), "--config", str(config)], label="agent")
        agents.append((workdir, process))
    deadline = time.monotonic() + 45
    docs: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        docs = [status(w, p) for w, p in agents]
        if (
            all(d.get("members") == [1, 2, 3] and d.get("quorate") for d in docs)
            and len({tuple(d["ring_id"]) for d in docs}) == 1
        ):
            break
        time.sleep(0.25)
    else:
        raise AssertionError(f"no common quorate view of 3: {[d.get('members') for d in docs]}")
    for doc in docs:
        assert doc["total_votes"] == doc["expected_votes"] == 3
        assert {p["node_id"] for p in doc["peers"]} == {1, 2, 3} - {doc["node_id"]}
