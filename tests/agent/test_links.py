"""agent.links: per peer, per link liveness, failover/failback, probes, RTT and loss.

Time is explicit (float seconds). Default timing: heartbeats every 0.1 s, failure_timeout
0.65 s, probes every 1.0 s, link_timeout 3.05 s.
"""

from __future__ import annotations

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


# ------------------------------------------------------------------ two links


def test_failover_to_the_probed_link_when_the_active_one_goes_silent() -> None:
    """link0 (priority 2) carries traffic; when it falls silent for failure_timeout, link1 (kept
    up by probes, lease link_timeout) takes over at once; the peer stays heard."""
    links = make(2, 1)
    links.received(PEER, 1, 0.0, expected_interval=PROBE)
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
    only after FAILBACK_ROUNDS consecutive answered probe rounds (anti-flapping)."""
    links = make(2, 1)
    links.received(PEER, 0, 0.0, expected_interval=HB)
    links.received(PEER, 1, 0.0, expected_interval=PROBE)
    links.tick(0.7)  # link0 down, link1 active
    assert links.active_link(PEER) == 1
    t = 1.0
    assert DueSend(PEER, 0, "probe") in links.due_sends(t)
    up = links.received(PEER, 0, t + 0.01, expected_interval=PROBE)
    assert kinds(up) == [LinkUp, PeerReachable]  # peer was suspected; no failback yet
    assert links.active_link(PEER) == 1
    assert FAILBACK_ROUNDS == 2
    links.received(PEER, 1, t + 0.5, expected_interval=HB)
    assert DueSend(PEER, 0, "probe") in links.due_sends(t + PROBE)
    back = links.received(PEER, 0, t + PROBE + 0.01, expected_interval=PROBE)
    assert back == [ActiveLinkChanged(PEER, 1, 0, back[0].reason)]
    assert "failback" in back[0].reason


def test_an_unanswered_probe_round_restarts_the_failback_count() -> None:
    """Answer, silence for a whole round, answer: the streak restarts, so no failback yet."""
    links = make(2, 1)
    links.received(PEER, 0, 0.0, expected_interval=HB)
    links.received(PEER, 1, 0.0, expected_interval=PROBE)
    links.tick(0.7)
    links.due_sends(1.0)
    links.received(PEER, 0, 1.01, expected_interval=PROBE)
    links.due_sends(2.0)  # round answered
    links.received(PEER, 1, 2.5, expected_interval=HB)
    links.due_sends(3.0)  # round 2.0-3.0 unanswered: streak back to 0
    assert links.received(PEER, 0, 3.01, expected_interval=PROBE) == []
    assert links.active_link(PEER) == 1


def test_a_better_link_that_never_failed_is_taken_at_once() -> None:
    """At start-up the first link heard carries traffic; a higher-priority link heard a moment
    later (it never went down) takes over immediately, without the failback wait."""
    links = make(2, 1)
    links.received(PEER, 1, 0.0, expected_interval=PROBE)
    assert links.active_link(PEER) == 1
    changes = links.received(PEER, 0, 0.02, expected_interval=HB)
    assert kinds(changes) == [LinkUp, ActiveLinkChanged]
    assert links.active_link(PEER) == 0


def test_lease_follows_the_senders_cadence_not_our_role() -> None:
    """A probe keeps its link up for link_timeout even after the link became our active one; a
    heartbeat keeps it up for failure_timeout even on a link we only probe."""
    links = make(2, 1)
    links.received(PEER, 0, 0.0, expected_interval=HB)
    links.received(PEER, 1, 0.0, expected_interval=PROBE)
    links.tick(T.failure_timeout)
    assert links.active_link(PEER) == 1
    assert links.heard(T.link_timeout - 0.01) == {PEER}
    assert links.heard(T.link_timeout) == frozenset()
    unannounced = make(2, 1)
    unannounced.received(PEER, 1, 0.0)  # role: probed, so a probe-cadence lease
    assert unannounced.heard(T.link_timeout - 0.01) == {PEER}


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
    actives = []
    for step, link in enumerate(order):
        now = (step + 1) * 0.1
        for other in order[step + 1 :]:
            links.received(PEER, other, now, expected_interval=HB)
        links.tick(now + T.failure_timeout - 0.1 + 1e-9)
        actives.append(links.active_link(PEER))
        assert not links.stats(PEER)[link].up
    assert actives[:-1] == order[1:]
    assert links.heard(10.0) == frozenset()
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


# ------------------------------------------------------------------ property

_INTERVALS = (None, HB, PROBE)
steps = st.lists(
    st.tuples(
        st.floats(0.0, 1.5),  # time advance
        st.sampled_from(("recv", "tick", "send")),
        st.integers(0, 2),  # link
        st.sampled_from(_INTERVALS),
    ),
    max_size=60,
)


class _Model:
    """What the events say so far, checked for consistency as they come."""

    def __init__(self) -> None:
        self.up: set[int] = set()
        self.active: int | None = None
        self.reach = "unreachable"

    def apply(self, change: LinkChange) -> None:
        if isinstance(change, LinkUp):
            assert change.link not in self.up
            self.up.add(change.link)
        elif isinstance(change, LinkDown):
            assert change.link in self.up
            self.up.remove(change.link)
        elif isinstance(change, ActiveLinkChanged):
            assert change.old == self.active != change.new
            self.active = change.new
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


@settings(max_examples=300, deadline=None)
@given(prios=st.tuples(*[st.integers(0, 3)] * 3), script=steps)
def test_heard_iff_a_lease_covers_now_and_events_alternate(
    prios: tuple[int, int, int], script: list[tuple[float, str, int, float | None]]
) -> None:
    """For any receive/tick/send sequence: heard() has the peer iff some link got a datagram
    within its timeout (announced cadence, else our role's); events never contradict each other
    (no LinkDown without LinkUp, ActiveLinkChanged from the previous active), and after every
    tick the links' up flags, the active link and the peer's reachability match."""
    links, model = make(*prios), _Model()
    lease: dict[int, float] = {}
    now = 0.0
    for advance, op, link, interval in script:
        now += advance
        if op == "recv":
            active = next((s.link for s in links.stats(PEER) if s.active), None)
            cadence = interval or (HB if link == active else PROBE)
            timeout = max(T.failure_timeout, 3 * cadence + T.jitter_allowance)
            lease[link] = max(lease.get(link, -1.0), now + timeout)
            changes = links.received(PEER, link, now, expected_interval=interval)
        elif op == "tick":
            changes = links.tick(now)
        else:
            changes = []
            links.due_sends(now)
        for change in changes:
            model.apply(change)
        alive = {i for i, until in lease.items() if now < until}
        assert links.heard(now) == ({PEER} if alive else frozenset())
        if op == "tick":
            assert model.up == alive == {s.link for s in links.stats(PEER) if s.up}
            assert (model.active is None) == (not alive)
            assert model.active is None or model.active in alive
            assert (model.reach == "unreachable") == (not alive)
