"""Run-time configuration changes of the node core (`Reconfigure`, design §3.9 "Run-time
changes"): a few nodes on the perfect in-memory network of test_node, time explicit."""

from __future__ import annotations

import itertools
from dataclasses import replace

from agent.config import AgentConfig, QdeviceConfig, QuorumOptions, Timing
from agent.events import EventKind
from agent.node import (
    AgentNode,
    Broadcast,
    ConfigApplied,
    Emit,
    MessageIn,
    NodeEffect,
    PeerAddresses,
    QdeviceReconfigure,
    QdeviceVote,
    Reconfigure,
    Removed,
    Start,
    Tick,
    transition_span,
)
from proto.mesh_messages import Heartbeat, Leave
from tests.agent.test_node import Net, config


def without(cfg: AgentConfig, *gone: int) -> AgentConfig:
    """The configuration with nodes `gone` deleted (`votemesh delnode`)."""
    return replace(cfg, peers=tuple(p for p in cfg.peers if p.node_id not in gone))


def with_votes(cfg: AgentConfig, node: int, votes: int) -> AgentConfig:
    """The configuration with `node` given `votes`."""
    if cfg.node_id == node:
        return replace(cfg, quorum=replace(cfg.quorum, votes=votes))
    peers = tuple(replace(p, votes=votes) if p.node_id == node else p for p in cfg.peers)
    return replace(cfg, peers=peers)


def apply(net: Net, node: int, cfg: AgentConfig, version: int = 0) -> list[NodeEffect]:
    """Hand `Reconfigure` to one node of `net` and carry out its effects."""
    effects = net.nodes[node].handle(Reconfigure(cfg, version), net.now)
    net.apply(node, effects)
    return effects


def quorate(node: AgentNode) -> bool:
    """The node's verdict now (a call, so a type checker does not narrow it across events)."""
    return node.quorate


def kinds(effects: list[NodeEffect]) -> list[EventKind]:
    return [e.event.kind for e in effects if isinstance(e, Emit)]


def events_of(net: Net, node: int, kind: EventKind, since: float = 0.0) -> list[Emit]:
    return [e for t, n, e in net.events if n == node and e.event.kind is kind and t >= since]


def formed(n: int, *, until: float = 2.0) -> Net:
    net = Net.make(n)
    net.run(until)
    assert {m for _, m in net.views()} == {frozenset(range(1, n + 1))}
    return net


def test_delnode_of_a_dead_node_lowers_expected_votes_at_once_without_a_blip() -> None:
    """3 nodes, node 3 dies: {1,2} run at 2 of 3. `delnode 3` on both: expected votes are 2 in
    the same call (no waiting for a view), and they stay quorate throughout (issue 8: a removed
    node no longer counts toward expected votes)."""
    net = formed(3)
    net.alive.discard(3)
    net.run(2.0)
    assert net.nodes[1].quorum.status.expected_votes == 3
    changed_at = net.now
    for node in (1, 2):
        effects = apply(net, node, without(config(node, 3), 3), version=2)
        assert net.nodes[node].quorum.status.expected_votes == 2
        assert EventKind.EXPECTED_VOTES_CHANGED in kinds(effects)
        assert EventKind.CONFIG_CHANGED in kinds(effects)
    net.run(1.0)
    for node in (1, 2):
        assert all(q for t, q in net.quorate_log[node] if t >= changed_at)
        assert not events_of(net, node, EventKind.QUORUM_LOST, changed_at)
        assert net.nodes[node].status(net.now)["config_version"] == 2


def test_a_removed_running_node_leaves_the_view_and_its_datagrams_are_dropped() -> None:
    """4 nodes, `delnode 4` while node 4 still runs: nodes 1-3 install {1,2,3} well within the
    failure timeout, expected votes 3 at once, and node 4's datagrams are dropped as
    `removed_node` (the runtime counts them)."""
    net = formed(4)
    changed_at = net.now
    for node in (1, 2, 3):
        applied = apply(net, node, without(config(node, 4), 4), version=5)
        assert [e for e in applied if isinstance(e, ConfigApplied)] == [
            ConfigApplied(without(config(node, 4), 4), 5, (), (4,), ())
        ]
        assert net.nodes[node].quorum.status.expected_votes == 3
    net.run(Timing.lan().failure_timeout)
    for node in (1, 2, 3):
        assert net.nodes[node].view.members == frozenset({1, 2, 3})
        assert net.nodes[node].quorate
        assert all(q for t, q in net.quorate_log[node] if t >= changed_at)
        assert 4 not in {p["node_id"] for p in net.nodes[node].status(net.now)["peers"]}
    hb = Heartbeat(link=0, stamp_us=int(net.now * 1e6) | 1, wall_ms=0)
    assert net.nodes[1].handle(MessageIn(4, 1, 0, hb, 0), net.now) == []
    assert net.nodes[1].last_drop == "removed_node"


def test_the_removed_node_itself_stops_loudly_once() -> None:
    """The node that is not in the applied configuration: one removed_from_cluster event, a
    Leave to its peers, quorum lost with the reason, the `Removed` effect, and nothing more: no
    deadline, later events do nothing, a second Reconfigure emits nothing."""
    net = formed(3)
    node = net.nodes[3]
    effects = node.handle(Reconfigure(config(3, 3), 4, member=False), net.now)
    assert kinds(effects) == [EventKind.REMOVED_FROM_CLUSTER, EventKind.QUORUM_LOST]
    assert any(getattr(e, "message", None) == Leave("removed from the cluster configuration")
               for e in effects)  # fmt: skip
    assert effects[-1] == Removed(effects[-1].reason, 4)  # type: ignore[union-attr]
    assert "removed from the cluster configuration (version 4)" in node.quorum.status.reason
    assert not node.quorate
    assert node.next_deadline() is None
    assert node.handle(Tick(wall_ms=0), net.now + 1) == []
    assert node.handle(Reconfigure(config(3, 3), 5, member=False), net.now + 2) == []
    status = node.status(net.now)
    assert status["views"].startswith("removed:")
    assert not status["quorate"]
    net.alive.discard(3)
    net.apply(3, effects)  # the Leave reaches 1 and 2: they re-form at once
    net.run(0.3)
    assert {m for _, m in net.views()} == {frozenset({1, 2})}


def test_an_added_node_joins_the_view() -> None:
    """Nodes 1-3 run a 3-node configuration; node 4 starts with the 4-node one. Until 1-3 apply
    it, node 4's datagrams are dropped (`unknown_peer`) and it is alone; after, all four
    install one view within a second and expected votes are 4."""
    configs = {i: without(config(i, 4), 4) for i in (1, 2, 3)} | {4: config(4, 4)}
    nodes = {i: AgentNode(cfg, 1) for i, cfg in configs.items()}
    net = Net(nodes)
    for i, node in nodes.items():
        net.alive.add(i)
        net.apply(i, node.handle(Start(wall_ms=0), 0.0))
    net.run(2.0)
    assert nodes[1].view.members == frozenset({1, 2, 3})
    assert nodes[4].view.members == frozenset({4})
    added_at = net.now
    for i in (1, 2, 3):
        effects = apply(net, i, config(i, 4), version=3)
        assert [e.added for e in effects if isinstance(e, ConfigApplied)] == [(4,)]
    net.run(1.0)
    assert {m for _, m in net.views()} == {frozenset({1, 2, 3, 4})}
    assert all(n.quorum.status.expected_votes == 4 for n in nodes.values())
    assert all(q for t, q in net.quorate_log[1] if t >= added_at)


def test_changed_votes_recompute_quorum() -> None:
    """3 nodes; node 3 gets 3 votes (total 5, quorum 3). Once the transition span is over,
    losing node 3 leaves {1,2} with 2 of 5: inquorate (with one vote each it kept quorum)."""
    net = formed(3)
    for node in (1, 2, 3):
        apply(net, node, with_votes(config(node, 3), 3, 3), version=2)
        assert net.nodes[node].quorum.status.expected_votes == 5
        assert net.nodes[node].quorate
    net.run(transition_span(Timing.lan()) + 0.1)
    net.alive.discard(3)
    net.run(2.0)
    assert net.nodes[1].view.members == frozenset({1, 2})
    assert not net.nodes[1].quorate
    assert "2 of 5" in net.nodes[1].quorum.status.reason


def test_a_vote_change_alone_cannot_make_a_disjoint_set_quorate_during_the_transition() -> None:
    """S1 across a change (design §3.9): {1,2,3,4}, node 4 cut off. Node 4 applies a
    configuration giving it 5 votes (5 of 8: quorate by the new one alone) while {1,2,3} are
    still quorate by the old one. During the transition node 4 is held to the old
    configuration too (1 of 4): inquorate; after the span it counts by the new one."""
    net = formed(4)
    for node in (1, 2, 3):
        net.alive.discard(node)  # node 4 hears nobody; 1-3 keep their view meanwhile
    net.run(2.0)
    n4 = net.nodes[4]
    assert n4.view.members == frozenset({4})
    assert not n4.quorate
    apply(net, 4, with_votes(config(4, 4), 4, 5), version=2)
    assert n4.quorum.status.expected_votes == 8
    assert not n4.quorate
    assert "configuration change" in n4.quorum.status.reason
    net.run(transition_span(Timing.lan()) + 0.1)
    assert n4.quorate  # 5 of 8 by the new configuration, nothing older to respect


def test_a_version_jump_is_inquorate_for_the_transition_span() -> None:
    """A node that applies version 7 after 5 (it missed 6, whose content it cannot know) is
    inquorate for the transition span, then quorate again."""
    net = formed(3)
    for node in (1, 2, 3):
        apply(net, node, config(node, 3), version=5)
    n1 = net.nodes[1]
    assert quorate(n1)
    apply(net, 1, with_votes(config(1, 3), 2, 2), version=7)
    assert not quorate(n1)
    assert "in between are unknown" in n1.quorum.status.reason
    net.run(transition_span(Timing.lan()) + 0.1)
    assert quorate(n1)


def test_new_timings_apply_at_once() -> None:
    """After a change to the lab timings, heartbeats go every 0.2 s and each peer's failure
    timeout is the lab one (1.8 s): a dead peer stays in the view longer than the LAN 0.65 s and
    leaves it after the lab timeout."""
    net = formed(3)
    for node in (1, 2, 3):
        apply(net, node, replace(config(node, 3), timing=Timing.lab()))
    net.run(2.0)
    timeouts = {p["failure_timeout_s"] for p in net.nodes[1].status(net.now)["peers"]}
    assert timeouts == {Timing.lab().failure_timeout}
    sent: list[float] = []
    plain = net.apply

    def recording(src: int, effects: list[NodeEffect]) -> None:
        beats = [
            e for e in effects if isinstance(e, Broadcast) and isinstance(e.message, Heartbeat)
        ]
        if src == 1 and beats:
            sent.append(net.now)
        plain(src, effects)

    net.apply = recording  # type: ignore[method-assign]
    net.run(2.0)
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert len(gaps) >= 5
    assert all(abs(g - 0.2) < 0.01 for g in gaps), gaps
    net.alive.discard(3)
    net.run(1.0)
    assert net.nodes[1].view.members == frozenset({1, 2, 3})
    net.run(1.5)
    assert net.nodes[1].view.members == frozenset({1, 2})


def test_refusals_change_nothing_and_never_raise() -> None:
    """Another node id, another cluster name, an invalid configuration, an older version: one
    config_refused event each with a one-line reason; the running configuration stays."""
    net = formed(3)
    node = net.nodes[1]
    apply(net, 1, config(1, 3), version=4)
    running = node.config
    cases = [
        (Reconfigure(config(2, 3), 5), "node_id 2 differs"),
        (Reconfigure(replace(config(1, 3), cluster_name="other"), 5), 'cluster name "other"'),
        (Reconfigure(replace(config(1, 3), links=()), 5), "configuration refused: configure 1"),
        (Reconfigure(without(config(1, 3), 3), 3), "older than the applied version 4"),
    ]
    for event, text in cases:
        effects = node.handle(event, net.now)
        assert kinds(effects) == [EventKind.CONFIG_REFUSED]
        assert node.reconfigure_refusal is not None
        assert text in node.reconfigure_refusal
        assert "\n" not in node.reconfigure_refusal
        assert node.config == running
        assert node.config_version == 4
    assert node.quorate


def test_restart_only_quorum_options_keep_their_running_values() -> None:
    """last_man_standing and auto_tie_breaker are read at start only (as corosync): a change
    keeps the running values and names them in restart_needed; expected_votes applies."""
    net = formed(3)
    wanted = replace(
        config(1, 3),
        quorum=QuorumOptions(expected_votes=5, last_man_standing=True, auto_tie_breaker=True),
    )
    effects = apply(net, 1, wanted)
    (applied,) = [e for e in effects if isinstance(e, ConfigApplied)]
    assert applied.restart_needed == ("quorum.last_man_standing", "quorum.auto_tie_breaker")
    assert not net.nodes[1].config.quorum.last_man_standing
    assert net.nodes[1].config.quorum.expected_votes == 5
    assert net.nodes[1].quorum.status.expected_votes == 5


def test_discovery_cannot_add_a_voter_to_a_configured_node_list() -> None:
    """With a node list, a discovered node that is not in it gets no state: its PeerAddresses
    is ignored and its datagrams are dropped as unknown_peer; a cluster configuration (a
    version is known) is a node list even with no peers (a cluster of one). Without a node list
    (discovery-only) the same node is tracked."""
    net = formed(3)
    node = net.nodes[1]
    node.handle(PeerAddresses(9, frozenset({0})), net.now)
    assert 9 not in node.peers
    hb = Heartbeat(link=0, stamp_us=1, wall_ms=0)
    node.handle(MessageIn(9, 1, 0, hb, 0), net.now)
    assert node.last_drop == "unknown_peer"
    alone = replace(config(1, 1), quorum=QuorumOptions(expected_votes=3), discovery=True)
    lone = AgentNode(alone, 1)
    lone.handle(Start(wall_ms=0), 0.0)
    lone.handle(PeerAddresses(9, frozenset({0})), 0.0)
    assert 9 in lone.peers
    created = AgentNode(alone, 1, config_version=1)  # `votemesh create`: a cluster of one
    created.handle(Start(wall_ms=0), 0.0)
    created.handle(PeerAddresses(9, frozenset({0})), 0.0)
    assert 9 not in created.peers


def test_qdevice_settings_restart_the_session_and_drop_its_vote() -> None:
    """Another qnetd host: QdeviceReconfigure(restart=True) and the old session's vote stops
    counting at once; a node list change only: restart=False with the new list."""
    device = QdeviceConfig(host="192.0.2.1", tls="off")
    cfg = replace(config(1, 3), qdevice=device)
    node = AgentNode(cfg, 1)
    node.handle(Start(wall_ms=0), 0.0)
    ring = (node.view.ring_id.representative, node.view.ring_id.seq)
    node.handle(QdeviceVote(True, True, "ack", ring), 0.01)
    assert node.qdevice_votes == 1
    moved = replace(cfg, qdevice=replace(device, host="192.0.2.2"))
    effects = node.handle(Reconfigure(moved), 0.02)
    assert [e for e in effects if isinstance(e, QdeviceReconfigure)] == [
        QdeviceReconfigure(moved.qdevice, (1, 2, 3), True)
    ]
    assert node.qdevice_votes == 0
    assert not node.qdevice_connected
    effects = node.handle(Reconfigure(without(moved, 3)), 0.03)
    assert [e for e in effects if isinstance(e, QdeviceReconfigure)] == [
        QdeviceReconfigure(moved.qdevice, (1, 2), False)
    ]


def test_heartbeats_carry_the_config_version() -> None:
    """Peers and the status see which configuration version a node runs."""
    net = formed(2)
    apply(net, 1, config(1, 2), version=9)
    effects = net.nodes[1].handle(Tick(wall_ms=0), net.now + 0.2)
    beats = [e.message for e in effects if isinstance(e, Broadcast)]
    assert beats
    assert all(isinstance(b, Heartbeat) and b.config_version == 9 for b in beats)
    assert net.nodes[1].status(net.now)["config_version"] == 9


def test_members_not_yet_updated_do_not_pin_the_old_expected_votes() -> None:
    """Votes {1: 1, 2: 0, 3: 1}, `delnode 3`, applied by node 2 first and by node 1 10 ms
    later. During the transition both are inquorate (1 of the old 2 votes); node 1, not
    yet updated, still reports expected votes 2 as a quorate member. That report is of another
    configuration version and must not be taken: after the span both run at 1 of 1 expected
    vote, quorate (sim reconfiguration seed 100 stayed inquorate for ever)."""
    zero = {i: with_votes(config(i, 3), 2, 0) for i in (1, 2, 3)}
    nodes = {i: AgentNode(cfg, 1, config_version=1) for i, cfg in zero.items()}
    net = Net(nodes)
    for i, node in nodes.items():
        net.alive.add(i)
        net.apply(i, node.handle(Start(wall_ms=0), 0.0))
    net.run(2.05)  # between two heartbeat rounds
    assert all(quorate(n) for n in nodes.values())
    apply(net, 2, without(zero[2], 3), version=2)
    net.run(0.01)  # within one heartbeat round: node 1 has not heard node 2's news yet
    apply(net, 1, without(zero[1], 3), version=2)
    net.alive.discard(3)  # it stopped (Removed)
    net.run(transition_span(Timing.lan()) + 1.0)
    for i in (1, 2):
        assert nodes[i].view.members == frozenset({1, 2})
        assert nodes[i].quorum.status.expected_votes == 1
        assert quorate(nodes[i]), nodes[i].quorum.status.reason


def test_config_changed_names_the_old_and_the_new_version() -> None:
    """issue 9 item 6: `config_changed` carries `old_version` (the version the core had applied;
    0: none yet) and `version`, so a hook or subscriber sees what changed into what."""
    net = formed(3)
    first = apply(net, 1, with_votes(config(1, 3), 2, 2), version=4)
    second = apply(net, 1, with_votes(config(1, 3), 2, 3), version=5)
    changed = [
        e.event.details for e in (*first, *second)
        if isinstance(e, Emit) and e.event.kind is EventKind.CONFIG_CHANGED
    ]  # fmt: skip
    assert [(d["old_version"], d["version"]) for d in changed] == [(0, 4), (4, 5)]
