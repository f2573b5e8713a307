"""Hypothesis properties of the decision algorithms, driven through the algorithm harness.

ffsplit and lms run against a small world model: nodes are split into partitions (each with its own
ring id), qdevices report their partition late and acknowledge VOTE_INFOs late, heuristics flip,
clients drop and come back. A client model follows reference 7.1 (ACK/NACK set the vote,
WAIT/ASK_LATER clear it, votes tagged with a ring id other than the last one the client sent are
ignored, a node whose partition changed stops voting until it has sent its new membership). All
four algorithms also get arbitrary, inconsistent input and must never raise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from proto.qnetd_enums import DecisionAlgorithm, Heuristics, TieBreakerMode, Vote
from proto.qnetd_options import RingId, TieBreaker
from qnetd.algorithms.registry import ALGORITHMS
from tests.qnetd.algo_harness import AlgoHarness, Sent

HEURISTICS = st.sampled_from([None, Heuristics.PASS, Heuristics.FAIL])
TIE_BREAKERS = st.sampled_from(
    [TieBreaker(TieBreakerMode.LOWEST), TieBreaker(TieBreakerMode.HIGHEST)]
    + [TieBreaker(TieBreakerMode.NODE_ID, n) for n in (1, 2, 9)]
)


@dataclass
class Qdevice:
    """What one node's qdevice believes (reference 7.1)."""

    last_ring: RingId
    vote: Vote | None = None
    paused: bool = False
    unacked: list[int] = field(default_factory=list)
    latest: tuple[Vote, int] | None = None
    """Vote and seq of the latest VOTE_INFO received."""
    acked_seq: int = 0

    def votes_ack(self) -> bool:
        """Whether this node currently grants the qdevice vote."""
        return self.vote is Vote.ACK and not self.paused

    def receive(self, sent: Sent) -> None:
        """Apply a reply or VOTE_INFO (ignored if tagged with another ring id)."""
        if sent.kind == "vote_info":
            self.unacked.append(sent.seq)
            self.latest = (sent.vote, sent.seq)
        if sent.ring_id != self.last_ring or sent.vote is Vote.NO_CHANGE:
            return
        self.vote = sent.vote if sent.vote in (Vote.ACK, Vote.NACK) else None

    def owes_nack_ack(self) -> bool:
        """Its latest VOTE_INFO is a NACK it has not acknowledged yet."""
        return (
            self.latest is not None
            and self.latest[0] is Vote.NACK
            and (self.acked_seq < self.latest[1])
        )


@dataclass
class World:
    """Nodes, their real partitions and qdevices, and the harness standing in for qnetd."""

    h: AlgoHarness
    nodes: tuple[int, ...]
    tie_breaker: TieBreaker
    kap: bool
    group: dict[int, frozenset[int]] = field(default_factory=dict)
    ring: dict[frozenset[int], RingId] = field(default_factory=dict)
    heuristics: dict[int, Heuristics | None] = field(default_factory=dict)
    devices: dict[int, Qdevice] = field(default_factory=dict)
    unreported: set[int] = field(default_factory=set)
    seq: int = 8
    batches: bool = True
    """Check ffsplit's batch rules (one vote per batch, ACKs after NACK acknowledgements)."""

    # ------------------------------------------------------------ world events
    def repartition(self, labels: list[int]) -> None:
        """Nodes move to the partitions named by `labels`; changed ones pause until reported."""
        label_of = dict(zip(self.nodes, labels, strict=False))
        groups = {
            frozenset(n for n in self.nodes if label_of[n] == label_of[m]) for m in self.nodes
        }
        for g in groups:
            if g not in self.ring:
                self.seq += 4
                self.ring[g] = RingId(min(g), self.seq)
        for g in groups:
            for n in g:
                if self.group.get(n) != g:
                    self.group[n] = g
                    self.unreported.add(n)
                    if n in self.devices:
                        self.devices[n].paused = True

    def connect(self, n: int) -> None:
        """A qdevice connects and sends its initial burst."""
        ring = self.ring[self.group[n]]
        self.devices[n] = Qdevice(last_ring=ring)
        self.h.connect(n, tie_breaker=self.tie_breaker, kap=self.kap, ring_id=ring)
        self.run(lambda: self.h.config(n, self.nodes))
        self.report(n)
        self.run(lambda: self.h.quorum(n))

    def report(self, n: int) -> None:
        """The node's qdevice sends its current partition as a membership list."""
        dev = self.devices[n]
        ring = self.ring[self.group[n]]
        dev.last_ring, dev.paused, dev.vote = ring, False, None
        self.unreported.discard(n)
        members = tuple(sorted(self.group[n]))
        self.run(lambda: self.h.membership(n, ring, members, self.heuristics.get(n)))

    def ack(self, n: int) -> None:
        """The node's qdevice acknowledges its oldest unacknowledged VOTE_INFO."""
        dev = self.devices[n]
        seq = dev.unacked.pop(0)
        dev.acked_seq = max(dev.acked_seq, seq)
        self.run(lambda: self.h.ack(n, seq))

    def flip_heuristics(self, n: int, value: Heuristics) -> None:
        """Regular heuristics changed: HEURISTICS_CHANGE."""
        self.heuristics[n] = value
        self.run(lambda: self.h.heuristics_change(n, value))

    def drop(self, n: int) -> None:
        """The connection is lost; the qdevice falls back to NACK."""
        del self.devices[n]
        self.run(lambda: self.h.disconnect(n))

    def settle(self) -> None:
        """Every qdevice acknowledges everything it was sent, until nothing is outstanding."""
        while pending := [n for n, d in self.devices.items() if d.unacked]:
            self.ack(pending[0])

    # ------------------------------------------------------------ delivery and checks
    def run(self, call: object) -> None:
        """Make one call into the harness, check its output, deliver it to the qdevices."""
        assert callable(call)
        call()
        out = self.h.take()
        assert all(s.kind != "server_error" for s in out), out
        infos = [s for s in out if s.kind == "vote_info"] if self.batches else []
        assert len({s.vote for s in infos}) <= 1, f"mixed VOTE_INFO batch {infos}"
        if infos and infos[0].vote is Vote.ACK:
            acked = {s.node_id for s in infos}
            owing = [n for n, d in self.devices.items() if n not in acked and d.owes_nack_ack()]
            assert owing == [], f"ACK released while {owing} still owe a NACK acknowledgement"
        for s in out:
            self.devices[s.node_id].receive(s)
        self.check_one_partition_votes()

    def check_one_partition_votes(self) -> None:
        """No two different real partitions both have a node granting the vote."""
        granting = {self.group[n] for n, d in self.devices.items() if d.votes_ack()}
        assert len(granting) <= 1, f"ACK in several partitions: {granting}"


STEP = st.one_of(
    st.tuples(st.just("repartition"), st.lists(st.integers(0, 2), min_size=6, max_size=6)),
    *[st.tuples(st.just("report"), st.integers(0, 5))] * 3,
    *[st.tuples(st.just("ack"), st.integers(0, 5))] * 4,
    st.tuples(st.just("heuristics"), st.integers(0, 5), st.sampled_from(list(Heuristics))),
    st.tuples(st.just("drop"), st.integers(0, 5)),
    st.tuples(st.just("connect"), st.integers(0, 5)),
)
"""Steps; the integer picks among the nodes the step applies to (so few steps are no-ops)."""


def _pick(candidates: list[int], index: int) -> int | None:
    return candidates[index % len(candidates)] if candidates else None


def _step(world: World, step: tuple[object, ...]) -> None:
    kind, index = step[0], step[1]
    if kind == "repartition":
        assert isinstance(index, list)
        world.repartition(index)
        return
    assert isinstance(index, int)
    connected = sorted(world.devices)
    if kind == "connect":
        n = _pick([m for m in world.nodes if m not in world.devices], index)
        if n is not None:
            world.connect(n)
    elif kind == "report":
        n = _pick(sorted(world.unreported & set(connected)), index)
        if n is not None:
            world.report(n)
    elif kind == "ack":
        n = _pick([m for m in connected if world.devices[m].unacked], index)
        if n is not None:
            world.ack(n)
    elif kind == "heuristics" and (n := _pick(connected, index)) is not None:
        value = step[2]
        assert isinstance(value, Heuristics)
        world.flip_heuristics(n, value)
    elif kind == "drop" and (n := _pick(connected, index)) is not None:
        world.drop(n)
    elif kind == "advance":
        world.run(lambda: world.h.advance(TIMER_STEP_MS))


@settings(max_examples=300, deadline=None)
@given(
    size=st.integers(2, 5),
    tie_breaker=TIE_BREAKERS,
    kap=st.booleans(),
    steps=st.lists(STEP, min_size=20, max_size=80),
)
def test_ffsplit_never_lets_two_partitions_hold_ack(
    size: int, tie_breaker: TieBreaker, kap: bool, steps: list[tuple[object, ...]]
) -> None:
    """ffsplit: whatever the order of reports, acknowledgements, heuristics changes and drops,
    (a) every VOTE_INFO batch carries one vote, (b) an ACK batch goes out only when no other
    client still owes the acknowledgement of a NACK, and (c) nodes of at most one real partition
    grant the vote at any moment."""
    nodes = tuple(range(1, size + 1))
    world = World(AlgoHarness(ALGORITHMS[DecisionAlgorithm.FFSPLIT]), nodes, tie_breaker, kap)
    world.repartition([0] * 6)
    for n in nodes:
        world.connect(n)
    world.settle()
    for step in steps:
        _step(world, step)


@settings(max_examples=100, deadline=None)
@given(size=st.integers(2, 5), tie_breaker=TIE_BREAKERS, kap=st.booleans())
def test_ffsplit_settles_on_exactly_the_selected_partition(
    size: int, tie_breaker: TieBreaker, kap: bool
) -> None:
    """ffsplit: once everyone reported one whole-cluster partition and acknowledged all
    VOTE_INFOs, every node grants the vote (a full membership always has a majority)."""
    nodes = tuple(range(1, size + 1))
    world = World(AlgoHarness(ALGORITHMS[DecisionAlgorithm.FFSPLIT]), nodes, tie_breaker, kap)
    world.repartition([0] * 6)
    for n in nodes:
        world.connect(n)
    world.settle()
    assert all(d.votes_ack() for d in world.devices.values())


TIMER_STEP_MS = 1000
"""lms' timers run every heartbeat/4 = 2000 ms in the harness: two steps per round."""
LMS_STEP = st.one_of(STEP, *[st.tuples(st.just("advance"), st.integers(0, 5))] * 3)


@settings(max_examples=1000, deadline=None)
@given(
    size=st.integers(2, 4),
    tie_breaker=TIE_BREAKERS,
    steps=st.lists(LMS_STEP, min_size=20, max_size=80),
)
def test_lms_never_lets_two_partitions_hold_ack(
    size: int, tie_breaker: TieBreaker, steps: list[tuple[object, ...]]
) -> None:
    """lms (revoke before grant, a deliberate difference from 3.0.3): whatever the order of
    reports, timers, acknowledgements, heuristics changes and drops, nodes of at most one real
    partition grant the vote at any moment."""
    nodes = tuple(range(1, size + 1))
    world = World(AlgoHarness(ALGORITHMS[DecisionAlgorithm.LMS]), nodes, tie_breaker, False)
    world.batches = False
    world.repartition([0] * 6)
    for n in nodes:
        world.connect(n)
    world.settle()
    for step in steps:
        _step(world, step)


NODE = st.integers(1, 6)
RING = st.builds(RingId, st.integers(0, 6), st.integers(0, 3))
EVENT = st.one_of(
    st.tuples(st.just("connect"), NODE, RING, TIE_BREAKERS, st.booleans()),
    st.tuples(st.just("config"), NODE, st.lists(NODE, max_size=6), st.booleans()),
    st.tuples(st.just("membership"), NODE, RING, st.lists(NODE, max_size=6), HEURISTICS),
    st.tuples(st.just("quorum"), NODE, st.booleans()),
    st.tuples(st.just("heuristics"), NODE, st.sampled_from(list(Heuristics))),
    st.tuples(st.just("ask"), NODE),
    st.tuples(st.just("ack"), NODE, st.integers(0, 4)),
    st.tuples(st.just("drop"), NODE, st.booleans()),
    st.tuples(st.just("advance"), st.integers(0, 5000)),
)


def _event(h: AlgoHarness, event: tuple[object, ...]) -> None:
    """Apply one arbitrary event; events for absent (or duplicate) nodes are skipped."""
    kind, *args = event
    if kind == "advance":
        assert isinstance(args[0], int)
        h.advance(args[0])
        return
    n = args[0]
    assert isinstance(n, int)
    present = h.cluster.by_node_id(n) is not None
    if kind == "connect":
        if not present:
            ring, tb, kap = args[1], args[2], args[3]
            assert isinstance(ring, RingId)
            assert isinstance(tb, TieBreaker)
            h.connect(n, ring_id=ring, tie_breaker=tb, kap=bool(kap))
        return
    if present:
        _message(h, n, kind, args[1:])


def _message(h: AlgoHarness, n: int, kind: object, args: list[object]) -> None:
    if kind == "config":
        ids, initial = args
        assert isinstance(ids, list)
        h.config(n, ids, initial=bool(initial))
    elif kind == "membership":
        ring, ids, heuristics = args
        assert isinstance(ring, RingId)
        assert isinstance(ids, list)
        assert heuristics is None or isinstance(heuristics, Heuristics)
        h.membership(n, ring, ids, heuristics)
    elif kind == "quorum":
        h.quorum(n, bool(args[0]))
    elif kind == "heuristics":
        assert isinstance(args[0], Heuristics)
        h.heuristics_change(n, args[0])
    elif kind == "ask":
        h.ask_for_vote(n)
    elif kind == "ack":
        assert isinstance(args[0], int)
        h.ack(n, max(0, h.client(n).vote_info_seq - args[0]))
    elif kind == "drop":
        h.disconnect(n, server_going_down=bool(args[0]))


@settings(max_examples=200, deadline=None)
@given(
    code=st.sampled_from(list(DecisionAlgorithm)),
    events=st.lists(EVENT, max_size=50),
)
def test_no_algorithm_raises_on_arbitrary_input(
    code: DecisionAlgorithm, events: list[tuple[object, ...]]
) -> None:
    """Any sequence of (inconsistent) lists, rings, heuristics, seqs, timers and disconnects:
    no exception, and every VOTE_INFO goes to a listed client (the harness asserts it)."""
    h = AlgoHarness(ALGORITHMS[code])
    for event in events:
        _event(h, event)
    for client in list(h.cluster.clients):
        h.disconnect(client.node_id)
    assert h.cluster.clients == []
