"""`/metrics` and `/healthz` on both sides of a real network split (namespace lab, issue 9 item 4).

Three agents in lab hosts n1-n3 (bridge, per-run namespace names, removed after the test), each
with `[metrics]` on its lab address. The test scrapes every node from inside its namespace
(curl), partitions {n1, n2} | {n3} with the lab's firewall rules, and heals: the majority side
stays quorate with 2 members, the cut-off node shows `votemesh_quorate 0` and `/healthz` 503,
and after the heal all three are quorate with 3 members and more view changes than before.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from votemesh_lab import netns
from votemesh_lab.agents import LabAgent, agent_config
from votemesh_lab.netns import Host, LabFactory, NotYetError

from agent.runtime.keys import keygen
from tests.agent.test_metrics_live import Series, parse_exposition

SETTLE = 30.0
METRICS_PORT = 9466  # each host is its own network namespace: the default port is free


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root: network and mount namespaces, iptables inside them"
    if shutil.which("curl") is None:
        return "needs curl (scrapes from inside the namespaces)"
    return netns.missing_reason()


pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(_missing() is not None, reason=str(_missing())),
]


def get(host: Host, path: str) -> tuple[int, str]:
    """(status code, body) of GET `path` on the host's metrics address, from inside it."""
    url = f"http://{host.address}:{METRICS_PORT}{path}"
    result = host.run(["curl", "-sS", "-m", "5", "-w", "\n%{http_code}", url], check=False)
    body, _, code = result.stdout.rpartition("\n")
    return (int(code) if code.isdigit() else 0), body


def scrape(host: Host) -> Series:
    code, body = get(host, "/metrics")
    return parse_exposition(body) if code == 200 else {}


def picture(
    hosts: dict[int, Host], want: dict[int, tuple[float, float, int]]
) -> Callable[[], bool]:
    """A probe: per node (votemesh_quorate, votemesh_members, /healthz code) as wanted."""

    def probe() -> bool:
        for node_id, (quorate, members, health) in want.items():
            series = scrape(hosts[node_id])
            got = (
                series.get(("votemesh_quorate", ())),
                series.get(("votemesh_members", ())),
                get(hosts[node_id], "/healthz")[0],
            )
            if got != (quorate, members, health):
                raise NotYetError(f"n{node_id}: quorate/members/healthz {got}")
        return True

    return probe


def view_changes(host: Host) -> float:
    return scrape(host)[("votemesh_view_changes_total", ())]


@pytest.mark.timeout(120)
def test_split_and_heal_seen_on_both_sides(lab_factory: LabFactory, tmp_path: Path) -> None:
    """{n1,n2} | {n3}: n1 and n2 scrape quorate 1 with 2 members and /healthz 200, n3 quorate 0
    with 1 member and /healthz 503 (`inquorate`); its link_up to n1 is 0. Healed: all three
    quorate 1 with 3 members, /healthz 200, and every node counted more view changes."""
    lab = lab_factory(["n1", "n2", "n3"])
    key = tmp_path / "cluster.key"
    keygen(key)
    agents = [LabAgent(i, lab[f"n{i}"], tmp_path / f"n{i}") for i in (1, 2, 3)]
    for agent in agents:
        agent.workdir.mkdir(parents=True)
        text = agent_config(agent, [p for p in agents if p is not agent], key)
        agent.config_path.write_text(
            f'{text}\n[metrics]\nhost = "{agent.host.address}"\nport = {METRICS_PORT}\n'
        )
        agent.start()
    hosts = {a.node_id: a.host for a in agents}

    netns.wait_until(
        picture(hosts, dict.fromkeys(hosts, (1.0, 3.0, 200))), timeout=SETTLE, what="one view"
    )
    before = {i: view_changes(h) for i, h in hosts.items()}

    lab.partition(["n1", "n2"], ["n3"])
    split = {1: (1.0, 2.0, 200), 2: (1.0, 2.0, 200), 3: (0.0, 1.0, 503)}
    netns.wait_until(picture(hosts, split), timeout=SETTLE, what="the split in /metrics")
    assert get(hosts[3], "/healthz") == (503, "inquorate\n")
    cut = scrape(hosts[3])
    assert cut[("votemesh_link_up", (("link", "0"), ("node", "n1"), ("node_id", "1")))] == 0
    assert cut[("votemesh_member_up", (("node", "n1"), ("node_id", "1")))] == 0
    assert cut[("votemesh_events_total", (("kind", "quorum_lost"),))] >= 1

    lab.heal()
    netns.wait_until(
        picture(hosts, dict.fromkeys(hosts, (1.0, 3.0, 200))), timeout=SETTLE, what="healed"
    )
    after = {i: view_changes(h) for i, h in hosts.items()}
    assert all(after[i] > before[i] for i in hosts), (before, after)
