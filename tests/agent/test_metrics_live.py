"""`/metrics` and `/healthz` of real `votemesh-agent` processes on 127.0.0.x (issue 9, item 4).

Each agent gets a `[metrics]` table on its own loopback address and a port found free at setup.
The tests scrape over real HTTP (urllib) and parse with prometheus_client's parser:

- a split (two of three agents killed, then started again): the survivor's `votemesh_quorate`
  goes 1 -> 0 -> 1, its view changes rise, `/healthz` goes 200 -> 503 -> 200;
- a qdevice loss (a real `votemesh-qnetd` on 127.0.0.1, stopped): `votemesh_qdevice_connected`
  and `votemesh_qdevice_casting_vote` go 1 -> 0 while the two nodes stay quorate;
- a metrics port in use: one clear log line, the agent keeps running and deciding.

Only processes started here are signalled, by PID; every one is stopped in `finally`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.agent.live_agents import AgentCluster, LiveAgent

SETTLE = 30.0
Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def free_tcp_port(address: str) -> int:
    """A TCP port free on `address` right now."""
    with socket.socket() as sock:
        sock.bind((address, 0))
        port: int = sock.getsockname()[1]
        return port


def with_metrics(cluster: AgentCluster, skip: tuple[int, ...] = ()) -> dict[int, str]:
    """Append a `[metrics]` table (the agent's own address, a free port) to each agent's file;
    the base URL of each. `skip`: agents whose port is chosen by the caller (none written)."""
    urls = {}
    for node_id, agent in cluster.agents.items():
        if node_id in skip:
            continue
        port = free_tcp_port(agent.address)
        with agent.config_path.open("a") as f:
            f.write(f'\n[metrics]\nhost = "{agent.address}"\nport = {port}\n')
        urls[node_id] = f"http://{agent.address}:{port}"
    return urls


def http_get(url: str) -> tuple[int, str]:
    """(status code, body) of one GET; (0, error) when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 (http to loopback)
            return int(answer.status), answer.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except OSError as err:
        return 0, str(err)


def scrape(base: str) -> Series:
    """Every sample of `base`/metrics ({} when it does not answer 200)."""
    code, body = http_get(f"{base}/metrics")
    return parse_exposition(body) if code == 200 else {}


def parse_exposition(body: str) -> Series:
    """Every sample of a Prometheus text exposition, by (name, sorted labels)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def node_labels(node_id: int) -> tuple[tuple[str, str], ...]:
    return (("node", f"node{node_id}"), ("node_id", str(node_id)))


def link_labels(node_id: int, link: int = 0) -> tuple[tuple[str, str], ...]:
    return (("link", str(link)), *node_labels(node_id))


@dataclass
class Reading:
    """One scrape of the survivor: when (monotonic), and what it said."""

    at: float
    quorate: float
    members: float
    view_changes: float
    health: int
    """/healthz's status code, a moment after the /metrics scrape."""
    health_quorate: bool
    """`quorate` in that same /healthz answer (JSON)."""


def read(base: str) -> Reading | None:
    """One /metrics plus one /healthz?format=json (two requests: quorum may change between)."""
    series = scrape(base)
    if not series:
        return None
    code, body = http_get(f"{base}/healthz?format=json")
    return Reading(
        time.monotonic(),
        series[("votemesh_quorate", ())],
        series[("votemesh_members", ())],
        series[("votemesh_view_changes_total", ())],
        code,
        bool(json.loads(body)["quorate"]),
    )


def watch(base: str, want: Callable[[Reading], bool], what: str, log: list[Reading]) -> Reading:
    """Scrape every 50 ms (each reading appended to `log`) until `want` holds."""
    deadline = time.monotonic() + SETTLE
    while time.monotonic() < deadline:
        reading = read(base)
        if reading is not None:
            log.append(reading)
            if want(reading):
                return reading
        time.sleep(0.05)
    raise AssertionError(f"{what}: not seen in {SETTLE} s; last readings {log[-3:]}")


@pytest.fixture
def cluster3(tmp_path: Path) -> Iterator[tuple[AgentCluster, dict[int, str]]]:
    """Three agents with metrics on; stopped after the test, pass or fail."""
    cluster = AgentCluster(tmp_path, 3)
    urls = with_metrics(cluster)
    with cluster.agents[1].config_path.open("a") as f:  # its runs show in /metrics
        f.write('\n[[hook]]\nevents = ["quorum_lost"]\ncommand = ["/bin/true"]\n')
    try:
        cluster.start_all()
        cluster.wait_for(lambda: cluster.one_view([1, 2, 3]), SETTLE, "one view of 3")
        yield cluster, urls
    finally:
        cluster.close()


@pytest.mark.timeout(120)
def test_split_shows_in_metrics_and_healthz(cluster3: tuple[AgentCluster, dict[int, str]]) -> None:
    """Node 1 scraped every 50 ms: healthy with 3 members (every node up, every peer link up);
    nodes 2 and 3 killed -> votemesh_quorate 0, members 1, more view changes, peers' member_up
    and link_up 0, /healthz 503 `inquorate`, the quorum_lost hook's run counted; both started
    again -> quorate 1, members 3, view changes higher still, /healthz 200. The readings go
    1 -> 0 -> 1 in that order."""
    cluster, urls = cluster3
    base = urls[1]
    readings: list[Reading] = []
    before = watch(base, lambda r: r.quorate == 1 and r.members == 3, "healthy", readings)
    assert before.health == 200
    series = scrape(base)
    for node_id in (1, 2, 3):
        assert series[("votemesh_member_up", node_labels(node_id))] == 1
    for node_id in (2, 3):
        assert series[("votemesh_link_up", link_labels(node_id))] == 1
        assert 0 < series[("votemesh_link_rtt_seconds", link_labels(node_id))] < 1
    assert http_get(f"{base}/healthz") == (200, "ok\n")

    hook = (("sink", "hook:0"),)
    runs_before = series[("votemesh_hook_runs_total", hook)]  # a start-up flap may have run it
    killed_at = time.monotonic()
    cluster.kill(2)
    cluster.kill(3)
    lost = watch(base, lambda r: r.quorate == 0 and r.members == 1, "inquorate", readings)
    assert lost.health == 503
    assert lost.view_changes > before.view_changes
    assert http_get(f"{base}/healthz") == (503, "inquorate\n")
    series = scrape(base)
    assert series[("votemesh_member_up", node_labels(2))] == 0
    assert series[("votemesh_link_up", link_labels(2))] == 0
    assert series[("votemesh_events_total", (("kind", "quorum_lost"),))] >= 1
    cluster.wait_for(lambda: scrape(base)[("votemesh_hook_runs_total", hook)] > runs_before, 10,
                     "the quorum_lost hook's run in /metrics")  # fmt: skip
    assert scrape(base)[("votemesh_sink_failures_total", hook)] == 0

    restarted_at = time.monotonic()
    cluster.start(2)
    cluster.start(3)
    back = watch(base, lambda r: r.quorate == 1 and r.members == 3, "quorate again", readings)
    assert back.health == 200
    assert back.view_changes > lost.view_changes
    assert scrape(base)[("votemesh_events_total", (("kind", "quorum_gained"),))] >= 1

    # the timeline: healthy, then inquorate, then healthy, each /healthz agreeing with quorate
    changes = [
        r.quorate for i, r in enumerate(readings) if i == 0 or r.quorate != readings[i - 1].quorate
    ]
    assert changes == [1, 0, 1], readings
    assert all((r.health == 200) == r.health_quorate for r in readings), readings
    print(f"\nsplit: kill -> votemesh_quorate 0 scraped after {lost.at - killed_at:.2f} s, "
          f"restart -> 1 after {back.at - restarted_at:.2f} s; "
          f"view changes {before.view_changes:.0f} -> {lost.view_changes:.0f} -> "
          f"{back.view_changes:.0f}; {len(readings)} scrapes")  # fmt: skip


# ---------------------------------------------------------------- a real qnetd on loopback
@dataclass
class LoopbackQnetd:
    """`votemesh-qnetd run` on 127.0.0.1 (a free port), its state and client credentials."""

    workdir: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [
            sys.executable, "-m", "qnetd", "run", "--state-dir", str(self.workdir / "state"),
            "--listen", "127.0.0.1", "--port", str(self.port), "--enroll-listen", "off",
            "--control-socket", str(self.workdir / "qnetd.sock"),
        ]  # fmt: skip
        with (self.workdir / "qnetd.log").open("ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        AgentCluster.wait_for(self.listening, SETTLE, "votemesh-qnetd listening")

    def listening(self) -> bool:
        assert self.process is not None
        assert self.process.poll() is None, (self.workdir / "qnetd.log").read_text()[-2000:]
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def credentials(self, cluster: str) -> Path:
        """`certs client`: the directory with ca.pem, client.pem, client.key."""
        out = self.workdir / f"credentials-{cluster}"
        subprocess.run(
            [sys.executable, "-m", "qnetd", "certs", "client", "--cluster", cluster, "--out",
             str(out), "--state-dir", str(self.workdir / "state")],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        return out

    def stop(self) -> None:
        """SIGTERM and reap (the process we started, by PID)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def qdevice_table(port: int, creds: Path) -> str:
    """`[qdevice]`: ffsplit, 1 vote, tie-breaker lowest, TLS with the qnetd's client certificate."""
    return (
        f'[qdevice]\nhost = "127.0.0.1"\nport = {port}\nalgorithm = "ffsplit"\n'
        f'tie_breaker = "lowest"\nvotes = 1\ntls = "on"\nca_pem = "{creds}/ca.pem"\n'
        f'cert_pem = "{creds}/client.pem"\nkey_pem = "{creds}/client.key"\n'
        "heartbeat_interval = 2.0\n"
    )


def qdevice_series(base: str) -> tuple[float, float, float, float]:
    """(connected, casting_vote, qdevice_votes, quorate) from one scrape."""
    s = scrape(base)
    return (
        s.get(("votemesh_qdevice_connected", ()), -1),
        s.get(("votemesh_qdevice_casting_vote", ()), -1),
        s.get(("votemesh_quorum_votes", (("type", "qdevice_votes"),)), -1),
        s.get(("votemesh_quorate", ()), -1),
    )


def shows(base: str, want: tuple[float, ...]) -> Callable[[], bool]:
    """A check for `wait_for`: the qdevice series of `base` are `want`."""
    return lambda: qdevice_series(base) == want


@pytest.mark.timeout(120)
def test_qdevice_loss_shows_in_metrics(tmp_path: Path) -> None:
    """Two agents and a real votemesh-qnetd on 127.0.0.1: with the device both scrape
    connected 1, casting_vote 1, qdevice_votes 1, quorate 1; the qnetd stopped (SIGTERM) ->
    connected 0, casting_vote 0, qdevice_votes 0, still quorate (2 of 3 votes), /healthz 200,
    one more `qdevice_disconnected` event each."""
    qnetd = LoopbackQnetd(tmp_path / "qnetd", free_tcp_port("127.0.0.1"))
    cluster: AgentCluster | None = None
    try:
        qnetd.start()
        creds = qnetd.credentials("live")
        cluster = AgentCluster(tmp_path / "agents", 2, extra=qdevice_table(qnetd.port, creds))
        urls = with_metrics(cluster)
        cluster.start_all()
        with_device = (1.0, 1.0, 1.0, 1.0)
        for base in urls.values():
            AgentCluster.wait_for(shows(base, with_device), SETTLE, f"{base}: the device's vote")
        disconnects = {
            i: scrape(b)[("votemesh_events_total", (("kind", "qdevice_disconnected"),))]
            for i, b in urls.items()
        }
        stopped = time.monotonic()
        qnetd.stop()
        without = (0.0, 0.0, 0.0, 1.0)
        for base in urls.values():
            AgentCluster.wait_for(shows(base, without), SETTLE, f"{base}: device gone, quorate")
        took = time.monotonic() - stopped
        for node_id, base in urls.items():
            assert http_get(f"{base}/healthz") == (200, "ok\n")
            after = scrape(base)[("votemesh_events_total", (("kind", "qdevice_disconnected"),))]
            assert after == disconnects[node_id] + 1
        print(f"\nqnetd stopped -> votemesh_qdevice_connected 0 on both within {took:.2f} s")
    finally:
        if cluster is not None:
            cluster.close()
        qnetd.stop()


@pytest.mark.timeout(60)
def test_sighup_moves_the_metrics_port(tmp_path: Path) -> None:
    """A new `[metrics]` port and SIGHUP: the new port answers, the old one no longer does,
    the agent stays quorate; the process series (CPU, memory) are there too."""
    cluster = AgentCluster(tmp_path, 1)
    agent = cluster.agents[1]
    original = agent.config_path.read_text()
    old = with_metrics(cluster)[1]
    try:
        cluster.start_all()
        cluster.wait_for(lambda: bool(scrape(old)), SETTLE, "metrics on the first port")
        assert ("process_cpu_seconds_total", ()) in scrape(old)
        new_port = free_tcp_port(agent.address)
        agent.config_path.write_text(
            f'{original}\n[metrics]\nhost = "{agent.address}"\nport = {new_port}\n'
        )
        assert agent.process is not None
        os.kill(agent.process.pid, signal.SIGHUP)
        new = f"http://{agent.address}:{new_port}"
        cluster.wait_for(lambda: bool(scrape(new)), 10, "metrics on the new port")
        assert http_get(f"{old}/healthz")[0] == 0  # nothing listens there any more
        assert http_get(f"{new}/healthz") == (200, "ok\n")
        assert agent.running
    finally:
        cluster.close()


# ---------------------------------------------------------------- bad input
@pytest.mark.timeout(120)
def test_metrics_port_in_use_one_line_agent_keeps_deciding(tmp_path: Path) -> None:
    """Agent 2's metrics port is held by another socket: its log says so in exactly one line
    (address and what to change), it stays running, the two agents form one quorate view,
    and after node 1 is killed it still decides (inquorate alone); no retry storm (still one
    line). Agent 1's metrics answer meanwhile."""
    cluster = AgentCluster(tmp_path, 2)
    urls = with_metrics(cluster, skip=(2,))
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.2", 0))
        holder.listen()
        port = holder.getsockname()[1]
        agent2: LiveAgent = cluster.agents[2]
        with agent2.config_path.open("a") as f:
            f.write(f'\n[metrics]\nhost = "127.0.0.2"\nport = {port}\n')
        cluster.start_all()
        cluster.wait_for(lambda: cluster.one_view([1, 2]), SETTLE, "one view of 2")
        assert scrape(urls[1])[("votemesh_members", ())] == 2
        cluster.kill(1)
        cluster.wait_for(lambda: (agent2.status() or {}).get("quorate") is False, SETTLE,
                         "agent 2 inquorate alone")  # fmt: skip
        assert agent2.running
        lines = [r for r in agent2.log_records() if "metrics" in str(r.get("event"))]
        assert [(r["level"], r["event"]) for r in lines] == [
            ("error", f"metrics off: 127.0.0.2:{port} in use; pick another [metrics] port")
        ]
        assert "Traceback" not in agent2.log_path.read_text()
    finally:
        holder.close()
        cluster.close()
