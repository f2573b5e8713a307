"""The interval sized to the cluster in the simulator (design §3.14, "The interval sized to the
cluster"): a cluster above 16 nodes sends fewer heartbeats, and nodes that disagree on the
interval (a configuration on its way) keep their view under loss."""

from __future__ import annotations

from dataclasses import replace

from votemesh_lab.checker import Checker, settle_time
from votemesh_lab.sim.network import LinkModel, SimNetwork, cluster_configs
from votemesh_lab.sim.scale import CHECK_WINDOW, split_heal
from votemesh_lab.sim.schedules import random_schedule

from agent.config import Timing
from tests.sim.test_sim_cases import one_view

FORM = 3.0


def started(net: SimNetwork, count: int) -> SimNetwork:
    for node in range(1, count + 1):
        net.at(0.01 * node, lambda node=node: net.start(node))  # type: ignore[misc]
    net.run_until(FORM)
    return net


def one_quorate_view(net: SimNetwork, count: int) -> None:
    one_view(net, set(range(1, count + 1)))


def test_24_nodes_deliver_the_heartbeats_of_a_140_ms_interval() -> None:
    """24 nodes x 23 peers x 10 s: 39,429 heartbeats at 0.14 s (55,200 at 0.1 s)."""
    net = started(SimNetwork(cluster_configs(24), 1, default_link=LinkModel(delay=0.0005)), 24)
    one_quorate_view(net, 24)
    before = net.delivered
    net.run_until(FORM + 10.0)
    delivered = net.delivered - before
    assert abs(delivered - 24 * 23 * 10 / 0.14) < 0.02 * delivered, delivered
    one_quorate_view(net, 24)


def test_nodes_that_disagree_on_the_interval_keep_one_view_under_loss() -> None:
    """24 nodes configured with heartbeat_interval 0.1 / 1.4 (they run at 0.1 s), 5 % loss and
    +-10 ms jitter. At 10 s every second node applies a configuration with 0.1 (it runs at
    0.14 s from then on) and the others never do, to 60 simulated seconds: the fast half sees
    the slow half's gaps as loss and stretches their timeouts; no view changes, every node
    quorate throughout, from the moment of the change on."""
    fast = Timing(heartbeat_interval=0.1 / 1.4)
    configs = cluster_configs(24, timing=fast)
    assert configs[1].run_timing.heartbeat_interval == 0.1
    link = LinkModel(delay=0.005, jitter=0.01, loss=0.05)
    net = started(SimNetwork(configs, 3, default_link=link), 24)
    one_quorate_view(net, 24)
    net.run_until(10.0)
    for node in range(2, 25, 2):
        slow = replace(configs[node], timing=Timing.lan())
        assert slow.run_timing.heartbeat_interval == 0.14
        net.reconfigure(node, slow, 2)
    assert net.slots[2].core.timing.heartbeat_interval == 0.14  # type: ignore[union-attr]
    net.run_until(60.0)
    checker = Checker(net.timeline())
    assert checker.view_changes() == 0, net.trace_tail()
    one_quorate_view(net, 24)


def test_the_harnesses_hold_each_phase_for_the_sized_settle_time() -> None:
    """The checker judges S3 and L1's stable rule only on phases at least its settle time long,
    and it sizes that time by the cluster (design §3.14): the split-heal run and a random
    schedule of 24 nodes must hold the split, the heal and the end that long."""
    run = split_heal(24, 10, steady=0.0)
    checker = Checker(run.net.timeline())
    assert checker.settle == settle_time(Timing.lan().sized_for(24))
    assert run.healed_at is not None
    assert run.cut_at is not None
    assert run.healed_at - run.cut_at >= checker.settle + CHECK_WINDOW
    assert run.verdict is not None
    assert run.verdict.ok, run.verdict.violations[:5]
    schedule = random_schedule(5, nodes=24)
    assert schedule.end - schedule.healed_at >= checker.settle + CHECK_WINDOW
