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
from pathlib import Path

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
