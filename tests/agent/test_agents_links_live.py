"""Redundant links on real agents (design §3.6): losing the active link is not a membership
change.

Three `votemesh-agent` processes in one network namespace this test creates (its own loopback,
no other interface, so no route anywhere): link0 (priority 1) on 127.0.0.i and link1
(priority 0) on 127.0.1.i. Cuts are iptables DROP rules inside that namespace, by source and
destination address. Lab timing: failure timeout 1.8 s, failover lease 1.2 s.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.agent.live_agents import BIN, LAB_TIMING, AgentCluster, LiveAgent

SETTLE = 30.0  # seconds allowed for a view to form or traffic to move
QUIET = 4.0  # seconds watched after each cut for a view change (over 2 failure timeouts)


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root: a network namespace and iptables rules"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    return None


pytestmark = [pytest.mark.root, pytest.mark.skipif(_missing() is not None, reason=str(_missing()))]


def run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=30)


@pytest.fixture
def namespace() -> Iterator[str]:
    """A fresh network namespace with only loopback up; deleted afterwards, pass or fail."""
    name = f"vmlk-{secrets.token_hex(3)}"
    run("ip", "netns", "add", name)
    try:
        run("ip", "-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=30)


class TwoLinkCluster(AgentCluster):
    """AgentCluster whose agents run inside `netns` with link0 on 127.0.0.i and link1 on
    127.0.1.i (same port), every peer on both links."""

    def __init__(self, workdir: Path, count: int, netns: str) -> None:
        self.netns = netns
        super().__init__(workdir, count, LAB_TIMING)

    def config_text(self, agent: LiveAgent, timing: str, extra: str) -> str:
        text = super().config_text(agent, timing, extra)
        link0 = f'[[link]]\nindex = 0\naddress = "{agent.address}"\nport = {agent.port}'
        link1 = f'[[link]]\nindex = 1\naddress = "{self.link1(agent)}"\nport = {agent.port}'
        return text.replace(link0, f"{link0}\npriority = 1\n{link1}\npriority = 0")

    def peer_text(self, agent: LiveAgent, other: LiveAgent) -> str:
        text = super().peer_text(agent, other)
        return f'{text}\nlink1 = "{self.link1(other)}:{other.port}"'

    @staticmethod
    def link1(agent: LiveAgent) -> str:
        return f"127.0.1.{agent.node_id}"

    def start(self, node_id: int, *extra_args: str) -> LiveAgent:
        agent = self.agents[node_id]
        args = ["ip", "netns", "exec", self.netns, str(BIN / "votemesh-agent")]
        args += ["--config", str(agent.config_path), *extra_args]
        with agent.log_path.open("ab") as log:  # `ip netns exec` execs: the PID is the agent's
            agent.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        self.wait_for(lambda: agent.status() is not None or not agent.running, 20, "control")
        if not agent.running:
            raise RuntimeError(f"agent {node_id} exited: {agent.log_path.read_text()[-2000:]}")
        return agent

    def cut(self, src: int, dst: int, link: int) -> None:
        """Drop every datagram from agent src to agent dst on `link`."""
        address = (lambda a: a.address) if link == 0 else self.link1
        source, target = address(self.agents[src]), address(self.agents[dst])
        run("ip", "netns", "exec", self.netns, "iptables", "-A", "INPUT", "-p", "udp",
            "-s", source, "-d", target, "-j", "DROP")  # fmt: skip

    def on_link(self, node: int, peer: int, link: int) -> Callable[[], bool]:
        """A check: `node` sends its heartbeats to `peer` on `link`."""
        return lambda: self.active_link(node, peer) == link

    def active_link(self, node: int, peer: int) -> int | None:
        doc = self.agents[node].status()
        return (
            None
            if doc is None
            else next(p["active_link"] for p in doc["peers"] if p["node_id"] == peer)
        )


def failover_time(agent: LiveAgent, peer: int, wall: float) -> float:
    """Seconds from `wall` (time.time()) to the agent's log line moving `peer` to link1."""
    for r in agent.log_records():
        if r["event"] == "link_up" and r.get("active") and r.get("peer") == peer:
            at = datetime.fromisoformat(r["timestamp"]).timestamp()
            if at >= wall and r.get("link") == 1:
                return at - wall
    return float("nan")


def membership_records(agent: LiveAgent, since: int) -> list[dict[str, Any]]:
    """Its view and quorum lines after the first `since` log records."""
    kinds = {"view_installed", "quorum_lost", "quorum_gained"}
    return [r for r in agent.log_records()[since:] if r["event"] in kinds]


def test_losing_the_active_link_is_not_a_membership_change(tmp_path: Path, namespace: str) -> None:
    """link0 cut between 1 and 2 both ways, then 1 -> 3 and 3 -> 2 one way: every time the
    affected agents move their heartbeats to link1, and no agent installs a view or logs a
    quorum change. Then link1 between 1 and 2 is cut too: the pair loses each other and agent
    1 installs a view without 2."""
    cluster = TwoLinkCluster(tmp_path, 3, namespace)
    try:
        cluster.start_all()
        cluster.wait_for(lambda: cluster.one_view([1, 2, 3]), SETTLE, "a view of 3")
        ring = cluster.agents[1].status()["ring_id"]  # type: ignore[index]
        pairs = [(a, b) for a in (1, 2, 3) for b in (1, 2, 3) if a != b]
        cluster.wait_for(  # a start-up failover comes back after two answered probe rounds
            lambda: all(cluster.active_link(a, b) == 0 for a, b in pairs), SETTLE, "link0"
        )
        seen = {i: len(a.log_records()) for i, a in cluster.agents.items()}
        steps = [
            ([(1, 2), (2, 1)], [(1, 2), (2, 1)]),  # both ways: both move
            ([(1, 3)], [(1, 3)]),  # one way: at least the sender moves
            ([(3, 2)], [(3, 2)]),
        ]
        for cuts, movers in steps:
            wall = time.time()
            for src, dst in cuts:
                cluster.cut(src, dst, 0)
            for a, b in movers:
                cluster.wait_for(cluster.on_link(a, b, 1), SETTLE, f"{a}->{b} on link1")
            time.sleep(QUIET)
            for a, b in movers:
                moved = failover_time(cluster.agents[a], b, wall)
                print(f"link0 cut {cuts}: agent {a} moved to link1 for {b} after {moved:.3f} s")
            for i, agent in cluster.agents.items():
                assert membership_records(agent, seen[i]) == [], f"agent {i} after {cuts}"
            assert cluster.one_view([1, 2, 3])
            assert cluster.agents[1].status()["ring_id"] == ring  # type: ignore[index]
        cut_at = time.monotonic()
        cluster.cut(1, 2, 1)
        cluster.cut(2, 1, 1)
        cluster.wait_for(
            lambda: 2 not in (cluster.agents[1].status() or {"members": [2]})["members"],
            SETTLE,
            "agent 1 without agent 2",
        )
        lost_after = time.monotonic() - cut_at
        print(f"standby cut too: agent 1 dropped agent 2 after {lost_after:.2f} s (timeout 1.8 s)")
        left = [r for r in membership_records(cluster.agents[1], seen[1]) if r.get("left")]
        assert left
        assert left[0]["left"] == [2]
    finally:
        cluster.close()
