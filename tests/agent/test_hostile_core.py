"""A member holding the cluster key sends hostile values to a running core (issue 12 item 9).

Every datagram here is sealed with the real key, so it passes the AEAD: what stops it is the
decode bounds (`proto.mesh_messages`), the opener's per-sender state and the core's rules for
incarnations, sequence leaps and freshness. Nothing may raise, every drop has a reason, and the
cluster is back in one view once the hostile sender stops.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.node import (
    SEQ_LEAP_EVERY,
    SEQ_STEP,
    AgentNode,
    Broadcast,
    MaxSeqStored,
    MessageIn,
    PersistMaxSeq,
    SendTo,
    Tick,
)
from proto.datagram_seal import ClusterKey, Opener, Sealer
from proto.errors import DecodeError
from proto.mesh_messages import Echo, Heartbeat, MeshKind, View, decode, seal_message
from tests.agent.hostile import heartbeat_map, keyed_garbage
from tests.agent.test_node import Net

KEY = ClusterKey(b"h" * 32)


def settled() -> Net:
    net = Net.make(3)
    net.run(1.5)
    assert net.views() == {((1, net.nodes[1].view.ring_id.seq), frozenset({1, 2, 3}))}
    return net


def deliver(node: AgentNode, opener: Opener, datagram: bytes, now: float) -> str | None:
    """What the runtime does with one datagram: open, decode, hand to the core. The reason it
    was dropped, or None when the core took it."""
    try:
        header, payload = opener.open(datagram, now)
        message = decode(header.kind, payload)
    except DecodeError as exc:
        return exc.reason
    node.handle(MessageIn(header.sender, header.incarnation, 0, message, 0), now)
    return node.last_drop


def assert_sends_seal(node: AgentNode, now: float) -> None:
    """Everything the node sends next still seals (no value it took from a peer overflows)."""
    sealer = Sealer("t", KEY, node.node_id, 9)
    effects = node.handle(Tick(wall_ms=0), now)
    for effect in effects:
        if isinstance(effect, PersistMaxSeq):  # answered at once, as the runtime does
            effects += node.handle(MaxSeqStored(effect.value), now)
        if isinstance(effect, Broadcast | SendTo):
            seal_message(sealer, effect.message)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    garbage=st.lists(keyed_garbage(), min_size=1, max_size=15),
    incarnation=st.sampled_from([1, 1, 2, 2**62]),
)
def test_keyed_garbage_never_raises_and_the_cluster_recovers(
    garbage: list[tuple[int, bytes]], incarnation: int
) -> None:
    """Node 1 of a settled 3-node cluster gets keyed datagrams with hostile values as node 2
    (its current life, or another one): each is dropped with a reason or taken, none raises,
    node 1's own datagrams still seal, and 3 s after the last one the three share one view."""
    net = settled()
    node = net.nodes[1]
    sealer = Sealer("t", KEY, 2, incarnation)
    opener = Opener("t", [KEY], admit=lambda sender: sender in {2, 3})
    for kind, payload in garbage:
        deliver(node, opener, sealer.seal(kind, payload), net.now)
        assert_sends_seal(node, net.now)
        assert node.membership.max_seq <= node.membership.view.ring_id.seq + 2**32 + 2
    net.run(3.0)
    assert len(net.views()) == 1
    assert next(iter(net.views()))[1] == frozenset({1, 2, 3})


def test_hostile_values_of_the_issue_are_dropped_by_reason() -> None:
    """The datagrams that crashed or wedged agents before (regression: each failed on main):
    votes and ring seq 2**64 - 1 are bad_value at decode, and nothing of them reaches the core;
    the view and quorum stay."""
    net = settled()
    node = net.nodes[1]
    sealer = Sealer("t", KEY, 2, 1)
    sealer.counter = 10**6  # ahead of the real node 2's counters: the window accepts it
    opener = Opener("t", [KEY])
    view = {1: 1, 2: 2**64 - 1, 3: [1, 2, 3]}
    cases = {
        "votes": heartbeat_map(link=0, stamp_us=2**40, wall_ms=0, votes=2**64 - 1),
        "view": heartbeat_map(link=0, stamp_us=2**40, wall_ms=0, view=view, proposal=view),
        "heard": heartbeat_map(link=0, stamp_us=2**40, wall_ms=0, heard=[1, 2, 2**32]),
    }
    before = (node.view, node.quorate)
    for name, payload in cases.items():
        reason = deliver(node, opener, sealer.seal(MeshKind.HEARTBEAT, payload), net.now)
        assert reason == "bad_value", name
    assert (node.view, node.quorate) == before
    net.run(2.0)
    assert node.view == before[0]


def test_a_ring_sequence_leap_is_taken_once_then_refused() -> None:
    """A reported seq more than SEQ_STEP above max_seq is a leap: one is taken (a node that
    rejoins a cluster far ahead), the next within SEQ_LEAP_EVERY is dropped as seq_leap, so a
    hostile member cannot walk max_seq to the end of the sequence space."""
    net = settled()
    node = net.nodes[1]
    seq = node.membership.max_seq
    stamp = node.peers[2].stamp_us

    def leap(to: int, step: int) -> str | None:
        hb = Heartbeat(
            link=0,
            stamp_us=stamp + step,
            wall_ms=0,
            heard=(1, 2, 3),
            view=View(2, to, (2,)),
            echoes=(Echo(1, int(net.now * 1e6), 0),),
        )
        node.handle(MessageIn(2, 1, 0, hb, 0), net.now)
        return node.last_drop

    assert leap(seq + SEQ_STEP, 1) is None
    assert leap(seq + 2**31, 2) is None  # one leap
    assert node.membership.max_seq == seq + 2**31
    assert leap(seq + 2**32, 3) == "seq_leap"
    assert node.membership.max_seq == seq + 2**31
    net.now += SEQ_LEAP_EVERY
    assert leap(seq + 2**31 + 2**33, 4) == "seq_leap"  # larger than SEQ_LEAP_MAX: never


def test_a_second_life_of_a_live_peer_is_refused_and_reported() -> None:
    """Node 2 is verified and alive at node 1: datagrams of another incarnation of node 2 (an
    impostor, or a hostile 2**62) are dropped as other_incarnation and never take the id (on
    main they did, and the real node 2 was then dropped as stale_incarnation); as node 2's own
    life keeps sending in between, node 1 emits one duplicate_node event naming both."""
    net = settled()
    node = net.nodes[1]
    impostor = Heartbeat(link=0, stamp_us=5, wall_ms=0, heard=(1, 3), node_name="clone")
    for _ in range(10):
        node.handle(MessageIn(2, 2**62, 0, impostor, 0), net.now)
        assert node.last_drop == "other_incarnation"
        net.run(0.1)
    assert node.peers[2].incarnation == 1
    assert net.views() == {((1, node.view.ring_id.seq), frozenset({1, 2, 3}))}
    dup = [e for _, src, e in net.events if src == 1 and e.event.kind == "duplicate_node"]
    assert len(dup) == 1
    assert (dup[0].event.details["kept"], dup[0].event.details["refused"]) == (1, 2**62)


def test_a_new_life_takes_over_once_the_old_one_is_silent() -> None:
    """A restart after kill -9: node 2's old life stops; a new incarnation is refused while the
    old one could still be alive (within its failure timeout), then adopted, verified and back
    in the view, without any duplicate_node event. An older life that comes back while the
    current one is silent is adopted too (a hostile high incarnation cannot lock the real node
    out), but must echo a stamp sent since."""
    net = settled()
    node = net.nodes[1]
    net.alive.discard(2)
    restarted = AgentNode(net.nodes[2].config, incarnation=5)
    net.nodes[2] = restarted
    net.alive.add(2)
    from agent.node import Start

    net.apply(2, restarted.handle(Start(wall_ms=0), net.now))
    net.run(3.0)
    assert node.peers[2].incarnation == 5
    assert len(net.views()) == 1
    assert next(iter(net.views()))[1] == frozenset({1, 2, 3})
    assert not [e for _, _, e in net.events if e.event.kind == "duplicate_node"]
    assert 1 in node.peers[2].retired
    late = Heartbeat(link=0, stamp_us=2**40, wall_ms=0, heard=(1, 2, 3))
    node.handle(MessageIn(2, 1, 0, late, 0), net.now)
    assert node.last_drop == "stale_incarnation"
