"""Load generator for the qnetd benchmark: K clusters x 4 TLS clients that churn memberships.

Each client is one TCP connection that behaves like a qdevice-net with ffsplit and tie-breaker
"lowest" (reference sections 3-4): PREINIT -> STARTTLS -> TLS -> INIT -> SET_OPTION KAP -> initial
config, membership and quorum lists; it answers every VOTE_INFO with a VOTE_INFO_REPLY and sends an
ECHO_REQUEST every heartbeat so the server's dead-peer timer (1.5 x heartbeat) keeps it. Every
message is built and parsed with proto/ only.

Churn (reference 7.2): per cluster, alternate "split {1,2}|{3,4}" and "heal {1,2,3,4}" by sending
each member a membership NODE_LIST with a new ring id, then the quorum list. ffsplit decides once
the fourth list arrives: a split gives NACK to 3 and 4, then (after their replies) ACK to 1 and 2;
a heal gives ACK to all four. A change's decision latency is the time from the last membership
list written for it to the last VOTE_INFO (ACK/NACK, carrying the client's new ring id) received.

Everything runs in one asyncio loop (see docs/benchmarks.md for why one process is enough); each
phase has a time budget so a slow or stuck server ends the run with partial figures, never a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import ssl
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proto.errors import DecodeError
from proto.qnetd_enums import (
    DecisionAlgorithm,
    NodeListType,
    NodeState,
    TieBreakerMode,
    TlsSupported,
    Vote,
)
from proto.qnetd_messages import (
    ALL_MESSAGE_TYPES,
    ALL_OPTION_TYPES,
    EchoReply,
    EchoRequest,
    Init,
    InitReply,
    NodeList,
    NodeListReply,
    Preinit,
    PreinitReply,
    QnetdMessage,
    ServerError,
    SetOption,
    SetOptionReply,
    StartTls,
    VoteInfo,
    VoteInfoReply,
    encode,
)
from proto.qnetd_options import NodeInfo, RingId, TieBreaker
from proto.qnetd_stream import StreamDecoder

NODES_PER_CLUSTER = 4  # the split {1,2}|{3,4} / heal {1,2,3,4} pattern needs exactly four
NODE_IDS = (1, 2, 3, 4)
SPLIT_SIDES = ((1, 2), (3, 4))
INITIAL_RING_SEQ = 1
CHURN_PER_CLUSTER = 0.086  # 86 membership changes/s at 1,000 clusters: the reference load
EXPIRE_EVERY_S = 0.5  # how often the churn loop looks for changes past change_timeout_s
GIVE_UP_AFTER_FAILURES = 100  # connect phase ends early after this many failures in a row
ECHO_TICK_S = 0.1  # echoes are spread over heartbeat / ECHO_TICK_S slots
LAG_PROBE_S = 0.02  # the event-loop lag probe sleeps this long and records the overshoot
READ_CHUNK = 65536
HOST = "127.0.0.1"


class HandshakeError(Exception):
    """The server answered the handshake with something a qdevice would not accept."""


@dataclass(frozen=True)
class LoadConfig:
    """Sizes and time budgets of one run; every field has an environment override (bench)."""

    clusters: int = 1000
    """K: clusters of four clients each."""
    connect_budget_s: float = 330.0
    """The connect phase stops launching handshakes after this long (corosync-qnetd: ~292 s)."""
    connect_concurrency: int = 8
    """Handshakes in flight at once; below corosync-qnetd's listen backlog of 10."""
    connect_timeout_s: float = 8.0
    """One client's connect..INIT_REPLY limit: qdevice's connect_timeout default (ref 8.1)."""
    settle_budget_s: float = 15.0
    """After connecting: wait at most this long for every client's first VOTE_INFO."""
    churn_s: float = 30.0
    """Length of the churn phase."""
    churn_rate: float | None = None
    """Membership changes/s over all clusters; None = CHURN_PER_CLUSTER x clusters."""
    change_timeout_s: float = 10.0
    """A change without all four votes after this long counts as undecided."""
    heartbeat_ms: int = 8000
    """HEARTBEAT_INTERVAL sent in INIT and the echo period (qdevice default, ref 8.1)."""

    @property
    def clients(self) -> int:
        """M: all clients of the run."""
        return self.clusters * NODES_PER_CLUSTER

    @property
    def rate(self) -> float:
        """Aggregate membership changes per second asked for."""
        return self.churn_rate if self.churn_rate is not None else CHURN_PER_CLUSTER * self.clusters


@dataclass(frozen=True)
class ProcessSample:
    """Resident memory and CPU time consumed so far by a process (and its children)."""

    rss_kb: int
    cpu_s: float


def sample_process(pid: int) -> ProcessSample:
    """VmRSS (/proc/PID/status) and utime+stime (/proc/PID/stat) of `pid` and its descendants."""
    rss_kb, ticks = 0, 0
    for p in _process_tree(pid):
        proc = Path("/proc", str(p))
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in (proc / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss_kb += int(line.split()[1])
            stat = (proc / "stat").read_text()
            after_name = stat[stat.rindex(")") + 2 :].split()
            ticks += int(after_name[11]) + int(after_name[12])  # utime, stime (proc(5))
    return ProcessSample(rss_kb, ticks / os.sysconf("SC_CLK_TCK"))


def machine_busy_s() -> float:
    """CPU seconds all cores spent on anything but idle and iowait since boot (/proc/stat)."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def _process_tree(pid: int) -> list[int]:
    tree: list[int] = []
    todo = [pid]
    while todo and len(tree) < 1000:
        p = todo.pop()
        tree.append(p)
        with contextlib.suppress(OSError, ValueError):
            for task in Path("/proc", str(p), "task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
    return tree


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile, None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


@dataclass
class LoadResult:
    """Everything measured in one run against one server."""

    clients: int
    connected: int = 0
    connect_started_at: float = 0.0
    connected_at: list[float] = field(default_factory=list)
    connect_failures: int = 0
    connect_budget_ran_out: bool = False
    connect_gave_up: bool = False
    last_connect_error: str = ""
    initial_votes: int = 0
    dropped: int = 0
    dropped_during_connect: int = 0
    held_at_end: int = 0
    server_errors: int = 0
    garbage: int = 0
    unexpected_messages: int = 0
    echo_replies_late: int = 0
    changes_started: int = 0
    changes_skipped_busy: int = 0
    changes_undecided: int = 0
    wrong_outcomes: int = 0
    latencies_s: list[float] = field(default_factory=list)
    first_vote_latencies_s: list[float] = field(default_factory=list)
    churn_s: float = 0.0
    loop_lag_s: list[float] = field(default_factory=list)
    rss_idle_kb: int | None = None
    rss_connected_kb: int | None = None
    rss_after_churn_kb: int | None = None
    server_cpu_connect_pct: float | None = None
    loadgen_cpu_connect_pct: float | None = None
    server_cpu_pct: float | None = None
    loadgen_cpu_pct: float | None = None
    others_cpu_pct: float | None = None

    def time_to_connect_all(self) -> float | None:
        """Seconds from the first connect to the last INIT_REPLY, None if not all made it."""
        if self.connected < self.clients or not self.connected_at:
            return None
        return max(self.connected_at) - self.connect_started_at

    def connect_rate(self, first: float = 0.0, last: float = 1.0) -> float | None:
        """Clients/s completing INIT between fractions `first`..`last` of those connected."""
        times = sorted(self.connected_at)
        lo, hi = int(first * len(times)), int(last * len(times)) - 1
        if hi - lo < 1:
            return None
        start = self.connect_started_at if lo == 0 else times[lo]
        span = times[hi] - start
        return (hi - lo + (1 if lo == 0 else 0)) / span if span > 0 else None

    def decisions_per_s(self) -> float | None:
        """Changes decided per second of churn."""
        return len(self.latencies_s) / self.churn_s if self.churn_s > 0 else None

    def rss_per_connection_kb(self) -> float | None:
        """Server RSS growth from idle to all connected, per connected client."""
        if self.connected == 0 or self.rss_connected_kb is None or self.rss_idle_kb is None:
            return None
        return (self.rss_connected_kb - self.rss_idle_kb) / self.connected


@dataclass
class Change:
    """One membership change of one cluster, waiting for its four votes."""

    expected: dict[int, Vote]
    sent_at: float
    votes: dict[int, int] = field(default_factory=dict)


class LoadClient:
    """One qdevice-like connection: handshake, then answer votes and echo until closed."""

    def __init__(self, cluster: ClusterDriver, node_id: int, result: LoadResult) -> None:
        self.cluster = cluster
        self.node_id = node_id
        self.result = result
        self.ring = RingId(1, INITIAL_RING_SEQ)
        self.last_seq = 1  # qdevice's counter: PREINIT carries 1, later messages pre-increment
        self.echo_seq = 0
        self.echo_replied = 0
        self.alive = False
        self.got_vote = False
        self.closing = False
        self.decoder = StreamDecoder()
        self.writer: asyncio.StreamWriter | None = None
        self.reader: asyncio.StreamReader | None = None

    def next_seq(self) -> int:
        self.last_seq += 1
        return self.last_seq

    def send(self, msg: QnetdMessage) -> None:
        if self.writer is not None and not self.writer.is_closing():
            self.writer.write(encode(msg))

    async def connect(self, port: int, tls: ssl.SSLContext, heartbeat_ms: int) -> None:
        """PREINIT .. INIT_REPLY; raises OSError, EOFError, DecodeError or HandshakeError."""
        self.reader, self.writer = await asyncio.open_connection(HOST, port)
        self.send(Preinit(seq=self.last_seq, cluster_name=self.cluster.name))
        reply = await self._read_one()
        if not isinstance(reply, PreinitReply) or reply.tls_supported not in (
            TlsSupported.SUPPORTED,
            TlsSupported.REQUIRED,
        ):
            raise HandshakeError(f"PREINIT answered with {reply!r}")
        self.send(StartTls(seq=self.next_seq()))
        await self.writer.drain()
        await self.writer.start_tls(tls)
        self.send(
            Init(
                seq=self.next_seq(),
                supported_messages=ALL_MESSAGE_TYPES,
                supported_options=ALL_OPTION_TYPES,
                node_id=self.node_id,
                decision_algorithm=DecisionAlgorithm.FFSPLIT,
                heartbeat_interval=heartbeat_ms,
                tie_breaker=TieBreaker(TieBreakerMode.LOWEST),
                ring_id=self.ring,
            )
        )
        reply = await self._read_one()
        if not isinstance(reply, InitReply) or reply.reply_error_code != 0:
            raise HandshakeError(f"INIT answered with {reply!r}")

    def start_session(self) -> None:
        """After a good INIT_REPLY: the qdevice initial burst (reference 4.6)."""
        self.alive = True
        self.send(SetOption(seq=self.next_seq(), keep_active_partition_tie_breaker=True))
        nodes = tuple(NodeInfo(n) for n in NODE_IDS)
        self.send(
            NodeList(
                seq=self.next_seq(),
                node_list_type=NodeListType.INITIAL_CONFIG,
                config_version=1,
                nodes=nodes,
            )
        )
        self.send_membership(self.ring, NODE_IDS)
        self.send_quorum(NODE_IDS, quorate=True)

    def send_membership(self, ring: RingId, members: tuple[int, ...]) -> None:
        self.ring = ring
        self.send(
            NodeList(
                seq=self.next_seq(),
                node_list_type=NodeListType.MEMBERSHIP,
                ring_id=ring,
                nodes=tuple(NodeInfo(n) for n in members),
            )
        )

    def send_quorum(self, members: tuple[int, ...], *, quorate: bool) -> None:
        states = tuple(
            NodeInfo(n, state=NodeState.MEMBER if n in members else NodeState.DEAD)
            for n in NODE_IDS
        )
        self.send(
            NodeList(
                seq=self.next_seq(),
                node_list_type=NodeListType.QUORUM,
                quorate=quorate,
                nodes=states,
            )
        )

    def echo(self) -> None:
        """One heartbeat: count a missing reply (qdevice would reconnect), send the next echo."""
        if not self.alive:
            return
        if self.echo_replied != self.echo_seq:
            self.result.echo_replies_late += 1
        self.echo_seq += 1
        self.send(EchoRequest(seq=self.echo_seq))

    async def receive_loop(self) -> None:
        """Handle server messages until EOF; never raises (a dropped client is counted)."""
        assert self.reader is not None
        with contextlib.suppress(OSError, EOFError):
            while data := await self.reader.read(READ_CHUNK):
                self.decoder.feed(data)
                self._drain_decoder()
        if not self.closing:
            self.alive = False
            self.result.dropped += 1
            self.cluster.on_drop()

    def abort(self) -> None:
        """Close our side at once (no TLS close_notify exchange)."""
        self.closing = True
        self.alive = False
        if self.writer is not None:
            self.writer.transport.abort()

    async def _read_one(self) -> QnetdMessage:
        assert self.reader is not None
        while (msg := self.decoder.next_message()) is None:
            data = await self.reader.read(self.decoder.bytes_wanted())
            if not data:
                raise EOFError("server closed the connection during the handshake")
            self.decoder.feed(data)
        return msg

    def _drain_decoder(self) -> None:
        while True:
            try:
                msg = self.decoder.next_message()
            except DecodeError:
                self.result.garbage += 1
                continue
            if msg is None:
                return
            self._handle(msg)

    def _handle(self, msg: QnetdMessage) -> None:
        if isinstance(msg, VoteInfo):
            self.send(VoteInfoReply(seq=msg.seq))
            self.got_vote = True
            if msg.vote is not None and msg.ring_id is not None:
                self.cluster.on_vote(self, msg.vote, msg.ring_id)
        elif isinstance(msg, EchoReply):
            self.echo_replied = msg.seq or 0
        elif isinstance(msg, ServerError):
            self.result.server_errors += 1
        elif not isinstance(msg, NodeListReply | SetOptionReply):
            self.result.unexpected_messages += 1


class ClusterDriver:
    """Four clients of one cluster and the membership change in flight, if any."""

    def __init__(self, index: int, result: LoadResult) -> None:
        self.name = f"bench{index:05d}".encode()
        self.result = result
        self.clients = [LoadClient(self, n, result) for n in NODE_IDS]
        self.ring_seq = INITIAL_RING_SEQ
        self.split = False
        self.change: Change | None = None

    def idle(self) -> bool:
        """Ready for a change: all four connected and nothing in flight."""
        return self.change is None and all(c.alive for c in self.clients)

    def start_change(self, now: Callable[[], float]) -> None:
        """Send the next split or heal to all four members, then their quorum lists."""
        self.ring_seq += 1
        self.split = not self.split
        expected: dict[int, Vote] = {}
        for client in self.clients:
            members = self._members(client.node_id)
            client.send_membership(RingId(members[0], self.ring_seq), members)
            expected[client.node_id] = Vote.ACK if 1 in members else Vote.NACK
        self.change = Change(expected, now())
        for client in self.clients:
            members = self._members(client.node_id)
            client.send_quorum(members, quorate=1 in members)

    def on_vote(self, client: LoadClient, vote: int, ring: RingId) -> None:
        change = self.change
        if change is None or ring != client.ring or client.node_id in change.votes:
            return
        change.votes[client.node_id] = vote
        if len(change.votes) == 1:
            self.result.first_vote_latencies_s.append(time.monotonic() - change.sent_at)
        if len(change.votes) == NODES_PER_CLUSTER:
            self.result.latencies_s.append(time.monotonic() - change.sent_at)
            if change.votes != change.expected:
                self.result.wrong_outcomes += 1
            self.change = None

    def expire(self, now: float, timeout_s: float) -> None:
        """Give up on a change older than `timeout_s` (counted as undecided)."""
        if self.change is not None and now - self.change.sent_at > timeout_s:
            self.result.changes_undecided += 1
            self.change = None

    def on_drop(self) -> None:
        self.expire(math.inf, 0.0)

    def _members(self, node_id: int) -> tuple[int, ...]:
        if not self.split:
            return NODE_IDS
        return SPLIT_SIDES[0] if node_id in SPLIT_SIDES[0] else SPLIT_SIDES[1]


class LoadRun:
    """One run: connect, settle, churn, drain; the caller samples the server through `probe`."""

    def __init__(
        self,
        config: LoadConfig,
        port: int,
        tls: ssl.SSLContext,
        probe: Callable[[], ProcessSample],
        label: str,
    ) -> None:
        self.config = config
        self.port = port
        self.tls = tls
        self.probe = probe
        self.label = label
        self.result = LoadResult(clients=config.clients)
        self.clusters = [ClusterDriver(i, self.result) for i in range(config.clusters)]
        self.clients = [c for cluster in self.clusters for c in cluster.clients]
        self.tasks: set[asyncio.Task[None]] = set()
        self.echo_slots: list[list[LoadClient]] = [
            [] for _ in range(max(1, round(config.heartbeat_ms / 1000 / ECHO_TICK_S)))
        ]
        self.measuring_lag = False

    async def run(self) -> LoadResult:
        """All phases; returns what was reached even when a budget ran out."""
        self.result.rss_idle_kb = self.probe().rss_kb
        self._spawn(self._echo_ticker(), "echo-ticker")
        self._spawn(self._lag_probe(), "lag-probe")
        try:
            await self._connect_phase()
            self.result.dropped_during_connect = self.result.dropped
            if self.result.connected > 0:
                await self._settle()
                self.result.rss_connected_kb = self.probe().rss_kb
                await self._churn_phase()
                self.result.rss_after_churn_kb = self.probe().rss_kb
            self.result.held_at_end = sum(c.alive for c in self.clients)
        finally:
            for client in self.clients:
                client.abort()
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
        return self.result

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _connect_phase(self) -> None:
        result, cfg = self.result, self.config
        queue = deque(self.clients)
        before, lg_before = self.probe(), os.times()
        result.connect_started_at = time.monotonic()
        deadline = result.connect_started_at + cfg.connect_budget_s

        failures_in_a_row = 0

        async def connector() -> None:
            nonlocal failures_in_a_row
            while queue and (left := deadline - time.monotonic()) > 0:
                if failures_in_a_row >= GIVE_UP_AFTER_FAILURES:
                    result.connect_gave_up = True
                    return
                client = queue.popleft()
                try:
                    async with asyncio.timeout(min(cfg.connect_timeout_s, left)):
                        await client.connect(self.port, self.tls, cfg.heartbeat_ms)
                except (OSError, EOFError, TimeoutError, DecodeError, HandshakeError) as exc:
                    result.connect_failures += 1
                    result.last_connect_error = f"{type(exc).__name__}: {exc}"
                    failures_in_a_row += 1
                    client.abort()
                    client.closing, client.decoder = False, StreamDecoder()
                    client.last_seq, client.writer, client.reader = 1, None, None
                    queue.append(client)  # retried while the budget lasts, as qdevice would
                    continue
                failures_in_a_row = 0
                result.connected_at.append(time.monotonic())
                result.connected += 1
                self._spawn(client.receive_loop(), f"recv-{client.cluster.name.decode()}")
                self.echo_slots[result.connected % len(self.echo_slots)].append(client)
                client.start_session()

        progress = asyncio.get_running_loop().create_task(self._progress(), name="progress")
        try:
            await asyncio.gather(*(connector() for _ in range(cfg.connect_concurrency)))
        finally:
            progress.cancel()
        wall = time.monotonic() - result.connect_started_at
        lg_after = os.times()
        lg_cpu = lg_after.user + lg_after.system - lg_before.user - lg_before.system
        result.server_cpu_connect_pct = 100 * (self.probe().cpu_s - before.cpu_s) / wall
        result.loadgen_cpu_connect_pct = 100 * lg_cpu / wall
        result.connect_budget_ran_out = result.connected < result.clients

    async def _progress(self) -> None:
        last, last_t = 0, time.monotonic()
        while True:
            await asyncio.sleep(30)
            now, n = time.monotonic(), self.result.connected
            elapsed = now - self.result.connect_started_at
            print(
                f"  {self.label}: {n}/{self.result.clients} connected after {elapsed:.0f} s "
                f"({(n - last) / (now - last_t):.1f}/s over the last 30 s)",
                flush=True,
            )
            last, last_t = n, now

    async def _settle(self) -> None:
        deadline = time.monotonic() + self.config.settle_budget_s
        while time.monotonic() < deadline:
            if all(c.got_vote for c in self.clients if c.alive):
                break
            await asyncio.sleep(0.1)
        self.result.initial_votes = sum(c.got_vote for c in self.clients)

    async def _churn_phase(self) -> None:
        cfg, result = self.config, self.result
        interval = 1 / cfg.rate if cfg.rate > 0 else math.inf
        before, lg_before, busy_before = self.probe(), os.times(), machine_busy_s()
        start = time.monotonic()
        end = start + cfg.churn_s
        next_at, expire_at, cursor = start, start + EXPIRE_EVERY_S, 0
        self.measuring_lag = True
        while (now := time.monotonic()) < end:
            while next_at <= now:
                next_at += interval
                cursor = self._start_one(cursor)
            if now >= expire_at:
                expire_at = now + EXPIRE_EVERY_S
                for cluster in self.clusters:
                    cluster.expire(now, cfg.change_timeout_s)
            await asyncio.sleep(max(0.0, min(next_at, end) - time.monotonic()))
        self.measuring_lag = False
        after, lg_after, busy_after = self.probe(), os.times(), machine_busy_s()
        wall = time.monotonic() - start
        result.churn_s = wall
        server_cpu = after.cpu_s - before.cpu_s
        lg_cpu = lg_after.user + lg_after.system - lg_before.user - lg_before.system
        result.server_cpu_pct = 100 * server_cpu / wall
        result.loadgen_cpu_pct = 100 * lg_cpu / wall
        result.others_cpu_pct = (
            100 * max(0.0, busy_after - busy_before - server_cpu - lg_cpu) / wall
        )
        await self._drain()

    def _start_one(self, cursor: int) -> int:
        """Start a change on the next idle cluster in round-robin order; returns the new cursor."""
        k = len(self.clusters)
        for step in range(k):
            cluster = self.clusters[(cursor + step) % k]
            if cluster.idle():
                cluster.start_change(time.monotonic)
                self.result.changes_started += 1
                return (cursor + step + 1) % k
        self.result.changes_skipped_busy += 1
        return cursor

    async def _drain(self) -> None:
        """Let changes in flight finish (within change_timeout_s); the rest are undecided."""
        deadline = time.monotonic() + self.config.change_timeout_s
        while time.monotonic() < deadline and any(c.change for c in self.clusters):
            await asyncio.sleep(0.05)
        for cluster in self.clusters:
            cluster.expire(math.inf, 0.0)

    async def _echo_ticker(self) -> None:
        tick, next_at = 0, time.monotonic()
        while True:
            for client in self.echo_slots[tick % len(self.echo_slots)]:
                client.echo()
            tick += 1
            next_at += ECHO_TICK_S
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def _lag_probe(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(LAG_PROBE_S)
            if self.measuring_lag:
                self.result.loop_lag_s.append(time.monotonic() - before - LAG_PROBE_S)


def client_tls_context(ca_pem: bytes | None) -> ssl.SSLContext:
    """A TLS client context like qdevice's: verify the server against the qnetd CA if we have it.

    The server's name 'Qnetd Server' is no host name, so host-name checking is off (as in
    tests/interop/wire_walk.py); no client certificate is offered (servers run with client
    certificates not required).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    if ca_pem is None:
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=ca_pem.decode())
    return ctx


async def run_load(
    config: LoadConfig,
    port: int,
    ca_pem: bytes | None,
    probe: Callable[[], ProcessSample],
    label: str,
) -> LoadResult:
    """Run every phase against the server on 127.0.0.1:`port`."""
    return await LoadRun(config, port, client_tls_context(ca_pem), probe, label).run()
