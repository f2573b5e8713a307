"""The units' MemoryDenyWriteExecute=yes holds for what the agent and qnetd really do.

systemd enforces it with a seccomp filter that refuses writable+executable memory (cffi
callbacks need such memory, and fail with MemoryError). The kernel's own switch for the same
rule, prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN) (Linux 6.3+), is inherited by every child:
live tests run in a pytest under it start agents, `votemesh` joins (certificates signed by the
agent), a qdevice TLS session and votemesh-qnetd, all under the rule.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        os.geteuid() != 0, reason="needs root: the join and qdevice live test uses namespaces"
    ),
]
PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1
UNDER_THE_RULE = [
    "tests/agent/test_cluster_join_live.py::test_qdevice_setup_reaches_every_node_and_breaks_a_1_1_split",
    "tests/agent/test_systemd_live.py::test_status_follows_quorum",
]


def _refuse_exec_gain() -> None:
    """In the child, before exec: W^X for it and everything it starts."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_MDWE)")


def _kernel_has_mdwe() -> bool:
    probe = subprocess.run(
        [sys.executable, "-c", "pass"], preexec_fn=_refuse_exec_gain, check=False
    )
    return probe.returncode == 0


def run_under_mdwe(code: str) -> subprocess.CompletedProcess[str]:
    """`python -c code` under the rule."""
    return subprocess.run(
        [sys.executable, "-c", code],
        preexec_fn=_refuse_exec_gain,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.timeout(180)
def test_agent_and_qnetd_run_without_writable_executable_memory() -> None:
    """The rule is on (a cffi callback fails under it), and the live tests pass under it."""
    try:
        available = _kernel_has_mdwe()
    except (OSError, subprocess.SubprocessError):
        available = False
    if not available:
        pytest.skip("kernel without prctl(PR_SET_MDWE) (Linux < 6.3)")
    probe = run_under_mdwe(
        "import cffi; cffi.FFI().callback('int(void)', lambda: 1)",
    )
    assert "Cannot allocate write+execute memory" in probe.stderr, probe.stderr
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *UNDER_THE_RULE],
        preexec_fn=_refuse_exec_gain,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "2 passed" in result.stdout
