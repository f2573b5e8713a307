"""The configuration replication core (design §3.9): refusals with their reasons, serialised
changes, re-proposal of a staged change after a view change, catch-up from disk, S4 conflicts."""

from __future__ import annotations

from collections import deque
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from agent import config_replication as cr
from agent.cluster_config import ClusterConfig, digest
from tests.agent.cluster_fixtures import cluster


class Net:
    """Replicas 1..n delivering FIFO, only inside the current groups; nothing lost unless held."""

    def __init__(self, n: int, version: int = 1) -> None:
        base = cluster(range(1, n + 1), version=version)
        self.disk = {i: cr.Persist(base, None, None) for i in range(1, n + 1)}
        self.replicas = {i: cr.ConfigReplica(i, base) for i in range(1, n + 1)}
        self.queue: deque[tuple[int, int, cr.Message]] = deque()
        self.done: dict[int, cr.ChangeDone] = {}
        self.conflicts: list[cr.Conflict] = []
        self.seq = 0
        self.groups: list[set[int]] = [set(self.replicas)]
        self.hold: set[type] = set()

    def feed(self, n: int, event: cr.Event) -> None:
        for effect in self.replicas[n].handle(event):
            match effect:
                case cr.Send(to, message):
                    self.queue.append((n, to, message))
                case cr.Persist():
                    self.disk[n] = effect
                case cr.ChangeDone():
                    self.done[effect.request_id] = effect
                case cr.Conflict():
                    self.conflicts.append(effect)

    def views(self, *groups: set[int], forced: int = 0) -> None:
        """Install one view per group (fresh sequence) and each node's quorum verdict."""
        self.groups = [set(g) for g in groups]
        self.seq += 1
        for g in self.groups:
            ring = cr.Ring(self.seq, min(g))
            for n in sorted(g):
                self.feed(n, cr.ViewChanged(ring, frozenset(g)))
                have = len(g)
                quorate = 2 * have > len(self.replicas) or n == forced
                self.feed(n, cr.QuorumInput(quorate, have, len(self.replicas)))

    def settle(self) -> None:
        for _ in range(10_000):
            if not self.queue:
                return
            sender, to, message = self.queue.popleft()
            if type(message) in self.hold:
                continue
            if any(sender in g and to in g for g in self.groups):
                self.feed(to, cr.Received(sender, message))

    def ask(self, n: int, request_id: int, window: float) -> None:
        base = self.replicas[n].committed
        new = replace(base, quorum=replace(base.quorum, last_man_standing_window=window))
        self.feed(n, cr.ChangeRequested(request_id, base.version, new))

    def versions(self) -> dict[int, int]:
        return {n: r.committed.version for n, r in self.replicas.items()}


def started(n: int = 3) -> Net:
    net = Net(n)
    net.views(set(range(1, n + 1)))
    net.settle()
    return net


def test_a_change_on_a_quorate_node_reaches_every_member_as_the_next_version() -> None:
    """A change asked on a non-representative is applied as version 2 on all three nodes."""
    net = started()
    net.ask(3, 1, 20.0)
    net.settle()
    assert net.done[1] == cr.ChangeDone(1, True, "applied as config_version 2")
    assert net.versions() == {1: 2, 2: 2, 3: 2}
    assert {r.committed.quorum.last_man_standing_window for r in net.replicas.values()} == {20.0}


def test_the_minority_side_of_a_split_is_refused_and_takes_the_majoritys_version_at_the_heal() -> (
    None
):
    """{1,2}|{3}: node 3's change is refused with the issue's reason; node 1's is applied; after
    the heal node 3 holds the majority's version 2."""
    net = started()
    net.views({1, 2}, {3})
    net.settle()
    net.ask(3, 1, 30.0)
    net.ask(1, 2, 20.0)
    net.settle()
    assert net.done[1].text == "not quorate: 1 of 3 votes; use `votemesh expected 1` to force"
    assert not net.done[1].ok
    assert net.done[2].ok
    net.views({1, 2, 3})
    net.settle()
    assert net.versions() == {1: 2, 2: 2, 3: 2}
    assert net.replicas[3].committed.quorum.last_man_standing_window == 20.0


def test_a_node_quorate_only_by_an_override_cannot_change_the_configuration() -> None:
    """`votemesh expected 1` makes node 3 quorate alone, but a change needs a majority of the
    configured votes (the S4 rule): refused with the numbers, nothing changed."""
    net = started()
    net.views({1, 2}, {3}, forced=3)
    net.settle()
    net.ask(3, 1, 30.0)
    net.settle()
    assert net.done[1] == cr.ChangeDone(
        1,
        False,
        "a configuration change needs 2 of the 3 configured votes, this view holds 1; "
        "bring nodes back",
    )
    assert net.versions() == {1: 1, 2: 1, 3: 1}


def test_two_changes_racing_in_one_partition_one_wins_the_other_is_told_to_retry() -> None:
    """Changes asked on nodes 2 and 3 at once: one is applied, the other refused with retry."""
    net = started()
    net.ask(2, 1, 20.0)
    net.ask(3, 2, 30.0)
    net.settle()
    results = sorted((net.done[1].ok, net.done[2].ok))
    assert results == [False, True]
    loser = net.done[1] if not net.done[1].ok else net.done[2]
    assert loser.text.endswith("retry")
    assert set(net.versions().values()) == {2}


def test_a_change_asked_while_another_is_in_flight_is_told_it_is_in_progress() -> None:
    """Node 2's change is proposed but not yet acknowledged (the acks held); node 3's change
    reaches the representative meanwhile: refused with "another configuration change is in
    progress; retry" (was "not synchronised yet", which misleads: the view is ready)."""
    net = started()
    net.hold = {cr.Ack}
    net.ask(2, 1, 20.0)
    net.settle()
    net.ask(3, 2, 30.0)
    net.settle()
    assert net.done[2] == cr.ChangeDone(
        2, False, "another configuration change is in progress; retry"
    )
    assert 1 not in net.done


def test_a_change_staged_before_a_view_change_is_committed_by_the_next_view() -> None:
    """Every member staged the change but the Commit was lost in a view change: the asker is told
    the outcome is unknown, and the next view re-proposes and commits the staged value (it may
    have been committed by the old representative: rule d)."""
    net = started()
    net.hold = {cr.Commit, cr.Result}
    net.ask(2, 1, 20.0)
    net.settle()
    assert net.replicas[1].committed.version == 2
    assert net.replicas[2].committed.version == 1
    net.hold = set()
    net.views({2, 3}, {1})
    net.settle()
    assert net.done[1] == cr.ChangeDone(1, False, cr.UNKNOWN_OUTCOME)
    assert net.versions() == {1: 2, 2: 2, 3: 2}
    assert digest(net.replicas[2].committed) == digest(net.replicas[1].committed)


def test_a_restarted_node_catches_up_from_its_disk_state() -> None:
    """Node 3 is down for two changes; restarted from what it persisted it gets version 3."""
    net = started()
    net.views({1, 2})
    net.settle()
    net.ask(1, 1, 20.0)
    net.settle()
    net.ask(2, 2, 25.0)
    net.settle()
    d = net.disk[3]
    net.replicas[3] = cr.ConfigReplica(3, d.committed, d.staged, d.promised)
    net.views({1, 2, 3})
    net.settle()
    assert net.versions() == {1: 3, 2: 3, 3: 3}


def test_a_stale_change_is_refused_with_the_current_version() -> None:
    """A change based on version 1 after version 2 was committed: told to retry on version 2."""
    net = started()
    old = net.replicas[2].committed
    net.ask(1, 1, 20.0)
    net.settle()
    net.feed(2, cr.ChangeRequested(2, old.version, old))
    assert net.done[2].text == "configuration changed meanwhile (now version 2); retry"


def test_the_bootstrap_becomes_version_one_only_with_every_configured_node() -> None:
    """Version 0 (today's file) turns into version 1 once a view holds every voting node of it;
    two nodes of three do not agree on it, and changes wait for it."""
    net = Net(3, version=0)
    net.views({1, 2}, {3})
    net.settle()
    net.ask(1, 1, 20.0)
    net.settle()
    assert net.versions() == {1: 0, 2: 0, 3: 0}
    assert "not agreed yet" in net.done[1].text
    net.views({1, 2, 3})
    net.settle()
    assert net.versions() == {1: 1, 2: 1, 3: 1}


def test_a_bootstrap_that_does_not_list_every_member_of_the_view_is_not_committed() -> None:
    """Discovery-only files list only their own node: a view {1, 2, 3} must not commit node 1's
    file as version 1 (it would remove nodes 2 and 3); the configuration stays version 0."""
    net = Net(3, version=0)
    for n in (1, 2, 3):
        net.replicas[n] = cr.ConfigReplica(n, cluster([n], version=0))
    net.views({1, 2, 3})
    net.settle()
    assert net.versions() == {1: 0, 2: 0, 3: 0}


def test_two_configurations_with_one_version_are_reported_as_a_conflict() -> None:
    """A Sync holding another configuration at our version is refused and reported (S4 alarm)."""
    net = started()
    other: ClusterConfig = replace(net.replicas[1].committed, cluster_name="other")
    net.feed(1, cr.Received(2, cr.Sync(other)))
    assert net.conflicts == [cr.Conflict(1, digest(net.replicas[1].committed), digest(other))]
    assert net.replicas[1].committed.cluster_name == "prod"


def test_a_view_older_than_the_promised_ring_takes_no_part() -> None:
    """A node that took part in ring (5, 1) ignores a proposal in a view with ring (4, 2)
    (rule c): it does not report its state, stage or ack."""
    base = cluster(range(1, 4))
    replica = cr.ConfigReplica(2, base, promised=cr.Ring(5, 1))
    effects = replica.handle(cr.ViewChanged(cr.Ring(4, 2), frozenset({2, 3})))
    assert effects == []
    new = base.with_version(2)
    assert replica.handle(cr.Received(2, cr.Propose(cr.Ring(4, 2), new))) == []
    assert replica.staged is None


def test_the_representative_re_proposes_the_staged_value_with_the_highest_ring() -> None:
    """Two members staged different values for the next version in rings (5, 2) and (7, 3): the
    new representative re-proposes the one of ring (7, 3) (rule d: a value committed in some
    ring is the one every later ring carries), not the older one."""
    base = cluster(range(1, 4))
    older = replace(base, quorum=replace(base.quorum, last_man_standing_window=20.0))
    newer = replace(base, quorum=replace(base.quorum, last_man_standing_window=30.0))
    older, newer = older.with_version(2), newer.with_version(2)
    ring = cr.Ring(10, 1)
    leader = cr.ConfigReplica(1, base)
    leader.handle(cr.ViewChanged(ring, frozenset({1, 2, 3})))
    leader.handle(cr.Received(3, cr.State(ring, base, cr.Staged(cr.Ring(7, 3), newer))))
    effects = leader.handle(cr.Received(2, cr.State(ring, base, cr.Staged(cr.Ring(5, 2), older))))
    proposals = {
        e.message.config
        for e in effects
        if isinstance(e, cr.Send) and isinstance(e.message, cr.Propose)
    }
    assert proposals == {newer}
    assert leader.staged == cr.Staged(ring, newer)


def _events() -> st.SearchStrategy[cr.Event]:
    configs = st.builds(
        lambda n, v, w: replace(
            cluster(range(1, n + 1), v),
            quorum=replace(cluster(range(1, 2)).quorum, last_man_standing_window=w),
        ),
        st.integers(1, 4),
        st.integers(0, 4),
        st.sampled_from([10.0, 20.0]),
    )
    rings = st.builds(cr.Ring, st.integers(1, 3), st.integers(1, 3))
    staged = st.none() | st.builds(cr.Staged, rings, configs)
    messages = st.one_of(
        st.builds(cr.State, rings, configs, staged),
        st.builds(cr.Sync, configs),
        st.builds(cr.Propose, rings, configs),
        st.builds(cr.Ack, rings, st.integers(0, 4), configs.map(digest)),
        st.builds(cr.Commit, configs),
        st.builds(cr.Forward, rings, st.integers(1, 5), st.integers(0, 4), configs),
        st.builds(cr.Result, st.integers(1, 5), st.booleans(), st.just("x")),
    )
    return st.one_of(
        st.builds(cr.ViewChanged, rings, st.frozensets(st.integers(1, 4)).map(lambda m: m | {2})),
        st.builds(cr.QuorumInput, st.booleans(), st.integers(0, 4), st.integers(1, 4)),
        st.builds(cr.ChangeRequested, st.integers(1, 5), st.integers(0, 4), configs),
        st.builds(cr.Received, st.integers(1, 4), messages),
        st.builds(lambda r, c: cr.Received(r.representative, cr.Propose(r, c)), rings, configs),
        st.just(cr.Tick()),
    )


EVENTS = _events()


@settings(max_examples=200)
@given(st.data())
def test_any_input_sequence_keeps_the_replicas_promises(data: st.DataObject) -> None:
    """Whatever a peer (holding the key) or the node core sends, in any order, mixed with valid
    proposals of the current ring: no exception, the committed version never goes down,
    `promised` never goes down, and every ack is sent after the Persist of the value it
    acknowledges (rule b: durable before announced)."""
    replica = cr.ConfigReplica(2, cluster(range(1, 4)))
    durable: set[tuple[int, bytes]] = set()
    acks = 0
    for _ in range(data.draw(st.integers(0, 40))):
        event = data.draw(EVENTS)
        if replica.ring is not None and data.draw(st.booleans()):
            window = data.draw(st.sampled_from([15.0, 25.0]))
            base = replica.committed
            config = replace(base, quorum=replace(base.quorum, last_man_standing_window=window))
            proposal = cr.Propose(replica.ring, config.with_version(base.version + 1))
            event = cr.Received(replica.ring.representative, proposal)
        before = (replica.committed.version, replica.promised)
        for effect in replica.handle(event):
            if isinstance(effect, cr.Persist) and effect.staged is not None:
                durable.add((effect.staged.config.version, digest(effect.staged.config)))
            if isinstance(effect, cr.Send) and isinstance(effect.message, cr.Ack):
                assert (effect.message.version, effect.message.digest) in durable
                acks += 1
        assert replica.committed.version >= before[0]
        if before[1] is not None:
            assert replica.promised is not None
            assert replica.promised >= before[1]
