"""Item 11 at the core: no ring id leaves a node before the runtime confirmed it durable."""

from __future__ import annotations

from agent.events import EventKind
from agent.node import (
    AgentNode,
    Broadcast,
    MaxSeqStored,
    NodeEffect,
    PersistMaxSeq,
    QdeviceUpdate,
    SendTo,
    SetExpected,
    Start,
    Tick,
)
from proto.datagram_seal import ClusterKey, Opener, Sealer
from proto.mesh_messages import Heartbeat, open_message, seal_message
from tests.agent.test_node import Net, config

FULL = "No space left on device"
KEY = ClusterKey(b"d" * 32)


class FailingNet(Net):
    """A Net whose node 1 cannot store max_seq while `full` is set."""

    full = False

    def apply(self, src: int, effects: list[NodeEffect]) -> None:
        if src != 1 or not self.full:
            super().apply(src, effects)
            return
        answers = [MaxSeqStored(e.value, FULL) for e in effects if isinstance(e, PersistMaxSeq)]
        kept: list[NodeEffect] = [e for e in effects if not isinstance(e, PersistMaxSeq)]
        for e in kept:
            if isinstance(e, Broadcast | SendTo) and isinstance(e.message, Heartbeat):
                self.sent_while_full.append(e.message)
        super().apply(src, kept)
        for answer in answers:
            self.apply(src, self.nodes[src].handle(answer, self.now))

    sent_while_full: list[Heartbeat]


def test_a_failed_store_halts_view_forming_and_a_later_one_resumes_it() -> None:
    """Node 1 (the representative) cannot persist: when node 3 dies it needs a new ring id,
    halts instead (views_halted, status `views`, inquorate, nothing sent with a seq above the
    durable one, no busy timer); node 2 forms alone. Once a store succeeds (retried every
    second), node 1 resumes and {1, 2} forms. Regression: on main node 1 installed {1, 2} under
    a ring id it had not persisted."""
    net = FailingNet.make(3)
    assert isinstance(net, FailingNet)
    net.sent_while_full = []
    net.run(1.5)
    one = net.nodes[1]
    durable = one.membership.max_seq
    net.full = True
    net.alive.discard(3)
    net.run(3.0)
    status = one.status(net.now)
    assert status["views"] == f"halted: {FULL}"
    assert status["durable_max_seq"] == durable
    assert not one.quorate
    deadline = one.next_deadline()
    assert deadline is not None
    assert deadline > net.now  # no busy loop while halted
    kinds = [e.event.kind for _, src, e in net.events if src == 1]
    assert kinds.count(EventKind.VIEWS_HALTED) == 1
    for hb in net.sent_while_full:
        for view in (hb.view, hb.proposal):
            assert view is None or view.seq <= durable
    assert net.nodes[2].view.members == {2}
    assert all(v[0][1] <= durable or v[0][0] != 1 for v in net.views())
    net.full = False
    net.run(3.0)
    assert one.status(net.now)["views"] == "forming"
    assert EventKind.VIEWS_RESUMED in [e.event.kind for _, src, e in net.events if src == 1]
    assert one.view.members == {1, 2}
    assert one.view.ring_id.seq <= one.status(net.now)["durable_max_seq"]


def test_the_boot_ring_reaches_the_qdevice_only_once_durable() -> None:
    """At start the boot view's ring id is not durable yet: the first QdeviceUpdate (and the
    first heartbeats) follow the runtime's MaxSeqStored, in the same wake-up."""
    node = AgentNode(config(1, 3), incarnation=1)
    assert node.handle(Start(wall_ms=0), 1.0) == [PersistMaxSeq(1)]
    effects = node.handle(MaxSeqStored(1), 1.0)
    updates = [e for e in effects if isinstance(e, QdeviceUpdate)]
    assert updates == [QdeviceUpdate((1, 1), (1,), False)]
    assert any(isinstance(e, Broadcast) for e in effects)


def test_a_huge_expected_override_does_not_make_our_heartbeats_undecodable() -> None:
    """`votemesh expected 10**9` on one node: its heartbeats still pass every peer's decode
    bounds (expected_votes is sent clamped to 1,024,000), so it is not cut off as bad_value."""
    node = AgentNode(config(1, 3), incarnation=1)
    node.handle(Start(wall_ms=0), 1.0)
    node.handle(MaxSeqStored(1), 1.0)
    node.handle(SetExpected(10**9), 1.0)
    effects = node.handle(Tick(wall_ms=0), 1.2)
    sealer, opener = Sealer("t", KEY, 1, 1), Opener("t", [KEY])
    beats = [e.message for e in effects if isinstance(e, Broadcast)]
    assert beats
    for hb in beats:
        assert open_message(opener, seal_message(sealer, hb))[1] == hb
