"""The agent demo (`make demo`, `python -m votemesh_lab.demo`) runs end to end.

It runs as a subprocess, as `make demo` runs it: the lab, votemesh-qnetd and four agents, every
phase (healthy, split 2|2, heal, loss, kill -9 and rejoin, SIGTERM and rejoin), cleanup. Each
phase fails the demo (non-zero exit) when its picture does not show within its timeout, so the
exit status pins the pictures; the output must carry every phase heading and the summary.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from votemesh_lab import netns
from votemesh_lab.demo import HEADINGS, missing


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root: network namespaces and a tap switch"
    return missing(device=True)


pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(_missing() is not None, reason=str(_missing())),
]


@pytest.mark.timeout(170)
def test_agent_demo_runs_every_phase_and_cleans_up() -> None:
    """`python -m votemesh_lab.demo` exits 0, prints each phase's heading and a summary, and
    leaves none of its namespaces behind."""
    result = subprocess.run(
        [sys.executable, "-m", "votemesh_lab.demo"],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=160,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    for heading in HEADINGS:
        assert f"--- {heading}" in output, f"no heading {heading!r} in:\n{output[-4000:]}"
    assert "summary: " in output
    assert "lab removed" in output
    lab_id = re.search(r"^lab ([0-9a-f]{6}):", output, re.MULTILINE)
    assert lab_id is not None, output[:2000]
    assert lab_id.group(1) not in netns.leftover_labs(), "the demo left namespaces behind"
