"""The agent under systemd (Type=notify): readiness, a status line, and the watchdog.

Adapter ring. Everything here is a no-op when the agent is not started by systemd (no
`NOTIFY_SOCKET`), and a notify socket that is gone or refuses a datagram changes nothing: the
message is lost, the agent runs on (systemd would restart a unit whose watchdog it stops hearing,
which is what it should do if the socket really is gone).

* `sd_notify(state)`: one datagram to `$NOTIFY_SOCKET` (sd_notify(3)); `READY=1` once the core
  runs, `STOPPING=1` on the way out (agent.runtime.main).
* `SystemdSink`: a fan-out sink (agent.runtime.fanout) that keeps `STATUS=` current, e.g.
  `quorate, 3/3 members, 3/3 votes, quorum 2, ring 1.4` (what `systemctl status` shows). It
  recomputes the line on every status change and sends it only when the text changed.
* `watchdog()` (a task of the agent's TaskGroup): `WATCHDOG=1` from the event loop every half of
  `$WATCHDOG_USEC` (when `$WATCHDOG_PID` is absent or ours), so a wedged loop stops pinging and
  systemd kills and restarts the agent (WatchdogSec=, Restart=on-failure).
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from agent.runtime.fanout import Published, QueuedSink

__all__ = ["SystemdSink", "sd_notify", "status_text", "watchdog", "watchdog_interval"]

log = structlog.get_logger("votemesh.agent.systemd")

MAX_WATCHDOG_USEC = 24 * 3600 * 1_000_000
"""A day: a larger WATCHDOG_USEC is not systemd's doing (WatchdogSec= is seconds to minutes)."""


def sd_notify(state: str) -> bool:
    """Tell systemd (Type=notify) our state, e.g. "READY=1"; False when not under systemd or the
    socket did not take the datagram at once (nothing is raised, nothing waits: a socket whose
    reader is stuck must not stop the event loop)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        try:
            sock.connect(address)
            sock.sendall(state.encode())
        except OSError:
            return False
    return True


def watchdog_interval(
    environ: Mapping[str, str] | None = None, pid: int | None = None
) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None: no watchdog asked for,
    it is meant for another process (WATCHDOG_PID), or a value is not a positive number (logged
    once; the agent runs without the watchdog rather than not at all)."""
    env = os.environ if environ is None else environ
    usec, owner = env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
    if not usec or "NOTIFY_SOCKET" not in env:
        return None
    if owner and owner.strip() != str(os.getpid() if pid is None else pid):
        return None
    if not usec.isdigit() or not 0 < int(usec) <= MAX_WATCHDOG_USEC:
        log.warning(
            "watchdog off",
            reason=f"WATCHDOG_USEC={usec[:40]!r} is not a whole number of microseconds "
            f"from 1 to {MAX_WATCHDOG_USEC}; check WatchdogSec= in the unit",
        )
        return None
    return int(usec) / 2_000_000


async def watchdog() -> None:
    """Ping systemd's watchdog every half WATCHDOG_USEC until cancelled (the first ping at once);
    returns at once when no watchdog is asked for. Runs as a task of the agent's loop: if the
    loop is stuck, the pings stop."""
    every = watchdog_interval()
    if every is None:
        return
    log.info("watchdog on", every_s=every)
    while True:
        sd_notify("WATCHDOG=1")
        await asyncio.sleep(every)


def status_text(doc: Mapping[str, Any]) -> str:
    """The one-line status for systemd, from a `status --json` document:
    `quorate, 2/3 members, 2/3 votes, quorum 2, ring 1.5[, qdevice voting][, views halted...]`."""
    configured = len(doc.get("peers", ())) + 1
    members = len(doc.get("members", ()))
    parts = [
        "quorate" if doc.get("quorate") else "NOT quorate",
        f"{members}/{configured} members",
        f"{doc.get('total_votes', 0)}/{doc.get('expected_votes', 0)} votes",
        f"quorum {doc.get('quorum', 0)}",
        f"ring {doc.get('ring', '?')}",
    ]
    qdevice = doc.get("qdevice") or {}
    if qdevice.get("configured"):
        if qdevice.get("vote"):
            parts.append("qdevice voting")
        elif qdevice.get("connected"):
            parts.append("qdevice connected, not voting")
        else:
            parts.append("qdevice disconnected")
    views = str(doc.get("views", ""))
    if views.startswith("halted"):
        parts.append(f"views {views}")
    return ", ".join(parts)


class SystemdSink(QueuedSink):
    """Keeps systemd's STATUS= line current (made only when NOTIFY_SOCKET is set:
    agent.runtime.sinks).

    It queues no events: each status change (coalesced by the fan-out, then by this sink's task)
    rebuilds the line from the status document, and the line is sent only when it differs from
    the last one systemd took (a link's RTT change is a status change, not a new line)."""

    name = "systemd"

    def __init__(self, status: Callable[[], Mapping[str, Any]]) -> None:
        super().__init__(capacity=1)
        self._status = status
        self.sent: str | None = None
        """The STATUS= text systemd last took."""
        self.updates = 0
        """STATUS= datagrams sent."""

    def wants(self, item: Published) -> bool:  # noqa: ARG002 (no event is queued)
        return False

    async def deliver_status(self) -> None:
        """Send STATUS= if the line changed (a line systemd did not take is tried again at the
        next change)."""
        text = status_text(self._status())
        if text != self.sent and sd_notify(f"STATUS={text}"):
            self.sent = text
            self.updates += 1

    def stats(self) -> dict[str, int]:
        return {**super().stats(), "status_updates": self.updates}
