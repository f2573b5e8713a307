"""The core's work per received heartbeat does not grow with the cluster (design §3.14).

* `next_deadline()` comes from lazy heaps; a property test drives random clusters (loss, cuts,
  crashes, restarts, pauses, clean stops, batched deliveries that ask `next_deadline()` once
  per batch) and compares it with the O(N) formula it replaced after every batch;
* a node finds its own echo by bisection, and a hostile unsorted tuple only makes it miss;
* the Python lines one steady-state heartbeat costs (handle + next_deadline) are the same at 48
  peers as at 16: counted with `sys.settrace`, so a per-peer loop shows up as N lines; no
  timing is asserted (figures: `tests/bench`).
"""

from __future__ import annotations

import heapq
import math
import random
import statistics
import sys
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import pytest

from agent.clique import MutualGraph, _Search, best_clique_containing, mutual_graph
from agent.deadline_heap import SLACK, Deadlines
from agent.link_loss import WINDOW_INTERVALS, LossMeter, missed
from agent.links import Links, _Reach
from agent.node import (
    AgentNode,
    Broadcast,
    MaxSeqStored,
    MessageIn,
    NodeEffect,
    PersistMaxSeq,
    SendTo,
    Start,
    Stop,
    Tick,
)
from proto.mesh_messages import Echo, Heartbeat, MeshMessage
from tests.agent.test_node import config

DELAY = 0.0005


# ------------------------------------------------------------------ the old O(N) formulas
def brute_heard_expiry(node: AgentNode) -> float | None:
    """The formula `_heard_expiry` had before the heap: a scan of every peer."""
    now = node._now
    return min(
        (
            p.received_at + p.timeout
            for p in node.peers.values()
            if p.verified and now < p.received_at + p.timeout
        ),
        default=None,
    )


def brute_peer_deadline(links: Links, peer: int, state: Any) -> float:
    """A peer's deadline as `Links._refresh` computed it before the heaps, from its state: the
    suspicion, a failover, an up link's lease end, the next send on any link (a link never sent
    on is due at the `now` of the last refresh: the cached value)."""
    best = math.inf
    if state.reach is _Reach.REACHABLE:
        best = state.last_heard + state.failure_timeout / 2
    redundant = len(state.links) > 1
    if redundant and (failover := links._failover_at(state)) is not None:
        best = min(best, failover[0])
    active = links._sending_link(state)
    for index, lk in state.links.items():
        if lk.up:
            best = min(best, links._expiry(state, lk) if redundant else lk.lease_until)
        if lk.last_sent is None:
            best = min(best, links._sends.at.get(peer, math.inf))
        else:
            best = min(best, links._due(lk, "heartbeat" if index == active else "probe"))
    return best


def brute_links_deadline(node: AgentNode) -> float | None:
    """`Links.next_deadline` before the heaps: the minimum of every peer's deadline."""
    links = node.links
    deadlines = [brute_peer_deadline(links, peer, state) for peer, state in links._peers.items()]
    earliest = min((d for d in deadlines if d != math.inf), default=None)
    if links._pending and (earliest is None or links._now < earliest):
        return links._now
    return earliest


def brute_next_deadline(node: AgentNode) -> float | None:
    if node._stopped:
        return None
    times = (
        brute_links_deadline(node),
        node.quorum.next_deadline(),
        node._evaluate_at,
        brute_heard_expiry(node),
        node._retry_store_at,
        node._hold_deadline(),
    )
    return min((t for t in times if t is not None), default=None)


# ------------------------------------------------------------------ a small driver
@dataclass
class Mesh:
    """Nodes on a lossy network with a fixed delay. Deliveries to one node at one instant are
    a batch: `next_deadline()` is asked once after it (as the runtime and simulator do), and
    then compared with the brute-force formula."""

    size: int
    rng: random.Random
    loss: float = 0.0
    links: int = 1
    now: float = 0.0
    nodes: dict[int, AgentNode] = field(default_factory=dict)
    incarnation: dict[int, int] = field(default_factory=dict)
    queue: list[tuple[float, int, int, Any]] = field(default_factory=list)
    timers: dict[int, float | None] = field(default_factory=dict)
    cuts: set[tuple[int, int]] = field(default_factory=set)
    paused: set[int] = field(default_factory=set)
    seq: int = 0
    checks: int = 0
    check: bool = True
    """Compare every deadline with the brute-force formula (O(N) each)."""

    def start(self, node: int) -> None:
        self.incarnation[node] = self.incarnation.get(node, 0) + 1
        seq = max(self.nodes[node].membership.max_seq, 0) if node in self.nodes else 0
        self.nodes[node] = AgentNode(
            config(node, self.size, self.links), self.incarnation[node], max_seq=seq
        )
        self.call(node, Start(wall_ms=int(self.now * 1000)))

    def push(self, at: float, node: int, item: Any) -> None:
        self.seq += 1
        heapq.heappush(self.queue, (at, self.seq, node, item))

    def call(self, node: int, event: Any) -> None:
        core = self.nodes[node]
        effects: list[NodeEffect] = core.handle(event, self.now)
        for e in effects:
            if isinstance(e, Broadcast):
                for peer in e.peers:
                    self.send(node, peer, e.link, e.message)
            elif isinstance(e, SendTo):
                self.send(node, e.peer, e.link, e.message)
        for e in effects:
            if isinstance(e, PersistMaxSeq):
                self.call(node, MaxSeqStored(e.value))
        head = self.queue[0] if self.queue else None
        if head and head[0] == self.now and head[2] == node and isinstance(head[3], MessageIn):
            return  # more of this batch follows: ask for the deadline once, after it
        self.arm(node)

    def arm(self, node: int) -> None:
        core = self.nodes[node]
        expected = brute_next_deadline(core) if self.check else None
        deadline = core.next_deadline()
        if self.check:
            assert deadline == expected, (node, self.now, deadline, expected)
            self.checks += 1
        if deadline is not None and node not in self.paused:
            self.timers[node] = deadline = max(deadline, self.now + 1e-6)
            self.push(deadline, node, ("tick", deadline))

    def send(self, src: int, dst: int, link: int, msg: MeshMessage) -> None:
        if (src, dst) in self.cuts or dst not in self.nodes or self.rng.random() < self.loss:
            return
        ev = MessageIn(src, self.incarnation[src], link, msg, 0)
        self.push(self.now + DELAY * (1 + self.rng.random()), dst, ev)

    def run(self, seconds: float) -> None:
        end = self.now + seconds
        while self.queue and self.queue[0][0] <= end:
            at, _, node, item = heapq.heappop(self.queue)
            self.now = max(self.now, at)
            if node in self.paused or self.nodes[node]._stopped:
                continue
            if isinstance(item, tuple):
                if self.timers.get(node) == item[1]:
                    self.timers[node] = None
                    self.call(node, Tick(wall_ms=int(self.now * 1000)))
            else:
                self.call(node, MessageIn(*_fields(item), wall_ms=int(self.now * 1000)))
        self.now = end

    def resume(self, node: int) -> None:
        self.paused.discard(node)
        self.call(node, Tick(wall_ms=int(self.now * 1000)))


def _fields(ev: MessageIn) -> tuple[int, int, int, MeshMessage]:
    return ev.peer, ev.incarnation, ev.link, ev.message


@pytest.mark.parametrize("seed", range(6))
def test_next_deadline_equals_the_full_scan_across_random_runs(seed: int) -> None:
    """After every batch, with loss, cuts, crashes, restarts, a stall and clean stops, the
    heap-based `next_deadline()` equals the O(N) formula it replaced (and the heaps stay
    bounded although `next_deadline()` is asked only once per batch)."""
    rng = random.Random(seed)
    size = rng.choice((3, 5, 8))
    mesh = Mesh(size, rng, loss=rng.choice((0.0, 0.05, 0.2)), links=rng.choice((1, 2)))
    for node in range(1, size + 1):
        mesh.start(node)
    for _ in range(14):
        mesh.run(rng.uniform(0.1, 0.8))
        action = rng.randrange(6)
        a, b = rng.sample(range(1, size + 1), 2)
        if action == 0:
            mesh.cuts ^= {(a, b)}
        elif action == 1:
            mesh.cuts.clear()
        elif action == 2:  # kill -9 and restart with a new incarnation
            mesh.start(a)
        elif action == 3 and a not in mesh.paused:
            mesh.paused.add(a)  # a stall longer than the failure timeout
            mesh.run(1.5)
            mesh.resume(a)
        elif action == 4 and not mesh.nodes[a]._stopped:
            mesh.call(a, Stop("test"))
        elif action == 5:
            mesh.start(a)
        for core in mesh.nodes.values():
            assert len(core._heard_by) <= 2 * len(core.peers) + SLACK + 1
            for part in (core.links._expiries, core.links._sends):
                assert len(part) <= 2 * len(part.at) + SLACK + 1
    assert mesh.checks > 100


def test_the_heard_bounds_stay_bounded_when_nobody_asks() -> None:
    """Expiries keep moving earlier (the worst case: each one a push) while `next_deadline()`
    is never called (a long batch): the heap is rebuilt before it holds more than twice the
    peers plus a slack, and the earliest expiry is still right."""
    mesh = Mesh(5, random.Random(1))
    for node in range(1, 6):
        mesh.start(node)
    mesh.run(2.0)
    core = mesh.nodes[1]
    assert core.view.members == frozenset(range(1, 6))
    for i in range(2000):
        pid = 2 + i % 4
        peer = core.peers[pid]
        peer.timeout -= 1e-5
        core._heard_moved(pid, peer)
        assert len(core._heard_by) <= 2 * len(core.peers) + SLACK + 1
    assert core._heard_expiry() == brute_heard_expiry(core)


def test_deadlines_drop_stale_entries_and_rebuild() -> None:
    deadlines = Deadlines()
    assert deadlines.earliest() is None
    for key, at in ((1, 5.0), (2, 3.0), (3, 4.0)):
        deadlines.set(key, at)
    assert deadlines.earliest() == 3.0
    deadlines.set(2, 9.0)
    assert deadlines.first() == (4.0, 3)
    deadlines.discard(3)
    assert deadlines.earliest() == 5.0
    for i in range(500):
        deadlines.set(1, 10.0 + i)
        assert len(deadlines) <= 2 * len(deadlines.at) + SLACK + 1
    assert deadlines.earliest() == 9.0
    deadlines.set(2, math.inf)  # no deadline any more
    assert deadlines.at == {1: 509.0}
    deadlines.set(3, 1.0)
    deadlines.set(4, 2.0)
    assert deadlines.pop_due(2.0) == [3, 4]
    assert deadlines.at == {1: 509.0}
    assert deadlines.earliest() == 509.0


# ------------------------------------------------------------------ own echo
def _boot(node: AgentNode) -> list[NodeEffect]:
    """Start, with the ring sequence stored at once (as the runtime answers)."""
    out = node.handle(Start(wall_ms=0), 0.0)
    for e in list(out):
        if isinstance(e, PersistMaxSeq):
            out += node.handle(MaxSeqStored(e.value), 0.0)
    return out


def _verified_pair() -> tuple[AgentNode, Heartbeat, int]:
    """Node 1 and node 2 (of 3), node 2's heartbeat to node 1 that echoes node 1's stamp."""
    one = AgentNode(config(1, 3), incarnation=1)
    two = AgentNode(config(2, 3), incarnation=1)
    out1 = _boot(one)
    _boot(two)
    hb1 = next(e.message for e in out1 if isinstance(e, Broadcast))
    assert isinstance(hb1, Heartbeat)
    two.handle(MessageIn(1, 1, 0, hb1, 0), 0.001)
    out2 = two.handle(Tick(wall_ms=100), 0.1)
    hb2 = next(e.message for e in out2 if isinstance(e, Broadcast))
    assert isinstance(hb2, Heartbeat)
    (echo,) = [e for e in hb2.echoes if e.node_id == 1]
    return one, hb2, echo.stamp_us


def _first_contact(echoes: tuple[Echo, ...]) -> AgentNode:
    one, hb2, _ = _verified_pair()
    one.handle(MessageIn(2, 1, 0, Heartbeat(**{**_hb_fields(hb2), "echoes": echoes}), 0), 0.101)
    return one


def _hb_fields(hb: Heartbeat) -> dict[str, Any]:
    return {name: getattr(hb, name) for name in hb.__dataclass_fields__}


def test_own_echo_is_found_among_many_sorted_ones() -> None:
    """A heartbeat carrying 200 sorted echoes verifies the sender through ours (bisection)."""
    stamp = _verified_pair()[2]
    others = [Echo(i, 11, 5) for i in range(2, 202)]
    one = _first_contact((Echo(1, stamp, 100), *others))
    assert one.peers[2].verified
    one = _first_contact((*others[:50], Echo(1, stamp, 100), *others[50:]))
    assert not one.peers[2].verified  # unsorted: ours is not where bisection looks


@pytest.mark.parametrize(
    "echoes",
    [
        (),
        (Echo(3, 1, 0), Echo(2, 1, 0)),  # unsorted, ours absent
        (Echo(9, 7, 0), Echo(1, 0, 0), Echo(1, 2**62, 0)),  # unsorted, ours out of range
        tuple(Echo(5, 1, 0) for _ in range(40)),  # duplicates
    ],
)
def test_a_hostile_echo_tuple_only_makes_us_miss(echoes: tuple[Echo, ...]) -> None:
    """Unsorted, duplicated or out-of-range echoes never raise: the sender stays unverified."""
    one = _first_contact(echoes)
    assert not one.peers[2].verified
    assert one.last_fresh_peer is None


def test_sorted_echoes_with_ours_at_either_end_verify() -> None:
    _, _, stamp = _verified_pair()
    assert _first_contact((Echo(1, stamp, 0), Echo(3, 1, 0))).peers[2].verified
    assert _first_contact((Echo(1, stamp, 0),)).peers[2].verified  # the runtime's per-peer form


# ------------------------------------------------------------------ work per heartbeat
def _lines_per_heartbeat(size: int) -> int:
    """Median Python lines executed by node 1 for one steady-state heartbeat (handle and the
    next_deadline after it), over the heartbeats of one round."""
    mesh = Mesh(size, random.Random(size), check=False)
    for node in range(1, size + 1):
        mesh.start(node)
    mesh.run(2.0)
    core = mesh.nodes[1]
    assert core.view.members == frozenset(range(1, size + 1))
    counts: list[int] = []
    lines = 0

    def tracer(frame: FrameType, event: str, arg: object) -> Any:
        nonlocal lines
        if event == "line":
            lines += 1
        return tracer

    original = core.handle

    def counted(event: Any, now: float) -> list[NodeEffect]:
        nonlocal lines
        if not isinstance(event, MessageIn) or not isinstance(event.message, Heartbeat):
            return original(event, now)
        lines = 0
        sys.settrace(tracer)
        try:
            out = original(event, now)
            core.next_deadline()
        finally:
            sys.settrace(None)
        counts.append(lines)
        return out

    core.handle = counted  # type: ignore[method-assign]
    mesh.run(0.3)
    assert len(counts) >= 2 * (size - 1)
    return int(statistics.median(counts))


def test_a_heartbeat_costs_the_same_python_lines_at_48_nodes_as_at_16() -> None:
    """No per-peer loop runs per received heartbeat: the lines executed for one (handle and
    next_deadline) at 48 nodes are within a few of those at 16 (before the heaps: +1 line per
    peer in the heard-expiry scan and one per echo in the echo loop, i.e. ~+100 lines)."""
    small, large = _lines_per_heartbeat(16), _lines_per_heartbeat(48)
    assert large <= small + 8, (small, large)
    assert not math.isnan(small)


# ------------------------------------------------------------------ loss meter
def brute_loss(meter: LossMeter, now: float, outage: int | None) -> float:
    """`LossMeter.loss` before its running counts: every mark of the window, one by one."""
    if meter.last is None:
        return 1.0
    meter._trim(now)
    start = now - meter.window()
    holes = min(missed(now - meter.last, meter.interval), WINDOW_INTERVALS)
    counted = extras = 0
    for at, before, extra in meter.marks:
        if extra:
            extras += 1
        elif outage is not None and before >= outage:
            counted += 1
        else:
            counted += 1
            holes += min(before, max(0, math.floor((at - start) / meter.interval)))
    total = counted + holes
    return 0.0 if total == 0 else max(0, holes - extras) / total


@pytest.mark.parametrize("seed", range(5))
def test_loss_from_running_counts_equals_the_scan(seed: int) -> None:
    """Random loss, duplicates, reordering, outages and a cadence change: the running counts
    give exactly the loss the scan over every mark gave."""
    rng = random.Random(seed)
    meter, now, interval = LossMeter(), 0.0, 0.1
    for i in range(3000):
        if i == 1500:
            interval = 0.2
        now += interval * (1 + rng.choice((0, 0, 0, 1, 2, 7)) * (rng.random() < 0.3))
        now += rng.uniform(-0.02, 0.02)
        meter.arrive(now, interval)
        if rng.random() < 0.1:
            meter.arrive(now + rng.uniform(0, 0.04), interval)  # a duplicate or a late one
        at = now + rng.choice((0.0, 0.05, 0.3, 1.0))
        for outage in (None, 6):
            assert meter.loss(at, outage) == brute_loss(meter, at, outage)
    assert meter.counted + meter.extras == len(meter.marks)


# ------------------------------------------------------------------ membership at scale
@pytest.mark.parametrize("seed", range(4))
def test_the_incremental_mutual_graph_equals_the_full_build(seed: int) -> None:
    """Rows that change one or a few at a time (a peer heard or lost, one-way cuts, a report
    that comes or goes, a partition and its heal), sometimes equal sets as new objects: the
    kept graph is always `mutual_graph` of the rows."""
    rng = random.Random(seed)
    n = 40
    rows: dict[int, frozenset[int]] = {i: frozenset(range(1, n + 1)) - {i} for i in range(1, n + 1)}
    graph = MutualGraph()
    for step in range(400):
        action = rng.randrange(6)
        i, j = rng.sample(range(1, n + 1), 2)
        if action == 0 and i in rows:
            rows[i] = rows[i] ^ {j}  # i starts or stops hearing j
        elif action == 1:
            rows.pop(i, None)  # its report expired
        elif action == 2:
            rows[i] = frozenset(rng.sample(range(1, n + 1), rng.randrange(n)))  # with self loops
        elif action == 3 and i in rows:
            rows[i] = frozenset(set(rows[i]))  # equal set, new object
        elif action == 4 and step % 50 == 0:
            cut = set(rng.sample(range(1, n + 1), n // 3))
            rows = {k: frozenset(v - cut if k not in cut else v & cut) for k, v in rows.items()}
        elif action == 5:
            rows[i] = frozenset(range(1, n + 1)) - {i}
        matrix = dict(rows)
        assert graph.update(matrix) == mutual_graph(matrix)


def test_a_clique_of_every_candidate_needs_no_search() -> None:
    """256 nodes that all hear each other (formation, a clean partition): the best clique is
    every candidate, found without a branch-and-bound search or a per-id check (the answer is
    the same as the search's on the same graph minus one edge's absence)."""
    nodes = range(1, 257)
    graph = {i: frozenset(nodes) - {i} for i in nodes}
    assert best_clique_containing(1, graph, set(graph[1])) == frozenset(nodes)
    search = _Search(graph, set(nodes))
    assert search.maximum_size(search.everyone) == 256
    assert search.steps == 0  # no colouring: the greedy clique already holds everyone
    cut = {**graph, 7: graph[7] - {9}, 9: graph[9] - {7}}  # one broken pair: a real search
    assert best_clique_containing(1, cut, set(cut[1])) == frozenset(nodes) - {9}
