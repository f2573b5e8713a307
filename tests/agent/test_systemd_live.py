"""A real `votemesh-agent` process under a test notify socket (what systemd gives a Type=notify
unit): READY=1 once it runs, STATUS= following quorum, WATCHDOG=1 at half WATCHDOG_USEC,
STOPPING=1 on SIGTERM; a notify socket that is missing or never read changes nothing."""

from __future__ import annotations

import contextlib
import itertools
import signal
import socket
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.agent.live_agents import AgentCluster


class NotifySocket:
    """A bound AF_UNIX datagram socket; every message received, with its arrival time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[tuple[float, str]] = []

    def wait_for(self, match: Callable[[str], bool], timeout: float, what: str) -> str:
        """The first message (already received or arriving) that matches; AssertionError naming
        `what` and everything received after `timeout` seconds."""
        for _, message in self.messages:
            if match(message):
                return message
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                break
            self.messages.append((time.monotonic(), message))
            if match(message):
                return message
        raise AssertionError(f"no {what} within {timeout} s; got {self.texts()}")

    def drain(self, seconds: float) -> None:
        """Receive for `seconds`."""
        with contextlib.suppress(AssertionError):
            self.wait_for(lambda _: False, seconds, "")

    def texts(self) -> list[str]:
        """The messages received so far, in order."""
        return [m for _, m in self.messages]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    """A notify socket for one test."""
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


def start_under_systemd(
    cluster: AgentCluster, node_id: int, monkeypatch: pytest.MonkeyPatch, **env: str
) -> None:
    """Start one agent with systemd's variables set (only for that process)."""
    with monkeypatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        cluster.start(node_id)


@pytest.mark.timeout(60)
def test_ready_watchdog_and_stopping(
    tmp_path: Path, notify: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """READY=1 arrives once; with WATCHDOG_USEC=400000 WATCHDOG=1 comes every ~0.2 s (half) from
    the running loop; SIGTERM gives STOPPING=1 and exit status 0, and the pings stop."""
    cluster = AgentCluster(tmp_path / "c", 1)
    try:
        start_under_systemd(
            cluster, 1, monkeypatch, NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC="400000"
        )
        notify.wait_for(lambda m: m == "READY=1", 20, "READY=1")
        notify.drain(3.0)
        pings = [at for at, m in notify.messages if m == "WATCHDOG=1"]
        assert len(pings) >= 10, notify.texts()
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert 0.15 < statistics.median(gaps) < 0.35, gaps
        process = cluster.agents[1].process
        assert process is not None
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        notify.wait_for(lambda m: m == "STOPPING=1", 5, "STOPPING=1")
        notify.drain(0.5)
        texts = notify.texts()
        assert texts.count("READY=1") == 1
        assert texts.count("STOPPING=1") == 1
        assert "WATCHDOG=1" not in texts[texts.index("STOPPING=1") :]
    finally:
        cluster.close()


@pytest.mark.timeout(90)
def test_status_follows_quorum(
    tmp_path: Path, notify: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two nodes (quorum 2): agent 1 alone says NOT quorate 1/2; when agent 2 starts the line
    becomes quorate 2/2 members with the ring both share; when agent 2 stops it is NOT quorate
    1/2 again, with a new ring. Every line is sent once (no repeats of the same text)."""
    cluster = AgentCluster(tmp_path / "c", 2)
    try:
        start_under_systemd(cluster, 1, monkeypatch, NOTIFY_SOCKET=str(notify.path))
        notify.wait_for(lambda m: m.startswith("STATUS=NOT quorate, 1/2 members"), 20, "alone")
        cluster.start(2)
        cluster.wait_for(lambda: cluster.one_view([1, 2]), 30, "a quorate view of 2")
        status = cluster.agents[1].status()
        assert status is not None
        both = f"STATUS=quorate, 2/2 members, 2/2 votes, quorum 2, ring {status['ring']}"
        notify.wait_for(lambda m: m == both, 10, both)
        assert cluster.stop(2) == 0
        after = notify.wait_for(lambda m: m.startswith("STATUS=NOT quorate"), 20, "quorum lost")
        assert after.startswith("STATUS=NOT quorate, 1/2 members, 1/2 votes, quorum 2, ring ")
        assert not after.endswith(status["ring"])
        lines = [m for m in notify.texts() if m.startswith("STATUS=")]
        assert all(a != b for a, b in itertools.pairwise(lines)), lines
        assert "READY=1" in notify.texts()
    finally:
        cluster.close()


@pytest.mark.timeout(60)
def test_no_watchdog_for_another_pid(
    tmp_path: Path, notify: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WATCHDOG_PID naming another process (systemd's variables inherited by a child): READY=1
    still, but no WATCHDOG=1."""
    cluster = AgentCluster(tmp_path / "c", 1)
    try:
        start_under_systemd(
            cluster,
            1,
            monkeypatch,
            NOTIFY_SOCKET=str(notify.path),
            WATCHDOG_USEC="200000",
            WATCHDOG_PID="1",
        )
        notify.wait_for(lambda m: m == "READY=1", 20, "READY=1")
        notify.drain(1.0)
        assert "WATCHDOG=1" not in notify.texts()
    finally:
        cluster.close()


@pytest.mark.timeout(60)
def test_missing_or_stuck_notify_socket_changes_nothing(
    tmp_path: Path, notify: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Agent 1's NOTIFY_SOCKET names nothing; agent 2's is a socket nobody reads, pinged every
    millisecond so its queue is full at once. Both form a quorate view, answer `status` and stop
    with exit status 0 on SIGTERM, before the harness would kill them (10 s)."""
    cluster = AgentCluster(tmp_path / "c", 2)
    try:
        start_under_systemd(
            cluster,
            1,
            monkeypatch,
            NOTIFY_SOCKET=str(tmp_path / "absent.sock"),
            WATCHDOG_USEC="2000",
        )
        start_under_systemd(
            cluster, 2, monkeypatch, NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC="2000"
        )
        cluster.wait_for(lambda: cluster.one_view([1, 2]), 30, "a quorate view of 2")
        time.sleep(1.0)  # thousands of pings: agent 2's notify queue is long full
        assert cluster.one_view([1, 2])
        for node_id in (1, 2):
            started = time.monotonic()
            assert cluster.stop(node_id) == 0
            assert time.monotonic() - started < 8
    finally:
        cluster.close()
