"""Per peer, per link liveness, RTT and loss; which link carries the heartbeats (knet-like).

Owns: for every peer and every link both ends have (link0..link7), whether the link is up, its
smoothed RTT and loss estimate, the active link (heartbeats every `heartbeat_interval`) and the
probe schedule of the others (every `probe_interval`), failover and failback, and the peer's
reachability (reachable / suspected / unreachable). Must not touch: sockets, clocks, messages
(the node builds and sends them), membership. Time is passed in as float seconds.

Semantics (docs/design.md 3, "links"):

* **Lease.** A datagram keeps its link up for the peer's failure timeout (0.65 s by default;
  the node stretches it on a lossy link with `set_timeout`, see `Timing.failure_timeout_at`)
  when the link is our active one, `link_timeout` (3.05 s) when we only probe it; leases only
  grow. A link that stops being active keeps `link_timeout` from its last datagram (the peer may
  need a probe interval to start probing it); a newly active link keeps the lease it had as a
  probed one, so failover does not kill it before the peer's heartbeats move over. An active
  link that then only gets probes (the peer sends its heartbeats elsewhere) runs out and fails
  over again — unless the peer says our heartbeats reach it (`reached`): then the active link
  also stays up for failure_timeout from the last time they did (its inbound half may be
  quiet because the peer sends its heartbeats elsewhere), and the failover lease decides.
  `expected_interval` feeds only the loss estimate (`agent.link_loss`).
* **Hedge and failover** (design §3.6), while another link to the peer is up. Two silences,
  counted from when the active link became active at the earliest: *inbound*, since the
  peer's last heartbeat on any link (`heartbeat=True`; a driver that never says so: its last
  datagram on the active link), and *outbound*, since our heartbeats on the active link last
  reached the peer as its echoes say (`reached`). F(t) = t - 2 x heartbeat_interval -
  jitter_allowance, at least t / 2. Once the outbound silence exceeds F of the plain failure
  timeout (0.4 s by default), every heartbeat also goes on the best other up link
  (`DueSend(kind="hedge")`): the peer may time us out after the plain timeout. The active
  link fails over once either silence exceeds F of the peer's (loss-stretched) failure
  timeout. Both are runs of lost heartbeats in one direction, so random loss rarely moves
  traffic, and membership never notices a cut while another link works.
* **Active link**: the highest-priority up link (ties: lowest index). Failover (the active link
  went down) is immediate, to a settled link if there is one. Failback to a higher-priority
  link that went down before needs FAILBACK_ROUNDS answers: datagrams echoing our stamp
  (`rtt_sample`: a ProbeReply, an echoing heartbeat), at least half a heartbeat interval apart,
  with no unanswered round between them (a round is the time between two of our sends on the
  link). On a probed link that is two consecutive answered probe rounds; if the peer already
  heartbeats there, two heartbeats — unless the node says the heartbeats echo our stamps
  (`reached`): those answer the heartbeats we sent on the active link, not this one. Answers
  prove the link works both ways (a one-way link never takes traffic back) and a flapping
  link does not pull traffic back and forth. A link's first up (it never failed) is taken at
  once.
* **Peer**: reachable once a link is up; suspected once after failure_timeout / 2 without any
  datagram; reachable again on the next datagram; unreachable when no link is up.
* Events are returned only on changes, in causal order (LinkUp before ActiveLinkChanged before
  PeerReachable; PeerSuspected before LinkDown before PeerUnreachable).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import NamedTuple

from agent.config import LinkConfig, Timing
from agent.deadline_heap import Deadlines, SharedDeadlines
from agent.link_loss import LossMeter
from proto.mesh_messages import Echo

RTT_ALPHA = 1 / 8  # RFC 6298 section 2: SRTT gain, as TCP
FAILBACK_ROUNDS = 2  # knet's pong_count default: answers needed before a link is trusted again


@dataclass(frozen=True, slots=True)
class LinkUp:
    """A datagram arrived on a link that was down."""

    peer: int
    link: int
    reason: str


@dataclass(frozen=True, slots=True)
class LinkDown:
    """A link's lease ran out (or its address was removed)."""

    peer: int
    link: int
    reason: str


@dataclass(frozen=True, slots=True)
class ActiveLinkChanged:
    """Heartbeats to `peer` move from `old` to `new` (None: no link up)."""

    peer: int
    old: int | None
    new: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class PeerReachable:
    """The peer has a link up again (or was heard again after a suspicion)."""

    peer: int
    reason: str


@dataclass(frozen=True, slots=True)
class PeerSuspected:
    """Half the failure timeout without any datagram from the peer."""

    peer: int
    reason: str


@dataclass(frozen=True, slots=True)
class PeerUnreachable:
    """No link to the peer is up any more."""

    peer: int
    reason: str


LinkChange = LinkUp | LinkDown | ActiveLinkChanged | PeerReachable | PeerSuspected | PeerUnreachable


class DueSend(NamedTuple):
    """What the node must send now: a heartbeat on the active link, a probe on the others (a
    tuple: one is made per peer per heartbeat round, at twice the speed of a frozen
    dataclass)."""

    peer: int
    link: int
    kind: str


@dataclass(frozen=True, slots=True)
class LinkStats:
    """One link to one peer, for status output."""

    link: int
    up: bool
    active: bool
    rtt_ms: float | None
    loss: float
    last_heard_s: float | None
    """Seconds since the last datagram on this link (None: never heard)."""


class _Reach(Enum):
    UNREACHABLE = "unreachable"
    REACHABLE = "reachable"
    SUSPECTED = "suspected"


@dataclass(slots=True)
class _Link:
    index: int
    priority: int
    up: bool = False
    lease_until: float = -math.inf
    last_heard: float | None = None
    rtt: float | None = None
    last_sent: float | None = None
    answered: bool = False  # an answer (a datagram echoing our stamp) since our last send
    streak: int = 0  # consecutive answers, no unanswered round between them
    last_answer: float | None = None
    went_down: bool = False
    loss: LossMeter = field(default_factory=LossMeter)
    due_after: float | None = None  # the last_sent that `due_at` was computed for
    due_at: float = 0.0  # the next heartbeat round for it (Links._heartbeat_due)
    active_since: float | None = None  # when it became the active link (None: not active)

    def rank(self) -> tuple[int, int]:
        """Sort key: higher priority first, then lower index."""
        return (self.priority, -self.index)

    def settled(self) -> bool:
        """May take traffic from another up link (failback hysteresis)."""
        return not self.went_down or self.streak >= FAILBACK_ROUNDS


@dataclass(slots=True)
class _Peer:
    links: dict[int, _Link]
    active: int | None = None
    reach: _Reach = _Reach.UNREACHABLE
    last_heard: float = -math.inf
    failure_timeout: float = 0.0  # this peer's, as the node sized it to its loss (set_timeout)
    reached: float = -math.inf  # when our heartbeats last reached it, as its heartbeats say
    beat: float = -math.inf  # when its last heartbeat arrived, on any link
    beats: LossMeter = field(default_factory=LossMeter)  # its heartbeats, all links together

    def default_link(self) -> int | None:
        """The highest-priority configured link: where heartbeats go before any link is up."""
        if not self.links:
            return None
        return max(self.links.values(), key=_Link.rank).index

    def up_links(self) -> list[_Link]:
        return [link for link in self.links.values() if link.up]


class Links:
    """All peers' links: feed it datagrams and ticks, ask it what to send and who is heard."""

    def __init__(self, node_id: int, local: tuple[LinkConfig, ...], timing: Timing) -> None:
        self.node_id = node_id
        self.timing = timing
        self._priority = {link.index: link.priority for link in local}
        self._peers: dict[int, _Peer] = {}
        self._pending: list[LinkChange] = []
        self._now = -math.inf
        # Per peer, kept current by every mutation (`_refresh`), each with a lazy heap: when
        # something of it expires (a lease, the suspicion, a failover: `tick`'s work) and when
        # its next heartbeat or probe is due (`due_sends`' work). A peer with neither is
        # `_undated` (tick looks at it every time, as it always did).
        self._expiries = Deadlines()
        self._sends = SharedDeadlines()
        self._undated: set[int] = set()
        self._failure_timeout = timing.failure_timeout  # properties: computed once
        self._link_timeout = timing.link_timeout
        self._heartbeat_interval = timing.heartbeat_interval
        self._probe_interval = timing.probe_interval
        self._phase = 0.0  # heartbeat rounds fall on phase + k x interval (set_phase)
        self._last_round: tuple[tuple[float, float, float], float] = ((math.nan,) * 3, 0.0)

    # ------------------------------------------------------------ peers
    def set_peer(self, peer: int, links: frozenset[int]) -> None:
        """The link indexes `peer` has an address on; only those we have too are tracked.

        Idempotent; existing link state is kept. Changes it causes (a removed link that was up
        goes down, the active link moves) are returned by the next `received` or `tick`."""
        if peer == self.node_id:
            return
        state = self._peers.setdefault(peer, _Peer(links={}, failure_timeout=self._failure_timeout))
        wanted = {i for i in links if i in self._priority}
        for index in sorted(set(state.links) - wanted):
            if state.links.pop(index).up:
                self._pending.append(LinkDown(peer, index, f"link{index} address removed"))
        for index in sorted(wanted - set(state.links)):
            state.links[index] = _Link(index, self._priority[index])
        self._pending += self._reselect(peer, state)
        self._refresh(peer, state)

    def peer_left(self, peer: int) -> None:
        """The peer shut down cleanly (it said Leave): every link down and the peer unreachable
        at once, without events (the node reports the leave); its next datagram brings the link
        up again like a first contact (no failback hysteresis)."""
        state = self._peers.get(peer)
        if state is None:
            return
        for lk in state.links.values():
            lk.up, lk.lease_until, lk.went_down, lk.streak, lk.answered = (
                False, -math.inf, False, 0, False,
            )  # fmt: skip
        state.active, state.reach = None, _Reach.UNREACHABLE
        self._refresh(peer, state)

    def set_phase(self, phase: float) -> None:
        """Heartbeat rounds from now on fall on `phase` + k x heartbeat_interval (monotonic
        seconds). The node puts them on whole multiples of the interval in wall-clock time, so
        with synchronized clocks every node sends at the same instants and a node gets its
        peers' heartbeats in one wake-up instead of one each (a third less idle CPU)."""
        self._phase = phase % self._heartbeat_interval
        for peer, state in self._peers.items():
            for lk in state.links.values():
                lk.due_after = None
            self._refresh(peer, state)

    def _round_after(self, t: float) -> float:
        """The first heartbeat round instant at or after `t` (the last answer is kept: every
        peer sent on in one round asks for the same `t`)."""
        hb, phase = self._heartbeat_interval, self._phase
        key = (t, hb, phase)
        if key != self._last_round[0]:
            at = round(phase + math.ceil((t - phase) / hb - 1e-9) * hb, 9)  # whole ns: k x 0.1
            self._last_round = (key, at)
        return self._last_round[1]

    def _heartbeat_due(self, lk: _Link) -> float:
        """When the next heartbeat on `lk` is due: the first round at least half an interval
        after the last one (so two heartbeats are 0.5-1.5 intervals apart, 1 once in step).
        Mirrored in `due_round` (its cache read inline): change both."""
        if lk.last_sent is None:
            return self._now
        if lk.due_after != lk.last_sent:
            lk.due_after = lk.last_sent
            lk.due_at = self._round_after(lk.last_sent + self._heartbeat_interval / 2)
        return lk.due_at

    def set_local(self, local: tuple[LinkConfig, ...]) -> None:
        """The local links changed at run time (design §3.9): priorities apply at once (the
        active link is re-chosen among the up links; a link that did not fail needs no failback
        rounds), a removed link is dropped for every peer (down, if it was up) and an added one
        is tracked for the peers that have an address on it (`set_peer` again: the node does).
        Changes are returned by the next `received` or `tick`."""
        self._priority = {link.index: link.priority for link in local}
        for peer, state in sorted(self._peers.items()):
            for index in sorted(set(state.links) - set(self._priority)):
                if state.links.pop(index).up:
                    self._pending.append(LinkDown(peer, index, f"link{index} removed locally"))
            for index, lk in state.links.items():
                lk.priority = self._priority[index]
            self._pending += self._reselect(peer, state)
            self._refresh(peer, state)

    def set_timing(self, timing: Timing) -> None:
        """New timings at run time: the next leases, suspicions, heartbeat rounds and probes
        follow them (a peer's failure timeout is the node's to re-size: `set_timeout`)."""
        self.timing = timing
        self._failure_timeout = timing.failure_timeout
        self._link_timeout = timing.link_timeout
        self._heartbeat_interval = timing.heartbeat_interval
        self._probe_interval = timing.probe_interval
        self._phase %= self._heartbeat_interval
        for peer, state in self._peers.items():
            for lk in state.links.values():
                lk.due_after = None
            self._refresh(peer, state)

    def remove_peer(self, peer: int) -> None:
        """Forget a peer entirely (no events)."""
        self._peers.pop(peer, None)
        self._expiries.discard(peer)
        self._sends.discard(peer)
        self._undated.discard(peer)
        self._pending = [c for c in self._pending if c.peer != peer]

    # ------------------------------------------------------------ input
    def received(
        self,
        peer: int,
        link: int,
        now: float,
        *,
        rtt_sample: float | None = None,
        expected_interval: float | None = None,
        heartbeat: bool = False,
        reached: float | None = None,
    ) -> list[LinkChange]:
        """An authentic datagram from `peer` on `link`; unknown peers or links are ignored.

        `heartbeat`: it is one of the peer's heartbeats. `reached`: it echoes our newest
        heartbeat stamp the peer has, held for `held` seconds, and that stamp went on the active
        link (not a hedge copy): our heartbeats there last reached the peer at about
        `now - held` (the outbound half of the failover lease). Mirrored, for the steady
        heartbeat, in `steady_heartbeat` (with `_measure`): change both."""
        self._now = max(self._now, now)
        changes, self._pending = self._pending, []
        state = self._peers.get(peer)
        lk = None if state is None else state.links.get(link)
        if state is None or lk is None:
            return changes
        # Whether a deadline of the peer may have moved earlier (or appeared): then it is
        # recomputed. Otherwise this datagram only pushed its expiries later (last heard,
        # leases, beat, reached) and left its sends alone, so the cached expiry stays a lower
        # bound that `tick` and `next_deadline` correct when it comes due (design §3.14).
        moved = False
        interval = self._cadence(state, link, expected_interval)
        if heartbeat:
            state.beat = max(state.beat, now)
            if len(state.links) > 1:  # with one link its meter measures the same stream
                state.beats.arrive(now, interval)
        if reached is not None and math.isfinite(reached):
            moved = state.reached == -math.inf  # the outbound silence starts to count
            state.reached = max(state.reached, min(reached, now))
        was_up, was_settled = lk.up, not lk.went_down or lk.streak >= FAILBACK_ROUNDS
        # A heartbeat's echo answers the heartbeat we sent on the active link: on another link
        # it proves only that link's inbound half, not that it works both ways (failback).
        answers = reached is None or link == state.active
        _measure(lk, now, rtt_sample, interval, self._heartbeat_interval / 2, answers=answers)
        state.last_heard = max(state.last_heard, now)
        if not was_up:
            lk.up, moved = True, True
            changes.append(LinkUp(peer, link, f"link{link} heard from node {peer}"))
        if not was_up or was_settled != (not lk.went_down or lk.streak >= FAILBACK_ROUNDS):
            # nothing else moves the choice
            reselected = self._reselect(peer, state)
            if reselected:
                changes += reselected
                moved = True
        # Silence after which the link is down: failure_timeout if active, else link_timeout.
        lease = now + (state.failure_timeout if link == state.active else self._link_timeout)
        lk.lease_until = max(lk.lease_until, lease)
        if state.reach is not _Reach.REACHABLE:
            why = "heard again" if state.reach is _Reach.SUSPECTED else f"link{link} up"
            state.reach, moved = _Reach.REACHABLE, True
            changes.append(PeerReachable(peer, f"node {peer} reachable: {why}"))
        if moved:
            self._refresh(peer, state)
        return changes

    def steady_heartbeat(
        self,
        peer: int,
        link: int,
        now: float,
        *,
        rtt_sample: float | None,
        interval: float,
        reached: float | None,
    ) -> bool:
        """`received(peer, link, now, rtt_sample=rtt_sample, expected_interval=interval,
        heartbeat=True, reached=reached)` when that changes nothing but times and estimates
        (design §3.14, "as built (fast-core)"): True when done so (it returned no change and
        made exactly `received`'s state updates), False when the heartbeat must go to `received`
        (then nothing was touched).

        Taken only when: no change is pending; the peer has one link, it is the active one, up
        and settled, the one the heartbeat came on; the peer is reachable; `interval` is a
        cadence (`_cadence` keeps it); a finite `reached` is not the peer's first. Then
        `received` raises no event and recomputes no deadline (`moved` stays False): no link
        comes up, no active-link choice (one link), no reachability change, the outbound
        silence was counting already."""
        state = self._peers.get(peer)
        if self._pending or state is None:
            return False
        links = state.links
        lk = links.get(link)
        if reached is not None and not math.isfinite(reached):
            reached = None  # received ignores it
        if (
            lk is None
            or len(links) != 1
            or state.active != link
            or state.reach is not _Reach.REACHABLE
            or not lk.up
            or (lk.went_down and lk.streak < FAILBACK_ROUNDS)  # not settled: received re-checks
            or not (interval > 0 and interval != math.inf)  # a NaN fails too: _cadence's case
            or (reached is not None and state.reached == -math.inf)  # the first: moved
        ):
            return False
        # received()'s updates, in its order, with max(a, b) spelled (b if b > a else a)
        self._now = now if now > self._now else self._now
        state.beat = now if now > state.beat else state.beat
        if reached is not None:
            bound = now if now < reached else reached
            state.reached = bound if bound > state.reached else state.reached
        # _measure(lk, now, rtt_sample, interval, gap, answers=True): the link is the active one
        last = lk.last_heard
        lk.last_heard = now if last is None or now > last else last
        lk.loss.arrive(now, interval)
        if rtt_sample is not None and math.isfinite(rtt_sample):
            sample = rtt_sample if rtt_sample > 0.0 else 0.0
            rtt = lk.rtt
            lk.rtt = sample if rtt is None else rtt + RTT_ALPHA * (sample - rtt)
            answer = lk.last_answer
            if answer is None or now - answer >= self._heartbeat_interval / 2:
                lk.answered, lk.streak, lk.last_answer = True, lk.streak + 1, now
        state.last_heard = now if now > state.last_heard else state.last_heard
        lease = now + state.failure_timeout
        lk.lease_until = lease if lease > lk.lease_until else lk.lease_until
        return True

    def tick(self, now: float) -> list[LinkChange]:
        """Expire leases, suspect silent peers, re-choose active links."""
        self._now = max(self._now, now)
        changes, self._pending = self._pending, []
        due = self._expiries.pop_due(now)  # only these may have something that expires by now
        undated = self._undated
        if undated:
            due = sorted({*due, *undated})
        for peer in due:
            state = self._peers[peer]
            if peer not in undated:
                send = self._sends.at.get(peer, math.inf)
                expiry = self._expiry_of(state, send)
                if now < expiry:  # the cached one was a lower bound: nothing expires yet
                    self._set_deadlines(peer, expiry, send)
                    continue
            changes += self._tick_peer(peer, state, now)
            self._refresh(peer, state)
        return changes

    def _tick_peer(self, peer: int, state: _Peer, now: float) -> list[LinkChange]:
        changes: list[LinkChange] = []
        silence = now - state.last_heard
        # Same expression as the deadline in _refresh: now - last >= t/2 can be False at
        # now == last + t/2 in floating point, and the tick would never move on.
        suspect_at = state.last_heard + state.failure_timeout / 2
        if state.reach is _Reach.REACHABLE and now >= suspect_at:
            state.reach = _Reach.SUSPECTED
            changes.append(PeerSuspected(peer, f"node {peer} silent for {silence:.3f} s"))
        redundant = len(state.links) > 1
        for lk in sorted(state.links.values(), key=lambda x: x.index):
            if lk.up and now >= (self._expiry(state, lk) if redundant else lk.lease_until):
                lk.up, lk.went_down, lk.streak, lk.answered = False, True, 0, False
                changes.append(LinkDown(peer, lk.index, f"link{lk.index} silent, lease expired"))
        failover = self._failover_at(state) if redundant else None
        if failover is not None and now >= failover[0]:
            lk = state.links[failover[1]]
            lk.up, lk.went_down, lk.streak, lk.answered = False, True, 0, False
            lk.lease_until = now
            changes.append(LinkDown(peer, lk.index, self._failover_why(state, lk, now)))
        changes += self._reselect(peer, state)
        if state.reach is not _Reach.UNREACHABLE and not state.up_links():
            state.reach = _Reach.UNREACHABLE
            changes.append(PeerUnreachable(peer, f"node {peer}: no link up"))
        return changes

    # ------------------------------------------------------------ output
    def due_sends(self, now: float) -> list[DueSend]:
        """Heartbeats and probes due now, marked as sent. Heartbeats go in rounds (`set_phase`):
        a peer added between rounds gets one at once and joins the next round."""
        self._now = max(self._now, now)
        out: list[DueSend] = []
        for peer in self._sends.pop_due(now):  # only these have a send due by now
            out += self._send_peer(peer, self._peers[peer], now)
        return out

    def due_round(
        self, now: float
    ) -> tuple[dict[int, list[int]], dict[int, list[int]], list[DueSend]]:
        """`due_sends(now)` as the node sends it: the peers due a heartbeat by link, the peers
        due a hedge copy by link (each list ascending) and the probes (in `due_sends` order).

        The steady round in one pass (design §3.14, "as built (fast-core)"): a peer with one
        link whose heartbeat is due is marked as sent and filed for the next round together
        with the others (one `SharedDeadlines.set_many`), without a `DueSend` or a deadline of
        its own; every other peer goes through `_send_peer`, as in `due_sends`. The state left
        behind is `due_sends`' (tests/agent/test_core_fast.py)."""
        self._now = max(self._now, now)
        beats: dict[int, list[int]] = {}
        hedges: dict[int, list[int]] = {}
        probes: list[DueSend] = []
        cohort: list[int] = []
        peers, round_at = self._peers, None
        for peer in self._sends.pop_due(now):
            state = peers[peer]
            links = state.links
            if len(links) == 1:
                ((index, lk),) = links.items()
                active = state.active
                if active is None or active == index:  # its one link is the heartbeat's
                    last = lk.last_sent  # _heartbeat_due(lk), its cache read here
                    due = lk.due_at if last is not None and lk.due_after == last else None
                    if due is None:
                        due = self._heartbeat_due(lk)
                    if now >= due:
                        if last is not None and not lk.answered:  # _mark_sent
                            lk.streak = 0
                        lk.answered, lk.last_sent = False, now
                        if round_at is None:  # the next round, the same for them all
                            round_at = self._round_after(now + self._heartbeat_interval / 2)
                        lk.due_after, lk.due_at = now, round_at  # _heartbeat_due's cache
                        cohort.append(peer)
                        beats.setdefault(index, []).append(peer)
                        continue
            for send in self._send_peer(peer, state, now):
                if send.kind == "probe":
                    probes.append(send)
                else:
                    (beats if send.kind == "heartbeat" else hedges).setdefault(
                        send.link, []
                    ).append(peer)
        if round_at is not None:
            self._sends.set_many(cohort, round_at)
        return beats, hedges, probes

    def _send_peer(self, peer: int, state: _Peer, now: float) -> list[DueSend]:
        """What is due to `peer` now (its send deadline came due), marked as sent; its next
        send deadline set."""
        out: list[DueSend] = []
        active = state.active if state.active is not None else state.default_link()
        links = state.links
        send = math.inf
        for index in sorted(links) if len(links) > 1 else links:
            lk = links[index]
            kind = "heartbeat" if index == active else "probe"
            if now >= self._due(lk, kind):
                self._mark_sent(lk, now)
                out.append(DueSend(peer, index, kind))
                if kind == "heartbeat" and len(links) > 1:
                    hedge = self._hedge_link(state, now)
                    if hedge is not None:
                        out.append(DueSend(peer, hedge, "hedge"))
            due = self._due(lk, kind)
            send = min(send, due)
        # Sending moves only the sends: what expires (the cached expiry, a lower bound
        # when the peer has no link up) does not depend on them.
        self._sends.set(peer, send)
        if send == math.inf and peer not in self._expiries.at:
            self._undated.add(peer)
        return out

    def _hedge_link(self, state: _Peer, now: float) -> int | None:
        """Where a copy of the heartbeat goes too (design §3.6, "hedge"): the best other up
        link, while the peer has not said for F (of the plain failure timeout) that our
        heartbeats on the active link reach it. None: no doubt, or nothing to hedge on."""
        if len(state.links) < 2 or state.active is None or state.reached == -math.inf:
            return None
        lk = state.links.get(state.active)
        if lk is None or lk.active_since is None:
            return None
        doubt = max(state.reached, lk.active_since) + self._failover_grace(self._failure_timeout)
        if now < doubt:
            return None
        others = [o for o in state.links.values() if o.up and o is not lk]
        return max(others, key=_Link.rank).index if others else None

    def _due(self, lk: _Link, kind: str) -> float:
        """When the next heartbeat or probe on `lk` is due (never sent: now)."""
        if kind == "heartbeat":
            return self._heartbeat_due(lk)
        return self._now if lk.last_sent is None else lk.last_sent + self._probe_interval

    def next_deadline(self) -> float | None:
        """The earliest time `tick` or `due_sends` has something to do (None: nothing)."""
        send = self._sends.earliest()
        expiry = self._earliest_expiry(send)
        earliest = send if expiry is None else expiry if send is None else min(expiry, send)
        if self._pending and (earliest is None or self._now < earliest):
            return self._now
        return earliest

    def _earliest_expiry(self, horizon: float | None) -> float | None:
        """The earliest expiry of any peer where it comes before `horizon` (else a lower bound
        at or after it): cached lower bounds on the way are replaced by the real expiries."""
        expiries, sends = self._expiries, self._sends.at
        while (first := expiries.first()) is not None:
            at, peer = first
            if horizon is not None and at >= horizon:
                return at
            state = self._peers[peer]
            send = sends.get(peer, math.inf)
            expiry = self._expiry_of(state, send)
            if expiry == at:
                return at
            # _set_deadlines(peer, expiry, send) with the sends unchanged (read from them)
            expiries.replace_first(expiry)
            if expiry == send == math.inf:
                self._undated.add(peer)
            elif self._undated:
                self._undated.discard(peer)
        return None

    def heard(self, now: float) -> frozenset[int]:
        """Peers with a link whose lease covers `now`."""
        return frozenset(
            peer
            for peer, state in self._peers.items()
            if any(now < lk.lease_until for lk in state.links.values())
        )

    def peer_links(self, peer: int) -> list[int]:
        """The link indexes tracked for `peer` (both ends have them), ascending."""
        state = self._peers.get(peer)
        return [] if state is None else sorted(state.links)

    def active_link(self, peer: int) -> int | None:
        """The link heartbeats to `peer` go on: the active one, else the best configured one."""
        state = self._peers.get(peer)
        return None if state is None else self._sending_link(state)

    def receive_loss(self, peer: int) -> float:
        """Loss of `peer`'s heartbeats on all links together (without `heartbeat` flags: its
        datagrams on the link they last came on), measured up to the last arrival (a silence
        going on now is not counted, so a peer that just died does not stretch its own failure
        timeout), gaps of `missed_heartbeats` or more left out (an outage such as a healed
        partition is not random loss). 0.0 when nothing is known. Across links, so a failover
        does not restart the measurement (and shrink the timeout while the loss goes on)."""
        state = self._peers.get(peer)
        outage = self.timing.missed_heartbeats  # a silence that long was an outage, not loss
        if state is not None and state.beats.last is not None:
            return state.beats.loss(state.beat, outage=outage)
        heard = [lk for lk in (state.links.values() if state else ()) if lk.last_heard is not None]
        if not heard:
            return 0.0
        lk = max(heard, key=lambda x: x.last_heard or 0.0)  # the link it last came on
        return lk.loss.loss(lk.last_heard or 0.0, outage=outage)

    def set_timeout(self, peer: int, failure_timeout: float) -> None:
        """The peer's failure timeout (`Timing.failure_timeout_at` its loss): the lease of its
        active link and its suspicion time (half of it) follow, from the next datagram."""
        state = self._peers.get(peer)
        if state is not None and state.failure_timeout != failure_timeout:
            state.failure_timeout = failure_timeout
            self._refresh(peer, state)

    def stats(self, peer: int) -> list[LinkStats]:
        """Per link state of `peer`, by link index (times relative to the latest `now` seen)."""
        state = self._peers.get(peer)
        if state is None:
            return []
        return [
            LinkStats(
                link=index,
                up=lk.up,
                active=index == state.active,
                rtt_ms=None if lk.rtt is None else lk.rtt * 1000,
                loss=lk.loss.loss(self._now),
                last_heard_s=None if lk.last_heard is None else self._now - lk.last_heard,
            )
            for index, lk in sorted(state.links.items())
        ]

    @staticmethod
    def rtt_from_echo(now_us: int, echo: Echo) -> float:
        """Round trip in seconds: now - the echoed stamp - how long the peer held it."""
        return (now_us - echo.stamp_us - echo.held_us) / 1e6

    # ------------------------------------------------------------ internals
    def _failover_at(self, state: _Peer) -> tuple[float, int] | None:
        """When the active link fails over (design §3.6) and its index; None when there is
        nothing to fail over to (no other link up) or no active link."""
        if state.active is None or len(state.links) < 2:
            return None
        lk = state.links.get(state.active)
        if lk is None or not lk.up or lk.active_since is None:
            return None
        if not any(o.up for o in state.links.values() if o is not lk):
            return None
        inbound, outbound = self._silences(state, lk)
        return (min(inbound, outbound) + self._failover_grace(state.failure_timeout), lk.index)

    @staticmethod
    def _silences(state: _Peer, lk: _Link) -> tuple[float, float]:
        """Since when the peer's heartbeats have not reached us (any link; without heartbeat
        flags: no datagram on `lk`) and ours have not reached it (inf: it never said), each
        counted from when `lk` became active at the earliest."""
        since = lk.active_since if lk.active_since is not None else -math.inf
        if state.beat > -math.inf:
            inbound = max(state.beat, since)
        else:
            inbound = max(since if lk.last_heard is None else lk.last_heard, since)
        outbound = math.inf if state.reached == -math.inf else max(state.reached, since)
        return inbound, outbound

    def _failover_why(self, state: _Peer, lk: _Link, now: float) -> str:
        inbound, outbound = self._silences(state, lk)
        if inbound <= outbound:
            silent = now - inbound
            return f"link{lk.index}: no heartbeat from the peer for {silent:.3f} s, failing over"
        return (
            f"link{lk.index}: our heartbeats did not reach the peer for {now - outbound:.3f} s, "
            "failing over"
        )

    def _failover_grace(self, t: float) -> float:
        """F of the failover lease: the peer's failure timeout less two heartbeat intervals
        and the jitter allowance (the heartbeat on the new link still arrives before the
        timeout runs out, with one interval of phase to spare), at least half of it."""
        spare = 2 * self._heartbeat_interval + self.timing.jitter_allowance
        return max(t / 2, t - spare)

    @staticmethod
    def _expiry(state: _Peer, lk: _Link) -> float:
        """When an up link goes down: its lease; the active link's also lasts failure_timeout
        from the last time the peer says our heartbeats reached it."""
        if lk.index != state.active or lk.active_since is None or state.reached == -math.inf:
            return lk.lease_until
        if len(state.links) < 2:
            return lk.lease_until
        return max(lk.lease_until, max(state.reached, lk.active_since) + state.failure_timeout)

    def _interval(self, kind: str) -> float:
        t = self.timing
        return t.heartbeat_interval if kind == "heartbeat" else t.probe_interval

    def _cadence(self, state: _Peer, link: int, announced: float | None) -> float:
        """The sender's announced interval, else the one of the link's role here."""
        if announced is not None and math.isfinite(announced) and announced > 0:
            return announced
        return self._interval("heartbeat" if link == state.active else "probe")

    @staticmethod
    def _sending_link(state: _Peer) -> int | None:
        return state.active if state.active is not None else state.default_link()

    @staticmethod
    def _mark_sent(lk: _Link, now: float) -> None:
        """Close the current round: an unanswered one breaks the failback streak. Mirrored in
        `due_round`: change both."""
        if lk.last_sent is not None and not lk.answered:
            lk.streak = 0
        lk.answered = False
        lk.last_sent = now

    def _refresh(self, peer: int, state: _Peer) -> None:
        """Recompute `peer`'s cached deadlines (after anything that changed its state): what
        expires first (the earliest lease end of an up link, the suspicion time, a failover)
        and the next send on any link."""
        send = math.inf
        active = self._sending_link(state)
        for index, lk in state.links.items():
            send = min(send, self._due(lk, "heartbeat" if index == active else "probe"))
        self._set_deadlines(peer, self._expiry_of(state, send), send)

    def _set_deadlines(self, peer: int, expiry: float, send: float) -> None:
        self._expiries.set(peer, expiry)
        self._sends.set(peer, send)
        if expiry == send == math.inf:
            self._undated.add(peer)
        elif self._undated:
            self._undated.discard(peer)

    def _expiry_of(self, state: _Peer, send: float) -> float:
        """When something of the peer expires next: the suspicion, an up link's lease, the
        failover; with no link up while not yet unreachable, its next send (`send`), when tick
        looked at it before."""
        expiry = math.inf
        if state.reach is _Reach.REACHABLE:
            expiry = state.last_heard + state.failure_timeout / 2
        redundant = len(state.links) > 1  # else no failover, and leases are plain
        if redundant and (failover := self._failover_at(state)) is not None:
            expiry = min(expiry, failover[0])
        any_up = False
        for lk in state.links.values():
            if lk.up:
                any_up = True
                expiry = min(expiry, self._expiry(state, lk) if redundant else lk.lease_until)
        if not any_up and state.reach is not _Reach.UNREACHABLE:
            expiry = min(expiry, send)  # tick declares it unreachable when it is next looked at
        return expiry

    def _choose(self, state: _Peer) -> _Link | None:
        """Highest-priority up link; an up active link yields only to a settled better one."""
        up = state.up_links()
        current = state.links.get(state.active) if state.active is not None else None
        if current is not None and current.up:
            return max([current] + [lk for lk in up if lk.settled()], key=_Link.rank)
        return max(up, key=lambda lk: (lk.settled(), lk.rank()), default=None)

    def _reselect(self, peer: int, state: _Peer) -> list[LinkChange]:
        best = self._choose(state)
        new = None if best is None else best.index
        old = state.active
        if new == old:
            return []
        state.active = new
        demoted = state.links.get(old) if old is not None else None
        if demoted is not None:
            demoted.active_since = None
        if demoted is not None and demoted.up and demoted.last_heard is not None:
            keep = demoted.last_heard + self._link_timeout  # now a probed link
            demoted.lease_until = max(demoted.lease_until, keep)
        if best is not None:
            best.active_since = self._now
        return [ActiveLinkChanged(peer, old, new, self._why(state, old, new))]

    @staticmethod
    def _why(state: _Peer, old: int | None, new: int | None) -> str:
        if new is None:
            return f"no link up (was link{old})"
        if old is None:
            return f"link{new} is the best link up"
        old_link = state.links.get(old)
        if old_link is None or not old_link.up:
            return f"failover: link{old} down, link{new} is the best link up"
        return f"failback: link{new} answered {FAILBACK_ROUNDS} rounds, outranks link{old}"


def _measure(
    lk: _Link,
    now: float,
    rtt_sample: float | None,
    interval: float,
    gap: float,
    *,
    answers: bool = True,
) -> None:
    """Arrival bookkeeping: last heard, loss; on an echo, the RTT EWMA and (if it `answers`
    a datagram we sent on this link) the answer streak (answers closer than `gap` to the
    previous one count once: duplicates). Mirrored in `Links.steady_heartbeat`: change both."""
    lk.last_heard = now if lk.last_heard is None else max(lk.last_heard, now)
    lk.loss.arrive(now, interval)
    if rtt_sample is None or not math.isfinite(rtt_sample):
        return
    sample = max(0.0, rtt_sample)
    lk.rtt = sample if lk.rtt is None else lk.rtt + RTT_ALPHA * (sample - lk.rtt)
    if not answers:
        return
    if lk.last_answer is None or now - lk.last_answer >= gap:
        lk.answered, lk.streak, lk.last_answer = True, lk.streak + 1, now
