"""A tiny stand-in for `agent.node.AgentNode` with the same interface (design §3.3).

It exists to test the simulator and the checker on their own: a compact version of the
clique/proposal/install rules of design §3.1 and a majority verdict, nothing else. `FaultyNode`
breaks safety on purpose (it trusts any view it hears), so tests can show the checker notices.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

from votemesh_lab.sim.iface import (
    Broadcast,
    Emit,
    MessageIn,
    PersistMaxSeq,
    QdeviceUpdate,
    SendTo,
    SetExpected,
    Start,
    Tick,
)

from agent.config import AgentConfig
from agent.events import AgentEvent, EventKind
from proto.mesh_messages import Heartbeat, View

Effect = Broadcast | SendTo | Emit | PersistMaxSeq | QdeviceUpdate


class FakeNode:
    """Heartbeats, mutual-hearing cliques, matching proposals, majority of configured votes."""

    trust_any_view = False

    def __init__(self, config: AgentConfig, incarnation: int, *, max_seq: int = 0) -> None:
        self.config = config
        self.me = config.node_id
        self.incarnation = incarnation
        self.max_seq = max_seq
        self.votes = config.configured_votes()
        self.expected = config.quorum.expected_votes or sum(self.votes.values())
        self.heard_at: dict[int, float] = {}
        self.their: dict[int, Heartbeat] = {}
        self.view: View | None = None
        self.proposal: View | None = None
        self.quorate = False
        self.next_at: float | None = None

    def next_deadline(self) -> float | None:
        return self.next_at

    def handle(self, event: object, now: float) -> list[Effect]:
        out: list[Effect] = []
        if isinstance(event, Start | Tick):
            if self.next_at is None or now >= self.next_at:
                self.next_at = now + self.config.timing.heartbeat_interval
                self._evaluate(now, out)
                out.append(Broadcast(0, tuple(sorted(set(self.votes) - {self.me})), self._hb(now)))
        elif isinstance(event, MessageIn) and isinstance(event.message, Heartbeat):
            self.heard_at[event.peer] = now
            self.their[event.peer] = event.message
            self._evaluate(now, out)
        elif isinstance(event, SetExpected) and event.value is not None:
            self.expected = event.value
            self._verdict(now, out)
        return out

    def status(self, now: float) -> dict[str, Any]:
        v = self.view
        return {
            "ring_id": [v.representative, v.seq] if v else None,
            "members": list(v.members) if v else [],
            "quorate": self.quorate,
            "expected_votes": self.expected,
        }

    def _hb(self, now: float) -> Heartbeat:
        return Heartbeat(
            link=0,
            stamp_us=int(now * 1e6),
            wall_ms=0,
            heard=self._heard(now),
            view=self.view,
            proposal=self.proposal,
        )

    def _heard(self, now: float) -> tuple[int, ...]:
        limit = now - self.config.timing.failure_timeout
        return tuple(sorted(p for p, t in self.heard_at.items() if t >= limit))

    def _clique(self, now: float) -> tuple[int, ...]:
        mine = self._heard(now)
        adj = {p: set(self.their[p].heard) for p in mine}
        cands = [p for p in mine if self.me in adj[p]]
        for size in range(len(cands), 0, -1):
            for group in combinations(cands, size):
                if all(b in adj[a] and a in adj[b] for a, b in combinations(group, 2)):
                    return tuple(sorted((self.me, *group)))
        return (self.me,)

    def _evaluate(self, now: float, out: list[Effect]) -> None:
        members = self._clique(now)
        before = self.max_seq
        for hb in self.their.values():
            for v in (hb.view, hb.proposal):
                if v is not None:
                    self.max_seq = max(self.max_seq, v.seq)
        if self.max_seq > before:
            out.append(PersistMaxSeq(self.max_seq))
        if self.proposal is None or self.proposal.members != members:
            adopt = [self.their[p].view for p in members if p != self.me and self.their[p].view]
            same = [v for v in adopt if v is not None and v.members == members]
            if same:
                self.proposal = same[0]
            else:
                self.max_seq += 1
                self.proposal = View(members[0], self.max_seq, members)
                out.append(PersistMaxSeq(self.max_seq))
        for p in members:
            other = self.their[p].proposal if p != self.me else None
            if other is not None and other.members == members and other.seq > self.proposal.seq:
                self.proposal = other
        agreed = all(self.their[p].proposal == self.proposal for p in members if p != self.me)
        if self.trust_any_view:
            agreed = True
        if agreed and self.proposal != self.view:
            self.view = self.proposal
            reason = f"all members propose {self.view}"
            out.append(Emit(AgentEvent(EventKind.VIEW_INSTALLED, reason, {}, now)))
        self._verdict(now, out)

    def _verdict(self, now: float, out: list[Effect]) -> None:
        have = sum(self.votes.get(m, 0) for m in (self.view.members if self.view else ()))
        quorate = have >= self.expected // 2 + 1
        if self.trust_any_view:
            quorate = have >= 1
        if quorate != self.quorate:
            self.quorate = quorate
            kind = EventKind.QUORUM_GAINED if quorate else EventKind.QUORUM_LOST
            out.append(Emit(AgentEvent(kind, f"{have} of {self.expected} votes", {}, now)))


class FaultyNode(FakeNode):
    """Installs its proposal without agreement and is quorate with any vote: breaks S1/S2."""

    trust_any_view = True


class FlickerNode(FakeNode):
    """Reports inquorate for 50 ms after each view it installs (the bug F1 exists for)."""

    installed_at = -1.0

    def _evaluate(self, now: float, out: list[Effect]) -> None:
        before = self.view
        super()._evaluate(now, out)
        if self.view != before and before is not None:
            self.installed_at = now
            self._verdict(now, out)

    def _verdict(self, now: float, out: list[Effect]) -> None:
        if now - self.installed_at < 0.05:
            if self.quorate:
                self.quorate = False
                out.append(Emit(AgentEvent(EventKind.QUORUM_LOST, "flicker", {}, now)))
            return
        super()._verdict(now, out)
