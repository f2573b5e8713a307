"""MQTT: from a core decision to a subscriber, and the agent's idle cost with MQTT on vs off.

    python -m tests.bench mqtt

* Latency: 3 real agents (LAN timing) publishing to a real mosquitto on 127.0.0.1; 10 rounds
  of kill -9 and restart of node 3 make the core decide (view_installed, quorum counts, peer
  lost/reachable, links ...). For every event a subscriber receives on
  `votemesh/live/+/events`: its receive time minus the event's `wall_ms` (stamped when the
  core's decision reached the fan-out). Same host, same clock.
* Idle cost: 3 agents in one quorate view, CPU (utime + stime) per agent over 30 s, with
  `[mqtt]` (keepalive 10 s) off and on, and `[metrics]` off and on (scraped every 15 s, as
  Prometheus does by default).

Prints figures; never fails on a timing. About three minutes on 2 cores.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

from tests.agent.live_agents import LAN_TIMING, AgentCluster
from tests.agent.mosquitto import Broker, Subscriber, free_tcp_port
from tests.bench.bench_agent import cpu_seconds, percentile

ROUNDS = 10
IDLE_SECONDS = 30.0
SCRAPE_EVERY = 15.0
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


def with_metrics(cluster: AgentCluster) -> list[str]:
    """Turn `[metrics]` on in every agent's config (its own address, a free port): the URLs."""
    urls = []
    for agent in cluster.agents.values():
        port = free_tcp_port()
        with agent.config_path.open("a") as config:
            config.write(f'\n[metrics]\nhost = "{agent.address}"\nport = {port}\n')
        urls.append(f"http://{agent.address}:{port}/metrics")
    return urls


def idle_cpu(workdir: Path, extra: str, metrics: bool) -> list[float]:
    """CPU % of a core per agent, 3 agents idle in one view (scraped every 15 s with metrics)."""
    cluster = AgentCluster(workdir, 3, timing=LAN_TIMING, extra=extra)
    urls = with_metrics(cluster) if metrics else []
    try:
        cluster.start_all()
        cluster.wait_for(lambda: cluster.one_view(EVERYONE), SETTLE, "one view")
        time.sleep(2.0)
        pids = [a.process.pid for a in cluster.agents.values() if a.process is not None]
        start, cpu0 = time.monotonic(), {pid: cpu_seconds(pid) for pid in pids}
        while (left := IDLE_SECONDS - (time.monotonic() - start)) > 0:
            for url in urls:
                with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 (loopback)
                    answer.read()
            time.sleep(min(SCRAPE_EVERY, left))
        elapsed = time.monotonic() - start
        return [(cpu_seconds(pid) - cpu0[pid]) / elapsed * 100 for pid in pids]
    finally:
        cluster.close()


def bench_idle(workdir: Path) -> None:
    broker = Broker(workdir / "broker")
    broker.start()
    runs = {}
    try:
        for mqtt in (False, True):
            for metrics in (False, True):
                extra = mqtt_extra(broker.port) if mqtt else ""
                name = f"mqtt {'on ' if mqtt else 'off'}, metrics {'on ' if metrics else 'off'}"
                runs[name] = idle_cpu(workdir / name.replace(" ", "_"), extra, metrics)
    finally:
        broker.stop()
    print(
        f"  idle CPU per agent, 3 agents (LAN timing), {IDLE_SECONDS:.0f} s "
        f"(metrics scraped every {SCRAPE_EVERY:.0f} s):"
    )
    for name, cpu in runs.items():
        print(f"    {name}  mean {statistics.mean(cpu):4.2f} %  max {max(cpu):4.2f} % of a core")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-mqtt-") as tmp:
        bench_latency(Path(tmp) / "latency")
        bench_idle(Path(tmp) / "idle")


if __name__ == "__main__":
    main()
