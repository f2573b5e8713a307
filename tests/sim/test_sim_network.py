"""The simulated network's fault mechanics, pinned with a recording core."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from votemesh_lab.sim.iface import Broadcast, MessageIn, PersistMaxSeq, Start, Tick, reported
from votemesh_lab.sim.network import Core, LinkModel, SimNetwork, cluster_configs

from agent.config import AgentConfig
from proto.mesh_messages import Heartbeat

PERIOD = 0.01


class Recorder:
    """Sends a numbered heartbeat to every peer each PERIOD; records what it receives."""

    made: ClassVar[dict[int, list[Recorder]]] = {}

    def __init__(self, config: AgentConfig, incarnation: int, max_seq: int) -> None:
        self.me, self.incarnation, self.max_seq = config.node_id, incarnation, max_seq
        self.peers = tuple(p.node_id for p in config.peers)
        self.count = 0
        self.next_at = 0.0
        self.ticks: list[float] = []
        self.got: list[tuple[float, int, int, int]] = []
        Recorder.made.setdefault(self.me, []).append(self)

    def handle(self, event: object, now: float) -> list[Any]:
        if isinstance(event, MessageIn) and isinstance(event.message, Heartbeat):
            self.got.append((now, event.peer, event.incarnation, event.message.stamp_us))
        if isinstance(event, Start | Tick) and now >= self.next_at:
            self.ticks.append(now)
            self.next_at = now + PERIOD
            self.count += 1
            beat = Heartbeat(link=0, stamp_us=self.count, wall_ms=0)
            return [Broadcast(0, self.peers, beat), PersistMaxSeq(self.max_seq + self.count)]
        return []

    def next_deadline(self) -> float | None:
        return self.next_at

    def status(self, now: float) -> dict[str, Any]:
        return {"ring_id": None, "members": [], "quorate": False, "expected_votes": 2}


def recorder(config: AgentConfig, incarnation: int, max_seq: int) -> Core:
    return Recorder(config, incarnation, max_seq)


def pair(link: LinkModel, seed: int = 5) -> SimNetwork:
    Recorder.made = {}
    net = SimNetwork(cluster_configs(2), seed, default_link=link, factory=recorder)
    net.start(1)
    net.start(2)
    return net


def stamps(node: int, peer: int) -> list[int]:
    return [s for _, p, _, s in Recorder.made[node][-1].got if p == peer]


def test_loss_drops_about_that_share() -> None:
    """loss = 0.3: about 30 % of 1000 datagrams are lost, the rest arrive once."""
    net = pair(LinkModel(loss=0.3))
    net.run_until(1000 * PERIOD - PERIOD / 2)
    got = stamps(2, 1)
    assert 630 <= len(got) <= 770
    assert len(set(got)) == len(got)


def test_duplication_delivers_twice() -> None:
    """duplicate = 1.0: every datagram arrives exactly twice."""
    net = pair(LinkModel(duplicate=1.0))
    net.run_until(100 * PERIOD - PERIOD / 2)
    got = stamps(2, 1)
    assert sorted(got) == sorted(list(range(1, 101)) * 2)


def test_fifo_without_jitter_reordering_with_it() -> None:
    """A plain link keeps the order; a reordering link lets later datagrams overtake."""
    net = pair(LinkModel())
    net.run_until(1.0)
    assert stamps(2, 1) == sorted(stamps(2, 1))
    net = pair(LinkModel(reorder=0.5, reorder_delay=0.05))
    net.run_until(1.0)
    got = stamps(2, 1)
    assert got != sorted(got)
    assert len(set(got)) == len(got) >= 95


def test_one_way_cut_drops_one_direction_only() -> None:
    """cut(1, 2): nothing from 1 reaches 2 while 2 -> 1 still works; uncut restores it."""
    net = pair(LinkModel())
    net.cut(1, 2)  # after the start, whose first datagram is already on its way
    net.run_until(0.5)
    assert stamps(2, 1) == [1]
    assert len(stamps(1, 2)) >= 45
    net.uncut(1, 2)
    net.run_until(1.0)
    assert len(stamps(2, 1)) >= 45


def test_pause_queues_everything_and_stops_timers() -> None:
    """A paused node's timers do not fire and it receives nothing; on resume every queued
    datagram arrives, in sending order, at the resume time."""
    net = pair(LinkModel(delay=0.001))
    net.run_until(0.1)
    net.pause(2, 0.5)
    net.run_until(0.6 - PERIOD / 10)
    node2 = Recorder.made[2][-1]
    assert all(t <= 0.1 for t in node2.ticks)
    assert all(t <= 0.1 for t, *_ in node2.got)
    net.run_until(0.61)
    resumed = [(t, s) for t, p, _, s in node2.got if t > 0.1]
    at_resume = [s for t, s in resumed if t == resumed[0][0]]
    assert resumed[0][0] >= 0.6 - 1e-9
    assert len(at_resume) >= 45
    assert at_resume == sorted(at_resume)
    assert any(t >= 0.6 for t in node2.ticks)


def test_crash_and_restart_with_higher_incarnation_and_persisted_seq() -> None:
    """A crashed node gets nothing; its restart is a new core with incarnation + 1 and the last
    PersistMaxSeq value, and peers see the new incarnation on its datagrams."""
    net = pair(LinkModel())
    net.run_until(0.2)
    persisted = Recorder.made[1][-1].max_seq + Recorder.made[1][-1].count
    net.crash(1)
    net.run_until(0.4)
    assert all(t <= 0.2 + 0.001 for t, p, _, _ in Recorder.made[2][-1].got if p == 1)
    net.restart(1)
    net.run_until(0.6)
    fresh = Recorder.made[1][-1]
    assert len(Recorder.made[1]) == 2
    assert (fresh.incarnation, fresh.max_seq) == (2, persisted)
    assert {i for _, p, i, _ in Recorder.made[2][-1].got if p == 1} == {1, 2}


class Batcher(Recorder):
    """A Recorder that also logs the order of `handle` and `next_deadline` calls."""

    def __init__(self, config: AgentConfig, incarnation: int, max_seq: int) -> None:
        super().__init__(config, incarnation, max_seq)
        self.calls: list[tuple[str, float]] = []
        self.now = 0.0

    def handle(self, event: object, now: float) -> list[Any]:
        self.now = now
        self.calls.append(("handle", now))
        return super().handle(event, now)

    def next_deadline(self) -> float | None:
        self.calls.append(("deadline", self.now))
        return super().next_deadline()


def test_deliveries_at_one_instant_are_one_batch() -> None:
    """Nodes 1 and 2 heartbeat at the same instants: node 3 gets both datagrams at one instant
    and is asked `next_deadline()` once after the two `handle` calls (design §3.14: as the
    runtime drains a socket), never between them; what it receives is unchanged."""
    Recorder.made = {}
    net = SimNetwork(cluster_configs(3), 1, default_link=LinkModel(), factory=Batcher)
    for node in (1, 2, 3):
        net.start(node)
    net.run_until(0.2)
    node3 = Recorder.made[3][-1]
    assert isinstance(node3, Batcher)
    arrivals = sorted({t for t, p, _, _ in node3.got if p in {1, 2}})
    assert len(arrivals) >= 15
    for at in arrivals:
        calls = [kind for kind, t in node3.calls if t == at]
        assert calls.count("handle") >= 2
        assert calls[-1] == "deadline"
        assert calls.count("deadline") == 1, (at, calls)
    assert stamps(3, 1) == stamps(3, 2) == list(range(1, len(stamps(3, 1)) + 1))


def test_reported_state_is_what_status_shows() -> None:
    """`iface.reported` reads an AgentNode's ring, members, counted members, quorate flag and
    expected votes where its status document does: equal through formation, a split and the
    heal, on every node."""
    net = SimNetwork(cluster_configs(5), 3, default_link=LinkModel())
    for node in range(1, 6):
        net.at(0.01 * node, lambda node=node: net.start(node))  # type: ignore[misc]
    checks = 0
    phases: list[tuple[float, Callable[[], None] | None]] = [
        (2.0, lambda: net.partition({1, 2}, {3, 4, 5})),
        (4.0, net.heal),
        (6.0, None),
    ]
    for until, action in phases:
        while net.now < until:
            net.run_until(net.now + 0.05)
            for slot in net.slots.values():
                fast = reported(slot.core, net.now)
                full = slot.core.status(net.now) if slot.core else {}
                assert fast["ring_id"] == tuple(full["ring_id"])
                assert sorted(fast["members"]) == full["members"]
                assert sorted(fast["counted"]) == full["counted"]
                assert (fast["quorate"], fast["expected_votes"]) == (
                    full["quorate"],
                    full["expected_votes"],
                )
                checks += 1
        if action:
            action()
    assert checks >= 5 * 100
    assert net.quorate() == {1, 2, 3, 4, 5}
