"""issue 9 item 6: every `EventKind` in agent/events.py is emitted by some core path. Hooks name
kinds in `events = [...]`; a kind nothing emits would be a hook that can never run.

Each kind is triggered through the real node core (`AgentNode` on the in-memory network of
test_node), scenario by scenario; no static check is needed: a kind added to the enum without a
path that emits it fails here."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from agent.events import EventKind
from agent.node import MessageIn, QdeviceVote, Reconfigure, SetExpected, Stop
from proto.mesh_messages import Heartbeat
from tests.agent.test_durable_seq import FailingNet
from tests.agent.test_node import Net, config, device_net


def kinds(net: Net, node: int | None = None) -> set[EventKind]:
    return {e.event.kind for _, src, e in net.events if node is None or src == node}


def formation_and_failures() -> set[EventKind]:
    """Three nodes on two links form; node 3 dies; node 2 goes silent and comes back; then
    node 2 leaves cleanly."""
    net = Net.make(3, links=2)
    net.run(2.0)
    net.alive.discard(3)
    net.run(2.0)  # node 3: suspected, lost; links down; quorum counts change
    net.alive.discard(2)
    net.run(2.0)  # node 1 alone: quorum lost
    net.alive.add(2)
    net.run(2.0)  # node 2 reachable again
    net.apply(2, net.nodes[2].handle(Stop("test"), net.now))
    net.run(1.0)  # node 1 hears node 2 leave
    return kinds(net)


def stall_and_skew() -> set[EventKind]:
    """A node paused past its failure timeout says it stalled; a heartbeat whose wall clock is
    an hour off raises clock_skew."""
    net = Net.make(3)
    net.run(2.0)
    net.pause(3)
    net.run(5.0)
    net.resume(3, wall_ms=5000)
    net.run(2.0)
    node = net.nodes[1]
    skewed = Heartbeat(link=0, stamp_us=1, wall_ms=3_600_000, heard=(1, 3), node_name="n2")
    net.apply(1, node.handle(MessageIn(2, 1, 0, skewed, 0), net.now))
    return kinds(net)


def expected_votes() -> set[EventKind]:
    """`votemesh expected 9` on a quorate node of three is refused; `expected 2` after a node
    died is applied."""
    net = Net.make(3)
    net.run(2.0)
    net.apply(1, net.nodes[1].handle(SetExpected(9), net.now))
    net.alive.discard(3)
    net.run(2.0)
    net.apply(1, net.nodes[1].handle(SetExpected(2), net.now))
    net.run(1.0)
    return kinds(net)


def qdevice() -> set[EventKind]:
    """The qdevice session connects with an ACK (`device_net`), then the connection is lost."""
    net = device_net()
    net.apply(1, net.nodes[1].handle(QdeviceVote(False, False, "connection lost"), net.now))
    return kinds(net)


def reconfiguration() -> set[EventKind]:
    """Version 4 applied, then an older version 3 refused, then a version that does not list
    the node removes it."""
    net = Net.make(3)
    net.run(2.0)
    node = net.nodes[1]
    net.apply(1, node.handle(Reconfigure(config(1, 3), 4), net.now))
    net.apply(1, node.handle(Reconfigure(config(1, 3), 3), net.now))
    net.apply(1, node.handle(Reconfigure(config(1, 3), 5, member=False), net.now))
    return kinds(net, 1)


def duplicate() -> set[EventKind]:
    """Another incarnation of node 2 sends while node 2 is alive."""
    net = Net.make(3)
    net.run(1.5)
    impostor = Heartbeat(link=0, stamp_us=5, wall_ms=0, heard=(1, 3), node_name="clone")
    for _ in range(10):
        net.apply(1, net.nodes[1].handle(MessageIn(2, 2**62, 0, impostor, 0), net.now))
        net.run(0.1)
    return kinds(net, 1)


def durable_seq() -> set[EventKind]:
    """The representative cannot store max_seq when it needs a new ring id, then can."""
    net = FailingNet.make(3)
    assert isinstance(net, FailingNet)
    net.sent_while_full = []
    net.run(1.5)
    net.full = True
    net.alive.discard(3)
    net.run(3.0)
    net.full = False
    net.run(3.0)
    return kinds(net, 1)


K = EventKind
EXPECTED: dict[Callable[[], set[EventKind]], set[EventKind]] = {
    formation_and_failures: {
        K.VIEW_INSTALLED, K.QUORUM_GAINED, K.QUORUM_LOST, K.QUORUM_COUNTS_CHANGED, K.LINK_UP,
        K.LINK_DOWN, K.PEER_SUSPECTED, K.PEER_LOST, K.PEER_REACHABLE, K.PEER_LEFT,
    },
    stall_and_skew: {K.STALLED, K.CLOCK_SKEW},
    expected_votes: {K.EXPECTED_VOTES_CHANGED, K.EXPECTED_VOTES_REFUSED},
    qdevice: {K.QDEVICE_CONNECTED, K.QDEVICE_DISCONNECTED, K.QDEVICE_VOTE_CHANGED},
    reconfiguration: {K.CONFIG_CHANGED, K.CONFIG_REFUSED, K.REMOVED_FROM_CLUSTER},
    duplicate: {K.DUPLICATE_NODE},
    durable_seq: {K.VIEWS_HALTED, K.VIEWS_RESUMED},
}  # fmt: skip


def test_the_scenarios_cover_every_event_kind() -> None:
    """Every member of `EventKind` is claimed by a scenario below (a new kind needs one)."""
    claimed = set().union(*EXPECTED.values())
    assert set(EventKind) - claimed == set()


@pytest.mark.parametrize("scenario", list(EXPECTED), ids=lambda s: s.__name__)
def test_each_scenario_emits_the_kinds_it_claims(scenario: Callable[[], set[EventKind]]) -> None:
    """Driven through the real core, the scenario emits each of its kinds."""
    assert EXPECTED[scenario] - scenario() == set()
