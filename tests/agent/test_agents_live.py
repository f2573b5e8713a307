"""Real `votemesh-agent` processes on 127.0.0.1-127.0.0.5: views, kill -9, rejoin, shutdown."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.agent.live_agents import BIN, AgentCluster

STATUS_KEYS = {
    "cluster", "node_id", "node_name", "ring_id", "members", "quorate", "expected_votes",
    "total_votes", "quorum", "flags", "qdevice", "peers",
}  # fmt: skip
SETTLE = 30.0  # seconds allowed for a view to form (lab timing: failure timeout 1.8 s)


def cli_status(cluster: AgentCluster, node_id: int) -> dict[str, Any]:
    """`votemesh status --json --socket PATH` of one agent, parsed."""
    result = subprocess.run(
        [
            str(BIN / "votemesh"),
            "status",
            "--json",
            "--socket",
            str(cluster.agents[node_id].control_socket),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def test_three_agents_form_one_quorate_view(tmp_path: Path) -> None:
    """Three agents with static peers install one view of all three with the same ring id, as
    `votemesh status --json` shows with every documented key; SIGTERM stops one cleanly and
    its Leave lets the other two re-form without waiting for the failure timeout."""
    cluster = AgentCluster(tmp_path, 3)
    try:
        cluster.start_all()
        cluster.wait_for(lambda: cluster.one_view([1, 2, 3]), SETTLE, "a view of 3")
        docs = [cli_status(cluster, i) for i in (1, 2, 3)]
        assert len({tuple(d["ring_id"]) for d in docs}) == 1
        for i, doc in enumerate(docs, start=1):
            assert set(doc) >= STATUS_KEYS
            assert (doc["node_id"], doc["members"], doc["quorate"]) == (i, [1, 2, 3], True)
            assert (doc["expected_votes"], doc["total_votes"], doc["quorum"]) == (3, 3, 2)
            assert doc["schema"] == 1
            assert doc["qdevice"]["configured"] is False
            assert all(p["links"] and p["links"][0]["up"] for p in doc["peers"])
            assert doc["runtime"]["datagrams"]["dropped"] == {}
        agent = cluster.agents[3]
        assert cluster.stop(3) == 0
        assert agent.log_records()[-1]["event"] == "agent stopped"
        assert not agent.control_socket.exists()
        # its Leave: the other two re-form on it, before any suspicion of node 3 could arise
        cluster.wait_for(lambda: cluster.one_view([1, 2]), SETTLE, "a view of 2")
        for survivor in (cluster.agents[1], cluster.agents[2]):
            records = survivor.log_records()
            kinds = [(r["event"], r.get("peer"), r.get("members")) for r in records]
            left = kinds.index(("peer_left", 3, None))
            after = [k for k in kinds[left:] if k[0] == "view_installed"]
            assert after[0] == ("view_installed", None, [1, 2])
            three = max(i for i, k in enumerate(kinds) if k == ("view_installed", None, [1, 2, 3]))
            assert ("peer_suspected", 3, None) not in kinds[three:]
        time.sleep(2.0)  # past the suspicion time (0.9 s): a left node is not suspected later
        for survivor in (cluster.agents[1], cluster.agents[2]):
            late = [(r["event"], r.get("peer")) for r in survivor.log_records()]
            assert not {("peer_suspected", 3), ("link_down", 3), ("peer_lost", 3)} & set(
                late[late.index(("peer_left", 3)) :]
            )
            assert records[left]["reason"] == "node 3 left: shutdown"
    finally:
        cluster.close()


def test_five_agents_survive_kill_and_rejoin(tmp_path: Path) -> None:
    """Five agents form a view of 5; after `kill -9` of one the four survivors install a view of
    4 and never report inquorate on the way; the restarted node (a larger incarnation) rejoins
    and all five share one view again."""
    cluster = AgentCluster(tmp_path, 5)
    survivors = [1, 2, 3, 4]
    try:
        cluster.start_all()
        cluster.wait_for(lambda: cluster.one_view([1, 2, 3, 4, 5]), SETTLE, "a view of 5")
        first = cluster.agents[5].status()
        assert first is not None
        inquorate: list[tuple[int, Any]] = []

        def survivors_agree() -> bool:
            for node_id, doc in cluster.statuses(survivors).items():
                if doc is not None and not doc["quorate"]:
                    inquorate.append((node_id, doc["ring_id"]))
            return cluster.one_view(survivors)

        cluster.kill(5)
        cluster.wait_for(survivors_agree, SETTLE, "survivors' view of 4")
        assert inquorate == []
        ring4 = {tuple(d["ring_id"]) for d in cluster.statuses(survivors).values() if d}
        assert len(ring4) == 1
        assert ring4 != {tuple(first["ring_id"])}
        for agent in (cluster.agents[i] for i in survivors):
            kinds = [r["event"] for r in agent.log_records()]
            assert "quorum_lost" not in kinds
            assert "peer_lost" in kinds

        cluster.start(5)
        cluster.wait_for(lambda: cluster.one_view([1, 2, 3, 4, 5]), SETTLE, "the view of 5 again")
        again = cluster.agents[5].status()
        assert again is not None
        assert again["incarnation"] > first["incarnation"]
        assert tuple(again["ring_id"]) not in ring4 | {tuple(first["ring_id"])}
    finally:
        cluster.close()
