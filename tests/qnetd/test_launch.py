"""`votemesh-qnetd run` restarts itself once on glibc malloc (qnetd/launch.py): CPython's arenas
stayed pinned after a connection flood (docs/benchmarks.md "qnetd under abuse")."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from qnetd.launch import reexec_argv
from tests.qnetd.our_qnetd import running_our_qnetd


def test_only_run_is_restarted_and_only_once() -> None:
    orig = ["/usr/bin/python3", "-m", "qnetd", "run", "--port", "5403"]
    assert reexec_argv(["run", "--port", "5403"], {}, orig) == [sys.executable, *orig[1:]]
    assert reexec_argv(["run"], {"PYTHONMALLOC": "malloc"}, orig) is None  # the restarted one
    assert reexec_argv(["run"], {"PYTHONMALLOC": "pymalloc"}, orig) is None  # operator's choice
    assert reexec_argv(["status"], {}, ["/usr/bin/python3", "-m", "qnetd", "status"]) is None
    assert reexec_argv([], {}, ["/usr/bin/python3", "-m", "qnetd"]) is None


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().partition("=")[::2] for item in raw if item)


@pytest.mark.timeout(60)
def test_running_server_uses_glibc_malloc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server process (same PID: systemd's notify socket and our stop() still reach it) runs
    with PYTHONMALLOC=malloc; an operator's own PYTHONMALLOC is kept."""
    monkeypatch.delenv("PYTHONMALLOC", raising=False)
    with running_our_qnetd(tmp_path / "a") as server:
        assert server.process is not None
        assert environ(server.process.pid).get("PYTHONMALLOC") == "malloc"
    monkeypatch.setenv("PYTHONMALLOC", "pymalloc")
    with running_our_qnetd(tmp_path / "b") as server:
        assert server.process is not None
        assert environ(server.process.pid).get("PYTHONMALLOC") == "pymalloc"
