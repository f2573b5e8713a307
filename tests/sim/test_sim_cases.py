"""The simulator's specific cases (issue "Must show"), each with its expected outcome, and the
checker run on the whole run. Simulated time only; every case is deterministic."""

from __future__ import annotations

import pytest
from votemesh_lab.checker import Checker, minority_bound, settle_time
from votemesh_lab.sim.network import LinkModel, NodeState, SimNetwork, cluster_configs
from votemesh_lab.sim.qdevice import sim_qdevice_config
from votemesh_lab.sim.schedules import SIM_LMS_SEED, run_seed

from agent.config import QdeviceConfig, QuorumOptions, TieBreaker, Timing
from agent.events import EventKind

TIMING = Timing.lan()
BOUND = minority_bound(TIMING)
SETTLE = settle_time(TIMING)
FORM = 2.0


def cluster(
    count: int,
    *,
    quorum: QuorumOptions | None = None,
    link: LinkModel | None = None,
    seed: int = 1,
    start: tuple[int, ...] | None = None,
    links: int = 1,
    qdevice: QdeviceConfig | None = None,
) -> SimNetwork:
    """A started cluster of `count` nodes (or only `start`), run until the first view formed;
    with `qdevice`, a simulated qnetd (real core and sessions) too."""
    configs = cluster_configs(count, quorum=quorum, timing=TIMING, links=links, qdevice=qdevice)
    net = SimNetwork(configs, seed, default_link=link)
    if qdevice is not None:
        net.attach_qnetd(qdevice)
    for node in start or range(1, count + 1):
        net.at(0.01 * node, lambda node=node: net.start(node))  # type: ignore[misc]
    net.run_until(FORM)
    return net


def state(net: SimNetwork, node: int) -> NodeState:
    s = net.state(node)
    assert s is not None, f"n{node} is down"
    return s


def one_view(net: SimNetwork, nodes: set[int]) -> NodeState:
    """The nodes are quorate in one and the same view; that view's state."""
    states = {n: state(net, n) for n in nodes}
    views = {(s.ring, s.members) for s in states.values()}
    assert len(views) == 1, f"several views: {states}\n{net.trace_tail()}"
    assert all(s.quorate for s in states.values()), f"not all quorate: {states}"
    return next(iter(states.values()))


def state_at(net: SimNetwork, node: int, at: float) -> NodeState | None:
    """The node's reported state after every change at or before `at`."""
    before = [s for t, s in net.history[node] if t <= at]
    return before[-1] if before else None


def clean(net: SimNetwork) -> None:
    """The checker finds nothing wrong in the whole run."""
    verdict = Checker(net.timeline()).check()
    found = [*map(str, verdict.violations), *verdict.unknown]
    assert verdict.status == "valid", "\n".join(found) + "\n" + net.trace_tail()


def quorate_since(net: SimNetwork, node: int, since: float) -> bool:
    """The node reported quorate at `since` and every time after."""
    at_start = state_at(net, node, since)
    later = [s for t, s in net.history[node] if t > since]
    return all(s is not None and s.quorate for s in [at_start, *later])


def test_five_nodes_split_two_three() -> None:
    """5 nodes 2|3: the 3-side stays quorate without a blip and installs {3,4,5}; the 2-side is
    inquorate within the minority bound; healing brings all five back into one view."""
    net = cluster(5)
    assert one_view(net, {1, 2, 3, 4, 5}).members == {1, 2, 3, 4, 5}
    t0 = net.now
    net.partition({1, 2}, {3, 4, 5})
    net.run_until(t0 + BOUND)
    assert not state(net, 1).quorate
    assert not state(net, 2).quorate
    net.run_until(t0 + SETTLE)
    assert one_view(net, {3, 4, 5}).members == {3, 4, 5}
    assert all(quorate_since(net, n, t0) for n in (3, 4, 5))
    net.heal()
    net.run_until(net.now + SETTLE)
    assert one_view(net, {1, 2, 3, 4, 5}).members == {1, 2, 3, 4, 5}
    clean(net)


@pytest.mark.parametrize(
    ("breaker", "winners"), [(TieBreaker.LOWEST, {1, 2}), (TieBreaker.HIGHEST, {3, 4})]
)
def test_four_nodes_split_two_two_auto_tie_breaker(breaker: TieBreaker, winners: set[int]) -> None:
    """4 nodes 2|2 with auto_tie_breaker: the half with the tie-breaker node (lowest or highest
    id) keeps quorum in its own view, the other half is inquorate within the minority bound."""
    quorum = QuorumOptions(auto_tie_breaker=True, auto_tie_breaker_node=breaker)
    net = cluster(4, quorum=quorum)
    one_view(net, {1, 2, 3, 4})
    t0 = net.now
    net.partition({1, 2}, {3, 4})
    net.run_until(t0 + BOUND)
    losers = {1, 2, 3, 4} - winners
    assert not any(state(net, n).quorate for n in losers)
    net.run_until(t0 + SETTLE)
    assert one_view(net, winners).members == winners
    assert all(quorate_since(net, n, t0) for n in winners)
    clean(net)


def test_six_nodes_node_one_down_split_three_two_auto_tie_breaker() -> None:
    """Issue 12 item 7: 6 nodes, lowest, node 1 crashed; {2..6} split {2,3,4}|{5,6}. The
    tie-breaker is node 2 (lowest id of the last quorate view {2..6}), as in corosync: {2,3,4}
    keeps quorum without a blip, {5,6} is inquorate (main: both inquorate, the configured
    lowest id 1 being down)."""
    quorum = QuorumOptions(auto_tie_breaker=True, auto_tie_breaker_node=TieBreaker.LOWEST)
    net = cluster(6, quorum=quorum)
    one_view(net, {1, 2, 3, 4, 5, 6})
    net.crash(1)
    net.run_until(net.now + SETTLE)
    one_view(net, {2, 3, 4, 5, 6})
    t0 = net.now
    net.partition({2, 3, 4}, {5, 6})
    net.run_until(t0 + BOUND)
    assert not any(state(net, n).quorate for n in (5, 6))
    net.run_until(t0 + SETTLE)
    assert one_view(net, {2, 3, 4}).members == {2, 3, 4}
    assert all(quorate_since(net, n, t0) for n in (2, 3, 4))
    clean(net)


def test_majorities_ring_has_no_quorate_node() -> None:
    """Majorities ring: each of 5 nodes is cut from a different pair (i+2, i+3), so every node
    hears a majority (itself and its two ring neighbours) but no three nodes hear each other.
    No clique holds quorum: nobody may be quorate, and S1/S2 hold throughout."""
    net = cluster(5)
    one_view(net, {1, 2, 3, 4, 5})
    t0 = net.now
    for i in range(1, 6):
        far = (i + 1) % 5 + 1  # i + 2, wrapping 1..5
        net.cut(i, far)
        net.cut(far, i)
    net.run_until(t0 + SETTLE + 5)
    assert net.quorate() == set(), net.trace_tail()
    for node in range(1, 6):
        later = [s for t, s in net.history[node] if t > t0 + SETTLE]
        assert not any(s is not None and s.quorate for s in later)
    clean(net)


def test_one_way_cut() -> None:
    """One-way cut 1->2: the edge 1-2 is not mutual, so the best clique is {1,3,4,5} (smallest
    ids among the two 4-cliques). It is quorate in one view and node 2 is not quorate in any
    other view; removing the cut brings node 2 back."""
    net = cluster(5)
    one_view(net, {1, 2, 3, 4, 5})
    t0 = net.now
    net.cut(1, 2)
    net.run_until(t0 + SETTLE)
    assert one_view(net, {1, 3, 4, 5}).members == {1, 3, 4, 5}
    assert not state(net, 2).quorate
    net.run_until(t0 + SETTLE + 5)
    assert not state(net, 2).quorate
    net.uncut(1, 2)
    net.run_until(net.now + SETTLE)
    assert one_view(net, {1, 2, 3, 4, 5}).members == {1, 2, 3, 4, 5}
    clean(net)


def test_bridge_node_between_two_halves() -> None:
    """Node 3 hears everyone, {1,2} and {4,5} do not hear each other: two 3-cliques through the
    bridge. The smallest ({1,2,3}) is quorate in one view; 4 and 5 are not quorate."""
    net = cluster(5)
    one_view(net, {1, 2, 3, 4, 5})
    t0 = net.now
    net.partition({1, 2, 3}, {4, 5})
    for a in (4, 5):
        net.uncut(3, a)
        net.uncut(a, 3)
    net.run_until(t0 + SETTLE)
    assert one_view(net, {1, 2, 3}).members == {1, 2, 3}
    assert not state(net, 4).quorate
    assert not state(net, 5).quorate
    net.run_until(t0 + SETTLE + 5)
    assert one_view(net, {1, 2, 3}).members == {1, 2, 3}
    clean(net)


def test_flapping_link() -> None:
    """Link 1<->2 goes down and up every 0.3 s for 6 s: safety holds all along, nodes 3, 4, 5
    (always connected to a majority) never lose quorum, and once the link is steady all five
    share one view within the settle time."""
    net = cluster(5)
    one_view(net, {1, 2, 3, 4, 5})
    t0 = net.now
    down = True
    for k in range(20):
        when = t0 + 0.3 * k
        for a, b in ((1, 2), (2, 1)):
            action = net.cut if down else net.uncut
            net.at(when, lambda action=action, a=a, b=b: action(a, b))  # type: ignore[misc]
        down = not down
    net.at(t0 + 6.0, net.heal)
    net.run_until(t0 + 6.0 + SETTLE)
    assert all(quorate_since(net, n, t0) for n in (3, 4, 5)), net.trace_tail()
    assert one_view(net, {1, 2, 3, 4, 5}).members == {1, 2, 3, 4, 5}
    clean(net)


def test_two_node_wait_for_all_cold_start() -> None:
    """two_node (implies wait_for_all): a node started alone is not quorate however long it
    waits; once both were seen together both are quorate; after a split each keeps quorum
    (two_node: quorum is 1); a node restarted alone (cold start) is not quorate again."""
    net = cluster(2, quorum=QuorumOptions(two_node=True), start=(1,))
    net.run_until(10.0)
    assert not state(net, 1).quorate
    assert not any(s is not None and s.quorate for _, s in net.history[1])
    net.start(2)
    net.run_until(net.now + SETTLE)
    assert one_view(net, {1, 2}).members == {1, 2}
    net.partition({1}, {2})
    net.run_until(net.now + SETTLE)
    assert state(net, 1).quorate
    assert state(net, 2).quorate
    net.crash(2)
    net.crash(1)
    net.heal()
    net.start(1)
    t0 = net.now
    net.run_until(t0 + 10.0)
    assert not any(s is not None and s.quorate for t, s in net.history[1] if t >= t0)
    clean(net)


def test_last_man_standing_shrinks_five_to_two() -> None:
    """last_man_standing (window 2 s): nodes crash one at a time, 5 -> 4 -> 3 -> 2. After each
    window the survivors lower expected votes to their total and stay quorate throughout, down
    to two nodes with expected votes 2."""
    quorum = QuorumOptions(last_man_standing=True, last_man_standing_window=2.0)
    net = cluster(5, quorum=quorum)
    one_view(net, {1, 2, 3, 4, 5})
    t0 = net.now
    alive = {1, 2, 3, 4, 5}
    for victim in (5, 4, 3):
        net.crash(victim)
        alive.discard(victim)
        net.run_until(net.now + SETTLE + 2.0 + 1.0)
        view = one_view(net, alive)
        assert view.members == alive
        assert view.expected == len(alive), net.trace_tail()
    assert all(quorate_since(net, n, t0) for n in alive)
    clean(net)


def test_l2_no_view_change_under_loss_and_jitter() -> None:
    """L2: 5 nodes, 5 % loss and +-20 ms jitter on every link, 60 simulated seconds: after the
    first view formed, no node changes its view (and the checker applies L2 on its own)."""
    link = LinkModel(delay=0.025, jitter=0.02, loss=0.05)
    net = cluster(5, link=link)
    net.run_until(60.0)
    checker = Checker(net.timeline())
    assert checker.l2_applies()
    assert checker.view_changes() == 0, net.trace_tail()
    clean(net)


def test_clean_leave_reforms_before_the_failure_timeout() -> None:
    """A node that shuts down cleanly says Leave: the other four install a view without it
    within a few heartbeat rounds (a kill -9 takes the failure timeout), stay quorate, and the
    node rejoins when it starts again."""
    net = cluster(5)
    one_view(net, {1, 2, 3, 4, 5})
    t0 = net.now
    net.leave(5)
    net.run_until(t0 + TIMING.failure_timeout / 2)
    assert one_view(net, {1, 2, 3, 4}).members == {1, 2, 3, 4}, net.trace_tail()
    assert all(quorate_since(net, n, t0) for n in (1, 2, 3, 4))
    t1 = net.now
    net.crash(4)
    net.run_until(t1 + TIMING.failure_timeout / 2)
    assert state(net, 1).members == {1, 2, 3, 4}  # a crash is only noticed after the timeout
    net.run_until(t1 + SETTLE)
    assert one_view(net, {1, 2, 3}).members == {1, 2, 3}
    net.start(5)
    net.start(4)
    net.run_until(net.now + SETTLE)
    assert one_view(net, {1, 2, 3, 4, 5}).members == {1, 2, 3, 4, 5}
    clean(net)


def test_quorate_throughout_at_twenty_percent_loss() -> None:
    """5 nodes, 20 % loss and +-20 ms jitter on every link for 120 simulated seconds: the peers'
    failure timeouts stretch with the measured loss (0.65 -> 1.25 s), so no node is ever
    excluded: one view, every node quorate from formation to the end."""
    net = cluster(5, link=LinkModel(delay=0.025, jitter=0.02, loss=0.2), seed=7)
    one_view(net, {1, 2, 3, 4, 5})
    t0 = net.now
    net.run_until(120.0)
    assert Checker(net.timeline()).view_changes() == 0, net.trace_tail()
    assert all(quorate_since(net, n, t0) for n in (1, 2, 3, 4, 5))
    clean(net)


def events_of(net: SimNetwork, node: int, kind: EventKind, since: float) -> list[str]:
    """Trace lines of `node`'s events of `kind` at or after `since`."""
    out = []
    for line in net.trace:
        at, _, text = line.strip().partition(" ")
        if float(at) >= since and text.startswith(f"n{node} {kind}:"):
            out.append(line)
    return out


def test_redundant_links_fail_over_without_a_membership_change() -> None:
    """Design §3.6: 3 nodes with two links each (link0 preferred). Cutting link0 between 1 and
    2 both ways, then 1 -> 3 one way, then 3 -> 2 one way, changes no view and costs no node
    quorum (the checker's L2 applies: the pairs still share a working link); heartbeats move to
    link1. Cutting link1 between 1 and 2 too loses the pair within the failure timeout."""
    net = cluster(3, links=2)
    one_view(net, {1, 2, 3})
    t0 = net.now
    net.cut_link(1, 2, 0)
    net.cut_link(2, 1, 0)
    net.run_until(t0 + 3.0)
    net.cut_link(1, 3, 0)
    net.run_until(t0 + 6.0)
    net.cut_link(3, 2, 0)
    net.run_until(t0 + 9.0)
    assert Checker(net.timeline()).l2_applies()
    assert Checker(net.timeline()).view_changes() == 0, net.trace_tail()
    assert all(quorate_since(net, n, t0) for n in (1, 2, 3))
    for node in (1, 2, 3):
        assert not events_of(net, node, EventKind.QUORUM_LOST, t0)
    for a, b in ((1, 2), (2, 1), (1, 3)):
        status = net.slots[a].core.snapshot(net.now)  # type: ignore[union-attr]
        link = status.peer(b).active_link
        assert link == 1, (a, b, status.peers)
    clean(net)
    t1 = net.now
    net.cut_link(1, 2, 1)
    net.cut_link(2, 1, 1)
    net.run_until(t1 + TIMING.failure_timeout + 0.1)
    assert 2 not in state(net, 1).members
    net.run_until(t1 + SETTLE)
    assert one_view(net, {1, 3}).members == {1, 3}
    clean(net)


def test_a_paused_node_revalidates_before_it_announces_anything() -> None:
    """Design §3.7: node 3 of 3 is paused for 5 s (SIGSTOP) while the others re-form {1, 2};
    when it resumes, the datagrams queued for it are stale: it never reports quorate in its
    old view again, raises no clock_skew, says it stalled, and rejoins in a new view."""
    net = cluster(3)
    old = one_view(net, {1, 2, 3})
    t0 = net.now
    net.pause(3, 5.0)
    net.run_until(t0 + 4.0)
    assert one_view(net, {1, 2}).members == {1, 2}
    net.run_until(t0 + 5.0 + SETTLE)
    resumed = t0 + 5.0
    at_resume = state_at(net, 3, resumed)
    later = [at_resume] + [s for t, s in net.history[3] if t >= resumed]
    assert not any(s is not None and s.ring == old.ring and s.quorate for s in later), later
    assert not events_of(net, 3, EventKind.CLOCK_SKEW, t0)
    assert events_of(net, 3, EventKind.STALLED, t0)
    final = one_view(net, {1, 2, 3})
    assert final.ring != old.ring
    clean(net)


def heal_link0(net: SimNetwork) -> None:
    for a, b in ((1, 2), (2, 1)):
        net.uncut_link(a, b, 0)


def test_a_link_that_heals_late_is_not_a_stall() -> None:
    """Link0 between 1 and 2 is cut from the start (the pair runs on link1) and heals later:
    the failback to link0 makes its next heartbeat due at a round long past (link0 last sent a
    probe up to a second before). That past deadline is "now", not a deadline the node slept
    through: no node says `stalled`, no view changes, every node stays quorate."""
    configs = cluster_configs(3, timing=TIMING, links=2)
    net = SimNetwork(configs, 1)
    for a, b in ((1, 2), (2, 1)):
        net.cut_link(a, b, 0)
    for node in (1, 2, 3):
        net.at(0.01 * node, lambda node=node: net.start(node))  # type: ignore[misc]
    net.run_until(FORM)
    one_view(net, {1, 2, 3})
    t0 = net.now
    for heal in (2.3, 3.5):  # both healed while link0's last probe was > 0.65 s old
        net.at(heal, lambda: heal_link0(net))
        net.run_until(heal + 2.0)
        for a, b in ((1, 2), (2, 1)):
            net.cut_link(a, b, 0)
        net.run_until(heal + 2.5)
    for node in (1, 2, 3):
        assert not events_of(net, node, EventKind.STALLED, 0.0), net.trace_tail()
    assert Checker(net.timeline()).view_changes() == 0, net.trace_tail()
    assert all(quorate_since(net, n, t0) for n in (1, 2, 3))
    failbacks = [line for line in net.trace if "failback" in line and float(line.split()[0]) > t0]
    assert failbacks, "link0 came back and took the traffic"
    clean(net)


def inquorate_at(net: SimNetwork, node: int, since: float) -> float | None:
    """Seconds after `since` when the node first reported inquorate (None: never)."""
    for t, s in net.history[node]:
        if t >= since and (s is None or not s.quorate):
            return t - since
    return None


@pytest.mark.parametrize(("count", "algorithm"), [(2, "ffsplit"), (4, "ffsplit"), (2, "lms")])
def test_qnetd_split_winner_never_inquorate(count: int, algorithm: str) -> None:
    """Issue 12 item 1: a split decided by the qnetd (tie-breaker lowest: node 1's half wins).
    The winners hold their pre-split view and the device ACK until qnetd ACKs their new ring:
    never inquorate, no `quorum_lost`; the losers go inquorate (NACK) within the bound."""
    net = cluster(count, qdevice=sim_qdevice_config(algorithm))
    net.run_until(FORM + 1.0)
    everyone = set(range(1, count + 1))
    one_view(net, everyone)
    winners, losers = set(range(1, count // 2 + 1)), set(range(count // 2 + 1, count + 1))
    split_at = net.now
    net.partition(winners, losers)
    net.run_until(split_at + SETTLE + 1.0)
    for node in winners:
        assert quorate_since(net, node, split_at - 1.0), net.trace_tail(80)
    one_view(net, winners)
    for node in losers:
        took = inquorate_at(net, node, split_at)
        assert took is not None, f"n{node} never went inquorate\n{net.trace_tail()}"
        assert took < BOUND + 1.0, took  # + the hold span at most; NACK usually in ms
        assert not state(net, node).quorate
    assert not any(
        "quorum_lost" in line and f"n{w} " in line for w in winners for line in net.trace
    )
    clean(net)


def test_lms_clean_stop_survivors_never_inquorate() -> None:
    """Issue 12 item 2: 3 nodes + lms (2 device votes, expected 5); node 3 stops cleanly. The
    survivors form {1,2} with the device vote without ever being inquorate."""
    net = cluster(3, qdevice=sim_qdevice_config("lms"))
    net.run_until(FORM + 1.0)
    one_view(net, {1, 2, 3})
    stop_at = net.now
    net.leave(3)
    net.run_until(stop_at + SETTLE)
    for node in (1, 2):
        assert quorate_since(net, node, stop_at - 1.0), net.trace_tail(80)
    view = one_view(net, {1, 2})
    assert view.members == {1, 2}
    clean(net)


def test_stale_view_stops_counting_unheard_members() -> None:
    """Issue 12 item 5 (seed 7013375): 6 nodes, {1,2,3,4}|{5,6}, then a one-way cut 3->4 and
    52 % loss on 1<->4: node 4 hears only {1,2,4} and cannot agree on a new view. It used to
    stay quorate in its old 6-member view (L1 broken); it counts only what it hears now."""
    result = run_seed(7013375)
    assert result.ok, result.report()


def test_lms_revokes_before_it_grants() -> None:
    """Seed 5135 with lms: qnetd ACKed node 1 alone by the tie-breaker, then {2,3} on score 66 ms
    later without revoking node 1 (as corosync-qnetd 3.0.3): both sides quorate, S1 broken. Our
    lms NACKs node 1 and waits for its acknowledgement before it ACKs {2,3}."""
    result = run_seed(SIM_LMS_SEED, algorithm="lms")
    assert result.schedule.qdevice is not None
    assert result.schedule.qdevice.algorithm == "lms"
    assert result.ok, result.report()
