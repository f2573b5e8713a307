"""`votemesh expected` on real agents (127.0.0.x, static peers): refused or cluster-wide.

Issue 12 item 6 was seen on real processes: `votemesh expected 9` on one of three agents left
all three inquorate for good, and a wait_for_all cluster missing a node could not be brought up
with `expected`. Item 12: `expected 18446744073709551616` crashed the agent; `expected_votes =
1` gave no warning.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from tests.agent.live_agents import BIN, AgentCluster, control_request

SETTLE = 30.0


def expected(cluster: AgentCluster, node_id: int, value: str) -> subprocess.CompletedProcess[str]:
    """`votemesh expected VALUE --socket ...` on one agent."""
    return subprocess.run(
        [
            str(BIN / "votemesh"),
            "expected",
            value,
            "--socket",
            str(cluster.agents[node_id].control_socket),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def numbers(cluster: AgentCluster, node_ids: list[int]) -> dict[int, tuple[Any, ...] | None]:
    """(quorate, expected_votes) per agent."""
    docs = cluster.statuses(node_ids)
    return {i: (d["quorate"], d["expected_votes"]) if d else None for i, d in docs.items()}


def test_expected_refused_or_applied_cluster_wide(tmp_path: Path) -> None:
    """`expected 9` on one of three quorate agents is refused in one line (exit 1) and changes
    nothing anywhere; an out-of-range value sent straight to the control socket is refused and
    the agent lives; with node 3 stopped, `expected 2` on node 1 reaches node 2 as well, and
    `expected reset` brings both back to the configured 3, quorate throughout."""
    cluster = AgentCluster(tmp_path, 3)
    try:
        cluster.start_all()
        cluster.wait_for(lambda: cluster.one_view([1, 2, 3]), SETTLE, "a view of 3")
        refused = expected(cluster, 1, "9")
        assert refused.returncode == 1, refused
        assert refused.stderr.count("\n") == 1
        assert "use at most 5" in refused.stderr
        assert "Traceback" not in refused.stderr
        ok, body = control_request(cluster.agents[2].control_socket, f"expected {2**64}")
        assert not ok
        assert "from 1 to 1024000" in body
        cluster.wait_for(
            lambda: numbers(cluster, [1, 2, 3]) == dict.fromkeys((1, 2, 3), (True, 3)),
            SETTLE,
            "all three still quorate with expected votes 3",
        )
        assert all(cluster.agents[i].running for i in (1, 2, 3))
        events = [r["event"] for r in cluster.agents[1].log_records()]
        assert "expected_votes_refused" in events

        assert cluster.stop(3) == 0
        cluster.wait_for(lambda: cluster.one_view([1, 2]), SETTLE, "a view of 2")
        applied = expected(cluster, 1, "2")
        assert applied.returncode == 0, applied.stderr
        cluster.wait_for(
            lambda: numbers(cluster, [1, 2]) == {1: (True, 2), 2: (True, 2)},
            SETTLE,
            "expected votes 2 on both members",
        )
        reset = expected(cluster, 2, "reset")
        assert reset.returncode == 0, reset.stderr
        cluster.wait_for(
            lambda: numbers(cluster, [1, 2]) == {1: (True, 3), 2: (True, 3)},
            SETTLE,
            "expected votes 3 again on both",
        )
    finally:
        cluster.close()


def test_wait_for_all_cluster_missing_a_node_comes_up_with_expected(tmp_path: Path) -> None:
    """3 agents with wait_for_all, node 3 never started: 1 and 2 wait; `votemesh expected 2`
    on node 1 makes both quorate (the main use of `pvecm expected`)."""
    cluster = AgentCluster(tmp_path, 3, extra="[quorum]\nwait_for_all = true")
    try:
        cluster.start(1)
        cluster.start(2)

        def waiting() -> bool:
            docs = cluster.statuses([1, 2])
            return all(
                d is not None and d["members"] == [1, 2] and "WaitForAllStatus" in d["flags"]
                for d in docs.values()
            )

        cluster.wait_for(waiting, SETTLE, "1 and 2 in one view, waiting for all")
        assert numbers(cluster, [1, 2]) == {1: (False, 3), 2: (False, 3)}
        result = expected(cluster, 1, "2")
        assert result.returncode == 0, result.stderr
        cluster.wait_for(
            lambda: numbers(cluster, [1, 2]) == {1: (True, 2), 2: (True, 2)},
            SETTLE,
            "both quorate with expected votes 2",
        )
    finally:
        cluster.close()


def test_expected_votes_one_is_warned_at_start(tmp_path: Path) -> None:
    """`expected_votes = 1` on a 3-node configuration: each isolated node would be quorate;
    the agent says so at start, as a warning naming the setting."""
    cluster = AgentCluster(tmp_path, 3, extra="[quorum]\nexpected_votes = 1")
    try:
        agent = cluster.start(1)
        records = agent.log_records()
        warnings = [r for r in records if r.get("event") == "unsafe quorum setting"]
        assert warnings, records
        assert warnings[0]["level"] == "warning"
        assert "quorum is 1" in warnings[0]["problem"]
    finally:
        cluster.close()
