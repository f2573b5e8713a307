"""AgentNode composed: a few nodes on a perfect in-memory network, time explicit.

The full fault-injecting simulator is votemesh_lab.sim; these tests pin the composition: views
form, effects are well-formed, a surviving majority re-forms without losing quorum, events
carry reasons.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field, replace

import pytest

from agent.config import AgentConfig, LinkConfig, PeerConfig, QdeviceConfig, Timing
from agent.events import EventKind
from agent.node import (
    AgentNode,
    Broadcast,
    Emit,
    MaxSeqStored,
    MessageIn,
    NodeEffect,
    PersistMaxSeq,
    QdeviceVote,
    SendTo,
    SetExpected,
    Start,
    Stop,
    Tick,
)
from proto.mesh_messages import Echo, Heartbeat, Leave

DELAY = 0.001


def config(node: int, nodes: int, links: int = 1) -> AgentConfig:
    peers = tuple(
        PeerConfig(n, f"n{n}", tuple((k, f"127.0.{k}.{n}", 5407) for k in range(links)))
        for n in range(1, nodes + 1)
        if n != node
    )
    return AgentConfig(
        cluster_name="t",
        node_id=node,
        node_name=f"n{node}",
        links=tuple(LinkConfig(k, f"127.0.{k}.{node}", priority=links - k) for k in range(links)),
        peers=peers,
        timing=Timing.lan(),
    )


@dataclass
class Net:
    """Nodes, a message queue with a fixed delay, and who is alive."""

    nodes: dict[int, AgentNode]
    now: float = 0.0
    alive: set[int] = field(default_factory=set)
    queue: list[tuple[float, int, int, MessageIn]] = field(default_factory=list)
    seq: int = 0
    events: list[tuple[float, int, Emit]] = field(default_factory=list)
    persisted: dict[int, int] = field(default_factory=dict)
    quorate_log: dict[int, list[tuple[float, bool]]] = field(default_factory=dict)
    paused: dict[int, list[MessageIn]] = field(default_factory=dict)
    """Nodes stopped like SIGSTOP: what arrives for them waits in their socket buffer."""

    @classmethod
    def make(cls, n: int, links: int = 1) -> Net:
        net = cls({i: AgentNode(config(i, n, links), incarnation=1) for i in range(1, n + 1)})
        for i in net.nodes:
            net.alive.add(i)
            net.apply(i, net.nodes[i].handle(Start(wall_ms=0), 0.0))
        return net

    def apply(self, src: int, effects: list[NodeEffect]) -> None:
        stored: list[int] = []
        for e in effects:
            if isinstance(e, Broadcast):
                targets = [(p, e.link, e.message) for p in e.peers]
            elif isinstance(e, SendTo):
                targets = [(e.peer, e.link, e.message)]
            else:
                if isinstance(e, Emit):
                    self.events.append((self.now, src, e))
                elif isinstance(e, PersistMaxSeq):
                    self.persisted[src] = e.value
                    stored.append(e.value)
                targets = []
            for dst, link, msg in targets:
                self.seq += 1
                node = self.nodes[src]
                heapq.heappush(
                    self.queue,
                    (
                        self.now + DELAY,
                        self.seq,
                        dst,
                        MessageIn(src, node.incarnation, link, msg, 0),
                    ),
                )
        node = self.nodes[src]
        self.quorate_log.setdefault(src, []).append((self.now, node.quorate))
        for value in stored:  # durable at once, as the runtime answers (design §3.3)
            self.apply(src, node.handle(MaxSeqStored(value), self.now))

    def run(self, seconds: float) -> None:
        end = self.now + seconds
        while True:
            deadlines = [
                (d, i)
                for i, n in self.nodes.items()
                if i in self.alive
                if (d := n.next_deadline()) is not None
            ]
            next_timer = min(deadlines, default=(float("inf"), 0))
            next_msg = self.queue[0][0] if self.queue else float("inf")
            t = min(next_timer[0], next_msg)
            if t > end:
                self.now = end
                return
            self.now = max(self.now, t)
            if next_msg <= next_timer[0]:
                _, _, dst, msg = heapq.heappop(self.queue)
                if dst in self.alive:
                    self.apply(dst, self.nodes[dst].handle(msg, self.now))
                elif dst in self.paused:
                    self.paused[dst].append(msg)
            else:
                i = next_timer[1]
                self.apply(i, self.nodes[i].handle(Tick(wall_ms=0), self.now))

    def pause(self, node: int) -> None:
        """SIGSTOP: the node runs nothing; datagrams for it are kept."""
        self.alive.discard(node)
        self.paused[node] = []

    def resume(self, node: int, wall_ms: int) -> None:
        """SIGCONT: the kept datagrams are handled first, at the node's wall clock now."""
        self.alive.add(node)
        for msg in self.paused.pop(node):
            self.apply(node, self.nodes[node].handle(replace(msg, wall_ms=wall_ms), self.now))

    def views(self) -> set[tuple[tuple[int, int], frozenset[int]]]:
        return {
            ((n.view.ring_id.representative, n.view.ring_id.seq), n.view.members)
            for i, n in self.nodes.items()
            if i in self.alive
        }


def test_three_nodes_form_one_quorate_view() -> None:
    """Three nodes that hear each other install one view with one ring id, all quorate."""
    net = Net.make(3)
    net.run(2.0)
    (view,) = net.views()
    assert view[1] == frozenset({1, 2, 3})
    assert all(n.quorate for n in net.nodes.values())
    kinds = {e.event.kind for _, _, e in net.events}
    assert {EventKind.VIEW_INSTALLED, EventKind.QUORUM_GAINED, EventKind.LINK_UP} <= kinds
    assert all(e.event.reason for _, _, e in net.events)


def test_surviving_majority_reforms_without_losing_quorum() -> None:
    """Killing one of 5: the other 4 install a view of 4 within a second and never report
    inquorate in between (no blip)."""
    net = Net.make(5)
    net.run(2.0)
    assert all(n.quorate for n in net.nodes.values())
    killed_at = net.now
    net.alive.discard(5)
    net.run(2.0)
    assert {m for _, m in net.views()} == {frozenset({1, 2, 3, 4})}
    for node in (1, 2, 3, 4):
        after = [q for t, q in net.quorate_log[node] if t >= killed_at]
        assert all(after), f"node {node} blipped"
    installs = [
        t
        for t, src, e in net.events
        if e.event.kind is EventKind.VIEW_INSTALLED and t > killed_at and src == 1
    ]
    assert installs
    assert installs[0] - killed_at < 1.0


def test_isolated_node_loses_quorum_and_max_seq_is_persisted() -> None:
    """A node cut off from 2 others becomes an inquorate singleton; ring sequences grow and the
    node asks the runtime to persist them."""
    net = Net.make(3)
    net.run(2.0)
    net.alive.discard(1)
    net.alive.discard(2)  # node 3 alone hears nobody
    net.run(2.0)
    assert net.nodes[3].view.members == frozenset({3})
    assert not net.nodes[3].quorate
    assert net.persisted[3] == net.nodes[3].membership.max_seq >= 1


def test_restart_under_wait_for_all_ends_waiting_through_quorate_peers() -> None:
    """wait_for_all, 3 nodes formed, node 3 dead for good: a restarted node 1 cannot see all
    nodes, but node 2 reports it is quorate, so node 1 stops waiting and is quorate again."""
    from dataclasses import replace

    from agent.config import QuorumOptions

    def wfa(node: int) -> AgentConfig:
        return replace(config(node, 3), quorum=QuorumOptions(wait_for_all=True))

    net = Net({i: AgentNode(wfa(i), incarnation=1) for i in (1, 2, 3)})
    for i in net.nodes:
        net.alive.add(i)
        net.apply(i, net.nodes[i].handle(Start(wall_ms=0), 0.0))
    net.run(2.0)
    assert all(n.quorate for n in net.nodes.values())
    net.alive.discard(3)
    net.run(2.0)
    assert net.nodes[2].quorate
    restarted = AgentNode(wfa(1), incarnation=2, max_seq=net.persisted.get(1, 0))
    net.nodes[1] = restarted
    net.apply(1, restarted.handle(Start(wall_ms=0), net.now))
    assert not restarted.quorate  # waiting for all at first
    net.run(2.0)
    assert restarted.view.members == frozenset({1, 2})
    assert restarted.quorate


def test_dead_peer_leaves_the_view_fast_with_two_links() -> None:
    """With a probed second link, a killed peer still leaves the view within a second: the view
    follows heartbeats within the failure timeout, not the probed link's longer timeout."""
    net = Net.make(4, links=2)
    net.run(3.0)
    assert {m for _, m in net.views()} == {frozenset({1, 2, 3, 4})}
    net.alive.discard(4)
    net.run(1.0)
    assert {m for _, m in net.views()} == {frozenset({1, 2, 3})}
    assert all(net.nodes[i].quorate for i in (1, 2, 3))


def test_stop_says_leave_on_every_link_and_late_heartbeats_do_not_resurrect() -> None:
    """Stop: one Leave per link to every peer, then the core is inert. A peer that gets the
    Leave drops the node at once (peer_left event; the others re-form within two heartbeat
    rounds, far below the failure timeout); a heartbeat of the same incarnation that the Leave
    overtook is ignored; a new incarnation is heard again."""
    net = Net.make(3, links=2)
    net.run(2.0)
    effects = net.nodes[3].handle(Stop("maintenance"), net.now)
    assert effects == [
        Broadcast(0, (1, 2), Leave("maintenance")),
        Broadcast(1, (1, 2), Leave("maintenance")),
    ]
    assert net.nodes[3].next_deadline() is None
    assert net.nodes[3].handle(Tick(wall_ms=0), net.now + 1) == []
    net.alive.discard(3)
    net.apply(3, effects)
    net.run(0.2)
    assert net.views() == {
        (
            (net.nodes[1].view.ring_id.representative, net.nodes[1].view.ring_id.seq),
            frozenset({1, 2}),
        )
    }
    left = [e.event for t, n, e in net.events if n == 1 and e.event.kind is EventKind.PEER_LEFT]
    assert [e.reason for e in left] == ["node 3 left: maintenance"]  # once, not per link

    one = net.nodes[1]
    late = Heartbeat(link=0, stamp_us=1, wall_ms=0, heard=(1, 2), node_name="n3")
    one.handle(MessageIn(3, 1, 0, late, 0), net.now)
    three = one.snapshot(net.now).peer(3)
    assert three is not None
    assert three.last_heartbeat_s is None
    one.handle(MessageIn(3, 2, 0, late, 0), net.now)  # restarted: incarnation 2
    three = one.snapshot(net.now).peer(3)
    assert three is not None
    assert three.last_heartbeat_s == 0.0


def test_after_a_restart_recorded_heartbeats_are_not_believed() -> None:
    """Node 1 restarts; an attacker replays node 2's heartbeats recorded before (sealed by node
    2, so they open, and the restarted node has no replay window for them). They echo stamps of
    node 1's previous life only, so node 2 is not heard and nothing it said counts; once node 2
    echoes a stamp of the new life it is. Older stamps than the newest seen are dropped."""
    net = Net.make(2)
    net.run(1.0)
    recorded = Heartbeat(
        link=0,
        stamp_us=int(0.9e6),
        wall_ms=0,
        heard=(1, 2),
        echoes=(Echo(1, int(0.85e6), 100),),  # node 1's stamp from its first life
        node_name="n2",
    )
    restarted = AgentNode(config(1, 2), incarnation=2)
    net.nodes[1] = restarted
    net.apply(1, restarted.handle(Start(wall_ms=0), net.now))
    for later in range(5):
        replay = replace(recorded, stamp_us=recorded.stamp_us + later)
        assert restarted.handle(MessageIn(2, 1, 0, replay, 0), net.now) == []
        assert restarted.last_fresh_peer is None
    restarted.handle(Tick(wall_ms=0), net.now + 0.01)
    assert restarted.status(net.now)["proposal"] == [1]
    net.run(1.0)  # the real node 2 answers the new life's heartbeats
    assert len(net.views()) == 1
    assert restarted.view.members == {1, 2}
    stale = replace(recorded, stamp_us=1, echoes=())
    restarted.handle(MessageIn(2, 1, 0, stale, 0), net.now)
    assert restarted.last_fresh_peer is None  # older than the newest seen: dropped


def test_heartbeat_rounds_are_on_wall_clock_multiples() -> None:
    """Nodes with synchronized wall clocks send their rounds at the same instants: the rounds
    fall where the wall clock is a whole multiple of the interval, whatever the monotonic clock."""
    node = AgentNode(config(1, 3), incarnation=1)
    effects = node.handle(Start(wall_ms=1_000_037), 5.0)  # wall 1000.037 s at monotonic 5.0
    assert effects == [PersistMaxSeq(1)]  # the boot view's ring id is durable before it is sent
    effects = node.handle(MaxSeqStored(1), 5.0)
    assert any(isinstance(e, Broadcast) for e in effects)
    assert node.next_deadline() == pytest.approx(5.063)  # wall 1000.100
    effects = node.handle(Tick(wall_ms=1_000_100), 5.063)
    assert [type(e) for e in effects if isinstance(e, Broadcast)] == [Broadcast]
    assert node.next_deadline() == pytest.approx(5.163)


def kinds_of(net: Net, node: int, since: float) -> list[EventKind]:
    """The kinds of `node`'s events at or after `since`, in order."""
    return [e.event.kind for t, src, e in net.events if src == node and t >= since]


def test_a_stalled_node_revalidates_before_it_announces_anything() -> None:
    """Design §3.7: node 3 of 3 stops for 5 s (SIGSTOP) while 1 and 2 re-form. On waking,
    the heartbeats that sat in its buffer (their wall clocks 5 s behind its own) neither
    re-install the old view nor raise clock_skew: it says it stalled, installs its singleton
    view (quorum lost), and rejoins in a new view once fresh heartbeats echo its stamps."""
    net = Net.make(3)
    net.run(2.0)
    old = net.nodes[3].view
    assert net.nodes[3].quorate
    net.pause(3)
    net.run(5.0)
    assert {m for _, m in net.views()} == {frozenset({1, 2})}
    assert net.paused[3], "datagrams queued for the paused node"
    woke = net.now
    net.resume(3, wall_ms=5000)  # its wall clock moved 5 s; theirs in the buffer did not
    after = kinds_of(net, 3, woke)
    assert EventKind.CLOCK_SKEW not in after
    assert EventKind.QUORUM_GAINED not in after
    assert EventKind.QUORUM_LOST in after
    assert after[0] == "stalled"  # EventKind.STALLED, first of all
    assert net.nodes[3].view.members == frozenset({3})
    assert not net.nodes[3].status(net.now)["quorate"]
    net.run(2.0)
    assert EventKind.CLOCK_SKEW not in kinds_of(net, 3, woke)
    (view,) = net.views()
    assert view[1] == frozenset({1, 2, 3})
    assert net.nodes[3].view.ring_id != old.ring_id
    assert all(n.quorate for n in net.nodes.values())


def test_a_late_wake_up_below_the_failure_timeout_is_not_a_stall() -> None:
    """A node woken 0.5 s after its deadline (under the 0.65 s failure timeout) is not stalled:
    nothing is revalidated and its view stays."""
    net = Net.make(3)
    net.run(2.0)
    node = net.nodes[3]
    view = node.view
    deadline = node.next_deadline()
    assert deadline is not None
    effects = node.handle(Tick(wall_ms=0), deadline + 0.5)
    kinds = [e.event.kind for e in effects if isinstance(e, Emit)]
    assert "stalled" not in kinds
    assert node.view == view


def _set_expected(net: Net, node: int, value: int | None) -> str | None:
    """`votemesh expected` on one node: the refusal's reason, or None."""
    core = net.nodes[node]
    net.apply(node, core.handle(SetExpected(value), net.now))
    return core.expected_refusal


def test_expected_override_applies_to_the_whole_partition_once() -> None:
    """Issue 12 item 6: `expected N` on one node reaches every member of its view through the
    heartbeats (one-shot, with a generation); `expected 9` on a quorate node of three is
    refused and changes nothing anywhere."""
    net = Net.make(3)
    net.run(2.0)
    refusal = _set_expected(net, 1, 9)
    assert refusal is not None
    assert "use at most 5" in refusal
    net.run(1.0)
    assert all(n.quorum.status.expected_votes == 3 and n.quorate for n in net.nodes.values())
    assert any(e.event.kind is EventKind.EXPECTED_VOTES_REFUSED for _, _, e in net.events)
    net.alive.discard(3)
    net.run(2.0)
    assert _set_expected(net, 1, 2) is None
    net.run(1.0)
    assert [net.nodes[i].quorum.status.expected_votes for i in (1, 2)] == [2, 2]
    assert _set_expected(net, 2, None) is None  # reset: the configured 3, quorum 2 of 2
    net.run(1.0)
    assert [net.nodes[i].quorum.status.expected_votes for i in (1, 2)] == [3, 3]
    assert net.nodes[1].quorate


def test_wait_for_all_cluster_missing_a_node_comes_up_with_expected() -> None:
    """Issue 12 item 6, the main use of `pvecm expected`: 3 nodes with wait_for_all, node 3
    never starts; `expected 2` on node 1 brings both up."""
    from dataclasses import replace

    from agent.config import QuorumOptions

    def wfa(node: int) -> AgentConfig:
        return replace(config(node, 3), quorum=QuorumOptions(wait_for_all=True))

    net = Net({i: AgentNode(wfa(i), incarnation=1) for i in (1, 2, 3)})
    for i in (1, 2):
        net.alive.add(i)
        net.apply(i, net.nodes[i].handle(Start(wall_ms=0), 0.0))
    net.run(2.0)
    assert [net.nodes[i].quorate for i in (1, 2)] == [False, False]
    assert _set_expected(net, 1, 2) is None
    net.run(1.0)
    assert [net.nodes[i].quorate for i in (1, 2)] == [True, True]


# ---------------------------------------------------------------- what quorum counts (§3.4)
def device_net() -> Net:
    """Two nodes with a qdevice (ffsplit, 1 vote: expected 3), view {1,2} formed, both holding
    the device's ACK for it (as their sessions would report it)."""
    qdevice = QdeviceConfig(host="qnetd.test", tls="off")
    nodes = {i: AgentNode(replace(config(i, 2), qdevice=qdevice), incarnation=1) for i in (1, 2)}
    net = Net(nodes)
    for i, node in nodes.items():
        net.alive.add(i)
        net.apply(i, node.handle(Start(wall_ms=0), 0.0))
    net.run(2.0)
    for i, node in nodes.items():
        net.apply(i, node.handle(QdeviceVote(True, True, "ACK", ring_of(node)), net.now))
    assert all(n.quorate and n.quorum.status.total_votes == 3 for n in nodes.values())
    return net


def ring_of(node: AgentNode) -> tuple[int, int]:
    return (node.view.ring_id.representative, node.view.ring_id.seq)


def lost_since(net: Net, node: int, since: float) -> list[float]:
    return [
        t
        for t, src, e in net.events
        if src == node and t >= since and e.event.kind is EventKind.QUORUM_LOST
    ]


def split(net: Net) -> tuple[AgentNode, float]:
    """Node 2 goes silent; node 1 installs {1} and holds {1,2} with the device's ACK."""
    split_at = net.now
    net.alive.discard(2)
    node = net.nodes[1]
    net.run(1.0)
    assert node.view.members == frozenset({1})
    assert node.basis.kind == "held"
    assert node.basis.members == frozenset({1, 2})
    assert node.quorate
    assert node.status(net.now)["counted"] == [1, 2]
    return node, split_at


def test_view_change_holds_the_device_ack_until_qnetd_answers() -> None:
    """Issue 12 item 1: the winner keeps counting its pre-split view and the device's ACK while
    qnetd has not answered for its new ring; the ACK for the new ring settles it. Never
    inquorate, no quorum_lost."""
    net = device_net()
    node, split_at = split(net)
    net.apply(1, node.handle(QdeviceVote(True, True, "ACK", ring_of(node)), net.now))
    assert node.basis.kind == "settled"
    assert node.quorate
    assert node.quorum.status.total_votes == 2
    net.run(3.0)
    assert node.quorate
    assert all(q for t, q in net.quorate_log[1] if t >= split_at)
    assert lost_since(net, 1, split_at) == []


def test_nack_ends_the_hold_at_once() -> None:
    """The loser's NACK (the held ACK revoked) makes it count only what it hears: 1 of 3."""
    net = device_net()
    node, _ = split(net)
    at = net.now
    net.apply(1, node.handle(QdeviceVote(False, True, "NACK", None), at))
    assert node.basis.kind == "heard"
    assert not node.quorate
    assert lost_since(net, 1, at) == [at]


def test_the_hold_ends_by_itself_when_qnetd_never_answers() -> None:
    """No answer: the hold lasts (agreement_rounds + 1) heartbeats + sync_timeout from the
    moment the node stopped hearing node 2, then the node counts only what it hears."""
    net = device_net()
    node, split_at = split(net)
    net.run(2.0)
    assert node.basis.kind == "heard"
    assert not node.quorate
    [lost] = lost_since(net, 1, split_at)
    timing = node.config.timing
    span = (timing.agreement_rounds + 1) * timing.heartbeat_interval + 0.5
    unheard_at = timing.failure_timeout - timing.heartbeat_interval  # from its last heartbeat
    assert unheard_at + span - 0.01 <= lost - split_at <= timing.failure_timeout + span + 0.01


def test_a_node_stops_counting_members_it_no_longer_hears() -> None:
    """Issue 12 item 5: without a device, quorum counts the installed view's members the node
    hears, before any new view is agreed: a node that hears 2 of 5 is inquorate at once."""
    net = Net.make(5)
    net.run(2.0)
    node = net.nodes[1]
    for peer in (2, 3, 4, 5):
        node.peers[peer].received_at = -100.0  # as if their heartbeats stopped long ago
    node.peers[2].received_at = net.now
    net.apply(1, node.handle(Tick(wall_ms=0), net.now))
    assert node.basis.members <= {1, 2}
    assert not node.quorate
