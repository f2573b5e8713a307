"""Side by side with corosync in the lab (issue 10 item 7; docs/design.md §4.8).

    make bench-lab                                  # = python -m tests.bench lab_corosync
    BENCH_LAB_QUICK=1 python -m tests.bench lab_corosync     # 1-minute loss phases, 1 repetition
    BENCH_LAB_REPS=3 BENCH_LAB_ONLY=start3,split5 python -m tests.bench lab_corosync

The same lab topology (namespace hosts n1..nN on the tap switch, plus host `qnetd` where a
scenario has one) runs once with votemesh (one `votemesh-agent` per node, votemesh-qnetd) and
once with Debian's stack (corosync + corosync-qdevice per node, corosync-qnetd), never at once:
one stack is started, measured and its lab torn down before the other starts, alternating
A B B A across repetitions. A lock (/run/votemesh-lab/bench.lock) refuses a second bench.

Each stack runs with its defaults: corosync 3.1 knet with crypto, token 3000 ms + 650 ms per node
above 2 (token_coefficient), consensus 1.2 x token, qdevice net ffsplit (tie-breaker lowest),
timeout 10 s, sync_timeout 30 s; votemesh the `lan` timing preset (heartbeat 0.1 s, a peer lost
after 0.65 s), static peers, `[qdevice]` ffsplit tie-breaker lowest, heartbeat 8 s.

Times come from each daemon's own log (the agents' JSON `timestamp`, corosync's `timestamp:
hires` lines; see tests/bench/lab_compare.py) against the wall time at which the fault was in
place (the switch acknowledged the block, or `kill` returned). Sessions (each: a fresh lab):

* start3: 3 nodes: cold start to all quorate; KILLS x kill -9 of one node (round robin) to a new
  view without it on all survivors; the node is restarted and rejoins before the next kill.
* split5: 5 nodes: idle CPU (% of a core, 60 s, utime+stime of the node's processes from
  /proc/PID/stat) and RSS (VmRSS sum); SPLITS x 3|2 to minority inquorate and majority in a new
  view, counting splits in which a majority node lost quorum; then every directed pair 20 ms
  +- 20 ms (uniform, the tap switch's jitter) at 5 % and at 20 % loss for LOSS_SECONDS each:
  view changes and inquorate seconds per node, scaled to 10 minutes.
* qnetd2 / qnetd4: 2 nodes + qnetd split 1|1, 4 nodes + qnetd split 2|2 (the qnetd reachable
  from both halves) to settled: the half with node 1 quorate, the other inquorate, and no node
  logging a membership or quorum change for 3 s; the figure is the last change's time.
* start16: 16 nodes: cold start, KILLS16 kills, SPLITS 9|7 (corosync's token is 12.1 s there).

Needs root (namespaces, /dev/net/tun) and corosync, corosync-qdevice, corosync-qnetd; prints why
and returns otherwise. Every wait has a deadline: a missed one ends that session with a note and
its rows show fewer samples. Prints figures; never fails on a timing.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from votemesh_lab import corosync as corosync_mod
from votemesh_lab.agents import LabAgent, pem_credentials, start_agents
from votemesh_lab.corosync import (
    COROSYNC_PRIVATE_DIRS,
    CorosyncCluster,
    QdeviceConfig,
    Timings,
    quorate_with_device,
    sides,
)
from votemesh_lab.netns import Lab, LabError, missing_reason
from votemesh_lab.qnetd import DebianQnetdInNetns, QnetdUnderTest, VotemeshQnetd

from tests.bench.lab_compare import (
    INQUORATE,
    QUORATE,
    Metric,
    Record,
    Samples,
    first_inquorate,
    first_quorate,
    first_view_without,
    in_view_of,
    inquorate_seconds,
    last_change,
    latest,
    parse_agent_log,
    parse_corosync_log,
    per_ten_minutes,
    stack_order,
    table,
    view_changes,
)

LOCK = Path("/run/votemesh-lab/bench.lock")
#: corosync's own defaults (corosync.conf(5), corosync-qdevice(8)).
COROSYNC_DEFAULTS = Timings(
    token_ms=3000, token_coefficient_ms=650, device_timeout_ms=10000, device_sync_timeout_ms=30000
)
AGENT_QDEVICE_HEARTBEAT = 8.0  # the agent's default `[qdevice] heartbeat_interval`
DEADLINE = 180.0  # any single wait (16 corosync nodes need ~27 s per membership change)
SETTLE_QUIET = 3.0  # "settled": no node logged a change for this long
IDLE_SECONDS = 60.0
DELAY_MS, JITTER_MS = 20.0, 20.0
CLUSTER = "benchlab"


@dataclass(frozen=True)
class Settings:
    """Sizes from the environment (BENCH_LAB_QUICK=1 shrinks the long ones)."""

    quick: bool
    reps: int
    kills: int
    kills16: int
    splits: int
    loss_seconds: float
    only: frozenset[str]

    @classmethod
    def from_env(cls) -> Settings:
        """BENCH_LAB_QUICK, BENCH_LAB_REPS, BENCH_LAB_KILLS, BENCH_LAB_SPLITS,
        BENCH_LAB_LOSS_SECONDS, BENCH_LAB_ONLY (comma list of sessions)."""
        quick = os.environ.get("BENCH_LAB_QUICK") == "1"
        env = os.environ.get
        only = frozenset(s for s in env("BENCH_LAB_ONLY", "").split(",") if s)
        return cls(
            quick=quick,
            reps=max(1, int(env("BENCH_LAB_REPS", "1" if quick else "5"))),
            kills=max(1, int(env("BENCH_LAB_KILLS", "10" if quick else "20"))),
            kills16=max(1, int(env("BENCH_LAB_KILLS16", "3" if quick else "5"))),
            splits=max(1, int(env("BENCH_LAB_SPLITS", "3" if quick else "5"))),
            loss_seconds=float(env("BENCH_LAB_LOSS_SECONDS", "60" if quick else "600")),
            only=only,
        )


METRICS = (
    Metric("start3", "cold start to all quorate, 3 nodes", "ms", "p50"),
    Metric("kill3_p50", "kill -9 to a new view on all survivors, 3 nodes", "ms", "p50"),
    Metric("kill3_p99", "kill -9 to a new view on all survivors, 3 nodes", "ms", "p99"),
    Metric("split5_minority", "5 nodes 3|2: minority inquorate", "ms", "p50"),
    Metric("split5_majority_view", "5 nodes 3|2: majority in its new view", "ms", "p50"),
    Metric(
        "split5_majority_lost", "5 nodes 3|2: splits where the majority lost quorum", "count", "sum"
    ),
    Metric("qnetd2_settled", "2 nodes + qnetd 1|1: settled", "ms", "p50"),
    Metric("qnetd4_settled", "4 nodes + qnetd 2|2: settled", "ms", "p50"),
    Metric(
        "loss5_views", "5 % loss, 20+-20 ms: view changes per node per 10 min", "count", "mean", 1
    ),
    Metric("loss5_inq", "5 % loss, 20+-20 ms: inquorate per node per 10 min", "s", "mean", 1),
    Metric(
        "loss20_views", "20 % loss, 20+-20 ms: view changes per node per 10 min", "count", "mean", 1
    ),
    Metric("loss20_inq", "20 % loss, 20+-20 ms: inquorate per node per 10 min", "s", "mean", 1),
    Metric("idle_cpu", "idle CPU per node, 5 nodes, 60 s", "% of a core", "mean", 2),
    Metric("rss", "RSS per node, 5 nodes", "MiB", "mean", 1),
    Metric("start16", "cold start to all quorate, 16 nodes", "ms", "p50"),
    Metric("kill16_p50", "kill -9 to a new view on all survivors, 16 nodes", "ms", "p50"),
    Metric("kill16_p99", "kill -9 to a new view on all survivors, 16 nodes", "ms", "p99"),
    Metric("split16_minority", "16 nodes 9|7: minority inquorate", "ms", "p50"),
    Metric(
        "split16_majority_lost",
        "16 nodes 9|7: splits where the majority lost quorum",
        "count",
        "sum",
    ),
)


class MissedError(LabError):
    """A wait of the bench passed its deadline: the session ends with a note."""


# -- the two stacks -----------------------------------------------------------------------------


class Stack:
    """One stack on one lab: start, records per node, kill/restart, health, processes."""

    name = ""

    def __init__(self, lab: Lab, workdir: Path, nodes: Sequence[int], qnetd: bool) -> None:
        self.lab = lab
        self.workdir = workdir
        self.nodes = list(nodes)
        self.names = [f"n{i}" for i in nodes]
        self.with_qnetd = qnetd
        self.started_at = 0.0

    @staticmethod
    def host_names(nodes: Sequence[int], qnetd: bool) -> list[str]:
        """The lab's hosts for this topology."""
        return [*(["qnetd"] if qnetd else []), *(f"n{i}" for i in nodes)]

    def start(self) -> None:
        """Start every daemon (the qnetd first, if any); sets `started_at` just before the
        nodes' daemons start."""
        raise NotImplementedError

    def log_text(self, name: str) -> str:
        """Everything the node's membership daemon logged."""
        raise NotImplementedError

    def records(self, name: str) -> list[Record]:
        """The node's membership and quorum records."""
        raise NotImplementedError

    def kill(self, name: str) -> None:
        """kill -9 of every daemon of the node."""
        raise NotImplementedError

    def restart(self, name: str) -> None:
        """Start the node's daemons again after `kill`."""
        raise NotImplementedError

    def healthy_with_device(self) -> bool:
        """Every node quorate in one view of all, counting the qdevice's vote (status queries)."""
        raise NotImplementedError

    def pids(self, name: str) -> list[int]:
        """PIDs of the node's processes."""
        raise NotImplementedError

    def all_records(self) -> dict[str, list[Record]]:
        """Every node's records."""
        return {name: self.records(name) for name in self.names}


class VotemeshStack(Stack):
    """votemesh-agent per node (lan preset), votemesh-qnetd."""

    name = "votemesh"

    def start(self) -> None:
        qnetd: QnetdUnderTest | None = None
        pem = None
        if self.with_qnetd:
            qnetd = VotemeshQnetd(self.workdir / "qnetd")
            qnetd.start(self.lab["qnetd"])
            pem = pem_credentials(qnetd, qnetd.client_credentials(CLUSTER), self.workdir / "pem")
        self.started_at = time.time()
        self.agents = {
            f"n{a.node_id}": a
            for a in start_agents(
                self.lab,
                qnetd,
                pem,
                self.workdir / "agents",
                self.nodes,
                cluster=CLUSTER,
                timing="lan",
                qdevice_heartbeat=AGENT_QDEVICE_HEARTBEAT,
            )
        }

    def _agent(self, name: str) -> LabAgent:
        return self.agents[name]

    def log_text(self, name: str) -> str:
        process = self._agent(name).process
        return process.log_path.read_text(errors="replace") if process is not None else ""

    def records(self, name: str) -> list[Record]:
        return parse_agent_log(self.log_text(name))

    def kill(self, name: str) -> None:
        process = self._agent(name).process
        if process is not None:
            os.kill(process.pid, signal.SIGKILL)
            process.process.wait(timeout=10)

    def restart(self, name: str) -> None:
        self._agent(name).start()

    def healthy_with_device(self) -> bool:
        for agent in self.agents.values():
            doc = agent.status()
            if doc.get("members") != self.nodes or not doc.get("quorate"):
                return False
            if doc.get("qdevice", {}).get("vote") is not True:
                return False
        return True

    def pids(self, name: str) -> list[int]:
        process = self._agent(name).process
        return [process.pid] if process is not None and process.alive() else []


class CorosyncStack(Stack):
    """corosync (+ corosync-qdevice) per node with corosync's defaults, corosync-qnetd."""

    name = "corosync"

    def start(self) -> None:
        device = None
        credentials = None
        if self.with_qnetd:
            qnetd = DebianQnetdInNetns(self.workdir / "qnetd")
            qnetd.start(self.lab["qnetd"])
            credentials = qnetd.client_credentials(CLUSTER)
            device = QdeviceConfig(self.lab["qnetd"].address, qnetd.port, "ffsplit", "lowest")
        self.cluster = CorosyncCluster(
            [self.lab[n] for n in self.names], CLUSTER, device, COROSYNC_DEFAULTS
        )
        self.cluster.configure(credentials)
        self.started_at = time.time()
        self.cluster.start(timeout=DEADLINE)

    def log_text(self, name: str) -> str:
        return self.cluster.corosync[name].log_path.read_text(errors="replace")

    def records(self, name: str) -> list[Record]:
        now = time.time()
        offset = float(time.localtime(now).tm_gmtoff)
        year = datetime.fromtimestamp(now, UTC).year
        return parse_corosync_log(self.log_text(name), year, now, offset)

    def kill(self, name: str) -> None:
        for tracked in (self.cluster.qdevices.get(name), self.cluster.corosync[name]):
            if tracked is not None and tracked.alive():
                os.kill(tracked.pid, signal.SIGKILL)
                tracked.process.wait(timeout=10)

    def restart(self, name: str) -> None:
        host = self.lab[name]
        self.cluster.corosync[name] = host.start(["corosync", "-f"], label="corosync")
        if self.cluster.qdevice is not None:
            self.cluster.qdevices[name] = host.start(["corosync-qdevice", "-f"], label="qdevice")

    def healthy_with_device(self) -> bool:
        try:
            statuses = self.cluster.statuses()
        except LabError:
            return False
        if sides(self.cluster, [self.nodes])(statuses) is not None:
            return False
        return quorate_with_device(self.cluster, self.nodes)(statuses) is None

    def pids(self, name: str) -> list[int]:
        tracked = [self.cluster.corosync.get(name), self.cluster.qdevices.get(name)]
        return [t.pid for t in tracked if t is not None and t.alive()]


STACK_TYPES: dict[str, type[Stack]] = {"votemesh": VotemeshStack, "corosync": CorosyncStack}


@contextlib.contextmanager
def running(kind: str, workdir: Path, nodes: Sequence[int], qnetd: bool) -> Iterator[Stack]:
    """A fresh lab with one stack started in it; the lab (every process in it) goes on exit."""
    private = COROSYNC_PRIVATE_DIRS if kind == "corosync" else ()
    names = Stack.host_names(nodes, qnetd)
    with Lab(workdir / "lab", names, private_dirs=private, switch="tap") as lab:
        stack = STACK_TYPES[kind](lab, workdir, nodes, qnetd)
        stack.start()
        yield stack


# -- waiting on logs ----------------------------------------------------------------------------


def wait_for(
    probe: Callable[[], float | bool | None], what: str, deadline: float = DEADLINE
) -> Any:
    """Poll `probe` every 0.1 s until it returns something other than None/False."""
    end = time.monotonic() + deadline
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() > end:
            raise MissedError(f"no {what} within {deadline:.0f} s")
        time.sleep(0.1)


def all_in_one_view(stack: Stack, since: float, fresh: Sequence[str] = ()) -> bool:
    """Every node logged a view of all nodes since `since` and is quorate; the `fresh` ones
    (just (re)started) also logged becoming quorate since then."""
    for name, unsorted in stack.all_records().items():
        records = sorted(unsorted, key=lambda r: r.t)
        if not in_view_of(records, stack.nodes, since):
            return False
        if name in fresh and first_quorate(records, since) is None:
            return False
    return True


def settle_whole(stack: Stack, since: float, fresh: Sequence[str] = ()) -> None:
    """Wait until all nodes are in one quorate view (and the qdevice votes, with a qnetd)."""
    wait_for(lambda: all_in_one_view(stack, since, fresh), f"quorate view of {len(stack.nodes)}")
    if stack.with_qnetd:
        wait_for(stack.healthy_with_device, "qdevice vote on every node")


# -- measurements -------------------------------------------------------------------------------


def cold_start(stack: Stack, samples: Samples, key: str) -> None:
    """Started before the call; wait for all quorate, one sample of start -> last node quorate."""
    start = stack.started_at
    done = wait_for(
        lambda: latest(first_quorate(r, start) for r in stack.all_records().values()),
        "all nodes quorate after start",
    )
    samples.add(stack.name, key, (done - start) * 1000)
    settle_whole(stack, start, stack.names)


def kills(stack: Stack, samples: Samples, keys: tuple[str, str], count: int) -> None:
    """`count` kill -9 (round robin), each to a new view without the victim on all survivors."""
    for k in range(count):
        victim = stack.names[k % len(stack.names)]
        victim_id = stack.nodes[k % len(stack.nodes)]
        stack.kill(victim)
        fault = time.time()
        survivors = [n for n in stack.names if n != victim]

        def new_view(
            survivors: list[str] = survivors, fault: float = fault, gone: int = victim_id
        ) -> float | None:
            return latest(first_view_without(stack.records(n), fault, [gone]) for n in survivors)

        done = wait_for(new_view, f"new view without {victim} on all survivors")
        for key in keys:
            samples.add(stack.name, key, (done - fault) * 1000)
        time.sleep(0.5)
        again = time.time()
        stack.restart(victim)
        settle_whole(stack, again, [victim])
        time.sleep(1.0)


def splits(
    stack: Stack,
    samples: Samples,
    groups: tuple[Sequence[int], Sequence[int]],
    count: int,
    prefix: str,
) -> None:
    """`count` splits majority | minority (no qnetd): minority inquorate, majority new view,
    whether a majority node lost quorum; heal and settle between."""
    majority, minority = ([f"n{i}" for i in g] for g in groups)
    for _ in range(count):
        stack.lab.partition(majority, minority)
        fault = time.time()

        def minority_lost(at: float = fault) -> float | None:
            return latest(first_inquorate(stack.records(n), at) for n in minority)

        def majority_view(at: float = fault) -> float | None:
            return latest(first_view_without(stack.records(n), at, groups[1]) for n in majority)

        lost = wait_for(minority_lost, "minority inquorate")
        view = wait_for(majority_view, "majority in its new view")
        time.sleep(SETTLE_QUIET)
        heal = time.time()
        samples.add(stack.name, f"{prefix}_minority", (lost - fault) * 1000)
        samples.add(stack.name, f"{prefix}_majority_view", (view - fault) * 1000)
        flips = [first_inquorate(stack.records(n), fault) for n in majority]
        samples.add(
            stack.name,
            f"{prefix}_majority_lost",
            float(any(t is not None and t < heal for t in flips)),
        )
        stack.lab.heal()
        settle_whole(stack, heal)
        time.sleep(1.0)


def qnetd_splits(
    stack: Stack,
    samples: Samples,
    groups: tuple[Sequence[int], Sequence[int]],
    count: int,
    key: str,
) -> None:
    """`count` even splits with the qnetd reachable from both: to settled (last change, then
    SETTLE_QUIET s of no change), the half with node 1 quorate and the other inquorate."""
    winners, losers = ([f"n{i}" for i in g] for g in groups)
    for _ in range(count):
        stack.lab.partition(winners, losers)
        fault = time.time()

        def settled(fault: float = fault) -> float | None:
            records = stack.all_records()
            for name in losers:
                quorum = [r for r in records[name] if r.kind in (QUORATE, INQUORATE)]
                if not quorum or quorum[-1].kind != INQUORATE or quorum[-1].t < fault:
                    return None
            for name in winners:
                if not in_view_of(sorted(records[name], key=lambda r: r.t), groups[0], fault):
                    return None
            last = last_change(records, fault)
            if last is None or time.time() - last < SETTLE_QUIET:
                return None
            return last

        done = wait_for(settled, "settled split")
        samples.add(stack.name, key, (done - fault) * 1000)
        heal = time.time()
        stack.lab.heal()
        settle_whole(stack, heal)
        time.sleep(1.0)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    """VmRSS of a process in MiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def idle(stack: Stack, samples: Samples) -> None:
    """Idle CPU per node over IDLE_SECONDS and RSS per node, in one quorate view."""
    pids = {name: stack.pids(name) for name in stack.names}
    before = {name: sum(cpu_seconds(p) for p in ps) for name, ps in pids.items()}
    began = time.monotonic()
    time.sleep(IDLE_SECONDS)
    spent = time.monotonic() - began
    for name, ps in pids.items():
        used = sum(cpu_seconds(p) for p in ps) - before[name]
        samples.add(stack.name, "idle_cpu", used / spent * 100)
        samples.add(stack.name, "rss", sum(rss_mib(p) for p in ps))


def lossy(stack: Stack, samples: Samples, loss: float, seconds: float, prefix: str) -> None:
    """Every directed pair 20 +- 20 ms and `loss` for `seconds`: per node view changes and
    inquorate seconds, scaled to 10 minutes; then clear and settle."""
    stack.lab.impair_all(loss=loss, delay_ms=DELAY_MS, jitter_ms=JITTER_MS)
    start = time.time()
    time.sleep(seconds)
    end = time.time()
    stack.lab.impair_all()
    for name in stack.names:
        records = stack.records(name)
        samples.add(
            stack.name,
            f"{prefix}_views",
            per_ten_minutes(view_changes(records, start, end), end - start),
        )
        inquorate = inquorate_seconds(records, start, end)
        samples.add(stack.name, f"{prefix}_inq", per_ten_minutes(inquorate, end - start))
    wait_for(lambda: all_in_one_view(stack, 0.0), "quorate view of all after the loss phase")


# -- sessions -----------------------------------------------------------------------------------


def session_start3(stack: Stack, samples: Samples, settings: Settings) -> None:
    cold_start(stack, samples, "start3")
    time.sleep(1.0)
    kills(stack, samples, ("kill3_p50", "kill3_p99"), settings.kills)


def session_split5(stack: Stack, samples: Samples, settings: Settings) -> None:
    cold_start(stack, samples, "start5")
    time.sleep(5.0)
    idle(stack, samples)
    splits(stack, samples, ((1, 2, 3), (4, 5)), settings.splits, "split5")
    lossy(stack, samples, 0.05, settings.loss_seconds, "loss5")
    lossy(stack, samples, 0.20, settings.loss_seconds, "loss20")


def session_qnetd2(stack: Stack, samples: Samples, settings: Settings) -> None:
    cold_start(stack, samples, "start_q2")
    qnetd_splits(stack, samples, ((1,), (2,)), settings.splits, "qnetd2_settled")


def session_qnetd4(stack: Stack, samples: Samples, settings: Settings) -> None:
    cold_start(stack, samples, "start_q4")
    qnetd_splits(stack, samples, ((1, 2), (3, 4)), settings.splits, "qnetd4_settled")


def session_start16(stack: Stack, samples: Samples, settings: Settings) -> None:
    cold_start(stack, samples, "start16")
    time.sleep(2.0)
    kills(stack, samples, ("kill16_p50", "kill16_p99"), settings.kills16)
    splits(stack, samples, (range(1, 10), range(10, 17)), settings.splits, "split16")


@dataclass(frozen=True)
class Session:
    """One topology and what is measured on it."""

    name: str
    nodes: tuple[int, ...]
    qnetd: bool
    run: Callable[[Stack, Samples, Settings], None]


SESSIONS = (
    Session("start3", (1, 2, 3), False, session_start3),
    Session("split5", (1, 2, 3, 4, 5), False, session_split5),
    Session("qnetd2", (1, 2), True, session_qnetd2),
    Session("qnetd4", (1, 2, 3, 4), True, session_qnetd4),
    Session("start16", tuple(range(1, 17)), False, session_start16),
)


def run_session(session: Session, kind: str, samples: Samples, settings: Settings) -> None:
    """One session on one stack in a fresh lab; a missed wait or lab error becomes a note."""
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"bench-lab-{kind}-") as tmp:
        try:
            with running(kind, Path(tmp), session.nodes, session.qnetd) as stack:
                session.run(stack, samples, settings)
        except (LabError, subprocess.SubprocessError, OSError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            samples.notes.append(f"{session.name} / {kind}: {first[:300]}")
    print(
        f"  {session.name:<8} {kind:<9} {time.monotonic() - began:6.0f} s  "
        f"load {os.getloadavg()[0]:.1f}",
        flush=True,
    )


# -- the lock and main --------------------------------------------------------------------------


@contextlib.contextmanager
def bench_lock(path: Path = LOCK) -> Iterator[bool]:
    """Hold an exclusive flock on `path`; yields False (and holds nothing) when another has it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def unavailable() -> str | None:
    """Why the bench cannot run here, or None."""
    return (
        missing_reason("tap")
        or corosync_mod.missing_reason()
        or DebianQnetdInNetns.unavailable_reason()
        or VotemeshQnetd.unavailable_reason()
    )


def machine() -> str:
    """One line about this machine."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{platform.system()} {platform.release()}, {os.cpu_count()} CPUs ({model}), Python {platform.python_version()}"  # noqa: E501


def versions() -> str:
    """corosync's and the qnetd/qdevice packages' versions."""
    out = []
    for package in ("corosync", "corosync-qdevice", "corosync-qnetd"):
        result = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", package],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        out.append(f"{package} {result.stdout.strip() or '?'}")
    return ", ".join(out)


def main() -> None:
    """Run every session on both stacks (A B B A) and print the table."""
    reason = unavailable()
    if reason is not None:
        print(f"  skipped: {reason}")
        return
    settings = Settings.from_env()
    with bench_lock() as mine:
        if not mine:
            print(f"  refused: another bench-lab holds {LOCK} (pid {LOCK.read_text().strip()})")
            sys.exit(1)
        samples = Samples()
        loads = [os.getloadavg()[0]]
        began = time.monotonic()
        print(
            f"  {'quick' if settings.quick else 'full'}: {settings.reps} repetition(s), "
            f"{settings.kills} kills (3 nodes), {settings.kills16} kills (16 nodes), "
            f"{settings.splits} splits per session, loss phases {settings.loss_seconds:.0f} s",
            flush=True,
        )
        order = stack_order(settings.reps)
        for session in SESSIONS:
            if settings.only and session.name not in settings.only:
                continue
            for kind in order:
                run_session(session, kind, samples, settings)
                loads.append(os.getloadavg()[0])
        print()
        print(f"  machine: {machine()}; {versions()}")
        print(
            f"  load average (1 min) at the start and after each session: "
            f"min {min(loads):.1f}, max {max(loads):.1f}, mean {sum(loads) / len(loads):.1f}; "
            f"wall time {(time.monotonic() - began) / 60:.0f} min"
        )
        print(
            "  corosync: knet + crypto, token 3000 ms + 650 ms/node above 2, consensus 1.2 x "
            "token; qdevice ffsplit lowest, timeout 10 s, sync_timeout 30 s. votemesh: lan "
            "preset (heartbeat 0.1 s, lost after 0.65 s), qdevice ffsplit lowest, heartbeat 8 s."
        )
        print()
        for line in table(METRICS, samples):
            print(f"  {line}")
        for note in samples.notes:
            print(f"  note: {note}")


if __name__ == "__main__":
    main()
