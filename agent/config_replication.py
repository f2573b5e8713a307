"""Replication of the cluster configuration among the members of each view (design §3.9).

Core ring: `ConfigReplica.handle(event, now) -> list[effect]`, no clock, sockets or logging; the
adapter feeds it the node core's installed views and quorum verdict, the messages other replicas
sent, local change requests and a `Tick` every heartbeat interval (it resends what may have been
lost). It owns the committed configuration, the staged proposal and the highest ring taken part
in (durable: `Persist` must reach the disk before any later `Send` is executed). It does not
encode messages for the wire or move large configurations in chunks (design §3.9, next step).

Safety: S4 (never two configurations with the same version), argued in design §3.9 from rules
(a)-(d), which the methods below implement and name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.cluster_config import ClusterConfig, digest, validate
from agent.config import ConfigError


@dataclass(frozen=True, slots=True, order=True)
class Ring:
    """A view's ring id, ordered by (sequence, representative) as design §3.8 orders them."""

    seq: int
    representative: int


@dataclass(frozen=True, slots=True)
class Staged:
    """A proposal this node acknowledged: the value it must carry into later views."""

    ring: Ring
    config: ClusterConfig


# ---- messages between replicas (wire encoding: design §3.9, not built yet) ----


@dataclass(frozen=True, slots=True)
class State:
    """A member's durable state, sent to its view's representative (step 1, and on every Tick)."""

    ring: Ring
    committed: ClusterConfig
    staged: Staged | None


@dataclass(frozen=True, slots=True)
class Sync:
    """A committed configuration for a member that is behind."""

    config: ClusterConfig


@dataclass(frozen=True, slots=True)
class Propose:
    ring: Ring
    config: ClusterConfig


@dataclass(frozen=True, slots=True)
class Ack:
    ring: Ring
    version: int
    digest: bytes


@dataclass(frozen=True, slots=True)
class Commit:
    config: ClusterConfig


@dataclass(frozen=True, slots=True)
class Forward:
    """A change asked on `origin`, for the representative of `ring`."""

    ring: Ring
    request_id: int
    base_version: int
    config: ClusterConfig


@dataclass(frozen=True, slots=True)
class Result:
    request_id: int
    ok: bool
    text: str


Message = State | Sync | Propose | Ack | Commit | Forward | Result


# ---- events and effects ----


@dataclass(frozen=True, slots=True)
class ViewChanged:
    ring: Ring
    members: frozenset[int]


@dataclass(frozen=True, slots=True)
class QuorumInput:
    """The node core's verdict: quorate, votes counted, expected votes."""

    quorate: bool
    votes: int
    expected: int


@dataclass(frozen=True, slots=True)
class ChangeRequested:
    """A local verb asks for `config` as the successor of `base_version`."""

    request_id: int
    base_version: int
    config: ClusterConfig


@dataclass(frozen=True, slots=True)
class Received:
    sender: int
    message: Message


@dataclass(frozen=True, slots=True)
class Tick:
    """Resend what may have been lost (the adapter's heartbeat timer)."""


Event = ViewChanged | QuorumInput | ChangeRequested | Received | Tick


@dataclass(frozen=True, slots=True)
class Send:
    to: int
    message: Message


@dataclass(frozen=True, slots=True)
class Persist:
    """Write these durably before executing any later Send."""

    committed: ClusterConfig
    staged: Staged | None
    promised: Ring | None


@dataclass(frozen=True, slots=True)
class Applied:
    """A newer committed configuration: reconfigure what can change at run time."""

    config: ClusterConfig


@dataclass(frozen=True, slots=True)
class ChangeDone:
    request_id: int
    ok: bool
    text: str


@dataclass(frozen=True, slots=True)
class Conflict:
    """Two configurations with one version met (S4 broken): kept ours, logged as an error."""

    version: int
    ours: bytes
    theirs: bytes


Effect = Send | Persist | Applied | ChangeDone | Conflict

UNKNOWN_OUTCOME = (
    "view changed before every member acknowledged; check config_version and retry if the change "
    "is not applied"
)

NOT_SYNCED = "configuration not synchronised yet in this view; retry"
NO_VIEW = "no view yet; retry"
NOT_TAKING_PART = "this node is not taking part in the current view yet; retry"
SETTLING = frozenset({NOT_SYNCED, NO_VIEW, NOT_TAKING_PART})
"""Refusals that pass by themselves within a round trip or two of a new view (the adapter may
ask again for a moment before it answers the user)."""

ANSWERS_KEPT = 64
"""Results the representative keeps to answer a resent Forward (one per recent change)."""


@dataclass(slots=True)
class _InFlight:
    config: ClusterConfig
    acks: set[int]
    request: tuple[int, int] | None
    """(origin, request_id), None for a re-proposal or the bootstrap."""


@dataclass(slots=True)
class _Leader:
    """The representative's per-ring state."""

    reports: dict[int, State] = field(default_factory=dict)
    converged: bool = False
    ready: bool = False
    inflight: _InFlight | None = None


class ConfigReplica:
    """One node's replica. Start it from disk (`committed`, `staged`, `promised`).

    `bootstrap=False`: a version-0 `committed` is only where to find the cluster (its stored
    state was refused as corrupt), never a bootstrap: as representative this node proposes no
    version 1 from it and waits for a member that holds an agreed configuration (design §3.9)."""

    def __init__(
        self,
        me: int,
        committed: ClusterConfig,
        staged: Staged | None = None,
        promised: Ring | None = None,
        *,
        bootstrap: bool = True,
    ) -> None:
        self.me = me
        self.bootstrap = bootstrap
        self.committed = committed
        self.staged = staged
        self.promised = promised
        self.ring: Ring | None = None
        self.members: frozenset[int] = frozenset()
        self.active = False
        self.quorum = QuorumInput(False, 0, 0)
        self._leader: _Leader | None = None
        self._asked: dict[int, Forward] = {}
        self._answered: dict[tuple[int, int], Result] = {}

    # ---- dispatch ----

    def handle(self, event: Event) -> list[Effect]:
        """Effects of one event. No `now`: the core keeps no timers, `Tick` drives resends."""
        out: list[Effect] = []
        match event:
            case ViewChanged():
                self._on_view(event, out)
            case QuorumInput():
                self.quorum = event
            case ChangeRequested():
                self._on_change(event, out)
            case Received():
                self._receive(event.sender, event.message, out)
            case Tick():
                self._on_tick(out)
        return out

    def _receive(self, sender: int, msg: Message, out: list[Effect]) -> None:
        match msg:
            case State():
                self._on_state(sender, msg, out)
            case Sync() | Commit():
                self._learn(msg.config, out)
            case Propose():
                self._on_propose(sender, msg, out)
            case Ack():
                self._on_ack(sender, msg, out)
            case Forward():
                self._on_forward(sender, msg, out)
            case Result():
                if self._asked.pop(msg.request_id, None) is not None:
                    out.append(ChangeDone(msg.request_id, msg.ok, msg.text))

    def _send(self, to: int, msg: Message, out: list[Effect]) -> None:
        if to == self.me:
            self._receive(to, msg, out)
        else:
            out.append(Send(to, msg))

    def _persist(self, out: list[Effect]) -> None:
        out.append(Persist(self.committed, self.staged, self.promised))

    @property
    def settled(self) -> bool:
        """Nothing here waits for an answer: no change asked on this node and, as the
        representative, a ready view with nothing in flight (the adapter may tick it slower)."""
        leader = self._leader
        return not self._asked and (leader is None or (leader.ready and leader.inflight is None))

    @property
    def is_leader(self) -> bool:
        return self.active and self.ring is not None and self.ring.representative == self.me

    # ---- views (rule c) ----

    def _on_view(self, ev: ViewChanged, out: list[Effect]) -> None:
        if ev.ring == self.ring and ev.members == self.members:
            return
        out.extend(ChangeDone(request_id, False, UNKNOWN_OUTCOME) for request_id in self._asked)
        self._asked.clear()
        self.ring, self.members = ev.ring, ev.members
        self._leader = _Leader() if ev.ring.representative == self.me else None
        self.active = self.promised is None or ev.ring >= self.promised
        if not self.active:
            return
        if self.promised != ev.ring:
            self.promised = ev.ring
            self._persist(out)
        self._report(out)

    def _report(self, out: list[Effect]) -> None:
        if self.ring is None:
            return
        self._send(self.ring.representative, State(self.ring, self.committed, self.staged), out)

    def _on_tick(self, out: list[Effect]) -> None:
        if not self.active or self.ring is None:
            return
        self._report(out)
        for forward in self._asked.values():
            self._send(self.ring.representative, forward, out)
        leader = self._leader
        if leader is not None and leader.inflight is not None:
            for member in sorted(self.members - leader.inflight.acks):
                self._send(member, Propose(self.ring, leader.inflight.config), out)

    # ---- step 1: converge (rule d) ----

    def _on_state(self, sender: int, msg: State, out: list[Effect]) -> None:
        leader = self._leader
        if leader is None or not self.is_leader or msg.ring != self.ring:
            return
        if sender not in self.members:
            return
        leader.reports[sender] = msg
        if leader.converged:
            if msg.committed.version < self.committed.version:
                self._send(sender, Sync(self.committed), out)
            return
        if set(leader.reports) == self.members:
            leader.converged = True
            self._converge(leader, out)

    def _converge(self, leader: _Leader, out: list[Effect]) -> None:
        best = max((r.committed for r in leader.reports.values()), key=lambda c: c.version)
        self._learn(best, out)
        for member, report in sorted(leader.reports.items()):
            if report.committed.version < self.committed.version:
                self._send(member, Sync(self.committed), out)
        staged = [
            r.staged
            for r in leader.reports.values()
            if r.staged is not None and r.staged.config.version == self.committed.version + 1
        ]
        if staged:
            self._propose(leader, max(staged, key=lambda s: s.ring).config, None, out)
        elif self.committed.version == 0:
            # Only a bootstrap that lists every member of the view: a file without the others
            # (discovery only) would otherwise commit a version 1 that removes them.
            if self.bootstrap and self.members <= set(self.committed.votes()):
                self._propose(leader, self.committed.with_version(1), None, out)
        else:
            leader.ready = True

    # ---- step 2: changes ----

    def _on_change(self, ev: ChangeRequested, out: list[Effect]) -> None:
        reason = self._refusal(ev)
        if reason is not None or self.ring is None:
            out.append(ChangeDone(ev.request_id, False, reason or NO_VIEW))
            return
        forward = Forward(self.ring, ev.request_id, ev.base_version, ev.config)
        self._asked[ev.request_id] = forward
        self._send(self.ring.representative, forward, out)

    def _refusal(self, ev: ChangeRequested) -> str | None:  # noqa: PLR0911 - one line per reason
        q = self.quorum
        if not q.quorate:
            need = max(q.votes, 1)
            return (
                f"not quorate: {q.votes} of {q.expected} votes; "
                f"use `votemesh expected {need}` to force"
            )
        if not self.active:
            return NOT_TAKING_PART
        if self.committed.version == 0:
            return "the cluster configuration is not agreed yet (version 0); start every node"
        if self._asked:
            return "another configuration change is in progress; retry"
        if ev.base_version != self.committed.version:
            return f"configuration changed meanwhile (now version {self.committed.version}); retry"
        try:
            validate(ev.config.with_version(ev.base_version + 1))
        except ConfigError as exc:
            return str(exc)
        return None

    def _on_forward(self, sender: int, msg: Forward, out: list[Effect]) -> None:
        key = (sender, msg.request_id)
        if key in self._answered:
            self._send(sender, self._answered[key], out)
            return
        leader = self._leader
        if leader is not None and leader.inflight is not None and leader.inflight.request == key:
            return
        text = self._leader_refusal(sender, msg)
        if text is not None or leader is None:
            self._send(sender, Result(msg.request_id, False, text or "view changed; retry"), out)
            return
        self._propose(leader, msg.config.with_version(msg.base_version + 1), key, out)

    def _leader_refusal(self, sender: int, msg: Forward) -> str | None:
        leader = self._leader
        # a sender outside the view: one ring id names one member set (S2), so not this ring
        if (
            leader is None
            or not self.is_leader
            or msg.ring != self.ring
            or sender not in self.members
        ):
            return "view changed; retry"
        if leader.inflight is not None:  # before `ready`, which is False while one is in flight
            return "another configuration change is in progress; retry"
        if not leader.ready:
            return NOT_SYNCED
        if msg.base_version != self.committed.version:
            return f"configuration changed meanwhile (now version {self.committed.version}); retry"
        have, need, total = self._majority()
        if have < need:
            return (
                f"a configuration change needs {need} of the {total} configured votes, "
                f"this view holds {have}; bring nodes back"
            )
        return None

    def _majority(self) -> tuple[int, int, int]:
        """(votes of C_v's nodes in this view, votes needed, C_v's total) — rule (a). Version 0
        (a bootstrap) needs every voting node of the representative's file."""
        votes = self.committed.votes()
        total = sum(votes.values())
        have = sum(v for n, v in votes.items() if n in self.members)
        need = total if self.committed.version == 0 else total // 2 + 1
        return have, max(need, 1), total

    # ---- step 3: propose, ack, commit (rules a, b) ----

    def _propose(
        self,
        leader: _Leader,
        config: ClusterConfig,
        request: tuple[int, int] | None,
        out: list[Effect],
    ) -> None:
        have, need, _ = self._majority()
        if have < need or self.ring is None:
            return
        leader.ready = False
        leader.inflight = _InFlight(config, set(), request)
        for member in sorted(self.members):
            self._send(member, Propose(self.ring, config), out)

    def _on_propose(self, sender: int, msg: Propose, out: list[Effect]) -> None:
        if not self.active or msg.ring != self.ring or sender != msg.ring.representative:
            return
        if self.committed.version != msg.config.version - 1:
            return
        if self.staged is None or self.staged != Staged(msg.ring, msg.config):
            self.staged = Staged(msg.ring, msg.config)
            self._persist(out)
        self._send(sender, Ack(msg.ring, msg.config.version, digest(msg.config)), out)

    def _on_ack(self, sender: int, msg: Ack, out: list[Effect]) -> None:
        leader = self._leader
        if leader is None or leader.inflight is None or msg.ring != self.ring:
            return
        config = leader.inflight.config
        if msg.version != config.version or msg.digest != digest(config):
            return
        leader.inflight.acks.add(sender)
        if leader.inflight.acks >= self.members:
            self._commit(leader, leader.inflight, out)

    def _commit(self, leader: _Leader, inflight: _InFlight, out: list[Effect]) -> None:
        leader.inflight = None
        leader.ready = True
        self._learn(inflight.config, out)
        for member in sorted(self.members - {self.me}):
            self._send(member, Commit(inflight.config), out)
        if inflight.request is not None:
            origin, request_id = inflight.request
            result = Result(request_id, True, f"applied as config_version {self.committed.version}")
            self._answered[inflight.request] = result
            while len(self._answered) > ANSWERS_KEPT:
                del self._answered[next(iter(self._answered))]
            self._send(origin, result, out)

    def _learn(self, config: ClusterConfig, out: list[Effect]) -> None:
        """Adopt a committed configuration newer than ours (step 4, catch-up)."""
        if config.version == self.committed.version:
            if config.version and digest(config) != digest(self.committed):
                out.append(Conflict(config.version, digest(self.committed), digest(config)))
            return
        if config.version < self.committed.version:
            return
        self.committed = config
        if self.staged is not None and self.staged.config.version <= config.version:
            self.staged = None
        self._persist(out)
        out.append(Applied(config))
