"""The heartbeat interval sized to the cluster (design §3.14, "The interval sized to the
cluster"): `Timing.sized_for`, and a node core that runs with it, re-sizes it when a new
configuration changes the cluster's size and reports it in its status."""

from __future__ import annotations

from dataclasses import replace
from itertools import pairwise

import pytest

from agent.config import SIZE_FLAT_NODES, SIZE_STRETCH_MAX, Timing
from agent.events import EventKind
from agent.node import AgentNode, Broadcast, Emit, NodeEffect, Reconfigure, Start, transition_span
from tests.agent.test_node import Net, config


def test_up_to_sixteen_nodes_the_configured_timing_is_used_as_it_is() -> None:
    lan = Timing.lan()
    for nodes in (1, 2, 5, SIZE_FLAT_NODES):
        assert lan.sized_for(nodes) is lan


@pytest.mark.parametrize(
    ("nodes", "interval", "failure_timeout"),
    [
        (17, 0.10625, 0.6875),
        (20, 0.125, 0.8),
        (22, 0.1375, 0.875),
        (23, 0.14, 0.89),
        (256, 0.14, 0.89),
    ],
)
def test_above_sixteen_the_interval_grows_with_the_cluster_to_at_most_1_4(
    nodes: int, interval: float, failure_timeout: float
) -> None:
    sized = Timing.lan().sized_for(nodes)
    assert sized.heartbeat_interval == pytest.approx(interval)
    assert sized.failure_timeout == pytest.approx(failure_timeout)
    assert sized.failure_timeout < 1.0  # detection stays sub-second at any size
    assert sized.max_failure_timeout == pytest.approx(12 * interval + 0.05)
    # only the interval moves: a peer is still lost after the same number of missed heartbeats
    assert replace(sized, heartbeat_interval=0.1) == Timing.lan()


def test_the_stretch_never_shrinks_as_the_cluster_grows_and_applies_to_any_preset() -> None:
    lan = Timing.lan()
    intervals = [lan.sized_for(n).heartbeat_interval for n in range(1, 300)]
    assert intervals == sorted(intervals)
    assert max(intervals) == pytest.approx(0.1 * SIZE_STRETCH_MAX)
    assert Timing.lab().sized_for(64).heartbeat_interval == pytest.approx(0.28)
    assert Timing(heartbeat_interval=0.07).sized_for(40).heartbeat_interval == pytest.approx(0.098)


def test_a_config_counts_itself_and_its_static_peers() -> None:
    cfg = config(1, 24)
    assert cfg.size == 24
    assert cfg.run_timing == Timing.lan().sized_for(24)
    assert replace(cfg, peers=()).run_timing is cfg.timing  # discovery only: as configured


def _rounds(net: Net, node: int, seconds: float) -> list[float]:
    """When `node` sent a heartbeat round during the next `seconds` of `net`."""
    times: list[float] = []
    apply = net.apply

    def recording(src: int, effects: list[NodeEffect]) -> None:
        if src == node and any(isinstance(e, Broadcast) for e in effects):
            times.append(net.now)
        apply(src, effects)

    net.apply = recording  # type: ignore[method-assign]
    try:
        net.run(seconds)
    finally:
        del net.apply
    return times


def _gaps(times: list[float]) -> set[float]:
    return {round(b - a, 4) for a, b in pairwise(times)}


def make_net(running: int, configured: int) -> Net:
    """`running` nodes of a cluster whose configuration lists `configured` nodes."""
    net = Net({i: AgentNode(config(i, configured), incarnation=1) for i in range(1, running + 1)})
    for i in net.nodes:
        net.alive.add(i)
        net.apply(i, net.nodes[i].handle(Start(wall_ms=0), 0.0))
    return net


def test_a_node_of_24_sends_its_rounds_every_140_ms_and_says_so() -> None:
    net = make_net(3, 24)
    net.run(2.0)
    assert _gaps(_rounds(net, 1, 3.0)) == {0.14}
    status = net.nodes[1].snapshot(net.now)
    assert status.heartbeat_interval_s == pytest.approx(0.14)
    assert {p.failure_timeout_s for p in status.peers if p.node_id in (2, 3)} == {0.89}


def test_a_crashed_peer_is_noticed_after_the_sized_failure_timeout_not_before() -> None:
    """The timeout grows with the interval (6 missed heartbeats of 0.14 s + 0.05 s): a peer
    heard 0.7 s ago is not suspected yet (at 0.1 s it would be), and it is gone before 1 s."""
    net = make_net(3, 24)
    net.run(2.0)
    assert net.nodes[1].view.members == {1, 2, 3}
    net.alive.discard(3)
    t0 = net.now
    net.run(0.7)
    assert net.nodes[1].view.members == {1, 2, 3}
    net.run(t0 + 1.1 - net.now)
    assert net.nodes[1].view.members == {1, 2}


def test_a_new_configuration_re_sizes_the_interval_both_ways() -> None:
    net = make_net(3, 16)
    net.run(2.0)
    assert _gaps(_rounds(net, 1, 1.0)) == {0.1}
    for i in (1, 2, 3):  # nodes 17..24 added to the configuration (not running)
        net.apply(i, net.nodes[i].handle(Reconfigure(config(i, 24), 2), net.now))
    net.run(0.5)
    assert _gaps(_rounds(net, 1, 2.0)) == {0.14}
    assert net.nodes[1].snapshot(net.now).heartbeat_interval_s == pytest.approx(0.14)
    for i in (1, 2, 3):
        net.apply(i, net.nodes[i].handle(Reconfigure(config(i, 16), 3), net.now))
    net.run(0.5)
    assert _gaps(_rounds(net, 1, 1.0)) == {0.1}
    views = net.views()  # the three kept one view through both changes of cadence
    assert len(views) == 1
    assert next(iter(views))[1] == {1, 2, 3}


def test_a_shrink_below_the_sizing_keeps_the_old_timings_transition_span() -> None:
    """24 -> 16 nodes: the interval shrinks back to 0.1 s, but nodes still at the old version
    run at 0.14 s (failure timeout up to 1.73 s at loss): the replaced configuration stays a
    quorum constraint for the longer span, the old timing's (4.02 s, not 2.9 s)."""
    net = make_net(3, 24)
    net.run(2.0)
    node = net.nodes[1]
    net.apply(1, node.handle(Reconfigure(config(1, 16), 2), net.now))
    assert node.timing == Timing.lan()
    spans = [c.until - net.now for c in node.quorum._constraints]
    assert spans == [pytest.approx(transition_span(Timing.lan().sized_for(24)))]
    assert transition_span(Timing.lan().sized_for(24)) == pytest.approx(4.02)


def _changed(configured: int, to: int) -> list[str]:
    net = make_net(3, configured)
    net.run(1.0)
    effects = net.nodes[1].handle(Reconfigure(config(1, to), 2), net.now)
    (changed,) = [
        e.event.details["changed"]
        for e in effects
        if isinstance(e, Emit) and e.event.kind is EventKind.CONFIG_CHANGED
    ]
    return list(changed)


def test_a_size_change_that_re_sizes_the_interval_says_timing_changed() -> None:
    assert "timing" in _changed(16, 24)
    assert "timing" in _changed(24, 16)
    assert "timing" not in _changed(5, 6)
    assert "timing" not in _changed(24, 32)  # both at the cap: 0.14 s
