"""How soon the agent's qdevice client gets the device vote back after a qnetd restart.

    python -m tests.bench qdevice_reconnect
    BENCH_RECONNECT_ROUNDS=3 python -m tests.bench qdevice_reconnect

Issue 7 item 7. Our qnetd on 127.0.0.1 (TLS, client certificates) and one `QdeviceRunner` with
the default heartbeat (8 s) in this process. BENCH_RECONNECT_ROUNDS (default 10) times: stop the
qnetd, wait until the runner has seen at least one refused connect, wait DOWN s more (the qnetd
is "restarting"), start it again on the same port; measure from the moment the port accepts
connections until the runner reports the vote again, and count the runner's refused attempts
while the qnetd was down. Prints p50 / max. Loopback only, no root; never fails on a timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import structlog

from agent.config import QdeviceConfig
from agent.runtime.qdevice import QdeviceRunner
from tests.qnetd.our_qnetd import OurQnetd

CLUSTER = "reconnect"
ROUNDS = 10
DOWN = 1.0  # seconds the qnetd stays down after the first refused connect
DEADLINE = 30.0


async def until(condition: object, timeout: float = DEADLINE) -> None:
    """Poll a zero-argument callable every 10 ms until it is true."""
    assert callable(condition)
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def measure(server: OurQnetd, rounds: int) -> tuple[list[float], list[int]]:
    """(seconds from port open to vote back, refused attempts while down) per round."""
    creds = server.client_credentials(CLUSTER)
    cfg = QdeviceConfig(
        host="127.0.0.1",
        port=server.port,
        ca_pem=str(creds.ca_pem),
        cert_pem=str(creds.cert_pem),
        key_pem=str(creds.key_pem),
    )
    state = {"vote": False}
    refused = [0]

    def on_vote(vote: bool, connected: bool, reason: str, ring: tuple[int, int] | None) -> None:
        state["vote"] = vote

    runner = QdeviceRunner(cfg, 1, CLUSTER, on_vote)
    runner.set_config((1, 2))
    runner.update((1, 5), (1,), quorate=False)
    task = asyncio.create_task(runner.run())
    back: list[float] = []
    attempts: list[int] = []
    try:
        await until(lambda: state["vote"])
        for _ in range(rounds):
            await asyncio.to_thread(server.stop)
            await until(lambda: not state["vote"])
            await until(lambda: runner.last_close.startswith("connect to"))
            first = runner.attempts  # a counter, compared by value
            await asyncio.sleep(DOWN)
            refused[0] = runner.attempts - first  # connects started while down: all refused
            await asyncio.to_thread(server.start)
            opened = time.monotonic()
            await until(lambda: state["vote"])
            back.append(time.monotonic() - opened)
            attempts.append(refused[0] + 1)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return back, attempts


def main() -> None:
    """Run the rounds and print the figures."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    rounds = max(1, min(100, int(os.environ.get("BENCH_RECONNECT_ROUNDS", str(ROUNDS)))))
    with tempfile.TemporaryDirectory(prefix="bench-reconnect-") as tmp:
        server = OurQnetd(Path(tmp) / "qnetd")
        server.start()
        try:
            back, attempts = asyncio.run(measure(server, rounds))
        finally:
            server.stop()
    print(
        f"  qnetd restarted {rounds} times (down {DOWN:.1f} s after the first refused connect), "
        f"heartbeat 8 s: device vote back after p50 {statistics.median(back) * 1000:.0f} ms, "
        f"max {max(back) * 1000:.0f} ms from the port opening; refused connects while down "
        f"p50 {statistics.median(attempts):.0f}, max {max(attempts)}"
    )


if __name__ == "__main__":
    main()
