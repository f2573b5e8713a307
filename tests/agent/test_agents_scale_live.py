"""Many real agents on loopback (issue 11): one view, a quiet idle window, kill -9, rejoin.

24 `votemesh-agent` processes (LAN preset, sized to 24 nodes: 0.14 s heartbeats, failure
timeout 0.89 s, design §3.14) on 127.0.0.1-24 with static peers, started at once. Functional,
not timing: the cluster forms ONE quorate view of all 24, every agent at the sized interval;
over a 20 s idle window no agent installs another view (every ring id unchanged, no
`view_installed` logged); after `kill -9` of one agent all 23 survivors install the same new
view without it; restarted, it is let back in and all 24 share one view again.
The timing figures at 5/16/32 agents are `python -m tests.bench scale`'s.

24 agents need about a core of CPU (before issue 11's work: ~4.5 % each) and a sub-second failure
timeout does not survive a machine whose run queue is many times its cores: the test is skipped,
with the load in the reason, when the 1-minute load average is above 4 per CPU (seen at 30-50
on the 2-core development machine shared by several sessions, where agents starved for seconds).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.agent.live_agents import LAN_TIMING, AgentCluster

AGENTS = 24
IDLE = 20.0
FORM = 90.0
"""Seconds for 24 Python processes to start and form on 2 shared cores."""
VICTIM = 7
LOAD_PER_CPU = 4.0


def overloaded() -> str | None:
    """Why this machine cannot keep 24 agents' heartbeats on time now, or None."""
    cpus = os.cpu_count() or 1
    load = os.getloadavg()[0]
    if load > LOAD_PER_CPU * cpus:
        return f"load average {load:.1f} on {cpus} CPUs: 24 agents' heartbeats would starve"
    return None


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
    busy = overloaded()
    if busy:
        pytest.skip(busy)
    cluster = AgentCluster(tmp_path, AGENTS, timing=LAN_TIMING)
    everyone = list(range(1, AGENTS + 1))
    survivors = [n for n in everyone if n != VICTIM]
    started = time.monotonic()
    try:
        cluster.start_all(together=True)
        cluster.wait_for(lambda: cluster.one_view(everyone), FORM, "one view of 24", 0.5)
        formed = time.monotonic() - started

        def sized() -> bool:  # every agent runs at the interval sized to 24 nodes (a status
            docs = cluster.statuses().values()  # not answered under load is asked again)
            return {(s or {}).get("heartbeat_interval_s") for s in docs} == {0.14}

        cluster.wait_for(sized, 30, "heartbeat_interval_s 0.14 on every agent", 0.5)

        before, logged = rings(cluster, everyone), views_logged(cluster, everyone)
        time.sleep(IDLE)
        assert rings(cluster, everyone) == before, "a view changed in the idle window"
        assert views_logged(cluster, everyone) == logged
        assert cluster.one_view(everyone)

        idle_end = time.monotonic()
        cluster.kill(VICTIM)
        cluster.wait_for(lambda: cluster.one_view(survivors), 30, "23 survivors' view", 0.5)
        killed = time.monotonic()
        after_kill = rings(cluster, survivors)
        assert len(set(after_kill.values())) == 1
        assert next(iter(after_kill.values())) != before[1], "the survivors' view is not new"

        cluster.start(VICTIM)
        restarted = time.monotonic()
        cluster.wait_for(lambda: cluster.one_view(everyone), 60, "24 again after restart", 0.5)
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
