"""Many real agents on loopback (issue 11): one view, a quiet idle window, kill -9, rejoin.

24 `votemesh-agent` processes (LAN preset: 0.1 s heartbeats, failure timeout 0.65 s) on
127.0.0.1-24 with static peers, started at once. Functional, not timing: the cluster forms ONE
quorate view of all 24; over a 20 s idle window no agent installs another view (every ring id
unchanged, no `view_installed` logged); after `kill -9` of one agent all 23 survivors install
the same new view without it; restarted, it is let back in and all 24 share one view again.
The timing figures at 5/16/32 agents are `python -m tests.bench scale`'s.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.agent.live_agents import LAN_TIMING, AgentCluster

AGENTS = 24
IDLE = 20.0
FORM = 90.0
"""Seconds for 24 Python processes to start and form on 2 shared cores."""
VICTIM = 7


def rings(cluster: AgentCluster, nodes: list[int]) -> dict[int, tuple[int, ...]]:
    """Each agent's ring id (status document)."""
    docs = cluster.statuses(nodes)
    assert all(doc is not None for doc in docs.values()), "an agent stopped answering"
    return {n: tuple(doc["ring_id"]) for n, doc in docs.items() if doc is not None}


def views_logged(cluster: AgentCluster, nodes: list[int]) -> int:
    """`view_installed` lines in the agents' logs so far."""
    return sum(
        1
        for n in nodes
        for record in cluster.agents[n].log_records()
        if record.get("event") == "view_installed"
    )


@pytest.mark.timeout(240)
def test_24_agents_one_view_quiet_idle_kill_and_rejoin(tmp_path: Path) -> None:
    cluster = AgentCluster(tmp_path, AGENTS, timing=LAN_TIMING)
    everyone = list(range(1, AGENTS + 1))
    survivors = [n for n in everyone if n != VICTIM]
    started = time.monotonic()
    try:
        cluster.start_all(together=True)
        cluster.wait_for(lambda: cluster.one_view(everyone), FORM, "one view of 24", 0.25)
        formed = time.monotonic() - started

        before, logged = rings(cluster, everyone), views_logged(cluster, everyone)
        time.sleep(IDLE)
        assert rings(cluster, everyone) == before, "a view changed in the idle window"
        assert views_logged(cluster, everyone) == logged
        assert cluster.one_view(everyone)

        idle_end = time.monotonic()
        cluster.kill(VICTIM)
        cluster.wait_for(lambda: cluster.one_view(survivors), 30, "23 survivors' view", 0.1)
        killed = time.monotonic()
        after_kill = rings(cluster, survivors)
        assert len(set(after_kill.values())) == 1
        assert next(iter(after_kill.values())) != before[1], "the survivors' view is not new"

        cluster.start(VICTIM)
        restarted = time.monotonic()
        cluster.wait_for(lambda: cluster.one_view(everyone), 60, "24 again after restart", 0.25)
        rejoined = time.monotonic()
        assert len(set(rings(cluster, everyone).values())) == 1
    finally:
        cluster.close()
    print(
        f"\n24 agents: formed in {formed:.1f} s, idle window ends at {idle_end - started:.1f} s, "
        f"survivors' view {killed - idle_end:.1f} s after the kill, restart "
        f"{restarted - killed:.1f} s, one view again {rejoined - restarted:.1f} s later; "
        f"whole test {time.monotonic() - started:.1f} s"
    )
