"""Scaling (issue 11): real agents at 5, 16 and 32, the simulator at 64, 128 and 256; one table.

    python -m tests.bench scale                     (part of `make bench`; figures only)
    BENCH_SCALE_LONG=1 python -m tests.bench scale  (the issue's figures; ~25 min)

Real `votemesh-agent` processes (LAN preset: 0.1 s heartbeats, failure timeout 0.65 s) on
127.0.0.1..N with static peers (`tests.agent.live_agents.AgentCluster`). As root they run in a
network namespace this bench creates (`vmscale-<random>`: its own loopback, nothing else) so
that a split can be cut with iptables rules INSIDE it; the host's lo and firewall are never
touched, and the namespace is deleted at the end, failure or not. Without root they run on the
host's loopback and the split is skipped (the reason is printed). Per size:

* formation: from starting all N processes at once to one quorate view of N (Python start-up
  included);
* idle: CPU (utime + stime from /proc/PID/stat) over the window, per agent mean and max, RSS
  (VmRSS), datagrams/s sent and received per agent (the status document's runtime counters over
  the same window), and the view changes logged in the window by any agent (want 0);
* kill -9: K times one agent (spread over the ids) -> the time until ALL survivors logged a
  `view_installed` of exactly the survivors; p50 and p99 over the K kills; then it restarts
  and the cluster is one view of N again before the next kill;
* split 60/40 (namespace only): nodes 1..round(0.6 N) | the rest, both directions dropped at
  once (one `iptables-restore`); the minority's `quorum_lost` (max over its nodes; max over the
  splits), any `quorum_lost` on the majority side (want none), the heal (rules flushed) -> one
  view of N on every node (max over the splits).

The simulator rows come from `tests.bench.bench_sim.scale_rows(sizes)` (core cost per
simulated node in % of a core, the null core's, formation, split times, wall time, the checker's
violations). Then ONE table (rows: sizes) and each curve's slope: least squares per added node,
the log-log exponent, and the value extrapolated to N=100. The load average is printed with
every figure: the machine is shared, and CPU figures only compare within one run.

Default mode: 60 s idle, 10 kills at 32 agents (5 below), 3 splits; long mode
(BENCH_SCALE_LONG=1): 600 s idle (the issue's "0 view changes in 10 minutes"), 10 kills and 10
splits at every size. Environment overrides (comma lists of sizes; "" for none):
BENCH_SCALE_SIZES=5,16,32  BENCH_SCALE_SIM=64,128,256  BENCH_SCALE_IDLE=seconds
BENCH_SCALE_KILLS=K  BENCH_SCALE_SPLITS=S  BENCH_SCALE_BASELINE=<git revision>[,<revision>...]:
also run every agent size on each revision's code (`git archive` + PYTHONPATH), in that order,
right before the current code, so that before and after are measured under the same load (a
size listed twice, e.g. 16,32,16, interleaves them twice).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.agent.live_agents import LAN_TIMING, AgentCluster
from tests.bench.bench_agent import cpu_seconds, rss_mib
from tests.bench.bench_lab_corosync import machine
from tests.bench.scale_table import cell, curve_line, markdown_table, percentile

REPO = Path(__file__).resolve().parents[2]
SETTLE = 120.0
"""Seconds allowed for any view to form (32 agents starting at once on 2 busy cores)."""
PAUSE = 1.0
"""Seconds of calm before each kill or split."""
HOLD = 1.0
"""Seconds a split is held after both sides settled."""
MAJORITY_SHARE = 0.6


class BenchError(RuntimeError):
    """A setting or a step of the bench failed: one line, no traceback."""


@dataclass(frozen=True)
class Mode:
    """What one run measures."""

    name: str
    sizes: tuple[int, ...]
    sim_sizes: tuple[int, ...]
    idle_s: float
    kills: Callable[[int], int]
    splits: int
    baseline: tuple[str, ...]
    """Git revisions whose agents run right before the current code at each size."""


def _sizes(environ: Mapping[str, str], key: str, default: tuple[int, ...]) -> tuple[int, ...]:
    text = environ.get(key)
    if text is None:
        return default
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        sizes = (0,)
    if any(not 3 <= n <= 1024 for n in sizes):  # a split needs 3
        raise BenchError(f"{key}={text!r}: use node counts 3..1024 separated by commas, e.g. 5,16")
    return sizes


def _number(environ: Mapping[str, str], key: str, default: float, low: float, high: float) -> float:
    text = environ.get(key)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise BenchError(f"{key}={text!r}: use a number from {low:g} to {high:g}")
    return value


def mode_from_env(environ: Mapping[str, str]) -> Mode:
    """The run's mode from BENCH_SCALE_* (BenchError, one line, for a bad value)."""
    long = environ.get("BENCH_SCALE_LONG", "") not in ("", "0")
    idle = _number(environ, "BENCH_SCALE_IDLE", 600.0 if long else 60.0, 1, 86400)
    kills_env = environ.get("BENCH_SCALE_KILLS")
    fixed = int(_number(environ, "BENCH_SCALE_KILLS", 0, 0, 1000)) if kills_env else None

    def kills(nodes: int) -> int:
        if fixed is not None:
            return fixed
        return 10 if long or nodes >= 32 else 5  # the 10 kills at 32

    return Mode(
        name="long" if long else "default",
        sizes=_sizes(environ, "BENCH_SCALE_SIZES", (5, 16, 32)),
        sim_sizes=_sizes(environ, "BENCH_SCALE_SIM", (64, 128, 256)),
        idle_s=idle,
        kills=kills,
        splits=int(_number(environ, "BENCH_SCALE_SPLITS", 10 if long else 3, 0, 1000)),
        baseline=tuple(
            r.strip() for r in environ.get("BENCH_SCALE_BASELINE", "").split(",") if r.strip()
        ),
    )


def load() -> float:
    """The 1-minute load average."""
    return os.getloadavg()[0]


def stamp(record: Mapping[str, Any]) -> float:
    """A log record's wall time (epoch seconds)."""
    return datetime.fromisoformat(str(record["timestamp"])).timestamp()


class LogTail:
    """One agent's JSON log, read incrementally (the agent appends across restarts)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.records: list[tuple[float, dict[str, Any]]] = []
        """(wall time, record), in log order."""

    def poll(self) -> list[tuple[float, dict[str, Any]]]:
        """Every record so far (complete lines only)."""
        if not self.path.exists():
            return self.records
        with self.path.open("rb") as file:
            file.seek(self.offset)
            data = file.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        for line in data[:end].splitlines():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                record = json.loads(line)
                if isinstance(record, dict):
                    self.records.append((stamp(record), record))
        return self.records

    def first(self, after: float, event: str, members: list[int] | None = None) -> float | None:
        """The wall time of the first `event` (with exactly `members`) at or after `after`."""
        found = None
        for at, record in reversed(self.poll()):  # newest first, back to `after`
            if at < after:
                break
            if record.get("event") == event and (
                members is None or record.get("members") == members
            ):
                found = at
        return found

    def count(self, start: float, end: float, event: str) -> int:
        """How many `event` records were logged in [start, end]."""
        return sum(1 for at, r in self.poll() if r.get("event") == event and start <= at <= end)


class Namespace:
    """A network namespace of our own (`vmscale-<random>`): its loopback, agents, firewall."""

    def __init__(self) -> None:
        self.name = f"vmscale-{secrets.token_hex(3)}"
        self.created = False

    def __enter__(self) -> Namespace:
        run(["ip", "netns", "add", self.name])
        self.created = True
        self.run(["ip", "link", "set", "lo", "up"])
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.created:
            result = subprocess.run(
                ["ip", "netns", "del", self.name], capture_output=True, text=True, check=False
            )
            if result.returncode != 0:
                print(f"  ! could not delete namespace {self.name}: {result.stderr.strip()}")

    @property
    def prefix(self) -> tuple[str, ...]:
        """What an agent runs under: inside the namespace, killed if the bench dies."""
        return ("ip", "netns", "exec", self.name, "setpriv", "--pdeathsig", "KILL")

    def run(self, args: Sequence[str], stdin: str | None = None) -> None:
        run(["ip", "netns", "exec", self.name, *args], stdin)

    def cut(self, side_a: Sequence[int], side_b: Sequence[int]) -> None:
        """Drop everything between 127.0.0.<side_a> and 127.0.0.<side_b>, both ways at once."""
        a = f"127.0.0.{min(side_a)}-127.0.0.{max(side_a)}"
        b = f"127.0.0.{min(side_b)}-127.0.0.{max(side_b)}"
        rules = [
            "*filter",
            f"-A INPUT -m iprange --src-range {a} --dst-range {b} -j DROP",
            f"-A INPUT -m iprange --src-range {b} --dst-range {a} -j DROP",
            "COMMIT",
            "",
        ]
        self.run(["iptables-restore", "--noflush"], "\n".join(rules))

    def heal(self) -> None:
        """Remove every rule in the namespace's INPUT chain (only ours are there)."""
        self.run(["iptables", "-w", "-F", "INPUT"])

    def loopback_counters(self) -> tuple[int, int]:
        """(bytes, packets) sent on the namespace's lo so far: only our agents' datagrams."""
        result = subprocess.run(
            ["ip", "netns", "exec", self.name, "cat", "/proc/net/dev"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        for line in result.stdout.splitlines():
            name, _, numbers = line.partition(":")
            if name.strip() == "lo":
                fields = numbers.split()
                return int(fields[8]), int(fields[9])  # transmit bytes, packets
        raise BenchError(f"no lo in /proc/net/dev of {self.name}")


def run(args: Sequence[str], stdin: str | None = None) -> None:
    """Run a set-up command; BenchError with its message when it fails."""
    result = subprocess.run(
        list(args), input=stdin, capture_output=True, text=True, timeout=30, check=False
    )
    if result.returncode != 0:
        raise BenchError(f"{' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")


def namespace_missing() -> str | None:
    """Why the agents cannot run in a namespace of our own (no split then), or None."""
    if os.geteuid() != 0:
        return "not root: the 60/40 split needs a network namespace with its own firewall"
    for tool in ("ip", "iptables", "iptables-restore", "setpriv"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt-get install iproute2 iptables util-linux)"
    return None


@dataclass(frozen=True)
class Idle:
    """The idle window's figures, per agent."""

    seconds: float
    cpu_mean: float
    """% of a core."""
    cpu_max: float
    rss_mean: float
    """MiB."""
    sent_per_s: float
    received_per_s: float
    view_changes: int
    """`view_installed` lines logged by any agent in the window (want 0)."""
    one_view_after: bool
    wire_bytes: float | None
    """Mean bytes per datagram on lo (payload + 8 UDP + 20 IP + 14 Ethernet header bytes)."""
    wire_per_s: float | None
    """Bytes per second sent per agent on lo (headers included)."""
    load: float

    @property
    def us_per_datagram(self) -> float | None:
        """CPU per datagram received and one sent, in microseconds (c_rx + c_tx of design
        §3.14, wake-ups included): CPU over the mean of the two rates."""
        pairs = (self.sent_per_s + self.received_per_s) / 2
        return self.cpu_mean / 100 / pairs * 1e6 if pairs else None


@dataclass
class AgentRow:
    """The figures of one cluster size (one code revision)."""

    label: str
    nodes: int
    formation_s: float | None = None
    idle: Idle | None = None
    kill_last: list[float] = field(default_factory=list)
    kill_each: list[float] = field(default_factory=list)
    minority: list[float] = field(default_factory=list)
    majority_view: list[float] = field(default_factory=list)
    majority_lost: int = 0
    heal: list[float] = field(default_factory=list)
    kill_load: float = 0.0
    """The load average after the last kill round."""
    split_skipped: str | None = None
    failed: str | None = None
    """What went wrong (the figures before it stand)."""
    wall_s: float = 0.0


def idle_window(
    cluster: AgentCluster, tails: dict[int, LogTail], seconds: float, ns: Namespace | None
) -> Idle:
    """CPU, RSS, datagrams/s, bytes and view changes of every agent over `seconds` idle."""
    everyone = sorted(cluster.agents)
    time.sleep(2.0)
    pids = {i: a.process.pid for i, a in cluster.agents.items() if a.process is not None}
    before = {i: runtime(cluster, i) for i in everyone}
    wire0 = ns.loopback_counters() if ns else None
    start_wall, start = time.time(), time.monotonic()
    cpu0 = {i: cpu_seconds(pid) for i, pid in pids.items()}
    time.sleep(seconds)
    elapsed = time.monotonic() - start
    cpu = [(cpu_seconds(pid) - cpu0[i]) / elapsed * 100 for i, pid in pids.items()]
    wire_bytes = wire_per_s = None
    if ns and wire0:
        sent_bytes, packets = (b - a for a, b in zip(wire0, ns.loopback_counters(), strict=True))
        wire_bytes = sent_bytes / max(packets, 1)
        wire_per_s = sent_bytes / elapsed / len(everyone)
    end_wall = time.time()
    load_now = load()
    rss = statistics.mean(rss_mib(pid) for pid in pids.values())
    after = {i: runtime(cluster, i) for i in everyone}
    sent, received = [], []
    for i in everyone:
        span = after[i]["uptime_s"] - before[i]["uptime_s"]
        sent.append((after[i]["sent"] - before[i]["sent"]) / span)
        received.append((after[i]["received"] - before[i]["received"]) / span)
    return Idle(
        seconds=seconds,
        cpu_mean=statistics.mean(cpu),
        cpu_max=max(cpu),
        rss_mean=rss,
        sent_per_s=statistics.mean(sent),
        received_per_s=statistics.mean(received),
        view_changes=sum(t.count(start_wall, end_wall, "view_installed") for t in tails.values()),
        one_view_after=cluster.one_view(everyone),
        wire_bytes=wire_bytes,
        wire_per_s=wire_per_s,
        load=load_now,
    )


def runtime(cluster: AgentCluster, node_id: int) -> dict[str, float]:
    """An agent's uptime and datagram counters (status document, runtime part)."""
    doc = cluster.agents[node_id].status()
    if doc is None or not doc.get("runtime"):
        raise BenchError(f"agent {node_id} gave no status")
    grams = doc["runtime"]["datagrams"]
    return {
        "uptime_s": float(doc["runtime"]["uptime_s"]),
        "sent": float(grams["sent"]),
        "received": float(grams["received"]),
    }


def wait_logged(
    tails: Mapping[int, LogTail],
    nodes: Sequence[int],
    after: float,
    event: str,
    what: str,
    *,
    members: list[int] | None = None,
) -> dict[int, float]:
    """Poll the logs until every node in `nodes` logged `event` after `after`: node -> time."""
    found: dict[int, float] = {}

    def done() -> bool:
        for node in nodes:
            if node not in found:
                at = tails[node].first(after, event, members)
                if at is not None:
                    found[node] = at
        return len(found) == len(nodes)

    AgentCluster.wait_for(done, SETTLE, what, 0.05)
    return found


def settle(cluster: AgentCluster, tails: Mapping[int, LogTail], after: float, what: str) -> float:
    """Wait until every agent logged a view of all after `after`, then holds one view of all
    (status documents, polled slowly: 32 status requests are CPU the agents need); the time of
    the last agent's such view."""
    everyone = sorted(cluster.agents)
    logged = wait_logged(tails, everyone, after, "view_installed", what, members=everyone)
    cluster.wait_for(lambda: cluster.one_view(everyone), SETTLE, what, 0.5)
    return max(logged.values())


def kill_rounds(
    cluster: AgentCluster, tails: dict[int, LogTail], kills: int, row: AgentRow
) -> None:
    """kill -9 -> a view of exactly the survivors on every survivor, `kills` times."""
    everyone = sorted(cluster.agents)
    for k in range(kills):
        victim = everyone[(k * len(everyone)) // max(kills, 1) % len(everyone)]
        survivors = [n for n in everyone if n != victim]
        time.sleep(PAUSE)
        killed_at = time.time()
        cluster.kill(victim)
        times = wait_logged(
            tails,
            survivors,
            killed_at,
            "view_installed",
            f"survivors of {victim}",
            members=survivors,
        )
        latencies = [at - killed_at for at in times.values()]
        row.kill_last.append(max(latencies))
        row.kill_each += latencies
        row.kill_load = load()
        restarted_at = time.time()
        cluster.start(victim)
        settle(cluster, tails, restarted_at, f"one view again after restarting {victim}")


def split_rounds(
    cluster: AgentCluster, tails: dict[int, LogTail], ns: Namespace, splits: int, row: AgentRow
) -> None:
    """60/40 split -> minority inquorate, majority's view; heal -> one view; `splits` times."""
    everyone = sorted(cluster.agents)
    big = round(MAJORITY_SHARE * len(everyone))
    majority, minority = everyone[:big], everyone[big:]
    for _ in range(splits):
        time.sleep(PAUSE)
        cut_at = time.time()
        ns.cut(majority, minority)
        try:
            lost = wait_logged(tails, minority, cut_at, "quorum_lost", "minority inquorate")
            view = wait_logged(
                tails, majority, cut_at, "view_installed", "majority's view", members=majority
            )
            row.minority.append(max(lost.values()) - cut_at)
            row.majority_view.append(max(view.values()) - cut_at)
            time.sleep(HOLD)
        finally:
            healed_at = time.time()
            ns.heal()
        whole = wait_logged(
            tails, everyone, healed_at, "view_installed", "healed", members=everyone
        )
        row.heal.append(max(whole.values()) - healed_at)
        row.majority_lost += sum(
            tails[n].count(cut_at, max(whole.values()), "quorum_lost") for n in majority
        )
        settle(cluster, tails, healed_at, "one view after the heal")


def measure(
    workdir: Path, nodes: int, mode: Mode, ns: Namespace | None, *, label: str, code: Path | None
) -> AgentRow:
    """All the figures of one cluster size on one code revision (`code`: None = this tree)."""
    started = time.monotonic()
    prefix: tuple[str, ...] = ns.prefix if ns else ()
    if code is not None:
        prefix = (*prefix, "env", f"PYTHONPATH={code}")
    cluster = AgentCluster(workdir, nodes, timing=LAN_TIMING, prefix=prefix)
    tails = {i: LogTail(a.log_path) for i, a in cluster.agents.items()}
    row = AgentRow(label, nodes)
    try:
        begin = time.time()
        cluster.start_all(together=True)
        row.formation_s = settle(cluster, tails, begin, f"one view of {nodes}") - begin
        row.idle = idle_window(cluster, tails, mode.idle_s, ns)
        kill_rounds(cluster, tails, mode.kills(nodes), row)
        if ns is None:
            row.split_skipped = namespace_missing() or "no namespace"
        else:
            split_rounds(cluster, tails, ns, mode.splits, row)
    except (RuntimeError, OSError) as error:  # BenchError too: the figures so far stand
        row.failed = f"{error} ({views_seen(cluster)}; load {load():.2f})"
    finally:
        cluster.close()
    row.wall_s = time.monotonic() - started
    return row


def views_seen(cluster: AgentCluster) -> str:
    """What the running agents hold: the commonest (members, quorate) pictures, for a failure."""
    pictures = Counter(
        (len(doc["members"]), bool(doc["quorate"]))
        for doc in cluster.statuses().values()
        if doc is not None
    )
    shown = ", ".join(
        f"{n} x {size} members{'' if q else ' inquorate'}"
        for (size, q), n in pictures.most_common(4)
    )
    return f"agents hold: {shown or 'nothing (no status)'}"


def print_row(row: AgentRow) -> None:
    """One size's figures as soon as they are in (the table comes at the end)."""
    idle = row.idle
    if row.formation_s is not None:
        print(f"  {row.label} N={row.nodes}: formed in {row.formation_s:.1f} s", flush=True)
    if idle is not None:
        print(
            f"    idle {idle.seconds:g} s: CPU/agent mean {idle.cpu_mean:.2f} % max "
            f"{idle.cpu_max:.2f} %, RSS {idle.rss_mean:.1f} MiB, {idle.sent_per_s:.0f} "
            f"datagrams/s sent, {idle.received_per_s:.0f}/s received, {idle.view_changes} view "
            f"changes, one view after: {idle.one_view_after}, {cell(idle.us_per_datagram, 0)} us "
            f"CPU per datagram received + sent, {cell(idle.wire_bytes, 0)} B per datagram on lo "
            f"(load {idle.load:.2f})",
            flush=True,
        )
    if row.kill_last:
        print(
            f"    kill -9 x{len(row.kill_last)} -> new view on all {row.nodes - 1} survivors: "
            f"p50 {statistics.median(row.kill_last) * 1000:.0f} ms, "
            f"p99 {percentile(row.kill_last, 99) * 1000:.0f} ms "
            f"(each survivor: p50 {statistics.median(row.kill_each) * 1000:.0f}, "
            f"min {min(row.kill_each) * 1000:.0f} ms; load {row.kill_load:.2f})",
            flush=True,
        )
    if row.minority:
        big = round(MAJORITY_SHARE * row.nodes)
        print(
            f"    split {big}|{row.nodes - big} x{len(row.minority)}: minority inquorate max "
            f"{max(row.minority) * 1000:.0f} ms (p50 {statistics.median(row.minority) * 1000:.0f}),"
            f" majority's view max {max(row.majority_view) * 1000:.0f} ms, majority "
            f"quorum_lost {row.majority_lost}, heal -> one view max {max(row.heal) * 1000:.0f} ms "
            f"(load {load():.2f})",
            flush=True,
        )
    elif row.split_skipped:
        print(f"    split skipped: {row.split_skipped}", flush=True)
    if row.failed:
        print(f"  {row.label} N={row.nodes}: FAILED: {row.failed}", flush=True)


def sim_rows(sizes: Sequence[int]) -> list[dict[str, Any]] | str:
    """`bench_sim.scale_rows(sizes)` (scale-sim's), or why there are none."""
    if not sizes:
        return "not asked for (BENCH_SCALE_SIM is empty)"
    from tests.bench import bench_sim  # only when asked

    scale_rows = getattr(bench_sim, "scale_rows", None)
    if scale_rows is None:
        return "tests.bench.bench_sim has no scale_rows(sizes) in this tree"
    return list(scale_rows(list(sizes)))


HEADERS = [
    "source",
    "N",
    "form s",
    "CPU/node mean %",
    "CPU max %",
    "null core %/node",
    "RSS MiB",
    "sent/s",
    "recv/s",
    "us CPU/dgram rx+tx",
    "B/datagram",
    "kB/s sent",
    "view chg idle",
    "kill->view p50 ms",
    "p99 ms",
    "minority inq. ms",
    "majority inq.",
    "heal ms",
    "violations",
    "wall s",
    "load",
]


def agent_cells(row: AgentRow) -> list[str]:
    """An agent row of the table (`-`: not measured, e.g. after a failure)."""
    idle = row.idle
    ms = [x * 1000 for x in row.kill_last]

    def of(name: str) -> Any:
        return None if idle is None else getattr(idle, name)

    wire_per_s = of("wire_per_s")
    return [
        row.label + (" FAILED" if row.failed else ""),
        str(row.nodes),
        cell(row.formation_s),
        cell(of("cpu_mean"), 2),
        cell(of("cpu_max"), 2),
        cell(None),
        cell(of("rss_mean")),
        cell(of("sent_per_s"), 0),
        cell(of("received_per_s"), 0),
        cell(of("us_per_datagram"), 0),
        cell(of("wire_bytes"), 0),
        cell(None if wire_per_s is None else wire_per_s / 1000, 1),
        cell(of("view_changes")),
        cell(statistics.median(ms) if ms else None, 0),
        cell(percentile(ms, 99) if ms else None, 0),
        cell(max(row.minority) * 1000 if row.minority else None, 0),
        cell(
            ("never" if row.majority_lost == 0 else f"{row.majority_lost}x")
            if row.minority
            else None
        ),
        cell(max(row.heal) * 1000 if row.heal else None, 0),
        cell(None),
        cell(row.wall_s, 0),
        cell(of("load"), 2),
    ]


def sim_cells(row: Mapping[str, Any], load_at: float) -> list[str]:
    """A simulator row of the table (scale-sim's keys; a missing key is `-`; its formation and
    split times are simulated seconds, its wall time real)."""

    def ms(key: str) -> float | None:
        value = row.get(key)
        return None if value is None else float(value) * 1000

    majority = row.get("majority_inquorate_s")
    return [
        f"simulator {row.get('split', '')}".strip(),
        str(row.get("nodes")),
        cell(row.get("formation_s")),
        cell(row.get("cost_pct_per_node"), 2),
        cell(None),
        cell(row.get("null_pct_per_node"), 2),
        cell(None),
        cell(None),
        cell(None),
        cell(None),
        cell(None),
        cell(None),
        cell(None),
        cell(None),
        cell(None),
        cell(ms("minority_inquorate_s"), 0),
        "never" if majority is None else cell(ms("majority_inquorate_s"), 0),
        cell(ms("rejoined_s"), 0),
        cell(row.get("violations")),
        cell(row.get("wall_s"), 0),
        cell(row.get("load", load_at), 2),
    ]


def curves(rows: Sequence[AgentRow], sims: Sequence[Mapping[str, Any]]) -> list[str]:
    """The slope lines under the table."""
    lines = []
    for label in dict.fromkeys(r.label for r in rows):
        mine = [r for r in rows if r.label == label]
        xs = [float(r.nodes) for r in mine]

        def of(name: str, rows: list[AgentRow] = mine) -> list[float | None]:
            return [None if r.idle is None else getattr(r.idle, name) for r in rows]

        lines += [
            curve_line(f"{label}: CPU per agent", xs, of("cpu_mean"), "% of a core"),
            curve_line(f"{label}: datagrams received/s per agent", xs, of("received_per_s"), "/s"),
            curve_line(f"{label}: RSS per agent", xs, of("rss_mean"), "MiB"),
            curve_line(
                f"{label}: CPU per datagram received + sent", xs, of("us_per_datagram"), "us"
            ),
            curve_line(f"{label}: bytes per datagram", xs, of("wire_bytes"), "B"),
            curve_line(f"{label}: bytes/s sent per agent", xs, of("wire_per_s"), "B/s"),
            curve_line(
                f"{label}: kill -9 -> view p99",
                xs,
                [percentile(r.kill_last, 99) if r.kill_last else None for r in mine],
                "s",
            ),
        ]
    if sims:
        xs = [float(r["nodes"]) for r in sims]
        lines += [
            curve_line(
                "simulator: core cost per node",
                xs,
                [r.get("cost_pct_per_node") for r in sims],
                "% of a core",
            ),
            curve_line(
                "simulator: null core per node",
                xs,
                [r.get("null_pct_per_node") for r in sims],
                "% of a core",
            ),
        ]
    return lines


def baseline_tree(
    rev: str,
    into: Path,
    paths: Sequence[str] = ("agent", "proto", "qnetd"),
    setting: str = "BENCH_SCALE_BASELINE",
) -> tuple[str, Path]:
    """`git archive rev paths...` (no paths: the whole tree) unpacked in `into`: (short hash,
    directory); a bad `rev` is a BenchError naming the `setting` it came from."""
    short = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", rev],
        capture_output=True,
        text=True,
        check=False,
    )
    if short.returncode != 0:
        raise BenchError(f"{setting}={rev!r}: not a git revision here ({short.stderr.strip()})")
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, *paths],
        capture_output=True,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return short.stdout.strip(), into


@contextlib.contextmanager
def terminated_as_exit() -> Iterator[None]:
    """SIGTERM raises SystemExit, so that `finally` blocks clean up (agents, the namespace)."""

    def stop(_signum: int, _frame: object) -> None:
        raise SystemExit("bench scale: terminated")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def bench(mode: Mode, tmp: Path) -> None:
    """Every size, then the table."""
    missing = namespace_missing()
    where = "host loopback (" + missing + ")" if missing else "a network namespace of its own"
    print(
        f"  mode {mode.name}: agents {list(mode.sizes)} on {where}, idle {mode.idle_s:g} s, "
        f"kills {[mode.kills(n) for n in mode.sizes]}, splits {mode.splits}; simulator "
        f"{list(mode.sim_sizes)}; {machine()}, load {load():.2f}",
        flush=True,
    )
    codes: list[tuple[str, Path | None]] = [("agents", None)]
    for i, rev in enumerate(mode.baseline):
        short, tree = baseline_tree(rev, tmp / f"baseline-{i}")
        name = short if len(rev) > len(short) else rev  # a hash: shortened
        print(f"  baseline: agents@{name} is commit {short}, run right before each size")
        codes.insert(i, (f"agents@{name}", tree))
    rows: list[AgentRow] = []
    for turn, nodes in enumerate(mode.sizes):
        for label, code in codes:
            workdir = tmp / f"{label.replace('@', '-')}-{nodes}-{turn}"  # a size may come twice
            with contextlib.ExitStack() as stack:
                ns = None if missing else stack.enter_context(Namespace())
                rows.append(measure(workdir, nodes, mode, ns, label=label, code=code))
            print_row(rows[-1])
    sims = sim_rows(mode.sim_sizes)
    sim_load = load()
    if isinstance(sims, str):
        print(f"  simulator rows: none: {sims}")
        sims = []
    print(f"\n  scaling table (mode {mode.name}, {machine()}):")
    table_rows = [agent_cells(r) for r in rows] + [sim_cells(r, sim_load) for r in sims]
    for line in markdown_table(HEADERS, table_rows):
        print("  " + line)
    print()
    for line in curves(rows, sims):
        print("  " + line)
    print(f"  load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def main() -> None:
    """Run in the mode the environment asks for; a bad setting is one line, exit 1."""
    try:
        mode = mode_from_env(os.environ)
        with terminated_as_exit(), tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
            bench(mode, Path(tmp))
    except BenchError as error:
        raise SystemExit(f"bench scale: {error}") from None


if __name__ == "__main__":
    main()
