"""agent.links: per peer, per link liveness, failover/failback, probes, RTT and loss.

Time is explicit (float seconds). Default timing: heartbeats every 0.1 s, failure_timeout
0.65 s, probes every 1.0 s, link_timeout 3.05 s.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import LinkConfig, Timing
from agent.link_loss import LossMeter, missed
from agent.links import (
    FAILBACK_ROUNDS,
    ActiveLinkChanged,
    DueSend,
    LinkChange,
    LinkDown,
    Links,
    LinkUp,
    PeerReachable,
    PeerSuspected,
    PeerUnreachable,
)
from proto.mesh_messages import Echo

T = Timing()
HB = T.heartbeat_interval
PROBE = T.probe_interval
FAILOVER = max(T.failure_timeout / 2, T.failure_timeout - 2 * HB - T.jitter_allowance)
PEER = 2


def make(*priorities: int, peer_links: Iterable[int] | None = None) -> Links:
    """A Links for node 1 with link i at priorities[i], and PEER on the given (or all) links."""
    local = tuple(LinkConfig(i, f"10.0.{i}.1", priority=p) for i, p in enumerate(priorities))
    links = Links(1, local, T)
    indexes = range(len(priorities)) if peer_links is None else peer_links
    links.set_peer(PEER, frozenset(indexes))
    return links


def kinds(changes: list[LinkChange]) -> list[type]:
    """The event types, in order."""
    return [type(c) for c in changes]


def feed_heartbeats(links: Links, link: int, start: float, stop: float) -> float:
    """Heartbeats from PEER on `link` every HB in [start, stop); returns the last arrival."""
    t = start
    while t < stop - 1e-9:
        links.received(PEER, link, t, expected_interval=HB)
        t += HB
    return t - HB


# ------------------------------------------------------------------ single link


def test_single_link_up_on_first_datagram_down_after_failure_timeout() -> None:
    """One link: LinkUp, active and PeerReachable on the first datagram; LinkDown, no active
    link and PeerUnreachable once failure_timeout passed without one, not before."""
    links = make(0)
    assert links.heard(0.0) == frozenset()
    first = links.received(PEER, 0, 1.0, expected_interval=HB)
    assert first == [
        LinkUp(PEER, 0, first[0].reason),
        ActiveLinkChanged(PEER, None, 0, first[1].reason),
        PeerReachable(PEER, first[2].reason),
    ]
    assert links.received(PEER, 0, 1.1, expected_interval=HB) == []
    assert links.heard(1.1 + T.failure_timeout - 0.01) == {PEER}
    assert LinkDown not in kinds(links.tick(1.1 + T.failure_timeout - 0.01))
    down = links.tick(1.1 + T.failure_timeout)
    assert kinds(down) == [LinkDown, ActiveLinkChanged, PeerUnreachable]
    assert links.heard(1.1 + T.failure_timeout) == frozenset()
    assert links.tick(5.0) == []


def test_suspected_once_at_half_failure_timeout_and_cleared_by_next_datagram() -> None:
    """PeerSuspected comes once, at failure_timeout / 2 of silence; the next datagram makes the
    peer reachable again without any link event."""
    links = make(0)
    links.received(PEER, 0, 0.0, expected_interval=HB)
    assert links.tick(T.failure_timeout / 2 - 0.01) == []
    assert kinds(links.tick(T.failure_timeout / 2)) == [PeerSuspected]
    assert links.tick(T.failure_timeout / 2 + 0.05) == []
    again = links.received(PEER, 0, 0.5, expected_interval=HB)
    assert kinds(again) == [PeerReachable]
    assert "heard again" in again[0].reason


def test_next_deadline_covers_sends_suspicion_and_expiry() -> None:
    """next_deadline is the earliest of the next send, the suspicion time and a lease end."""
    links = make(0)
    assert links.next_deadline() is not None
    links.due_sends(0.0)
    assert links.next_deadline() == pytest.approx(HB)
    links.received(PEER, 0, 0.05, expected_interval=HB)
    links.due_sends(0.1)
    assert links.next_deadline() == pytest.approx(0.2)
    empty = Links(1, (LinkConfig(0, "a"),), T)
    assert empty.next_deadline() is None


def test_heartbeats_to_a_late_peer_join_the_round() -> None:
    """A peer added between rounds gets its first heartbeat at once, then joins the next round
    of the others (the first round at least half an interval later) so the node wakes once per
    interval."""
    links = make(0)
    links.due_sends(0.0)
    links.set_peer(3, frozenset({0}))
    assert links.next_deadline() == pytest.approx(0.0)  # never sent: due now
    assert links.due_sends(0.03) == [DueSend(3, 0, "heartbeat")]
    assert links.next_deadline() == pytest.approx(HB)
    assert links.due_sends(0.05) == []
    assert links.due_sends(HB) == [DueSend(PEER, 0, "heartbeat"), DueSend(3, 0, "heartbeat")]
    assert links.next_deadline() == pytest.approx(2 * HB)
    links.set_peer(4, frozenset({0}))
    assert links.due_sends(HB + 0.02) == [DueSend(4, 0, "heartbeat")]  # the others just went
    assert links.due_sends(2 * HB) == [
        DueSend(PEER, 0, "heartbeat"),
        DueSend(3, 0, "heartbeat"),
        DueSend(4, 0, "heartbeat"),
    ]


# ------------------------------------------------------------------ two links


def test_failover_to_the_probed_link_when_the_active_one_goes_silent() -> None:
    """link0 (priority 2) carries traffic; when it falls silent for failure_timeout, link1 (kept
    up by probes, lease link_timeout) takes over at once; the peer stays heard."""
    links = make(2, 1)
    links.received(PEER, 1, 0.0)
    last = feed_heartbeats(links, 0, 0.0, 1.0)
    assert links.active_link(PEER) == 0
    changes = links.tick(last + T.failure_timeout)
    assert changes[:2] == [
        PeerSuspected(PEER, changes[0].reason),
        LinkDown(PEER, 0, changes[1].reason),
    ]
    assert changes[2] == ActiveLinkChanged(PEER, 0, 1, changes[2].reason)
    assert "failover" in changes[2].reason
    assert links.active_link(PEER) == 1
    assert links.heard(last + T.failure_timeout) == {PEER}


def test_failback_waits_for_two_consecutive_answered_probe_rounds() -> None:
    """A higher-priority link that failed comes back up at once (LinkUp) but takes traffic back
    only after FAILBACK_ROUNDS answers to our probes in consecutive rounds (anti-flapping)."""
    links = failed_over()
    t = 1.0
    assert DueSend(PEER, 0, "probe") in links.due_sends(t)
    up = links.received(PEER, 0, t + 0.01, rtt_sample=0.01)
    assert kinds(up) == [LinkUp, PeerReachable]  # the peer was suspected; no failback yet
    assert links.active_link(PEER) == 1
    assert FAILBACK_ROUNDS == 2
    links.received(PEER, 1, t + 0.5, expected_interval=HB)
    assert DueSend(PEER, 0, "probe") in links.due_sends(t + PROBE)
    back = links.received(PEER, 0, t + PROBE + 0.01, rtt_sample=0.01)
    assert back == [ActiveLinkChanged(PEER, 1, 0, back[0].reason)]
    assert "failback" in back[0].reason


def failed_over() -> Links:
    """link0 (priority 2) went down at 0.65 s, link1 (priority 1, probed) carries traffic."""
    links = make(2, 1)
    links.due_sends(0.0)
    links.received(PEER, 0, 0.0, expected_interval=HB)
    links.received(PEER, 1, 0.0)
    links.tick(0.7)
    assert links.active_link(PEER) == 1
    return links


def test_an_unanswered_probe_round_restarts_the_failback_count() -> None:
    """Answer, a whole probe round without one, answer: the count restarts, no failback yet."""
    links = failed_over()
    links.due_sends(1.0)
    links.received(PEER, 0, 1.01, rtt_sample=0.01)
    links.due_sends(2.0)  # round 1.0-2.0 answered
    links.received(PEER, 0, 2.5)  # heard, but not an answer to us
    links.received(PEER, 1, 2.5, expected_interval=HB)
    links.due_sends(3.0)  # round 2.0-3.0 unanswered: count back to 0
    assert links.received(PEER, 0, 3.01, rtt_sample=0.01) == []
    assert links.active_link(PEER) == 1


def test_datagrams_that_answer_nothing_never_cause_a_failback() -> None:
    """A link we only hear (the peer's probes, no echo of ours: maybe one-way) comes up but
    never takes traffic back from a working link."""
    links = failed_over()
    for n in range(1, 10):
        links.due_sends(float(n))
        links.received(PEER, 0, n + 0.01)
        links.received(PEER, 1, n + 0.02, expected_interval=HB)
    assert links.stats(PEER)[0].up
    assert links.active_link(PEER) == 1


def test_echoing_heartbeats_fail_back_within_one_round() -> None:
    """When the peer already heartbeats on the better link, its echoes are answers: two of
    them, half a heartbeat interval apart or more, fail back without waiting a probe round;
    duplicates of one answer count once."""
    links = failed_over()
    links.due_sends(1.0)
    links.received(PEER, 0, 1.01, rtt_sample=0.01, expected_interval=HB)
    assert links.received(PEER, 0, 1.011, rtt_sample=0.01, expected_interval=HB) == []
    back = links.received(PEER, 0, 1.11, rtt_sample=0.01, expected_interval=HB)
    assert kinds(back) == [ActiveLinkChanged]


def test_failover_prefers_a_settled_link_to_an_unproven_better_one() -> None:
    """When the active link fails, a higher-priority link that failed before and has not yet
    answered twice is passed over for a lower one that is settled."""
    links = make(3, 2, 1)
    links.due_sends(0.0)
    for link in (0, 1, 2):
        links.received(PEER, link, 0.0, expected_interval=HB)
    links.tick(0.7)  # link0 (active) down; link1 takes over
    assert links.active_link(PEER) == 1
    links.received(PEER, 2, 0.9)
    links.received(PEER, 1, 1.0, expected_interval=HB)
    links.received(PEER, 0, 1.0, rtt_sample=0.01)  # link0 back, one answer only
    links.tick(T.link_timeout + 0.01)  # link1's lease (probed at 0.0, active at 1.0) ran out
    assert not links.stats(PEER)[1].up
    assert links.active_link(PEER) == 2


def test_a_better_link_that_never_failed_is_taken_at_once() -> None:
    """At start-up the first link heard carries traffic; a higher-priority link heard a moment
    later (it never went down) takes over immediately, without the failback wait."""
    links = make(2, 1)
    links.received(PEER, 1, 0.0)
    assert links.active_link(PEER) == 1
    changes = links.received(PEER, 0, 0.02, expected_interval=HB)
    assert kinds(changes) == [LinkUp, ActiveLinkChanged]
    assert links.active_link(PEER) == 0


def test_leases_follow_the_role_and_survive_role_changes() -> None:
    """A datagram keeps an active link up for failure_timeout and a probed one for
    link_timeout; a newly active link keeps its probed lease (failover does not kill it); a
    demoted one keeps link_timeout from its last datagram."""
    links = make(2, 1)
    links.received(PEER, 1, 0.0)  # probed: up until link_timeout
    links.received(PEER, 0, 0.0, expected_interval=HB)  # active: up until failure_timeout
    links.tick(T.failure_timeout)
    assert links.active_link(PEER) == 1  # link0 down, link1 promoted with its probed lease
    assert links.heard(T.link_timeout - 0.01) == {PEER}
    assert links.heard(T.link_timeout) == frozenset()
    links.received(PEER, 1, 1.0, expected_interval=HB)  # now an active-link lease
    links.received(PEER, 0, 1.0)  # first up of link0 after failing: probed, no failback
    links.due_sends(1.3)
    links.received(PEER, 0, 1.31, rtt_sample=0.01)
    links.due_sends(2.3)
    assert kinds(links.received(PEER, 0, 2.31, rtt_sample=0.01)) == [ActiveLinkChanged]
    links.tick(1.0 + T.link_timeout - 0.01)
    assert links.stats(PEER)[1].up, "demoted link1 keeps link_timeout from its last datagram"
    links.tick(1.0 + T.link_timeout)
    assert not links.stats(PEER)[1].up


def test_probes_only_on_non_active_links_every_probe_interval() -> None:
    """Over 3 s with due_sends polled every 10 ms: heartbeats only on the active link, every
    heartbeat_interval; probes only on the others, every probe_interval."""
    links = make(3, 2, 1)
    links.received(PEER, 0, 0.0, expected_interval=HB)
    sent: dict[tuple[int, str], list[float]] = {}
    for step in range(300):
        now = step / 100
        links.received(PEER, 0, now, expected_interval=HB)
        for due in links.due_sends(now):
            sent.setdefault((due.link, due.kind), []).append(now)
    assert set(sent) == {(0, "heartbeat"), (1, "probe"), (2, "probe")}
    assert sent[1, "probe"] == pytest.approx([0.0, 1.0, 2.0])
    assert sent[2, "probe"] == pytest.approx([0.0, 1.0, 2.0])
    gaps = [b - a for a, b in zip(sent[0, "heartbeat"], sent[0, "heartbeat"][1:], strict=False)]
    assert all(HB - 1e-9 <= g <= HB + 0.011 for g in gaps)


def test_before_any_link_is_up_heartbeats_go_to_the_best_configured_link() -> None:
    """active_link is the highest-priority configured link (ties: lowest index) until one is up;
    the first due_sends already heartbeats there and probes the rest."""
    links = make(1, 5, 5)
    assert links.active_link(PEER) == 1
    assert links.due_sends(0.0) == [
        DueSend(PEER, 0, "probe"),
        DueSend(PEER, 1, "heartbeat"),
        DueSend(PEER, 2, "probe"),
    ]
    assert links.due_sends(0.05) == []
    assert links.active_link(99) is None


# ------------------------------------------------------------------ RTT and loss


def test_rtt_is_an_ewma_with_gain_one_eighth() -> None:
    """The first sample sets the RTT; later ones move it by 1/8 of the difference (TCP SRTT)."""
    links = make(0)
    links.received(PEER, 0, 0.0, rtt_sample=0.010)
    assert links.stats(PEER)[0].rtt_ms == pytest.approx(10.0)
    links.received(PEER, 0, 0.1, rtt_sample=0.018)
    assert links.stats(PEER)[0].rtt_ms == pytest.approx(11.0)
    links.received(PEER, 0, 0.2, rtt_sample=-1.0)  # clamped at 0
    assert links.stats(PEER)[0].rtt_ms == pytest.approx(11.0 * 7 / 8)


def test_rtt_from_echo_subtracts_the_hold_time() -> None:
    """rtt = now - echoed stamp - time the peer held it, in seconds."""
    echo = Echo(node_id=1, stamp_us=1_000_000, held_us=2_000)
    assert Links.rtt_from_echo(1_005_000, echo) == pytest.approx(0.003)


@pytest.mark.parametrize(("every", "expected"), [(1, 0.0), (2, 0.5), (4, 0.75)])
def test_loss_estimate_matches_the_drop_rate(every: int, expected: float) -> None:
    """Keeping one heartbeat in `every` gives a loss of 1 - 1/every (0 %, 50 %, 75 %)."""
    links = make(0)
    for n in range(0, 200, every):
        links.received(PEER, 0, n * HB, expected_interval=HB)
    links.tick(199 * HB + 0.01)
    assert links.stats(PEER)[0].loss == pytest.approx(expected, abs=0.04)


def test_loss_reaches_one_when_the_link_goes_silent() -> None:
    """A stream that stops converges to 100 % loss; a link never heard reports 100 %."""
    links = make(0, 0)
    feed_heartbeats(links, 0, 0.0, 5.0)
    links.tick(5.0 + 40 * HB)
    stats = links.stats(PEER)
    assert stats[0].loss == pytest.approx(1.0)
    assert stats[1].loss == 1.0
    assert stats[1].last_heard_s is None


def test_duplicates_and_reordering_do_not_inflate_loss() -> None:
    """Every datagram twice, or every other pair swapped by a late arrival: still 0 % loss."""
    dup = LossMeter()
    for n in range(100):
        dup.arrive(n * HB, HB)
        dup.arrive(n * HB + 0.001, HB)
    assert dup.loss(99 * HB) == 0.0
    reordered = LossMeter()
    for n in range(0, 100, 2):
        reordered.arrive((n + 1) * HB, HB)  # n+1 overtakes n
        reordered.arrive((n + 1) * HB + 0.002, HB)
    assert reordered.loss(100 * HB) == 0.0


def test_jitter_and_timer_drift_below_half_an_interval_are_not_loss() -> None:
    """Arrivals wobbling by +-40 % of the interval, or each 2 % late, count as no loss."""
    meter = LossMeter()
    for n in range(100):
        meter.arrive(n * HB + (0.04 if n % 2 else -0.04), HB)
    assert meter.loss(99 * HB) == 0.0
    drift = LossMeter()
    for n in range(100):
        drift.arrive(n * HB * 1.02, HB)
    assert drift.loss(99 * HB * 1.02) == 0.0
    assert missed(2.6, 1.0) == 2
    assert missed(0.4, 1.0) == 0


# ------------------------------------------------------------------ many links, peers


def test_eight_links_failover_cascades_down_the_priorities() -> None:
    """With 8 links, the active link is always the best one up; silencing them from the top
    moves traffic one priority down at a time, and the last one down makes the peer lost."""
    prios = (3, 7, 1, 5, 0, 6, 2, 4)
    links = make(*prios)
    order = sorted(range(8), key=lambda i: -prios[i])
    for i in range(8):
        links.received(PEER, i, 0.0, expected_interval=HB)
    assert links.active_link(PEER) == order[0]
    now = 0.0
    for step, link in enumerate(order):
        now += T.link_timeout  # `link` silent since the previous step, the others fed
        for other in order[step + 1 :]:
            links.received(PEER, other, now - 0.01)
        changes = links.tick(now)
        assert [c.link for c in changes if isinstance(c, LinkDown)] == [link]
        assert not links.stats(PEER)[link].up
        if step < 7:
            assert links.active_link(PEER) == order[step + 1]
    assert kinds(changes)[-1] is PeerUnreachable
    assert links.heard(now) == frozenset()
    assert len(links.stats(PEER)) == 8


def test_peer_added_updated_and_removed() -> None:
    """set_peer is idempotent and keeps state; links we lack are ignored; a removed up link is
    reported down by the next tick; unknown peers' datagrams are ignored; remove_peer forgets."""
    links = make(1, 0, peer_links={0, 1, 5})
    assert [s.link for s in links.stats(PEER)] == [0, 1]
    links.received(PEER, 0, 0.0, expected_interval=HB)
    links.received(PEER, 1, 0.0, expected_interval=HB)
    links.set_peer(PEER, frozenset({0, 1}))
    assert links.stats(PEER)[0].up
    links.set_peer(PEER, frozenset({1}))
    assert links.active_link(PEER) == 1
    changes = links.tick(0.01)
    assert kinds(changes) == [LinkDown, ActiveLinkChanged]
    assert links.active_link(PEER) == 1
    assert links.received(3, 0, 0.02) == []
    assert links.received(PEER, 0, 0.02) == []
    links.remove_peer(PEER)
    assert links.heard(0.02) == frozenset()
    assert links.stats(PEER) == []
    assert links.due_sends(0.02) == []
    assert links.next_deadline() is None


def test_changes_from_set_peer_come_out_before_later_ones() -> None:
    """A link removed while up and re-added at once: its LinkDown is returned (by the next
    received or tick) before the LinkUp of its new life, so consumers never see it stuck."""
    links = make(1, 0)
    links.received(PEER, 0, 0.0, expected_interval=HB)
    links.set_peer(PEER, frozenset({1}))
    links.set_peer(PEER, frozenset({0, 1}))
    changes = links.received(PEER, 0, 0.1, expected_interval=HB)
    assert kinds(changes) == [LinkDown, ActiveLinkChanged, LinkUp, ActiveLinkChanged]
    assert [getattr(c, "new", None) for c in changes] == [None, None, None, 0]
    assert links.tick(0.2) == []


# ------------------------------------------------------------------ property

steps = st.lists(
    st.tuples(
        st.floats(0.0, 1.5),  # time advance
        st.sampled_from(("recv", "tick", "send")),
        st.integers(0, 2),  # link
        st.booleans(),  # the datagram echoes our stamp (an answer)
        st.sampled_from((None, HB, PROBE)),  # announced interval (loss only)
    ),
    max_size=60,
)


class _Model:
    """What the events say so far, checked for consistency as they come, and the leases the
    documented rule gives: failure_timeout on the active link, link_timeout on probed ones, a
    demoted up link keeping link_timeout from its last datagram, and the failover lease: while
    another link is up, the active one ends FAILOVER after its last datagram or after it became
    active, whichever is later (design §3.6; no echoes here, so inbound only)."""

    def __init__(self) -> None:
        self.up: set[int] = set()
        self.active: int | None = None
        self.reach = "unreachable"
        self.last: dict[int, float] = {}
        self.lease: dict[int, float] = {}
        self.ever_down: set[int] = set()
        self.since = 0.0
        self.now = 0.0

    def failover_due(self, now: float) -> int | None:
        """The active link that a tick at `now` must fail over, else None."""
        active, alive = self.active, self.alive(now)
        if active is None or active not in alive or not alive - {active}:
            return None
        return (
            active if now >= max(self.last.get(active, self.since), self.since) + FAILOVER else None
        )

    def heard(self, link: int, now: float) -> None:
        self.last[link] = now

    def granted(self, link: int, now: float) -> None:
        timeout = T.failure_timeout if link == self.active else T.link_timeout
        self._extend(link, now + timeout)

    def alive(self, now: float) -> set[int]:
        return {i for i, until in self.lease.items() if now < until}

    def _extend(self, link: int, until: float) -> None:
        self.lease[link] = max(self.lease.get(link, until), until)

    def apply(self, change: LinkChange) -> None:
        if isinstance(change, LinkUp):
            assert change.link not in self.up
            self.up.add(change.link)
        elif isinstance(change, LinkDown):
            assert change.link in self.up
            self.up.remove(change.link)
            self.ever_down.add(change.link)
        elif isinstance(change, ActiveLinkChanged):
            assert change.old == self.active != change.new
            if change.old in self.up:
                self._extend(change.old, self.last[change.old] + T.link_timeout)
            self.active = change.new
            self.since = self.now
        elif isinstance(change, PeerReachable):
            assert self.reach != "reachable"
            self.reach = "reachable"
        elif isinstance(change, PeerSuspected):
            assert self.reach == "reachable"
            self.reach = "suspected"
        else:
            assert isinstance(change, PeerUnreachable)
            assert self.reach != "unreachable"
            self.reach = "unreachable"


Step = tuple[float, str, int, bool, float | None]


def run_step(links: Links, model: _Model, now: float, step: Step) -> None:
    """Apply one scripted step to `links`, feeding its events to the model."""
    _, op, link, answer, interval = step
    model.now = now
    if op == "recv":
        model.heard(link, now)
        rtt = 0.01 if answer else None
        changes = links.received(PEER, link, now, rtt_sample=rtt, expected_interval=interval)
    elif op == "tick":
        failing = model.failover_due(now)
        changes = links.tick(now)
        if failing is not None:
            model.lease[failing] = now
    else:
        changes = []
        links.due_sends(now)
    for change in changes:
        model.apply(change)
    if op == "recv":
        model.granted(link, now)


@settings(max_examples=400, deadline=None)
@given(prios=st.tuples(*[st.integers(0, 3)] * 3), script=steps)
def test_heard_iff_a_lease_covers_now_and_events_alternate(
    prios: tuple[int, int, int], script: list[Step]
) -> None:
    """For any receive/tick/send sequence: heard() has the peer iff some link got a datagram
    within its timeout (failure_timeout while active, link_timeout while probed); events never
    contradict each other (no LinkDown without LinkUp, ActiveLinkChanged from the previous
    active, reachability alternating), and after every tick the links' up flags, the active
    link and the peer's reachability agree with the leases."""
    links, model = make(*prios), _Model()
    now = 0.0
    for step in script:
        now += step[0]
        run_step(links, model, now, step)
        alive = model.alive(now)
        assert links.heard(now) == ({PEER} if alive else frozenset())
        if step[1] == "tick":
            assert model.up == alive == {s.link for s in links.stats(PEER) if s.up}
            assert model.active == next((s.link for s in links.stats(PEER) if s.active), None)
            assert model.active is None or model.active in alive
            better = {
                i
                for i in alive
                if (prios[i], -i) > (prios[model.active or 0], -1 * (model.active or 0))
            }
            assert model.active is None or better <= model.ever_down, "only hysteresis skips one"
            assert (model.active is None) == (not alive) == (model.reach == "unreachable")


# ------------------------------------------------------------------ two nodes, simulated network


def simulate(seed: int, loss: float, one_way: bool) -> list[tuple[float, int, LinkChange]]:
    """Two nodes, link0 (priority 2) and link1 (priority 1), 1 ms one-way delay, random loss,
    polled every 10 ms for 25 s, driven as agent.node drives Links (heartbeats echo the newest
    heartbeat stamp received, probes are answered). link0 fails in [5 s, 15 s): both ways, or
    only node 2 -> node 1."""
    rng = random.Random(seed)
    local = (LinkConfig(0, "a", priority=2), LinkConfig(1, "b", priority=1))
    nodes = {1: Links(1, local, T), 2: Links(2, local, T)}
    nodes[1].set_peer(2, frozenset({0, 1}))
    nodes[2].set_peer(1, frozenset({0, 1}))
    flight: list[tuple[float, int, int, str, float, float | None]] = []
    newest: dict[int, float] = {1: -1.0, 2: -1.0}  # the newest stamp each got from the other
    got: dict[int, float | None] = {1: None, 2: None}  # and when it arrived
    copy = {1: False, 2: False}  # and whether it was a hedge copy (its echo proves no link)
    log: list[tuple[float, int, LinkChange]] = []
    for step in range(2500):
        now = step / 100 + rng.uniform(0, 0.002)
        for me, links in nodes.items():
            if step % 100 == 0:  # as agent.node: the timeout follows the measured loss
                links.set_timeout(3 - me, T.failure_timeout_at(links.receive_loss(3 - me)))
            flight += [
                (
                    now + 0.001,
                    me,
                    d.link,
                    d.kind,
                    stamp_of(d.kind, now),
                    held(got[me], now, copy[me]),
                )
                for d in links.due_sends(now)
            ]
            log += [(now, me, c) for c in links.tick(now)]
        arrived, flight = [m for m in flight if m[0] <= now], [m for m in flight if m[0] > now]
        for _, src, link, kind, stamp, hold in arrived:
            cut = link == 0 and 5 <= now < 15 and (src == 2 or not one_way)
            if cut or rng.random() < loss:
                continue
            dst = 3 - src
            if kind == "probe":
                flight.append((now + 0.001, dst, link, "reply", now, None))
            rtt = None if kind == "probe" else 0.002
            beat = kind in ("heartbeat", "hedge")
            interval = HB if beat else PROBE  # as agent.node announces them
            if beat and stamp > newest[dst]:
                newest[dst], got[dst], copy[dst] = stamp, now, kind == "hedge"
            changes = nodes[dst].received(
                src,
                link,
                now,
                rtt_sample=rtt,
                expected_interval=interval,
                heartbeat=beat,
                reached=None if hold is None or not beat else now - hold,
            )
            log += [(now, dst, c) for c in changes]
    return log


@pytest.mark.parametrize("one_way", [False, True], ids=["both_ways", "one_way"])
@pytest.mark.parametrize("loss", [0.0, 0.05, 0.15])
def test_two_nodes_fail_over_and_back_without_losing_each_other(loss: float, one_way: bool) -> None:
    """When link0 fails both ways, both nodes are on link1 inside the failure timeout (the
    failover lease, design §3.6); when only 2 -> 1 fails, node 2 does (its heartbeats there are
    not answered) and node 1 may stay (its heartbeats on link0 are answered once node 2's
    arrive on link1; it moves too if that takes longer than its own lease). Back to link0
    within 3 probe intervals of its repair (8 under loss); link1 never goes down but by a
    failover (a run of unanswered heartbeats under loss) and neither node loses the other, at
    up to 15 % random loss (5 seeds each; timeouts sized to the measured loss as the node does)."""
    for seed in range(5):
        log = simulate(seed, loss, one_way)
        bad: list[LinkChange] = [c for _, _, c in log if isinstance(c, PeerUnreachable)]
        bad += [
            c
            for _, _, c in log
            if isinstance(c, LinkDown) and c.link != 0 and "failing over" not in c.reason
        ]
        assert bad == [], f"seed {seed}: {bad}"
        for node in (1, 2):
            moves = [
                (at, c.new) for at, n, c in log if n == node and isinstance(c, ActiveLinkChanged)
            ]
            start = [new for at, new in moves if at < 1.0]
            later = [(at, new) for at, new in moves if at >= 1.0]
            assert start[-1] == 0 or loss, f"seed {seed} node {node}: {moves}"
            if one_way and node == 1:
                continue  # link0 works from it: it may stay (its heartbeats there are answered)
            if loss == 0:
                assert [new for _, new in later] == [1, 0], f"seed {seed} node {node}: {moves}"
            # under loss a run of unanswered heartbeats may also move traffic (design §3.6), and
            # the failure timeout stretches with the measured loss
            bound = T.failure_timeout if loss == 0 else T.max_failure_timeout
            on_at = [new for at, new in moves if at < 5.0 + bound]
            assert on_at[-1] == 1, f"seed {seed} node {node}: {moves}"
            back = next(at for at, new in later if at >= 15.0 and new == 0)
            assert back < 15.0 + (3 if loss == 0 else 8) * PROBE, moves


@settings(max_examples=200, deadline=None)
@given(
    arrivals=st.lists(
        st.tuples(st.floats(0.0, 5.0), st.integers(0, 2), st.booleans()), min_size=1, max_size=20
    )
)
def test_a_driver_jumping_to_next_deadline_always_moves_on(
    arrivals: list[tuple[float, int, bool]],
) -> None:
    """After tick(d) and due_sends(d) at d = next_deadline(), the next deadline is later than d
    (no float rounding leaves a deadline that tick never clears: the driver would spin)."""
    links = make(2, 1, 0)
    for at, link, answer in sorted(arrivals):
        links.received(PEER, link, at, rtt_sample=0.01 if answer else None)
    for _ in range(300):
        deadline = links.next_deadline()
        assert deadline is not None
        links.tick(deadline)
        links.due_sends(deadline)
        after = links.next_deadline()
        assert after is not None
        assert after > deadline


def test_receive_loss_leaves_out_a_silence_going_on() -> None:
    """The loss that sizes a peer's failure timeout is measured up to its last arrival: every
    third heartbeat lost reads about 1/3; a silence after that (the peer died) adds nothing, and
    once it is back the outage does not count as loss."""
    links = make(0)
    assert links.receive_loss(PEER) == 0.0
    t = 0.0
    for i in range(60):
        if i % 3 != 2:
            links.received(PEER, 0, t, expected_interval=HB)
        t += HB
    links.tick(t)
    measured = links.receive_loss(PEER)
    assert 0.25 <= measured <= 0.40
    links.tick(t + 2.0)
    assert links.receive_loss(PEER) == measured
    # the peer comes back after that 2 s outage and sends every heartbeat: the outage (a healed
    # partition, a restart) is not random loss, so it does not stretch the timeout
    t += 2.0
    for _ in range(40):
        links.received(PEER, 0, t, expected_interval=HB)
        t += HB
    assert links.receive_loss(PEER) == 0.0


def test_heartbeat_rounds_fall_on_the_phase() -> None:
    """With set_phase(p) heartbeats go at p + k x interval: the first at once, the next at the
    first such instant at least half an interval later, then every interval."""
    links = make(0)
    links.set_phase(0.03)
    assert links.due_sends(0.0) == [DueSend(PEER, 0, "heartbeat")]
    assert links.next_deadline() == pytest.approx(0.13)
    assert links.due_sends(0.1299) == []
    assert links.due_sends(0.13) == [DueSend(PEER, 0, "heartbeat")]
    links.received(PEER, 0, 0.14, expected_interval=HB)
    assert links.next_deadline() == pytest.approx(0.23)
    links.set_phase(0.08)  # the wall clock stepped: the next round moves
    assert links.next_deadline() == pytest.approx(0.18)  # half an interval after the last


def run_pair(
    cut: set[tuple[int, int]], until: float
) -> tuple[dict[int, Links], list[tuple[float, int, LinkChange]], list[tuple[float, int]]]:
    """Two nodes with link0 (priority 2) and link1 (priority 1), no loss, 1 ms delay, driven as
    agent.node drives Links (heartbeats echo the newest stamp received). From t = 5 the
    directed (src, link) pairs in `cut` lose everything. Returns the nodes, the log of
    (time, node, change) and the heartbeat arrivals (time, receiving node)."""
    local = (LinkConfig(0, "a", priority=2), LinkConfig(1, "b", priority=1))
    nodes = {1: Links(1, local, T), 2: Links(2, local, T)}
    nodes[1].set_peer(2, frozenset({0, 1}))
    nodes[2].set_peer(1, frozenset({0, 1}))
    newest: dict[int, float] = {1: -1.0, 2: -1.0}  # the newest stamp each got from the other
    got: dict[int, float | None] = {1: None, 2: None}  # and when it arrived
    copy = {1: False, 2: False}  # and whether it was a hedge copy (its echo proves no link)
    flight: list[tuple[float, int, int, str, float, float | None]] = []
    log: list[tuple[float, int, LinkChange]] = []
    beats: list[tuple[float, int]] = []
    for step in range(int(until * 1000)):
        now = step / 1000
        for me, links in nodes.items():
            flight += [
                (
                    now + 0.001,
                    me,
                    d.link,
                    d.kind,
                    stamp_of(d.kind, now),
                    held(got[me], now, copy[me]),
                )
                for d in links.due_sends(now)
            ]
            log += [(now, me, c) for c in links.tick(now)]
        arrived, flight = [m for m in flight if m[0] <= now], [m for m in flight if m[0] > now]
        for _, src, link, kind, stamp, hold in arrived:
            if now >= 5.0 and (src, link) in cut:
                continue
            dst = 3 - src
            if kind == "probe":
                flight.append((now + 0.001, dst, link, "reply", now, None))
            beat = kind in ("heartbeat", "hedge")
            if beat and stamp > newest[dst]:
                newest[dst], got[dst], copy[dst] = stamp, now, kind == "hedge"
                beats.append((now, dst))
            interval = HB if beat else PROBE
            rtt = 0.002 if kind != "probe" else None
            changes = nodes[dst].received(
                src,
                link,
                now,
                rtt_sample=rtt,
                expected_interval=interval,
                heartbeat=beat,
                reached=None if hold is None or not beat else now - hold,
            )
            log += [(now, dst, c) for c in changes]
    return nodes, log, beats


def stamp_of(kind: str, now: float) -> float:
    """As agent.node stamps them: a hedge copy 1 us older than the active link's heartbeat."""
    return now - 1e-6 if kind == "hedge" else now


def held(got: float | None, now: float, copy: bool) -> float | None:
    """How long a node has held the newest stamp it got (None: it got none, or a hedge copy:
    agent.node does not take that echo as proof that the active link reaches the peer)."""
    return None if got is None or copy else now - got


def longest_heartbeat_gap(beats: list[tuple[float, int]], node: int, start: float) -> float:
    """The longest time `node` went without a heartbeat (on any link) after `start`."""
    times = sorted([start] + [at for at, dst in beats if dst == node and at >= start])
    return max(b - a for a, b in itertools.pairwise(times))


@pytest.mark.parametrize(
    "cut",
    [{(1, 0), (2, 0)}, {(1, 0)}, {(2, 0)}],
    ids=["both_ways", "one_way_1_to_2", "one_way_2_to_1"],
)
def test_failover_completes_inside_the_failure_timeout(cut: set[tuple[int, int]]) -> None:
    """Design §3.6: link0 cut (both ways or one way) while link1 works: within the failover
    lease F the node whose heartbeats on link0 go unanswered moves them to link1, so neither
    node goes longer than the failure timeout without a heartbeat (heard never lapses: no
    membership change), and it is on link1 by t + failure_timeout."""
    nodes, log, beats = run_pair(cut, 8.0)
    for node in (1, 2):
        gap = longest_heartbeat_gap(beats, node, 1.0)
        assert gap < T.failure_timeout - 2 * HB + 0.1, f"node {node}: gap {gap:.3f} s"
    for src in {src for src, _ in cut}:
        moves = [(at, c) for at, n, c in log if n == src and isinstance(c, ActiveLinkChanged)]
        at, change = next((at, c) for at, c in moves if at >= 5.0)
        assert change.new == 1, moves
        assert at < 5.0 + T.failure_timeout, moves
        assert nodes[src].active_link(3 - src) == 1
    assert not [c for _, _, c in log if isinstance(c, PeerUnreachable)]


def test_failover_before_the_lease_when_only_our_direction_is_cut() -> None:
    """Our heartbeats on link0 stop reaching the peer while its datagrams still arrive there
    (the ordinary lease never runs out): the outbound half of the failover lease moves them
    after F of unanswered heartbeats, with a reason that says so."""
    _, log, _ = run_pair({(1, 0)}, 7.0)
    at, down = next((at, c) for at, n, c in log if n == 1 and isinstance(c, LinkDown) and at >= 5.0)
    assert down.link == 0
    assert "our heartbeats did not reach the peer" in down.reason
    assert 5.0 + FAILOVER - 2 * HB <= at < 5.0 + FAILOVER + 0.05


def test_one_link_keeps_the_full_lease() -> None:
    """With no other link up there is nothing to fail over to: the active link stays up for
    the failure timeout after its last datagram, whatever the echoes say."""
    links = make(0)
    links.received(PEER, 0, 0.0, rtt_sample=0.01, expected_interval=HB, heartbeat=True, reached=0)
    links.tick(FAILOVER + 0.01)
    assert links.stats(PEER)[0].up
    links.tick(T.failure_timeout)
    assert not links.stats(PEER)[0].up


def test_a_hedge_copy_goes_on_the_standby_link_while_the_active_one_is_in_doubt() -> None:
    """The peer's timeout is stretched by loss (failover only after F of 1.25 s), but once the
    peer has not said for F of the plain failure timeout that our heartbeats on link0 reach
    it, each heartbeat also goes on link1 as a hedge copy: the peer, which may time us out
    after the plain timeout, still hears us. The copies stop when link0 is proven again."""
    links = make(2, 1)
    links.set_timeout(PEER, T.max_failure_timeout)
    t = 0.0
    while t < 1.0:  # heartbeats both ways on link0; the peer says ours reach it
        links.received(PEER, 0, t, expected_interval=HB, heartbeat=True, reached=t)
        links.received(PEER, 1, t, expected_interval=PROBE)
        links.due_sends(t)
        t = round(t + HB, 9)
    last_proof = t - HB
    hedges: list[float] = []
    while t < 1.6:  # its heartbeats keep coming, but say ours stopped reaching it
        links.received(PEER, 0, t, expected_interval=HB, heartbeat=True, reached=last_proof)
        links.tick(t)
        sends = links.due_sends(t)
        if DueSend(PEER, 1, "hedge") in sends:
            hedges.append(t)
        t = round(t + HB, 9)
    assert links.active_link(PEER) == 0  # the stretched lease has not run out yet
    assert hedges
    assert hedges[0] - last_proof <= FAILOVER + HB + 1e-9
    links.received(PEER, 0, t, expected_interval=HB, heartbeat=True, reached=t)
    assert DueSend(PEER, 1, "hedge") not in links.due_sends(round(t + HB, 9))
