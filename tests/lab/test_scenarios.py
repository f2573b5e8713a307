"""The CI subset of the scenario library (design §4.5, issue 10 "Must show"): each scenario runs
through the real runner in network namespaces (agents, qnetd, switch, probes: real processes,
real UDP and TLS) and the test fails on any verdict but valid, printing the verdict line and the
first violations. Among them the three named cases: link failover over two lab networks without
a view change, zeroconf discovery across namespaces, and the qdevice deciding a 2|2 split.

The whole subset takes about 5 minutes on a 2-core machine (each scenario at most 30 s of
timeline plus about 10 s of lab). Every run leaves its store (report.json, timeline.jsonl,
timeline.png, logs/) under pytest's tmp_path; the lab itself is gone afterwards, pass or fail.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from votemesh_lab import netns, scenario
from votemesh_lab.backends import NetnsBackend
from votemesh_lab.runner import run_scenario

CI_SUBSET = (
    "split-3-2",
    "oneway-cut",
    "majorities-ring",
    "bridge",
    "pause-5s",
    "kill-restart",
    "qdevice-2-2",
    "loss-20",
    "link-failover",
    "zeroconf-discovery",
)


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root: network namespaces"
    return netns.missing_reason("tap")


pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(_missing() is not None, reason=str(_missing())),
    pytest.mark.timeout(150),
]


Records = list[dict[str, Any]]


def timeline_of(out: Path) -> Records:
    lines = (out / "timeline.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def fault_time(records: Records, ident: str, key: str = "verified_t") -> float:
    """When a fault was verified (or `key`: applied_t)."""
    return next(float(r[key]) for r in records if r["kind"] == "fault" and r["id"] == ident)


def failover_moved_traffic_to_link1(out: Path) -> None:
    """link-failover: every node moved its peers' traffic to link1 while link0 was down (the
    `link_up active` lines), and the timeline has no view change after the cluster formed."""
    records = timeline_of(out)
    start, end = fault_time(records, "link0"), fault_time(records, "link0.undo")
    for node in (1, 2, 3):
        moved = [r for r in records if r["node"] == node and r["kind"] == "link_up"
                 and r.get("active") and r.get("link") == 1 and start <= r["t"] <= end]  # fmt: skip
        assert moved, f"n{node} never moved traffic to link1"
    t0 = next(r for r in records if r["kind"] == "run")["t0"]
    views = [r for r in records if r["kind"] == "view_installed" and r["t"] > t0 + 0.5]
    assert views == []


def discovery_without_static_peers(out: Path) -> None:
    """zeroconf-discovery: the nodes ran with discovery on and no [[peer]] table at all."""
    for node in (1, 2, 3):
        config = (out / "logs" / f"n{node}" / "agent.toml").read_text()
        assert "discovery = true" in config
        assert "[[peer]]" not in config


def qnetd_decided_the_split(out: Path) -> None:
    """qdevice-2-2: after the split the qnetd ACKed nodes 1 and 2 and NACKed 3 and 4."""
    records = timeline_of(out)
    start, end = fault_time(records, "split"), fault_time(records, "split.undo", "applied_t")
    last: dict[int, str] = {}
    for r in records:
        if r["kind"] == "qnetd_vote" and start <= r["t"] <= end:
            last[r["to"]] = r["vote"]
    assert last == {1: "ack", 2: "ack", 3: "nack", 4: "nack"}


MUST_SHOW: dict[str, Callable[[Path], None]] = {
    "link-failover": failover_moved_traffic_to_link1,
    "zeroconf-discovery": discovery_without_static_peers,
    "qdevice-2-2": qnetd_decided_the_split,
}


@pytest.mark.parametrize("name", CI_SUBSET)
def test_library_scenario_is_valid(name: str, tmp_path: Path) -> None:
    """The scenario's run is judged valid: every checked property and every [[expect]] holds,
    the lab made every fault (verified), the cluster formed; the store has its files."""
    s = scenario.load(scenario.find(name))
    out = tmp_path / name
    status, line = run_scenario(s, NetnsBackend(), s.seed or 0, out, log=lambda _text: None)
    report = json.loads((out / "report.json").read_text())
    first = report.get("violations", [])[:3] + report.get("unknown", [])[:3]
    assert status == "valid", f"{line}\n{json.dumps(first, indent=1)}"
    assert report["verdict"] == "valid"
    for name_ in ("timeline.jsonl", "timeline.png", "scenario.toml"):
        assert (out / name_).stat().st_size > 0
    assert any((out / "logs").rglob("agent.log"))
    assert all(e["status"] == "met" for e in report["expectations"])
    if name in MUST_SHOW:
        MUST_SHOW[name](out)
