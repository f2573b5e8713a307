"""qnetd load: K clusters x 4 TLS clients against our qnetd and Debian's corosync-qnetd.

For each server under test: start it on 127.0.0.1 (TLS on, client certificates not required),
connect every client through INIT (tests/bench/qnetd_loadgen.py), churn memberships, and print one
table: connections held, connect rate, decisions/s, decision latency p50/p99, RSS per connection,
server CPU, with a ratio column (ours / Debian). Figures only: nothing here asserts on a timing.

Sizes and budgets come from VOTEMESH_BENCH_* environment variables (see docs/benchmarks.md).
Servers are processes we start and stop by PID, always in `finally`.
"""

from __future__ import annotations

import abc
import asyncio
import os
import resource
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.bench.qnetd_loadgen import (
    GIVE_UP_AFTER_FAILURES,
    LoadConfig,
    LoadResult,
    ProcessSample,
    percentile,
    run_load,
    sample_process,
)
from tests.interop import debian_qnetd
from tests.qnetd import our_qnetd

FD_SLACK = 200  # files besides the client sockets: logs, NSS DB, pipes, the interpreter


class ServerUnderTest(abc.ABC):
    """A qnetd we can start on 127.0.0.1:port, observe through /proc/PID and stop."""

    label: str

    @abc.abstractmethod
    def unavailable_reason(self) -> str | None:
        """Why this server cannot run here (one line), or None."""

    @abc.abstractmethod
    def start(self, workdir: Path) -> None:
        """Start it with its files in `workdir`; return once it accepts TCP connections."""

    @property
    @abc.abstractmethod
    def port(self) -> int:
        """The TCP port it listens on, on 127.0.0.1."""

    @property
    @abc.abstractmethod
    def pid(self) -> int:
        """PID whose VmRSS and CPU time (children included) are the server's."""

    @abc.abstractmethod
    def ca_pem(self) -> bytes | None:
        """The CA that signed its server certificate, None to connect without verifying."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop what start() started (by PID); safe to call twice or after a failed start."""


class DebianQnetd(ServerUnderTest):
    """Debian's corosync-qnetd 3.0.3: `-s on -c off`, throwaway NSS DB (tests/interop)."""

    label = "corosync-qnetd"

    def __init__(self) -> None:
        self._qnetd: debian_qnetd.DebianQnetd | None = None

    def unavailable_reason(self) -> str | None:
        return debian_qnetd.missing_reason()

    def start(self, workdir: Path) -> None:
        self._qnetd = debian_qnetd.DebianQnetd(workdir, tls="on", client_cert_required=False)
        self._qnetd.init_ca()
        self._qnetd.start()

    @property
    def port(self) -> int:
        assert self._qnetd is not None
        return self._qnetd.port

    @property
    def pid(self) -> int:
        assert self._qnetd is not None
        assert self._qnetd.process is not None
        return self._qnetd.process.pid

    def ca_pem(self) -> bytes | None:
        assert self._qnetd is not None
        return self._qnetd.ca_pem()

    def stop(self) -> None:
        if self._qnetd is not None:
            self._qnetd.stop()


class VotemeshQnetd(ServerUnderTest):
    """Our qnetd, `python -m qnetd run` with TLS on and client certificates off, through the
    test helper `tests/qnetd/our_qnetd.OurQnetd` (state in a temporary directory; the CA it makes
    on first start is what the load generator verifies the server against)."""

    label = "votemesh qnetd"

    def __init__(self, python: str = sys.executable) -> None:
        self.python = python
        self._qnetd: our_qnetd.OurQnetd | None = None

    def unavailable_reason(self) -> str | None:
        try:
            probe = subprocess.run(
                [self.python, "-m", "qnetd", "run", "--help"],
                capture_output=True,
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"not available yet ({exc})"
        return None if probe.returncode == 0 else "not available yet"

    def start(self, workdir: Path) -> None:
        self._qnetd = our_qnetd.OurQnetd(workdir, "on", False)
        self._qnetd.start()

    @property
    def port(self) -> int:
        assert self._qnetd is not None
        return self._qnetd.port

    @property
    def pid(self) -> int:
        assert self._qnetd is not None
        assert self._qnetd.process is not None
        return self._qnetd.process.pid

    def ca_pem(self) -> bytes | None:
        assert self._qnetd is not None
        ca = self._qnetd.state_dir / "ca.pem"
        return ca.read_bytes() if ca.exists() else None

    def stop(self) -> None:
        if self._qnetd is not None:
            self._qnetd.stop()


# --- configuration from the environment -----------------------------------------------------


@dataclass(frozen=True)
class EnvKnob:
    """One VOTEMESH_BENCH_* variable: the LoadConfig field it sets and how to parse it."""

    name: str
    field: str
    parse: Callable[[str], float | int]


KNOBS = (
    EnvKnob("VOTEMESH_BENCH_CLUSTERS", "clusters", int),
    EnvKnob("VOTEMESH_BENCH_CONNECT_SECONDS", "connect_budget_s", float),
    EnvKnob("VOTEMESH_BENCH_CONNECT_CONCURRENCY", "connect_concurrency", int),
    EnvKnob("VOTEMESH_BENCH_CHURN_SECONDS", "churn_s", float),
    EnvKnob("VOTEMESH_BENCH_CHURN_RATE", "churn_rate", float),
    EnvKnob("VOTEMESH_BENCH_HEARTBEAT_MS", "heartbeat_ms", int),
)
SERVERS_ENV = "VOTEMESH_BENCH_SERVERS"  # comma list of: debian, votemesh (default both)


def config_from_env(env: dict[str, str]) -> LoadConfig:
    """LoadConfig with every set VOTEMESH_BENCH_* applied; ValueError names a bad one."""
    values: dict[str, float | int] = {}
    for knob in KNOBS:
        raw = env.get(knob.name)
        if raw is None or raw == "":
            continue
        try:
            value = knob.parse(raw)
        except ValueError:
            value = -1
        if value <= 0:
            raise ValueError(f"{knob.name} must be a positive number, got {raw!r}")
        values[knob.field] = value
    config = LoadConfig(**values)  # type: ignore[arg-type]
    if not 1000 <= config.heartbeat_ms <= 120000:
        raise ValueError("VOTEMESH_BENCH_HEARTBEAT_MS must be within 1000..120000 (ref 4.5)")
    return config


def servers_from_env(env: dict[str, str]) -> list[ServerUnderTest]:
    """Both servers, Debian's first, or those named in VOTEMESH_BENCH_SERVERS."""
    known: dict[str, Callable[[], ServerUnderTest]] = {
        "debian": DebianQnetd,
        "votemesh": VotemeshQnetd,
    }
    names = [n.strip() for n in env.get(SERVERS_ENV, "debian,votemesh").split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"{SERVERS_ENV}: unknown {', '.join(unknown)}; use debian,votemesh")
    return [known[n]() for n in names]


# --- running and reporting ------------------------------------------------------------------


def measure(server: ServerUnderTest, config: LoadConfig) -> LoadResult | None:
    """Start `server`, run the load against it, always stop it; None if it could not run."""
    with tempfile.TemporaryDirectory(prefix="votemesh-bench-qnetd-") as tmp:
        try:
            server.start(Path(tmp))
            pid = server.pid

            def probe() -> ProcessSample:
                return sample_process(pid)

            return asyncio.run(run_load(config, server.port, server.ca_pem(), probe, server.label))
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            print(f"{server.label}: could not run: {exc}", flush=True)
            return None
        finally:
            server.stop()


Row = tuple[str, Callable[[LoadResult], float | None], str]


def _ms(value: float | None) -> float | None:
    return None if value is None else value * 1000


def _mb(kb: int | None) -> float | None:
    return None if kb is None else kb / 1024


def _first_vote_ms(result: LoadResult, pct: float) -> float | None:
    return _ms(percentile(result.first_vote_latencies_s, pct))


ROWS: tuple[Row, ...] = (
    ("clients connected (INIT done)", lambda r: r.connected, "{:.0f}"),
    ("time to connect all (s)", lambda r: r.time_to_connect_all(), "{:.1f}"),
    ("connect rate, all (clients/s)", lambda r: r.connect_rate(), "{:.1f}"),
    ("connect rate, first 10 % (/s)", lambda r: r.connect_rate(0.0, 0.1), "{:.1f}"),
    ("connect rate, last 10 % (/s)", lambda r: r.connect_rate(0.9, 1.0), "{:.1f}"),
    ("connect attempts failed", lambda r: r.connect_failures, "{:.0f}"),
    ("connections held at end", lambda r: r.held_at_end, "{:.0f}"),
    ("clients dropped by server", lambda r: r.dropped, "{:.0f}"),
    ("membership changes started", lambda r: r.changes_started, "{:.0f}"),
    ("decisions/s", lambda r: r.decisions_per_s(), "{:.1f}"),
    ("decisions", lambda r: len(r.latencies_s), "{:.0f}"),
    ("decision latency p50 (ms)", lambda r: _ms(percentile(r.latencies_s, 50)), "{:.1f}"),
    ("decision latency p99 (ms)", lambda r: _ms(percentile(r.latencies_s, 99)), "{:.1f}"),
    ("decision latency max (ms)", lambda r: _ms(percentile(r.latencies_s, 100)), "{:.1f}"),
    ("first vote of a change p50 (ms)", lambda r: _first_vote_ms(r, 50), "{:.1f}"),
    ("first vote of a change p99 (ms)", lambda r: _first_vote_ms(r, 99), "{:.1f}"),
    ("changes undecided", lambda r: r.changes_undecided, "{:.0f}"),
    ("changes skipped (cluster busy)", lambda r: r.changes_skipped_busy, "{:.0f}"),
    ("votes not as ffsplit predicts", lambda r: r.wrong_outcomes, "{:.0f}"),
    ("server CPU while connecting (%)", lambda r: r.server_cpu_connect_pct, "{:.0f}"),
    ("server CPU during churn (%)", lambda r: r.server_cpu_pct, "{:.0f}"),
    ("server RSS idle (MB)", lambda r: _mb(r.rss_idle_kb), "{:.1f}"),
    ("server RSS connected (MB)", lambda r: _mb(r.rss_connected_kb), "{:.1f}"),
    ("server RSS after churn (MB)", lambda r: _mb(r.rss_after_churn_kb), "{:.1f}"),
    ("server RSS per connection (KB)", lambda r: r.rss_per_connection_kb(), "{:.1f}"),
    ("server errors / garbage received", lambda r: r.server_errors + r.garbage, "{:.0f}"),
    ("echo replies late", lambda r: r.echo_replies_late, "{:.0f}"),
    ("load generator CPU connecting (%)", lambda r: r.loadgen_cpu_connect_pct, "{:.0f}"),
    ("load generator CPU in churn (%)", lambda r: r.loadgen_cpu_pct, "{:.0f}"),
    ("load generator loop lag p99 (ms)", lambda r: _ms(percentile(r.loop_lag_s, 99)), "{:.1f}"),
    ("other processes' CPU in churn (%)", lambda r: r.others_cpu_pct, "{:.0f}"),
)


def _cell(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else fmt.format(value)


def _ratio(ours: float | None, theirs: float | None) -> str:
    if ours is None or theirs is None or theirs == 0:
        return "n/a"
    return f"{ours / theirs:.2f}"


def print_table(
    debian: LoadResult | None, ours: LoadResult | None, debian_ran: bool, ours_ran: bool
) -> None:
    """One column per server, a row per figure, and ours / Debian."""
    head = ("figure", "corosync-qnetd", "votemesh qnetd", "ours/debian")
    print(f"  {head[0]:<34} {head[1]:>15} {head[2]:>15} {head[3]:>12}")
    for title, get, fmt in ROWS:
        theirs_v = get(debian) if debian else None
        ours_v = get(ours) if ours else None
        left = _cell(theirs_v, fmt) if debian_ran else "not run"
        right = _cell(ours_v, fmt) if ours_ran else "not run"
        print(f"  {title:<34} {left:>15} {right:>15} {_ratio(ours_v, theirs_v):>12}")


def print_notes(label: str, result: LoadResult | None, config: LoadConfig) -> None:
    """Say which budget ended a phase early, so partial figures are read as such."""
    if result is None:
        return
    if result.connect_gave_up:
        print(
            f"  note: {label}: gave up connecting after {GIVE_UP_AFTER_FAILURES} failed "
            f"handshakes in a row ({result.connect_failures} failed in all)"
        )
    elif result.connect_budget_ran_out:
        print(
            f"  note: {label}: connect budget of {config.connect_budget_s:.0f} s ran out at "
            f"{result.connected}/{result.clients} clients; churn used the complete clusters"
        )
    if result.last_connect_error:
        print(f"  note: {label}: last connect error: {result.last_connect_error[:200]}")
    if result.initial_votes < result.connected:
        print(f"  note: {label}: {result.initial_votes} clients got a first vote while settling")


def raise_fd_limit(clients: int) -> None:
    """Lift the soft open-files limit (inherited by the servers) toward clients + slack."""
    needed = clients + FD_SLACK
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        print(f"  note: open files limited to {target}; {clients} clients need about {needed}")


def main() -> None:
    """Run the load against every available server and print the comparison."""
    try:
        config = config_from_env(dict(os.environ))
        servers = servers_from_env(dict(os.environ))
    except ValueError as exc:
        print(f"qnetd_load: {exc}")
        return
    print(
        f"qnetd load: {config.clusters} clusters x 4 TLS clients = {config.clients} clients "
        f"(ffsplit, tie-breaker lowest, heartbeat {config.heartbeat_ms} ms, client certs off); "
        f"connect budget {config.connect_budget_s:.0f} s at {config.connect_concurrency} in "
        f"flight, churn {config.rate:.1f} changes/s for {config.churn_s:.0f} s",
        flush=True,
    )
    raise_fd_limit(config.clients)
    results: dict[str, LoadResult | None] = {}
    ran: set[str] = set()
    for server in servers:
        reason = server.unavailable_reason()
        if reason is not None:
            print(f"{server.label}: {reason}", flush=True)
            continue
        print(f"{server.label}: running", flush=True)
        ran.add(server.label)
        results[server.label] = measure(server, config)
    print_table(
        results.get(DebianQnetd.label),
        results.get(VotemeshQnetd.label),
        DebianQnetd.label in ran,
        VotemeshQnetd.label in ran,
    )
    for label, result in results.items():
        print_notes(label, result, config)
    print(
        "  targets for votemesh at 4,000 clients: all connected within 60 s, decision p99 "
        "< 50 ms at the same churn, RSS/connection <= corosync-qnetd's, no client dropped"
    )
