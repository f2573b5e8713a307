"""agent.runtime.systemd without an agent: the STATUS= line, the watchdog's interval from the
environment, the sink sending only changed lines, and sd_notify on a real datagram socket."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from agent.outputs import Outputs
from agent.runtime.fanout import Published, SinkContext
from agent.runtime.sinks import make_sinks
from agent.runtime.systemd import (
    SystemdSink,
    sd_notify,
    status_text,
    watchdog,
    watchdog_interval,
)
from tests.agent.test_node import Net


@pytest.fixture
def notify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A bound datagram socket named by NOTIFY_SOCKET (what systemd gives a Type=notify unit)."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(0.5)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield sock


def received(sock: socket.socket) -> list[str]:
    """Every datagram waiting on `sock`."""
    out: list[str] = []
    sock.setblocking(False)
    try:
        while True:
            out.append(sock.recv(4096).decode())
    except BlockingIOError:
        return out
    finally:
        sock.settimeout(0.5)


def core_status(alive: int, of: int) -> dict[str, Any]:
    """A real core's status document: `of` nodes, all but the last `of - alive` crashed."""
    net = Net.make(of)
    net.run(5.0)
    for node in range(alive + 1, of + 1):
        net.alive.discard(node)
    net.run(5.0)
    doc: dict[str, Any] = json.loads(json.dumps(net.nodes[1].status(net.now)))
    return doc


def test_status_text_from_a_real_core() -> None:
    """Three nodes: quorate with 3/3; after two crash, node 1 says NOT quorate, 1/3 members,
    its own vote of 3 expected, quorum 2 and its ring (the words `systemctl status` shows)."""
    full = core_status(3, 3)
    assert status_text(full) == f"quorate, 3/3 members, 3/3 votes, quorum 2, ring {full['ring']}"
    alone = core_status(1, 3)
    assert status_text(alone) == (
        f"NOT quorate, 1/3 members, 1/3 votes, quorum 2, ring {alone['ring']}"
    )
    assert alone["ring"] != full["ring"]


def test_status_text_names_the_qdevice_and_halted_views() -> None:
    """A configured qdevice says whether it votes, is connected or is gone; halted views say why."""
    doc = core_status(2, 2)
    doc["qdevice"] = {"configured": True, "connected": True, "vote": True}
    assert status_text(doc).endswith(", qdevice voting")
    doc["qdevice"]["vote"] = False
    assert status_text(doc).endswith(", qdevice connected, not voting")
    doc["qdevice"]["connected"] = False
    doc["views"] = "halted: cannot store max_seq"
    assert status_text(doc).endswith(", qdevice disconnected, views halted: cannot store max_seq")


@pytest.mark.parametrize(
    ("env", "interval"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "4242"}, 0.2),
        ({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({}, None),
        ({"WATCHDOG_USEC": ""}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], interval: float | None) -> None:
    """Half of WATCHDOG_USEC, only for the process WATCHDOG_PID names (or any when absent), and
    only under systemd (NOTIFY_SOCKET)."""
    assert watchdog_interval({"NOTIFY_SOCKET": "/run/x", **env}, pid=4242) == interval
    assert watchdog_interval(env, pid=4242) is None  # no notify socket: nobody to ping


@pytest.mark.parametrize("usec", ["0", "-5", "abc", "1e6", str(25 * 3600 * 1_000_000)])
def test_watchdog_interval_refuses_nonsense_with_one_line(usec: str) -> None:
    """A WATCHDOG_USEC that is not 1 us to a day turns the watchdog off with one warning naming
    the value and WatchdogSec= (the agent itself runs on)."""
    with capture_logs() as logs:
        assert watchdog_interval({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": usec}) is None
    assert len(logs) == 1
    assert logs[0]["event"] == "watchdog off"
    assert usec[:10] in logs[0]["reason"]
    assert "WatchdogSec=" in logs[0]["reason"]


@pytest.mark.asyncio
async def test_sink_sends_only_changed_lines(notify: socket.socket) -> None:
    """The sink queues no events; on status changes it sends STATUS= the first time and again
    only when the text differs."""
    docs = [core_status(3, 3)] * 3 + [core_status(1, 3)]
    sink = SystemdSink(lambda: docs.pop(0))
    sink.offer(Published(1, 0, "quorum_lost", {"event": "quorum_lost"}))
    for _ in range(4):
        sink.status_changed()
        await sink.drain()
    lines = received(notify)
    assert [line.split(",")[0] for line in lines] == ["STATUS=quorate", "STATUS=NOT quorate"]
    assert sink.sent is not None
    assert sink.sent.startswith("NOT quorate, 1/3 members")
    assert sink.stats() == {
        "queued": 0,
        "offered": 0,
        "delivered": 0,
        "dropped": 0,
        "failed": 0,
        "status_updates": 2,
    }


@pytest.mark.asyncio
async def test_sink_retries_a_line_systemd_did_not_take(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the notify socket is missing nothing is counted as sent; once it is there, the
    next status change sends the current line."""
    path = tmp_path / "late.sock"
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    sink = SystemdSink(lambda: core_status(2, 2))
    sink.status_changed()
    await sink.drain()
    assert (sink.sent, sink.updates) == (None, 0)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sink.status_changed()
        await sink.drain()
        assert sock.recv(4096).decode().startswith("STATUS=quorate, 2/2 members")
    assert sink.updates == 1


def test_sink_only_under_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    """make_sinks adds the systemd sink when NOTIFY_SOCKET is set, and not otherwise."""
    ctx = SinkContext("c", 1, "n1", status=dict, stats=dict)
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert [s.name for s in make_sinks(Outputs(), ctx)] == []
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    assert [s.name for s in make_sinks(Outputs(), ctx)] == ["systemd"]


def test_sd_notify_never_raises_nor_waits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No NOTIFY_SOCKET, a path with nothing there, a regular file, or a socket whose queue is
    full (nobody reads it): False at once, never an exception, never a blocked caller."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sd_notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "absent.sock"))
    assert sd_notify("READY=1") is False
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "file"))
    assert sd_notify("READY=1") is False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as full:
        full.bind(str(tmp_path / "full.sock"))
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "full.sock"))
        sent = [sd_notify("WATCHDOG=1") for _ in range(5000)]
    assert sent[0] is True
    assert sent[-1] is False  # the queue filled up; the call came back instead of blocking


def test_sd_notify_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    """`@name` is a socket in the abstract namespace (how systemd names it in some setups)."""
    name = f"votemesh-test-{os.getpid()}-{id(monkeypatch)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sd_notify("STATUS=hello")
        assert sock.recv(100) == b"STATUS=hello"


@pytest.mark.asyncio
async def test_watchdog_pings_stop_while_the_loop_is_stuck(
    notify: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pings come from the event loop itself (not a thread): while a callback blocks the
    loop for 0.6 s no WATCHDOG=1 is sent, which is what lets systemd restart a wedged agent."""
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # a ping every 0.05 s
    arrivals: list[float] = []
    done = threading.Event()

    def receive() -> None:  # in a thread: arrival times do not depend on the loop
        notify.settimeout(0.05)
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                notify.recv(64)
                arrivals.append(time.monotonic())

    receiver = threading.Thread(target=receive)
    receiver.start()
    task = asyncio.create_task(watchdog())
    try:
        await asyncio.sleep(0.3)
        stuck_at = time.monotonic()
        time.sleep(0.6)  # the point: a loop that does not run
        await asyncio.sleep(0.3)
    finally:
        task.cancel()
        done.set()
        receiver.join()
    during = [t for t in arrivals if stuck_at + 0.05 < t < stuck_at + 0.55]
    assert len(arrivals) >= 8
    assert during == []
