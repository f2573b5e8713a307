"""MQTT: from a core decision to a subscriber, and the agent's idle cost with MQTT on vs off.

    python -m tests.bench mqtt

* Latency: 3 real agents (LAN timing) publishing to a real mosquitto on 127.0.0.1; 10 rounds
  of kill -9 and restart of node 3 make the core decide (view_installed, quorum counts, peer
  lost/reachable, links ...). For every event a subscriber receives on
  `votemesh/live/+/events`: its receive time minus the event's `wall_ms` (stamped when the
  core's decision reached the fan-out). Same host, same clock.
* Idle cost: 3 agents in one quorate view, CPU (utime + stime) per agent over 20 s, without
  and with `[mqtt]` (keepalive 10 s).

Prints figures; never fails on a timing. About two minutes on 2 cores.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from tests.agent.live_agents import LAN_TIMING, AgentCluster
from tests.agent.mosquitto import Broker, Subscriber
from tests.bench.bench_agent import cpu_seconds, percentile

ROUNDS = 10
IDLE_SECONDS = 20.0
SETTLE = 60.0
EVERYONE = [1, 2, 3]


def mqtt_extra(port: int) -> str:
    return f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\n'


def bench_latency(workdir: Path) -> None:
    broker = Broker(workdir / "broker")
    broker.start()
    cluster = AgentCluster(workdir / "agents", 3, timing=LAN_TIMING, extra=mqtt_extra(broker.port))
    sub: Subscriber | None = None
    try:
        cluster.start_all()
        cluster.wait_for(lambda: cluster.one_view(EVERYONE), SETTLE, "a view of 3")
        time.sleep(1.0)
        sub = Subscriber(broker.port, ["votemesh/live/+/events"])
        for _ in range(ROUNDS):
            cluster.kill(3)
            cluster.wait_for(lambda: cluster.one_view([1, 2]), SETTLE, "survivors", 0.02)
            cluster.start(3)
            cluster.wait_for(lambda: cluster.one_view(EVERYONE), SETTLE, "a view of 3", 0.02)
        time.sleep(1.0)
        got = sub.received()
    finally:
        if sub is not None:
            sub.close()
        cluster.close()
        broker.stop()
    delays = [(m.at - m.json()["wall_ms"] / 1000) * 1000 for m in got]
    views = [
        (m.at - m.json()["wall_ms"] / 1000) * 1000
        for m in got
        if m.json()["event"] in ("view_installed", "quorum_lost", "quorum_gained")
    ]
    print(f"  core decision -> MQTT subscriber (3 agents, {ROUNDS} kill/restart rounds, QoS 1):")
    print(
        f"    all events ({len(delays)})  p50 {statistics.median(delays):6.2f} ms   "
        f"p99 {percentile(delays, 99):6.2f} ms   max {max(delays):6.2f} ms"
    )
    if views:
        print(
            f"    view/quorum events ({len(views)})  p50 {statistics.median(views):6.2f} ms   "
            f"p99 {percentile(views, 99):6.2f} ms"
        )


def idle_cpu(workdir: Path, extra: str) -> list[float]:
    """CPU % of a core per agent, 3 agents idle in one view."""
    cluster = AgentCluster(workdir, 3, timing=LAN_TIMING, extra=extra)
    try:
        cluster.start_all()
        cluster.wait_for(lambda: cluster.one_view(EVERYONE), SETTLE, "one view")
        time.sleep(2.0)
        pids = [a.process.pid for a in cluster.agents.values() if a.process is not None]
        start, cpu0 = time.monotonic(), {pid: cpu_seconds(pid) for pid in pids}
        time.sleep(IDLE_SECONDS)
        elapsed = time.monotonic() - start
        return [(cpu_seconds(pid) - cpu0[pid]) / elapsed * 100 for pid in pids]
    finally:
        cluster.close()


def bench_idle(workdir: Path) -> None:
    broker = Broker(workdir / "broker")
    broker.start()
    try:
        off = idle_cpu(workdir / "off", "")
        on = idle_cpu(workdir / "on", mqtt_extra(broker.port))
    finally:
        broker.stop()
    print(f"  idle CPU per agent, 3 agents (LAN timing), {IDLE_SECONDS:.0f} s:")
    for label, cpu in (("mqtt off", off), ("mqtt on ", on)):
        print(f"    {label}  mean {statistics.mean(cpu):4.2f} %  max {max(cpu):4.2f} % of a core")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-mqtt-") as tmp:
        bench_latency(Path(tmp) / "latency")
        bench_idle(Path(tmp) / "idle")


if __name__ == "__main__":
    main()
