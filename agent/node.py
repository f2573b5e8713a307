"""The node core: links, membership and votequorum composed into one sans-IO state machine.

`AgentNode.handle(event, now) -> list[effect]` and `next_deadline()` (docs/design.md §3.3). It
builds heartbeats, feeds what peers report into membership, counts the installed view's votes
and turns every change into a typed `AgentEvent`. It must not read a clock, open a socket or log:
time comes in `now` (monotonic seconds) and `wall_ms` (for the clock-skew check).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import deque
from dataclasses import dataclass, replace
from operator import attrgetter
from typing import Any

from agent.config import AgentConfig, ConfigError, QdeviceConfig, Timing
from agent.deadline_heap import Deadlines
from agent.events import AgentEvent, EventKind
from agent.links import (
    ActiveLinkChanged,
    LinkChange,
    LinkDown,
    Links,
    LinkUp,
    PeerReachable,
    PeerSuspected,
    PeerUnreachable,
)
from agent.membership import (
    Membership,
    MembershipChange,
    MemberView,
    PeerReport,
    RingId,
    ViewInstalled,
)
from agent.node_events import (
    Broadcast,
    ConfigApplied,
    Emit,
    MaxSeqStored,
    MessageIn,
    NodeEffect,
    NodeEvent,
    PeerAddresses,
    PersistMaxSeq,
    QdeviceReconfigure,
    QdeviceUpdate,
    QdeviceVote,
    Reconfigure,
    Removed,
    SendTo,
    SetExpected,
    Start,
    Stop,
    Tick,
)
from agent.status import (
    TRANSITIONS_KEPT,
    LinkInfo,
    NodeStatus,
    PeerInfo,
    QdeviceInfo,
    Transition,
    ring_text,
    to_json,
)
from agent.votequorum import (
    ExpectedRefused,
    ExpectedSet,
    ExpectedVotesChanged,
    QuorumChange,
    QuorumGained,
    QuorumInput,
    QuorumLost,
    Votequorum,
    runtime_options,
)
from proto.mesh_messages import (
    EXPECTED,
    Echo,
    ExpectedSetWire,
    Heartbeat,
    Leave,
    Probe,
    ProbeReply,
    View,
)
from proto.tagged_map import frozen_constructor

__all__ = [
    "AgentNode",
    "Broadcast",
    "ConfigApplied",
    "Emit",
    "MaxSeqStored",
    "MessageIn",
    "NodeEffect",
    "NodeEvent",
    "PeerAddresses",
    "PersistMaxSeq",
    "QdeviceReconfigure",
    "QdeviceUpdate",
    "QdeviceVote",
    "Reconfigure",
    "Removed",
    "SendTo",
    "SetExpected",
    "Start",
    "Stop",
    "Tick",
]

EVALUATE_DELAY = 0.005  # seconds: batch the membership evaluation after a burst of heartbeats
TIMEOUT_REFRESH = 1.0  # seconds between re-sizing the peers' failure timeouts to their loss
VIEWS_REMEMBERED = 8  # installed views whose member sets a held device ACK may name
PHASE_TOLERANCE = 0.005  # seconds the wall clock may move before heartbeat rounds re-align
SEQ_STEP = 1024
"""A reported ring sequence up to this far above our max_seq is taken at once (design §3.3,
"Hostile values"); a larger jump is a *leap*."""
SEQ_LEAP_MAX = 2**32
"""The largest leap ever taken: more than a cluster makes in 13 years at 10 views a second."""
SEQ_LEAP_EVERY = 10.0
"""Seconds between two leaps taken: a hostile member needs 2**30 leaps (340 years) to use up
the 2**62 sequences, while a node that rejoins a cluster far ahead leaps once."""
RETIRED_KEPT = 4  # earlier lives of a peer remembered: their late datagrams are stale, not rivals
DUPLICATE_REPORT_EVERY = 60.0  # seconds between two duplicate_node events about one peer


def transition_span(timing: Timing) -> float:
    """How long a replaced configuration stays a quorum constraint after a run-time change
    (design §3.9, "Safety across a change"): at least the time P + L until a node still at the
    old version is inquorate, P (every member of the committing view applied it) bounded by one
    longest failure timeout and L (the minority bound) by another plus the agreement rounds:
    2 x max_failure_timeout + (agreement_rounds + 1) x heartbeat_interval (lan 2.9 s)."""
    return 2 * timing.max_failure_timeout + (timing.agreement_rounds + 1) * (
        timing.heartbeat_interval
    )


@dataclass(slots=True)
class _Peer:
    """What we last heard from one peer."""

    incarnation: int = 0
    name: str = ""
    votes: int = 1
    expected: int = 0
    stamp_us: int = 0
    received_at: float = 0.0
    wall_skew_ms: int | None = None
    skewed: bool = False
    quorate: bool = False
    expected_set: ExpectedSet | None = None
    tie_breaker: int = 0
    config_version: int = 0
    """The configuration version its heartbeats report (0: unknown)."""
    left: int = 0
    """The incarnation that said Leave: its later datagrams (reordered) are ignored for a
    failure timeout from `left_at`."""
    left_at: float = -math.inf
    timeout: float = 0.0
    """Its failure timeout now: `Timing.failure_timeout_at` its heartbeats' measured loss."""
    raw: tuple[object, ...] | None = None
    """The last (heard, view, proposal) as sent: a repeat only refreshes the report's time."""
    verified: bool = False
    """This incarnation of the peer echoed a stamp of ours from this life: its heartbeats are
    fresh, not recordings replayed to us after our restart (design §3.3, "Freshness")."""
    seen_at: float = -math.inf
    """When the current incarnation's last datagram arrived (any kind)."""
    echo_us: int = 0
    """The newest stamp of ours this incarnation echoed: a heartbeat echoing a newer one is
    fresh whatever its own stamp (a hostile stamp of 2**62 cannot wedge the real peer)."""
    echo_floor_us: int = 0
    """Echoes below it prove nothing: set when an older life of the peer comes back."""
    adopted_us: int = 0
    """When the current incarnation was adopted (our monotonic microseconds)."""
    retired: tuple[int, ...] = ()
    """Earlier incarnations replaced by a later one: their late datagrams are stale."""
    rival: int = 0
    """Another incarnation sending while the current one lives (design §3.3, "One node id,
    two lives"), and when it last sent."""
    rival_at: float = -math.inf
    reported_at: float = -math.inf
    """When the last duplicate_node event about this peer was emitted."""


@dataclass(frozen=True, slots=True)
class Basis:
    """What quorum counts (design §3.4): a ring's members, with or without the device votes."""

    ring: tuple[int, int]
    members: frozenset[int]
    device_votes: int
    kind: str
    """settled (the acked installed view), held (an earlier acked view during a change) or
    heard (the installed view's members this node hears, no device votes)."""
    why: str


def _wire_view(view: MemberView) -> View:
    return View(view.ring_id.representative, view.ring_id.seq, tuple(sorted(view.members)))


def _expected_set(wire: ExpectedSetWire | None) -> ExpectedSet | None:
    if wire is None:
        return None
    ring = (wire.ring_representative, wire.ring_seq)
    return ExpectedSet(wire.generation, wire.origin, wire.value, ring)


def _wire_expected_set(value: ExpectedSet | None) -> ExpectedSetWire | None:
    if value is None:
        return None
    rep, seq = value.ring
    return ExpectedSetWire(value.generation, value.origin, value.value, rep, seq)


def _member_view(view: View | None) -> MemberView | None:
    if view is None:
        return None
    return MemberView(RingId(view.representative, view.seq), frozenset(view.members))


class AgentNode:
    """One cluster node's decisions."""

    def __init__(
        self, config: AgentConfig, incarnation: int, *, max_seq: int = 0, config_version: int = 0
    ) -> None:
        config.validate()
        self.config = config
        self._init_reconfigure(config_version)
        self.node_id, self.incarnation = config.node_id, incarnation
        # the timing it runs with: the configured one sized to the cluster (design §3.14)
        self.timing = config.run_timing
        self.links = Links(config.node_id, config.links, self.timing)
        self.membership = Membership(config.node_id, self.timing, max_seq)
        self.membership.durable_seq = max_seq
        self.quorum = Votequorum(
            config.node_id,
            config.quorum,
            config.configured_votes(),
            qdevice_votes=self._device_votes() if config.qdevice else 0,
        )
        self.peers: dict[int, _Peer] = {}
        self.qdevice_votes = 0
        self.qdevice_connected = False
        self._asked_seq = max_seq  # the last PersistMaxSeq value
        self._durable_seq = max_seq  # confirmed by MaxSeqStored (or given at construction)
        self._store_error = ""
        self._retry_store_at: float | None = None
        self._qdevice_due = False  # a QdeviceUpdate was held back (its ring not yet durable)
        self._leap_at = -math.inf  # when the last ring sequence leap was taken
        self.last_drop: str | None = None
        """Why the last `handle(MessageIn)` dropped the message (the runtime counts it), or
        None when it was taken."""
        self.qdevice_ring: tuple[int, int] | None = None
        """The ring the device's last unrevoked ACK was for (None: no ACK held)."""
        self._views: dict[tuple[int, int], frozenset[int]] = {}
        """Member sets of the views this node installed lately, by ring id (a held ACK names
        one of them)."""
        self._unsettled_since: float | None = None
        """Since when the node holds a device ACK but cannot count it as settled (design §3.4)."""
        self.basis = Basis((0, 0), frozenset(), 0, "heard", "no view yet")
        """What quorum counts now (design §3.4, "What quorum counts")."""
        self._evaluate_at: float | None = None
        self._evaluated = False
        self._stopped = False
        self._born_us = 0  # our first stamp in this life: echoes older than it prove nothing
        self.expected_refusal: str | None = None
        """Why the last `SetExpected` was refused (None: accepted); the control socket says it."""
        self.last_fresh_peer: int | None = None
        """The peer whose fresh heartbeat the last `handle` accepted (the runtime then trusts
        the datagram's source address), else None."""
        self._failure_timeout, self._heartbeat_interval = (  # properties: computed once
            self.timing.failure_timeout,
            self.timing.heartbeat_interval,
        )
        self._timeouts_at = 0.0
        self._phase, self._phased = 0.0, False
        self._last_qdevice_update: QdeviceUpdate | None = None
        self._started = False
        self._out: list[NodeEffect] = []
        self._now, self._wall_ms = 0.0, 0
        self._asked: float | None = None
        """The deadline `next_deadline()` last handed out: an event much later is a stall."""
        self._transitions: deque[tuple[float, str, str, str, bool]] = deque(maxlen=TRANSITIONS_KEPT)
        """(at, kind, reason, ring, quorate) of the last view/quorum changes (`explain`)."""
        self._missing_since: dict[int, float] = {}
        """When each peer left this node's view (gone when it is back in one)."""
        self._init_caches()

    def _init_caches(self) -> None:
        """What keeps the work per heartbeat independent of the cluster size (design §3.14)."""
        self._heard_by = Deadlines()
        """Per verified peer, a lower bound of when it stops being heard (`_heard_expiry`)."""
        self._wire_views: dict[MemberView, View] = {}
        """The wire form of the installed view and the proposal (`_wire`)."""
        self._heard_sent: tuple[frozenset[int], tuple[int, ...]] = (frozenset(), ())
        """The last heard set sent and its wire form (`_heard_tuple`)."""

    def _init_reconfigure(self, config_version: int) -> None:
        """The state of run-time configuration changes (design §3.9)."""
        self.config_version = config_version
        """The cluster configuration's version this node runs (0 = unknown; heartbeats carry
        it). `Reconfigure` raises it."""
        self._listed = {p.node_id: p.votes for p in self.config.peers}
        """Configured peers and their votes (empty: discovery-only, design §3.9)."""
        self._removed: set[int] = set()
        """Peers a run-time change removed: their datagrams are dropped (`removed_node`)."""
        self.reconfigure_refusal: str | None = None
        """Why the last `Reconfigure` was refused (None: applied)."""
        self._removed_reason = ""
        """Set when this node was removed from the configuration (the core is inert then)."""

    # ------------------------------------------------------------ public API
    def handle(self, event: NodeEvent, now: float) -> list[NodeEffect]:
        """Process one event; return the effects in order."""
        self._now, self._out = now, []
        self.last_fresh_peer = None
        self.last_drop = None
        if self._stopped:
            return self._out
        asked = self._asked  # a stall: not run when it asked to be, for over the failure timeout
        if asked is not None and now - asked > self._failure_timeout and self._started:
            self._revalidate(now)
        if isinstance(event, MessageIn):  # the common case first
            self._wall_ms = event.wall_ms
            self._message(event)
        elif isinstance(event, Tick):
            self._wall_ms = event.wall_ms
            self._step()
        elif isinstance(event, Start):
            self._start(event.wall_ms)
        elif isinstance(event, PeerAddresses):
            self._peer_addresses(event.peer, event.links)
        elif isinstance(event, SetExpected):
            self._set_expected(event.value)
        elif isinstance(event, Stop):
            self._stop(event.reason)
        elif isinstance(event, MaxSeqStored):
            self._stored(event)
        elif isinstance(event, Reconfigure):
            self._reconfigure(event)
        else:
            self._qdevice(event)
        return self._out

    def next_deadline(self) -> float | None:
        """When the runtime must send `Tick` next (None: never, e.g. after `Stop`)."""
        if self._stopped:
            return None
        best = self.links.next_deadline()
        for t in (
            self.quorum.next_deadline(),
            self._evaluate_at,
            self._retry_store_at,
            self._hold_deadline(),
        ):
            if t is not None and (best is None or t < best):
                best = t
        heard = self._heard_expiry(best)
        if heard is not None and (best is None or heard < best):
            best = heard
        # A deadline already past means "now" (a heartbeat due on a link that just became
        # active, last sent on long ago): the stall is measured from this handle's time then.
        self._asked = None if best is None else max(best, self._now)
        return best

    @property
    def view(self) -> MemberView:
        """The installed view."""
        return self.membership.view

    @property
    def quorate(self) -> bool:
        """The current verdict."""
        return self.quorum.status.quorate

    # ------------------------------------------------------------ lifecycle
    def _start(self, wall_ms: int) -> None:
        self._wall_ms = wall_ms
        self._born_us = int(self._now * 1e6)
        self._started = True
        for peer in self.config.peers:
            self._peer_addresses(peer.node_id, frozenset(link for link, _, _ in peer.addresses))
        self._update_quorum()
        self._step()

    def _peer_addresses(self, peer: int, links: frozenset[int]) -> None:
        if peer == self.node_id or (self._has_node_list() and peer not in self._listed):
            return  # with a node list, discovery only proposes addresses (design §3.9)
        self.peers.setdefault(peer, _Peer(timeout=self._failure_timeout))
        self.links.set_peer(peer, links)

    # ------------------------------------------------------------ stalls (design §3.7)
    def _revalidate(self, now: float) -> None:
        """After a stall: nothing learnt before it counts. Every peer must echo a stamp sent
        from now on before its heartbeats count again (the datagrams that sat in the socket
        buffer cannot); reports are forgotten and the node re-evaluates at once."""
        asked = self._asked if self._asked is not None else now
        self._asked = None
        self._born_us = int(now * 1e6)
        for pid, peer in self.peers.items():
            peer.verified, peer.raw = False, None
            self.membership.forget(pid)
        why = (
            f"not run for {now - asked:.3f} s past its deadline (failure timeout "
            f"{self._failure_timeout:.3f} s): peers and views revalidated"
        )
        self._emit(EventKind.STALLED, why, late_s=round(now - asked, 3))
        self.membership.set_heard(self._heard(), now)
        self._evaluate_at, self._evaluated = None, True
        changes = self.membership.evaluate(now)
        self._persist_seq()
        self._membership_changes(changes)

    # ------------------------------------------------------------ receiving
    def _message(self, ev: MessageIn) -> None:
        peer = self.peers.get(ev.peer)
        if ev.peer == self.node_id or peer is None:
            self.last_drop = "own_node_id" if ev.peer == self.node_id else "unknown_peer"
            if ev.peer in self._removed:
                self.last_drop = "removed_node"
            return  # per-peer state only for configured or discovered nodes
        if ev.incarnation == peer.left and self._now - peer.left_at < peer.timeout:
            self.last_drop = "left"
            return  # sent before its Leave, arriving after it
        if ev.incarnation != peer.incarnation and not self._switch_life(ev.peer, peer, ev):
            return
        if peer.rival and self._now - peer.rival_at < peer.timeout:
            self._duplicate(ev.peer, peer)
        msg = ev.message
        if isinstance(msg, Heartbeat):
            view, proposal = msg.view, msg.proposal
            top = 0 if view is None else view.seq
            top = proposal.seq if proposal is not None and proposal.seq > top else top
            if top - self.membership.max_seq <= SEQ_STEP or self._leap(top):
                peer.seen_at = self._now
                self._heartbeat(ev.peer, peer, ev.link, msg, ev.wall_ms)
            return
        peer.seen_at = self._now
        if isinstance(msg, Leave):
            self._left(ev.peer, peer, ev.incarnation, msg.reason)
        elif isinstance(msg, Probe):
            probe = self.timing.probe_interval
            if peer.verified:  # else it may be a recording: answered, but it proves nothing
                self._link_changes(
                    self.links.received(ev.peer, ev.link, self._now, expected_interval=probe)
                )
            reply = ProbeReply(link=ev.link, stamp_us=msg.stamp_us)
            self._out.append(SendTo(ev.peer, ev.link, reply))
        elif isinstance(msg, ProbeReply):
            if not self._born_us <= msg.stamp_us <= int(self._now * 1e6):
                return  # not an answer to a probe of this life
            rtt = max(0.0, self._now - msg.stamp_us / 1e6 - msg.held_us / 1e6)
            probe = self.timing.probe_interval
            self._link_changes(
                self.links.received(
                    ev.peer, ev.link, self._now, rtt_sample=rtt, expected_interval=probe
                )
            )

    def _switch_life(self, pid: int, peer: _Peer, ev: MessageIn) -> bool:
        """A datagram of another incarnation than the current one: adopt it (True) or drop it.

        Design §3.3, "One node id, two lives": the current life is kept while it is verified
        and sends (a duplicate process or a hostile incarnation cannot take the id over);
        a new life takes over once the current one is silent for the peer's failure timeout
        or said Leave (a restart), or at once while the current one is unverified."""
        current_lives = (
            peer.incarnation not in (0, peer.left)
            and peer.verified
            and self._now - peer.seen_at < peer.timeout
        )
        if current_lives:
            if ev.incarnation in peer.retired:
                self.last_drop = "stale_incarnation"
            else:
                peer.rival, peer.rival_at = ev.incarnation, self._now
                self.last_drop = "other_incarnation"
            return False
        now_us = int(self._now * 1e6)
        if peer.incarnation:
            self.membership.forget(pid)
            if peer.incarnation not in peer.retired:
                peer.retired = (*peer.retired, peer.incarnation)[-RETIRED_KEPT:]
        # An older life coming back must echo a stamp sent since the newer one was adopted:
        # recordings of it (made before) prove nothing.
        peer.echo_floor_us = peer.adopted_us if ev.incarnation < peer.incarnation else 0
        peer.incarnation, peer.stamp_us, peer.verified = ev.incarnation, 0, False
        peer.echo_us, peer.adopted_us = 0, now_us
        if peer.rival == ev.incarnation:
            peer.rival, peer.rival_at = 0, -math.inf
        return True

    def _duplicate(self, pid: int, peer: _Peer) -> None:
        """Two lives of one node id alternate: say so (at most once a minute per peer)."""
        if self._now - peer.reported_at < DUPLICATE_REPORT_EVERY:
            return
        peer.reported_at = self._now
        reason = (
            f"two processes send as node {pid} (incarnations {peer.incarnation} and "
            f"{peer.rival}): a copied config or a cloned VM? Keeping the one that was here "
            f"first ({peer.incarnation}); give the other its own node_id"
        )
        self._emit(
            EventKind.DUPLICATE_NODE,
            reason,
            peer=pid,
            kept=peer.incarnation,
            refused=peer.rival,
        )

    def _leap(self, top: int) -> bool:
        """A heartbeat reports a ring sequence `top` more than SEQ_STEP above ours: a leap,
        taken at most once every SEQ_LEAP_EVERY and never beyond SEQ_LEAP_MAX, else the
        heartbeat is dropped (design §3.3, "Hostile values"): nobody can use the sequences up."""
        jump = top - self.membership.max_seq
        if jump <= SEQ_LEAP_MAX and self._now - self._leap_at >= SEQ_LEAP_EVERY:
            self._leap_at = self._now
            return True
        self.last_drop = "seq_leap"
        return False

    def _heartbeat(self, pid: int, peer: _Peer, link: int, hb: Heartbeat, wall_ms: int) -> None:
        now = self._now
        now_us = int(now * 1e6)
        rtt = reached = None
        echoed = 0
        # Ours by bisection (O(log N)): senders sort echoes by node id (design §3.14). An
        # unsorted tuple (hostile) can only make us miss ours.
        echoes = hb.echoes
        i = bisect_left(echoes, self.node_id, key=_ECHO_NODE)
        echo = echoes[i] if i < len(echoes) and echoes[i].node_id == self.node_id else None
        if echo is not None:
            stamp = echo.stamp_us
            if max(self._born_us, peer.echo_floor_us) <= stamp <= now_us:
                rtt = now - stamp / 1e6 - echo.held_us / 1e6
                if not rtt > 0.0:  # max(0.0, rtt)
                    rtt = 0.0
                if stamp & 1:  # it went on the active link (even: a hedge copy)
                    reached = now - echo.held_us / 1e6  # ours last reached it about then
                echoed = stamp
        if hb.stamp_us <= peer.stamp_us and echoed <= peer.echo_us:
            self.last_drop = "not_newer"
            return  # not newer than one we have: reordered, duplicated or replayed
        peer.stamp_us, peer.received_at = hb.stamp_us, now  # echoed back either way
        peer.echo_us = echoed if echoed > peer.echo_us else peer.echo_us  # max()
        if not peer.verified:
            if rtt is None:
                return  # until it echoes one of our stamps: it may be an old recording
            peer.verified = True
        # _heard_moved(pid, peer), inline: a verified peer's expiry, a new bound only if it
        # had none or it moved earlier
        expiry = now + peer.timeout
        bound = self._heard_by.at.get(pid)
        if bound is None or expiry < bound:
            self._heard_by.set(pid, expiry)
        self.last_fresh_peer = pid
        links = self.links
        interval = self._heartbeat_interval
        if not links.steady_heartbeat(
            pid, link, now, rtt_sample=rtt, interval=interval, reached=reached
        ):
            changes = links.received(
                pid,
                link,
                now,
                rtt_sample=rtt,
                expected_interval=interval,
                heartbeat=True,
                reached=reached,
            )
            if changes:
                self._link_changes(changes)
        if not self._steady_report(pid, peer, hb, wall_ms):
            self._take_report(pid, peer, hb, wall_ms)

    def _steady_report(self, pid: int, peer: _Peer, hb: Heartbeat, wall_ms: int) -> bool:
        """`_take_report` for a heartbeat that reports what the previous one did (design §3.14,
        "as built (fast-core)"): True when done so, with exactly `_take_report`'s updates (the
        name, the clock skew, the report's time; an evaluation when the repeated report had
        gone stale); False when `_take_report` must run (then nothing was touched).

        Taken only when: votes, expected votes, quorate, tie-breaker and configuration version
        equal the last ones, neither this heartbeat nor the last one carried an expected-votes
        override, the peer's clock was and is within the skew bound, heard, view and proposal
        equal the last ones taken and membership still keeps that report."""
        raw = peer.raw
        if (
            raw is None
            or hb.expected_set is not None
            or peer.expected_set is not None
            or peer.skewed
            or hb.votes != peer.votes
            or hb.expected_votes != peer.expected
            or hb.quorate != peer.quorate
            or hb.tie_breaker != peer.tie_breaker
            or hb.config_version != peer.config_version
        ):
            return False
        skew = hb.wall_ms - wall_ms
        if abs(skew) > self.config.clock_skew_bound * 1000:
            return False
        heard, view, proposal = raw
        if not (
            (hb.heard is heard or hb.heard == heard)
            and (hb.view is view or hb.view == view)
            and (hb.proposal is proposal or hb.proposal == proposal)
        ):
            return False
        moved = self.membership.refresh(pid, self._now)
        if moved is None:
            return False  # no report kept (nothing refreshed): _take_report makes one
        peer.name, peer.wall_skew_ms = hb.node_name, skew
        if moved and self._evaluate_at is None:
            self._evaluate_at = self._now + EVALUATE_DELAY
        return True

    def _take_report(self, pid: int, peer: _Peer, hb: Heartbeat, wall_ms: int) -> None:
        """What a fresh heartbeat reports: votes, expected votes, its clock, its membership."""
        wire_set = hb.expected_set
        expected_set = None if wire_set is None else _expected_set(wire_set)
        changed = (
            hb.votes != peer.votes
            or hb.expected_votes != peer.expected
            or hb.quorate != peer.quorate
            or expected_set != peer.expected_set
            or hb.tie_breaker != peer.tie_breaker
        )
        if changed:
            peer.votes, peer.expected, peer.quorate = hb.votes, hb.expected_votes, hb.quorate
            peer.expected_set, peer.tie_breaker = expected_set, hb.tie_breaker
        peer.name = hb.node_name
        if hb.config_version != peer.config_version:
            peer.config_version, changed = hb.config_version, True
        if changed and pid in self.membership.view.members:
            self._update_quorum()
        skew = hb.wall_ms - wall_ms
        if peer.skewed or abs(skew) > self.config.clock_skew_bound * 1000:
            self._clock_check(pid, peer, hb.wall_ms, wall_ms)
        else:
            peer.wall_skew_ms = skew  # within the bound, as before: nothing to say
        raw = (hb.heard, hb.view, hb.proposal)
        moved = self.membership.refresh(pid, self._now) if raw == peer.raw else None
        if moved is None:
            peer.raw = raw
            heard, view, proposal = frozenset(hb.heard), _member_view(hb.view), hb.proposal
            report = PeerReport(heard, view, _member_view(proposal))
            moved = self.membership.peer_report(pid, report, self._now)
        if moved and self._evaluate_at is None:
            self._evaluate_at = self._now + EVALUATE_DELAY

    def _left(self, pid: int, peer: _Peer, incarnation: int, reason: str) -> None:
        """A clean shutdown: not heard from now on, re-evaluate at once (no failure timeout)."""
        # Its datagrams are ignored for a failure timeout (reordered ones); after that, the same
        # life is heard again once it echoes a stamp sent since: a Leave forged by a member
        # holding the key costs the real node one failure timeout, not its place until restart.
        peer.left, peer.left_at, peer.verified, peer.stamp_us = incarnation, self._now, False, 0
        peer.echo_floor_us = int(self._now * 1e6)
        self.membership.forget(pid)
        self.links.peer_left(pid)
        why = f"node {pid} left: {reason[:100] or 'shutdown'}"
        self._emit(EventKind.PEER_LEFT, why, peer=pid)
        self._evaluate_at = self._now

    def _stop(self, reason: str) -> None:
        """Say Leave on every link each peer has, once; then handle nothing more."""
        self._say_leave(reason)

    def _say_leave(self, reason: str) -> None:
        self._stopped = True
        by_link: dict[int, list[int]] = {}
        for pid in sorted(self.peers):
            for link in self.links.peer_links(pid):
                by_link.setdefault(link, []).append(pid)
        for link, peers in sorted(by_link.items()):
            self._out.append(Broadcast(link, tuple(peers), Leave(reason)))

    # ------------------------------------------------------------ run-time changes (§3.9)
    def _reconfigure(self, ev: Reconfigure) -> None:
        """Apply a new configuration without a restart, or refuse it with one line (design
        §3.9, "Run-time changes"); never raises (the runtime would stop the agent)."""
        self.reconfigure_refusal = self._config_refusal(ev)
        if self.reconfigure_refusal:
            self._emit(EventKind.CONFIG_REFUSED, self.reconfigure_refusal, version=ev.version)
            return
        if not ev.member:
            self._remove_self(ev.version)
            return
        old = self.config
        if ev.config == old and ev.version in (0, self.config_version):
            return  # nothing new
        options, restart = runtime_options(old.quorum, ev.config.quorum)
        new = replace(ev.config, quorum=options)
        old_peers = {p.node_id: p for p in old.peers}
        new_peers = {p.node_id: p for p in new.peers}
        added = tuple(sorted(set(new_peers) - set(old_peers)))
        removed = tuple(sorted(set(old_peers) - set(new_peers)))
        jump = self._jump(ev.version)
        before = _quorum_inputs(old, self._device_votes())
        old_version = self.config_version
        self.config, self._listed = new, {p.node_id: p.votes for p in new.peers}
        self.config_version = ev.version or self.config_version
        changed = _changed(old, new, bool(added or removed))
        restart += _bind_changes(old, new)
        why = f"configuration version {ev.version} applied" if ev.version else "new configuration"
        details: dict[str, Any] = {"version": ev.version, "old_version": old_version}
        details |= {"added": list(added), "removed": list(removed)}
        self._emit(
            EventKind.CONFIG_CHANGED,
            f"{why}: {', '.join(changed) or 'no change that matters to quorum'}",
            changed=list(changed),
            restart_needed=list(restart),
            **details,
        )
        self._out.append(ConfigApplied(new, ev.version, added, removed, restart))
        # The longer transition span of the old and the new timing: a size change re-sizes the
        # interval, and nodes still at the old version run at the old one (design §3.14).
        span = transition_span(self.timing)
        self._apply_parts(old, new, removed)
        span = max(span, transition_span(self.timing))
        self._reconfigure_qdevice(old.qdevice, new.qdevice, bool(added or removed))
        moved = jump or before != _quorum_inputs(new, self._device_votes())
        until = self._now + span if moved else None
        self._quorum_events(
            self.quorum.reconfigure(
                new.configured_votes(),
                self._now,
                options=options,
                qdevice_votes=self._device_votes() if new.qdevice else 0,
                transition_until=until,
                jump=jump,
                inp=self._quorum_input()[0],
            )
        )
        self._update_quorum()
        self._evaluate_at = self._now  # the view without removed nodes, with added ones
        if self._started:
            self._step()

    def _config_refusal(self, ev: Reconfigure) -> str | None:
        """Why `ev` cannot be applied (None: it can)."""
        if ev.version and ev.version < self.config_version:
            return (
                f"configuration version {ev.version} is older than the applied version "
                f"{self.config_version}; nothing changed"
            )
        if not ev.member:
            return None
        new = ev.config
        if new.node_id != self.node_id:
            return (
                f"node_id {new.node_id} differs from the running node {self.node_id}: the node "
                "id is node-local and cannot change at run time; restart with the new node.toml"
            )
        if new.cluster_name != self.config.cluster_name:
            return (
                f'cluster name "{new.cluster_name}" differs from the running '
                f'"{self.config.cluster_name}": a cluster cannot be renamed at run time'
            )
        try:
            new.validate()
        except ConfigError as exc:
            return f"configuration refused: {exc}"
        return None

    def _jump(self, version: int) -> str:
        """Why the versions in between are unknown ("" when this is the next one)."""
        if version and self.config_version and version > self.config_version + 1:
            return (
                f"version {version} applied after {self.config_version}, the configurations "
                "in between are unknown"
            )
        return ""

    def _apply_parts(self, old: AgentConfig, new: AgentConfig, removed: tuple[int, ...]) -> None:
        """Hand the new configuration to the link layer and membership."""
        timing = new.run_timing  # a new size may stretch the interval (design §3.14)
        if timing != self.timing:
            self.timing = timing
            self.links.set_timing(timing)
            self.membership.set_timing(timing)
            self._failure_timeout = timing.failure_timeout
            self._heartbeat_interval = timing.heartbeat_interval
            self._timeouts_at, self._phased = self._now, False  # re-size and re-align now
        if new.links != old.links:
            self.links.set_local(new.links)
        for pid in removed:
            self._forget_peer(pid)
        if self._started:
            for peer in new.peers:
                self._removed.discard(peer.node_id)
                self._peer_addresses(peer.node_id, frozenset(i for i, _, _ in peer.addresses))
        self._link_changes(self.links.tick(self._now))

    def _forget_peer(self, pid: int) -> None:
        """A node removed from the configuration: no state, no votes; its datagrams dropped."""
        self.peers.pop(pid, None)
        self.links.remove_peer(pid)
        self.membership.forget(pid)
        self._missing_since.pop(pid, None)
        self._removed.add(pid)

    def _reconfigure_qdevice(
        self, old: QdeviceConfig | None, new: QdeviceConfig | None, nodes_changed: bool
    ) -> None:
        """Another device (or none): stop counting the old session's vote and ask for a new
        session; a new node list only: tell the running session."""
        restart = _device_identity(old) != _device_identity(new)
        if restart and (self.qdevice_connected or self.qdevice_votes or self.qdevice_ring):
            self._qdevice(QdeviceVote(False, False, "qdevice settings changed: new session"))
        if restart:
            self._last_qdevice_update = None  # the new session needs the current view
        if restart or (nodes_changed and new is not None):
            nodes = tuple(sorted(self.config.configured_votes()))
            self._out.append(QdeviceReconfigure(new, nodes, restart))

    def _remove_self(self, version: int) -> None:
        """Not in the applied configuration: say so loudly, say Leave, stop counting, stop."""
        reason = (
            f"removed from the cluster configuration (version {version}): this node takes no "
            "part; run `votemesh leave`, or add it again"
        )
        self._emit(EventKind.REMOVED_FROM_CLUSTER, reason, version=version)
        self._say_leave("removed from the cluster configuration")
        self._removed_reason = reason
        self._quorum_events(self.quorum.disable(reason, self._now))
        self._out.append(Removed(reason, version))

    def _views_text(self) -> str:
        """The status's `views`: forming, halted (ring ids not durable) or removed."""
        if self._removed_reason:
            return f"removed: {self._removed_reason}"
        return f"halted: {self._store_error}" if self._store_error else "forming"

    def _clock_check(self, pid: int, peer: _Peer, their_wall_ms: int, our_wall_ms: int) -> None:
        skew = their_wall_ms - our_wall_ms
        peer.wall_skew_ms = skew
        bound_ms = self.config.clock_skew_bound * 1000
        skewed = abs(skew) > bound_ms
        if skewed and not peer.skewed:
            reason = (
                f"node {pid}'s clock differs by {skew / 1000:+.3f} s (bound {bound_ms / 1000} s)"
            )
            self._emit(EventKind.CLOCK_SKEW, reason, peer=pid, skew_ms=skew)
        peer.skewed = skewed

    def _qdevice(self, ev: QdeviceVote) -> None:
        votes = self._device_votes() if ev.vote and ev.connected else 0
        ring = ev.ring if ev.connected else None
        if ev.connected != self.qdevice_connected:
            kind = EventKind.QDEVICE_CONNECTED if ev.connected else EventKind.QDEVICE_DISCONNECTED
            self._emit(kind, ev.reason)
            self.qdevice_connected = ev.connected
        changed = (votes, ring) != (self.qdevice_votes, self.qdevice_ring)
        if votes != self.qdevice_votes:
            self._emit(EventKind.QDEVICE_VOTE_CHANGED, ev.reason, votes=votes)
        self.qdevice_votes, self.qdevice_ring = votes, ring
        if changed:
            self._update_quorum()

    def _device_votes(self) -> int:
        q = self.config.qdevice
        if q is None:
            return 0
        if q.votes is not None:
            return q.votes
        if q.algorithm == "lms":
            return max(1, sum(self.config.configured_votes().values()) - 1)
        return 1

    # ------------------------------------------------------------ the periodic step
    def _step(self) -> None:
        self._align_rounds()
        if self._now >= self._timeouts_at:
            self._timeouts_at = self._now + TIMEOUT_REFRESH
            timing = self.timing
            for pid, p in self.peers.items():
                timeout = timing.failure_timeout_at(self.links.receive_loss(pid))
                if timeout != p.timeout:
                    p.timeout = timeout
                    self._heard_moved(pid, p)
                self.links.set_timeout(pid, p.timeout)
        self._link_changes(self.links.tick(self._now))
        heard = self._heard()  # O(N): once per step (a heartbeat round, a timeout, a change)
        heard_changed = self.membership.set_heard(heard, self._now)
        due = self._evaluate_at is not None and self._evaluate_at <= self._now
        # A peer no longer heard is evaluated at once (not after EVALUATE_DELAY): the view that
        # drops it installs in the same step as the quorum change it causes, so quorum_lost
        # names the new view's members (events, hooks, MQTT), not the old one's.
        if heard_changed or due or not self._evaluated:
            # Only when an input changed: see Membership.evaluate, "When to evaluate".
            self._evaluate_at, self._evaluated = None, True
            changes = self.membership.evaluate(self._now)
            self._membership_changes(changes)
        self._persist_seq()  # nothing carries a ring id above the durable one (S2)
        hold_at = self._hold_deadline()
        if heard_changed or (hold_at is not None and hold_at <= self._now):
            self._update_quorum()  # quorum counts only members it hears (design §3.4)
        quorum_at = self.quorum.next_deadline()
        if quorum_at is not None and quorum_at <= self._now:
            self._quorum_events(self.quorum.tick(self._now))
        if self._holding():
            if self._store_error:  # halted: the rounds pass unsent (no busy wake-ups)
                self.links.due_sends(self._now)
            return  # heartbeats and probes wait for MaxSeqStored
        self._send_due(heard)

    def _align_rounds(self) -> None:
        """Put heartbeat rounds on whole multiples of the interval in wall-clock time (Links
        `set_phase`); re-aligned when the wall clock moved by more than 5 ms (NTP steps)."""
        interval = self.timing.heartbeat_interval
        phase = (self._now - self._wall_ms / 1000) % interval
        drift = abs(phase - self._phase)
        if min(drift, interval - drift) > PHASE_TOLERANCE or not self._phased:
            self._phase, self._phased = phase, True
            self.links.set_phase(phase)

    def _persist_seq(self) -> None:
        """Ask the runtime to store max_seq (again every second after a failure)."""
        seq = self.membership.max_seq
        retry = self._retry_store_at is not None and self._now >= self._retry_store_at
        if seq > self._asked_seq or (retry and seq > self._durable_seq):
            self._asked_seq = seq
            self._retry_store_at = None
            self._out.append(PersistMaxSeq(seq))

    def _holding(self) -> bool:
        """A ring sequence above the durable one exists: nothing may leave (design §3.3,
        "Durable before announced")."""
        return self.membership.max_seq > self._durable_seq

    def _stored(self, ev: MaxSeqStored) -> None:
        """The runtime's answer to PersistMaxSeq: go on, or stop forming views and say why."""
        if ev.error:
            self._retry_store_at = self._now + TIMEOUT_REFRESH
            if not self._store_error:
                self._store_error = ev.error
                why = (
                    f"cannot make ring sequence {ev.value} durable ({ev.error}): this node "
                    "announces no view until it can; free the state directory"
                )
                self._emit(EventKind.VIEWS_HALTED, why, max_seq=ev.value, error=ev.error)
                self._update_quorum()
            return
        self._durable_seq = max(self._durable_seq, ev.value)
        self.membership.durable_seq = self._durable_seq
        if self._qdevice_due and not self._holding() and not self._store_error:
            self._qdevice_due = False
            self._update_quorum()  # the QdeviceUpdate held back while the seq was not durable
        self._evaluate_at = self._now  # a proposal waiting for this may install now
        if self._store_error and not self._holding():
            self._store_error, self._retry_store_at = "", None
            why = f"ring sequence {self._durable_seq} is durable again"
            self._emit(EventKind.VIEWS_RESUMED, why, max_seq=self._durable_seq)
            self._update_quorum()
        if self._started:
            self._step()

    def _heard(self) -> frozenset[int]:
        """Peers whose heartbeats arrived within the failure timeout (design §3.1). Not the link
        layer's notion of "a link is up": a probed link stays up for link_timeout, which would
        keep a dead peer in the view for seconds."""
        now = self._now
        return frozenset(
            pid for pid, p in self.peers.items() if p.verified and now < p.received_at + p.timeout
        )

    def _heard_expiry(self, horizon: float | None = None) -> float | None:
        """When the next heard peer stops being heard (the node must re-evaluate then): the
        earliest `received_at + timeout` of a verified peer after now, where it comes before
        `horizon` (else a lower bound at or after it, which does not change the minimum).

        Per verified peer `_heard_by` holds a lower bound: a heartbeat only moves the expiry
        later, so it pushes nothing unless the peer had no bound (O(1)); a bound that reaches
        the top is replaced by the real expiry (O(log N)), a peer no longer heard is dropped."""
        bounds, peers, now = self._heard_by, self.peers, self._now
        while (first := bounds.first()) is not None:
            at, pid = first
            if horizon is not None and at >= horizon:
                return at
            p = peers.get(pid)
            expiry = p.received_at + p.timeout if p is not None and p.verified else math.inf
            if expiry == at and now < at:
                return at
            bounds.replace_first(expiry if now < expiry else math.inf)
        return None

    def _heard_moved(self, pid: int, p: _Peer) -> None:
        """A verified peer's heard expiry moved: a new bound only if it had none or it moved
        earlier (a shorter timeout, another life)."""
        if p.verified:
            expiry = p.received_at + p.timeout
            bound = self._heard_by.at.get(pid)
            if bound is None or expiry < bound:
                self._heard_by.set(pid, expiry)

    def _send_due(self, heard: frozenset[int]) -> None:
        """Heartbeats and probes due now. `heard`: `_heard()` of this step (no peer's state
        changed since it was computed)."""
        by_link, hedges, probes = self.links.due_round(self._now)
        for due in probes:
            probe = Probe(link=due.link, stamp_us=int(self._now * 1e6))
            self._out.append(SendTo(due.peer, due.link, probe))
        for link, peers in sorted(by_link.items()):
            beat = self._heartbeat_for(link, heard)
            self._out.append(Broadcast(link, tuple(sorted(peers)), beat))
        for link, peers in sorted(hedges.items()):
            hedge = self._heartbeat_for(link, heard, hedge=True)
            self._out.append(Broadcast(link, tuple(sorted(peers)), hedge))

    def _heartbeat_for(self, link: int, heard: frozenset[int], *, hedge: bool = False) -> Heartbeat:
        """Stamps are odd on the active link and even (1 us older) on a hedge copy (design
        §3.6): the echo then tells which copy reached the peer, and where both did the active
        one counts (the older copy is dropped as not newer, or overtaken by it)."""
        proposal = self.membership.proposal
        ring = (proposal.ring_id.representative, proposal.ring_id.seq)
        self.quorum.proposed(ring, proposal.members)  # before the tie-breaker is reported
        now_us = int(self._now * 1e6) | 1
        stamp = now_us - 1 if hedge else now_us
        echoes = []
        now, timeout = self._now, self._failure_timeout
        for pid, p in sorted(self.peers.items()):
            theirs = p.stamp_us
            if theirs and now - p.received_at < timeout:
                held = now_us - int(p.received_at * 1e6)
                echoes.append(_echo(pid, theirs, held if held > 0 else 0))  # max(0, held)
        return Heartbeat(
            link=link,
            stamp_us=stamp,
            wall_ms=max(0, self._wall_ms),
            heard=self._heard_tuple(heard),
            view=self._wire(self.membership.view),
            proposal=self._wire(self.membership.proposal),
            echoes=tuple(echoes),
            votes=self.config.quorum.votes,
            config_version=self.config_version,
            # within the decode bound, or every peer would drop our heartbeats (bad_value)
            expected_votes=min(self.quorum.reported_expected, EXPECTED[1]),
            node_name=self.config.node_name,
            quorate=self._settled_quorate(),
            expected_set=_wire_expected_set(self.quorum.expected_set),
            tie_breaker=self.quorum.tie_breaker,
        )

    def _heard_tuple(self, heard: frozenset[int]) -> tuple[int, ...]:
        """`heard` as sent (sorted), the same tuple object while the set is unchanged: a
        receiver that compares it with the last one it took (`_steady_report`, the simulator
        shares the object) finds it identical at once instead of item by item."""
        if heard != self._heard_sent[0]:
            self._heard_sent = (heard, tuple(sorted(heard)))
        return self._heard_sent[1]

    def _wire(self, view: MemberView) -> View:
        """The wire form of the installed view or the proposal, made once per view: the same
        object round after round (a receiver that compares with the last one it got, as the
        simulator's nodes do, then finds them identical at once)."""
        cached = self._wire_views.get(view)
        if cached is None:
            if len(self._wire_views) >= 2:
                self._wire_views.clear()
            cached = self._wire_views[view] = _wire_view(view)
        return cached

    def _settled_quorate(self) -> bool:
        status = self.quorum.status
        return status.quorate and "WaitForAllStatus" not in status.flags

    # ------------------------------------------------------------ changes -> events
    def _link_changes(self, changes: list[LinkChange]) -> None:
        for c in changes:
            if isinstance(c, LinkUp):
                self._emit(EventKind.LINK_UP, c.reason, peer=c.peer, link=c.link)
            elif isinstance(c, LinkDown):
                self._emit(EventKind.LINK_DOWN, c.reason, peer=c.peer, link=c.link)
            elif isinstance(c, ActiveLinkChanged) and c.new is not None:
                self._emit(EventKind.LINK_UP, c.reason, peer=c.peer, link=c.new, active=True)
            elif isinstance(c, PeerReachable):
                self._emit(EventKind.PEER_REACHABLE, c.reason, peer=c.peer)
            elif isinstance(c, PeerSuspected):
                self._emit(EventKind.PEER_SUSPECTED, c.reason, peer=c.peer)
            elif isinstance(c, PeerUnreachable):
                self._emit(EventKind.PEER_LOST, c.reason, peer=c.peer)

    def _membership_changes(self, changes: list[MembershipChange]) -> None:
        for c in changes:
            if isinstance(c, ViewInstalled):
                v = c.view
                for pid in c.left:
                    self._missing_since.setdefault(pid, self._now)
                for pid in v.members:
                    self._missing_since.pop(pid, None)
                self._emit(
                    EventKind.VIEW_INSTALLED,
                    c.reason,
                    ring_id=[v.ring_id.representative, v.ring_id.seq],
                    ring=ring_text(v.ring_id.representative, v.ring_id.seq),
                    members=sorted(v.members),
                    joined=sorted(c.joined),
                    left=sorted(c.left),
                )
                self._update_quorum()

    def _basis(self) -> Basis:
        """What quorum counts now: one rule for every moment (design §3.4).

        * settled: the device's unrevoked ACK is for the installed view and the node hears
          every member: that view and the device votes;
        * held: the node holds an unrevoked ACK for an earlier view (or no longer hears a member
          of the acked view) for less than `_sync_timeout()`: the acked view's whole member set
          and the device votes, as before the change;
        * heard: otherwise the members of the installed view that the node hears (itself
          included), without the device votes."""
        view = self.membership.view
        key = (view.ring_id.representative, view.ring_id.seq)
        if self._store_error:  # peers stop hearing us: count nobody but ourselves
            self._unsettled_since = None
            return Basis(key, frozenset({self.node_id}), 0, "heard", "ring id not stored")
        heard = self._heard() | {self.node_id}
        known = frozenset(self.peers) | {self.node_id}  # a removed node never counts
        ring = self.qdevice_ring
        acked = self._views.get(ring) if ring is not None else None
        device = self._device_votes()
        if acked is None or ring is None:
            self._unsettled_since = None
        elif ring == key and view.members <= heard:
            self._unsettled_since = None
            return Basis(
                key, view.members, device, "settled", f"device ACK for ring {ring_text(*key)}"
            )
        else:
            if self._unsettled_since is None:
                self._unsettled_since = self._now
            if self._now < self._unsettled_since + self._sync_timeout():
                held, now_ring = ring_text(*ring), ring_text(*key)
                why = f"holding ring {held} and its device ACK while ring {now_ring} settles"
                return Basis(ring, acked & known, device, "held", why)
        counted = view.members & heard
        if counted != view.members & known and self._majority(counted):
            # A majority of the view is heard: count the agreed view itself until the next
            # one is installed, so that votequorum's history (auto_tie_breaker's last quorate
            # view, its previous view) only ever holds agreed views (sim seed 153).
            counted = view.members & known
        missing = sorted(view.members - counted)
        why = f"not hearing {missing}" if missing else f"ring {ring_text(*key)}"
        return Basis(key, counted, 0, "heard", why)

    def _majority(self, members: frozenset[int]) -> bool:
        """These members' votes are more than half of the expected votes."""
        return 2 * sum(self._votes_of(m) for m in members) > self.quorum.reported_expected

    def _sync_timeout(self) -> float:
        """How long a held ACK may be counted after the node stopped being settled on it: the
        time the members need to agree on a new view ((agreement_rounds + 1) heartbeats) plus
        the device's answer time, `qdevice.sync_timeout`."""
        q = self.config.qdevice
        if q is None:
            return 0.0
        timing = self.timing
        return (timing.agreement_rounds + 1) * timing.heartbeat_interval + q.sync_timeout

    def _hold_deadline(self) -> float | None:
        """When a held device ACK stops counting (the node must re-count then), else None."""
        if self._unsettled_since is None or self.basis.kind != "held":
            return None
        return self._unsettled_since + self._sync_timeout()

    def _update_quorum(self) -> None:
        view = self.membership.view
        view_key = (view.ring_id.representative, view.ring_id.seq)
        inp, sets = self._quorum_input()
        self._quorum_events(self.quorum.update(inp, self._now))
        for m, sent in sorted(sets.items(), key=lambda item: item[1].key):
            self._quorum_events(self.quorum.receive_expected_set(sent, m, self._now))
        key, members = view_key, view.members
        update = QdeviceUpdate(key, tuple(sorted(members)), self.quorum.status.quorate)
        if self._holding() or self._store_error:
            self._qdevice_due = True  # the ring id may not be durable yet: sent once it is
            return
        if update != self._last_qdevice_update:  # the session only needs changes
            self._last_qdevice_update = update
            self._out.append(update)

    def _quorum_input(self) -> tuple[QuorumInput, dict[int, ExpectedSet]]:
        """What quorum counts now (the basis, announced when it changed) as votequorum's
        input, and the members' expected-votes overrides."""
        view = self.membership.view
        view_key = (view.ring_id.representative, view.ring_id.seq)
        self._views[view_key] = view.members
        while len(self._views) > VIEWS_REMEMBERED:
            del self._views[next(iter(self._views))]
        basis, before = self._basis(), self.basis
        self.basis = basis
        if before.members and (basis.kind, basis.members, basis.device_votes) != (
            before.kind,
            before.members,
            before.device_votes,
        ):  # (the first basis, at start, is no change)
            self._emit(
                EventKind.QUORUM_COUNTS_CHANGED,
                basis.why,
                basis=basis.kind,
                counted=sorted(basis.members),
                device_votes=basis.device_votes,
            )
        members = basis.members
        votes = {m: self._votes_of(m) for m in members}
        expected = {m: self.peers[m].expected for m in members if self._same_config(m)}
        expected[self.node_id] = self.quorum.reported_expected
        heard = self._heard()
        settled = frozenset(
            m for m in members if m in heard and m in self.peers and self.peers[m].quorate
        )
        sets = {m: s for m in members if m in self.peers and (s := self.peers[m].expected_set)}
        inp = QuorumInput(
            members,
            votes,
            expected,
            basis.device_votes,
            basis.ring,
            quorate_members=settled,
            member_set_keys={m: s.key for m, s in sets.items()},
            member_tie_breakers={m: self.peers[m].tie_breaker for m in members if m in self.peers},
        )
        return inp, sets

    def _set_expected(self, value: int | None) -> None:
        """The operator's `expected N` / `reset`: `expected_refusal` says why if refused."""
        self.expected_refusal = None
        self._quorum_events(self.quorum.set_expected(value, self._now))

    def _has_node_list(self) -> bool:
        """The configuration names every member: it lists peers, or it is a cluster
        configuration (a version is known; a one-node cluster lists none). Discovery then only
        proposes addresses of listed nodes (design §3.9)."""
        return bool(self._listed) or self.config_version > 0

    def _same_config(self, member: int) -> bool:
        """The member runs our configuration version (or versions are unknown): only then do
        its expected votes count here (design §3.9: a report from before or after a change is
        about another total)."""
        peer = self.peers.get(member)
        if peer is None:
            return False
        return not self.config_version or peer.config_version in (0, self.config_version)

    def _votes_of(self, member: int) -> int:
        """Our configuration's votes for a configured node (not what it reports: design §3.9,
        "Counting rule"); 0 for a node not in a configured node list; the votes a discovered
        node reports only when there is no node list (discovery-only)."""
        if member == self.node_id:
            return self.config.quorum.votes
        listed = self._listed.get(member)
        if listed is not None:
            return listed
        if self._has_node_list():
            return 0
        return self.peers[member].votes if member in self.peers else 1

    def _quorum_events(self, changes: list[QuorumChange]) -> None:
        status = self.quorum.status
        for c in changes:
            if isinstance(c, QuorumGained):
                self._emit(EventKind.QUORUM_GAINED, c.reason, **self._verdict(status))
            elif isinstance(c, QuorumLost):
                self._emit(EventKind.QUORUM_LOST, c.reason, **self._verdict(status))
            elif isinstance(c, ExpectedVotesChanged):
                self._emit(EventKind.EXPECTED_VOTES_CHANGED, c.reason, old=c.old, new=c.new)
            elif isinstance(c, ExpectedRefused):
                self.expected_refusal = c.reason
                self._emit(EventKind.EXPECTED_VOTES_REFUSED, c.reason, value=c.value)

    @staticmethod
    def _verdict(status: Any) -> dict[str, Any]:
        return {
            "expected_votes": status.expected_votes,
            "total_votes": status.total_votes,
            "quorum": status.quorum,
        }

    def _emit(self, kind: EventKind, reason: str, **details: Any) -> None:
        self._out.append(Emit(AgentEvent(kind, reason, details, self._now)))
        if kind in _TRANSITIONS:
            ring = self.membership.view.ring_id
            quorate = self.quorum.status.quorate
            self._transitions.append(
                (self._now, str(kind), reason, ring_text(ring.representative, ring.seq), quorate)
            )

    # ------------------------------------------------------------ status
    def status(self, now: float) -> dict[str, Any]:
        """The `votemesh status --json` document (schema 1): `to_json(self.snapshot(now))`."""
        doc: dict[str, Any] = to_json(self.snapshot(now))
        return doc

    def snapshot(self, now: float) -> NodeStatus:
        """The typed status (agent/status.py); the runtime adds `runtime` and qdevice details."""
        view, verdict, cfg = self.membership.view, self.quorum.status, self.config
        configured = {p.node_id: p for p in cfg.peers}
        expected = [verdict.expected_votes, self.quorum.reported_expected]
        expected += [p.expected for pid, p in self.peers.items() if pid in self.basis.members]
        peers = []
        for pid in sorted(set(configured) | set(self.peers)):
            heard, conf = self.peers.get(pid), configured.get(pid)
            since = self._missing_since.get(pid)
            peers.append(
                PeerInfo(
                    node_id=pid,
                    name=(heard.name if heard and heard.name else conf.name if conf else ""),
                    votes=self._votes_of(pid) if heard or not conf else conf.votes,
                    member=pid in view.members,
                    addresses=tuple(f"{h}:{port}" for _, h, port in sorted(conf.addresses))
                    if conf
                    else (),
                    incarnation=heard.incarnation if heard else 0,
                    clock_skew_ms=heard.wall_skew_ms if heard else None,
                    last_heartbeat_s=round(now - heard.received_at, 3)
                    if heard and heard.stamp_us
                    else None,
                    missing_since_s=None if since is None else round(now - since, 3),
                    failure_timeout_s=round(heard.timeout if heard else self._failure_timeout, 3),
                    active_link=self.links.active_link(pid),
                    links=tuple(LinkInfo(**vars_of(x)) for x in self.links.stats(pid)),
                )
            )
        q = cfg.qdevice
        ring = view.ring_id
        return NodeStatus(
            cluster=cfg.cluster_name,
            node_id=self.node_id,
            node_name=cfg.node_name,
            config_version=self.config_version or None,
            transport="udp",
            secure_auth=True,
            addresses=tuple(f"{x.address}:{x.port}" for x in sorted(cfg.links, key=_index)),
            incarnation=self.incarnation,
            ring_id=(ring.representative, ring.seq),
            members=tuple(sorted(view.members)),
            proposal=tuple(sorted(self.membership.proposal.members)),
            counted=tuple(sorted(self.basis.members)),
            basis=self.basis.kind,
            basis_why=self.basis.why,
            quorate=verdict.quorate,
            expected_votes=verdict.expected_votes,
            highest_expected=max(expected),
            total_votes=verdict.total_votes,
            quorum=verdict.quorum,
            votes=cfg.quorum.votes,
            flags=tuple(sorted(verdict.flags)),
            why=verdict.reason,
            views=self._views_text(),
            durable_max_seq=self._durable_seq,
            qdevice=QdeviceInfo(
                configured=True,
                connected=self.qdevice_connected,
                vote=self.qdevice_votes > 0,
                votes=self._device_votes(),
                algorithm=q.algorithm,
                server=f"{q.host}:{q.port}",
            )
            if q
            else QdeviceInfo(configured=False),
            peers=tuple(peers),
            transitions=tuple(
                Transition(round(now - at, 3), kind, reason, ring_id, quorate)
                for at, kind, reason, ring_id, quorate in self._transitions
            ),
            heartbeat_interval_s=self._heartbeat_interval,
        )


def _index(link: Any) -> int:
    index: int = link.index
    return index


def _quorum_inputs(config: AgentConfig, device_votes: int | None) -> tuple[object, ...]:
    """What the quorum arithmetic depends on: configured votes, expected votes, two_node and
    the device's votes (None: not compared)."""
    q = config.quorum
    return (config.configured_votes(), q.expected_votes, q.two_node, device_votes)


def _changed(old: AgentConfig, new: AgentConfig, nodes: bool) -> tuple[str, ...]:
    """Which parts of the configuration a run-time change touched, for the event."""
    parts = {
        "nodes": nodes,
        "votes": old.configured_votes() != new.configured_votes(),
        "quorum": old.quorum != new.quorum,
        "timing": old.run_timing != new.run_timing,  # a new size may re-size the interval
        "links": old.links != new.links
        or {p.node_id: p.addresses for p in old.peers}
        != {p.node_id: p.addresses for p in new.peers},
        "qdevice": old.qdevice != new.qdevice,
    }
    return tuple(name for name, on in parts.items() if on)


def _bind_changes(old: AgentConfig, new: AgentConfig) -> tuple[str, ...]:
    """Local links whose bind address or port changed: only a restart rebinds them."""
    before = {k.index: (k.address, k.port) for k in old.links}
    return tuple(
        f"link{k.index} bind address"
        for k in sorted(new.links, key=_index)
        if k.index in before and before[k.index] != (k.address, k.port)
    )


def _device_identity(q: QdeviceConfig | None) -> QdeviceConfig | None:
    """The settings that make another session (all but sync_timeout, which the core reads)."""
    return None if q is None else replace(q, sync_timeout=0.0)


_ECHO_NODE = attrgetter("node_id")
_echo = frozen_constructor(Echo)  # Echo(...) without the frozen __init__ (one per peer a round)

_TRANSITIONS = frozenset(
    {
        EventKind.VIEW_INSTALLED,
        EventKind.QUORUM_GAINED,
        EventKind.QUORUM_LOST,
        EventKind.EXPECTED_VOTES_CHANGED,
        EventKind.QUORUM_COUNTS_CHANGED,
        EventKind.VIEWS_HALTED,
        EventKind.VIEWS_RESUMED,
    }
)


def vars_of(stats: Any) -> dict[str, Any]:
    """A LinkStats dataclass as a dict."""
    return {name: getattr(stats, name) for name in stats.__slots__}
