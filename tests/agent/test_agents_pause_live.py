"""A real agent stopped with SIGSTOP and continued (design §3.7): it revalidates on waking.

Three `votemesh-agent` processes on 127.0.0.1-3 (lab timing: failure timeout 1.8 s). Agent 3 is
stopped for 5 s while the other two re-form; the heartbeats queued in its socket buffer during
the pause must not bring its old view back, make it announce quorum or raise clock_skew.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

from tests.agent.live_agents import AgentCluster

SETTLE = 30.0  # seconds allowed for a view to form
PAUSE = 5.0  # seconds agent 3 stays stopped (well past the 1.8 s failure timeout)


def test_a_paused_agent_does_not_announce_its_old_view(tmp_path: Path) -> None:
    """SIGSTOP agent 3 for 5 s, then SIGCONT: agents 1 and 2 form {1, 2} meanwhile; agent 3
    logs `stalled`, no `clock_skew`, never re-installs its old ring nor gains quorum before it
    installed a new one, and all three end in one new view."""
    cluster = AgentCluster(tmp_path, 3)
    paused = cluster.agents[3]
    try:
        cluster.start_all()
        cluster.wait_for(lambda: cluster.one_view([1, 2, 3]), SETTLE, "a view of 3")
        before = paused.status()
        assert before is not None
        old_ring = before["ring_id"]
        seen = len(paused.log_records())
        assert paused.process is not None
        paused.process.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            cluster.wait_for(lambda: cluster.one_view([1, 2]), SETTLE, "a view of 1, 2")
            time.sleep(max(0.0, stopped + PAUSE - time.monotonic()))
        finally:
            paused.process.send_signal(signal.SIGCONT)
        continued = time.monotonic()
        cluster.wait_for(lambda: cluster.one_view([1, 2, 3]), SETTLE, "the view of 3 again")
        print(
            f"paused agent back in a view of 3 {time.monotonic() - continued:.2f} s after SIGCONT"
        )
        after: list[dict[str, Any]] = paused.log_records()[seen:]
        kinds = [r["event"] for r in after]
        assert "clock_skew" not in kinds, after
        views = [r for r in after if r["event"] == "view_installed"]
        assert views, after
        assert all(v["ring_id"] != old_ring for v in views), views
        first_view = kinds.index("view_installed")
        assert "quorum_gained" not in kinds[:first_view], after
        assert views[0]["members"] == [3], "its singleton view first: the old one is gone"
        assert "stalled" in kinds[:first_view], after
        final = paused.status()
        assert final is not None
        assert final["ring_id"] != old_ring
    finally:
        cluster.close()
