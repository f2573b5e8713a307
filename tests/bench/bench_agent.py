"""Real agents on loopback: time from `kill -9` to the survivors' new view, and idle cost.

    python -m tests.bench agent

* Re-formation: 5 agents (127.0.0.1-5, default LAN timing: 0.1 s heartbeats, lost after
  0.65 s); 20 times: SIGKILL one (round robin), measure from the kill to the `view_installed`
  log line of the 4 survivors (the last of them, and each), restart it and wait for 5 again.
  The same with SIGTERM: the agent says Leave and the others need not wait for the timeout.
* Idle cost: 5 and 20 agents in one quorate view, CPU (utime + stime from /proc/PID/stat) over
  30 s and RSS (VmRSS) per agent.

Prints figures; never fails on a timing. About two minutes on 2 cores.
"""

from __future__ import annotations

import os
import signal
import statistics
import tempfile
import time
from datetime import datetime
from functools import partial
from pathlib import Path

from agent.status import from_json
from tests.agent.live_agents import LAN_TIMING, AgentCluster

KILLS = 20
IDLE_SECONDS = 30.0
SETTLE = 60.0


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def view_time(cluster: AgentCluster, node_id: int, members: list[int], after: float) -> float:
    """Wall time (epoch s) of the first view_installed with `members` logged after `after`."""
    for record in cluster.agents[node_id].log_records():
        if record.get("event") != "view_installed" or record.get("members") != members:
            continue
        at = datetime.fromisoformat(record["timestamp"]).timestamp()
        if at >= after:
            return at
    raise RuntimeError(f"node {node_id} logged no view {members}")


def bench_reformation(workdir: Path, *, graceful: bool = False) -> None:
    """kill -9 (or SIGTERM: a clean Leave) -> survivors' new view, over KILLS rounds."""
    cluster = AgentCluster(workdir, 5, timing=LAN_TIMING)
    everyone = [1, 2, 3, 4, 5]
    last: list[float] = []
    each: list[float] = []
    try:
        cluster.start_all()
        cluster.wait_for(lambda: cluster.one_view(everyone), SETTLE, "a view of 5")
        for round_ in range(KILLS):
            victim = everyone[round_ % 5]
            survivors = [n for n in everyone if n != victim]
            time.sleep(0.5)
            killed_at = time.time()
            process = cluster.agents[victim].process
            if graceful and process is not None:
                process.send_signal(signal.SIGTERM)
            else:
                cluster.kill(victim)
            cluster.wait_for(partial(cluster.one_view, survivors), SETTLE, "survivors", 0.02)
            times = [view_time(cluster, n, survivors, killed_at) - killed_at for n in survivors]
            each += times
            last.append(max(times))
            if graceful:
                cluster.stop(victim)
            cluster.start(victim)
            cluster.wait_for(lambda: cluster.one_view(everyone), SETTLE, "a view of 5", 0.02)
    finally:
        cluster.close()
    how = "SIGTERM (Leave)" if graceful else "kill -9"
    print(f"  {how} -> new view on all 4 survivors ({KILLS} rounds, 5 agents, LAN timing):")
    print(
        f"    last survivor  p50 {statistics.median(last) * 1000:6.0f} ms   "
        f"p99 {percentile(last, 99) * 1000:6.0f} ms   max {max(last) * 1000:6.0f} ms"
    )
    print(
        f"    each survivor  p50 {statistics.median(each) * 1000:6.0f} ms   "
        f"p99 {percentile(each, 99) * 1000:6.0f} ms   min {min(each) * 1000:6.0f} ms"
    )


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    """Resident set size in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def bench_idle(workdir: Path, count: int) -> None:
    """CPU and RSS per agent with `count` agents idle in one view."""
    cluster = AgentCluster(workdir, count, timing=LAN_TIMING)
    try:
        cluster.start_all()
        cluster.wait_for(lambda: cluster.one_view(list(range(1, count + 1))), SETTLE, "one view")
        time.sleep(2.0)
        pids = [a.process.pid for a in cluster.agents.values() if a.process is not None]
        start, cpu0 = time.monotonic(), {pid: cpu_seconds(pid) for pid in pids}
        time.sleep(IDLE_SECONDS)
        elapsed = time.monotonic() - start
        cpu = [(cpu_seconds(pid) - cpu0[pid]) / elapsed * 100 for pid in pids]
        rss = [rss_mib(pid) for pid in pids]
        doc = cluster.agents[1].status() or {}
        stable = cluster.one_view(list(range(1, count + 1)))
    finally:
        cluster.close()
    print(
        f"  idle, {count:2} agents (LAN timing, 10 Hz to {count - 1} peers): CPU per agent "
        f"mean {statistics.mean(cpu):4.2f} % max {max(cpu):4.2f} % of a core; RSS mean "
        f"{statistics.mean(rss):5.1f} MiB max {max(rss):5.1f} MiB; still one view: {stable}"
    )
    runtime = from_json(doc).runtime if doc else None
    grams = runtime.datagrams if runtime else {}
    timers = runtime.timers if runtime else {}
    uptime = (runtime.uptime_s if runtime else 1) or 1
    print(
        f"    node 1: {grams.get('sent', 0) / uptime:5.0f} datagrams/s sent, "
        f"{grams.get('received', 0) / uptime:5.0f}/s received (since start); Tick lateness "
        f"mean {timers.get('late_mean_ms')} ms, max {timers.get('late_max_ms')} ms"
    )


def main() -> None:
    """Run both measurements and print the figures."""
    print(
        f"  host load average (1 min) at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp:
        bench_reformation(Path(tmp) / "kill")
        bench_reformation(Path(tmp) / "term", graceful=True)
        bench_idle(Path(tmp) / "idle5", 5)
        bench_idle(Path(tmp) / "idle20", 20)


if __name__ == "__main__":
    main()
