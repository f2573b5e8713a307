"""A scenario's [[expect]] entries judged over a run's timeline (design §4.5; pure).

Each node's state is a step function of time built from the timeline: `state` records (from the
agents' events; polled `status` records only for a node that has no others) and `proc` records
(killed / exited = down, paused = frozen and counted as not acting). Times are the timeline's
(seconds since the run started); `t0` (the cluster first formed) comes from the `run` record and
a nemesis id stands for its `fault` record's `verified_t` (else `applied_t`, else `t`).

Two forms:

* a **picture** after a point: `after` (an id or seconds after t0), `within` and `hold`: met
  when at some time T in [after, after + within] every listed condition is true and stays true
  until T + hold. Conditions: `quorate` (up, running, quorate), `inquorate` (not quorate, or down
  or paused), `one_view` (these nodes' members are exactly the list, one ring id), `qdevice_vote`
  (these nodes count the device vote, no other running node does), `one_quorate_of` (exactly
  one of these groups is wholly quorate, the others have no quorate node: "one half wins",
  whichever).
* a **window** `during = [id1, id2]`: `max_view_changes` (view_installed events per node),
  `max_inquorate_s` (seconds not quorate per node, down included) over `nodes` (default: all),
  and `never_lost` (these nodes emit no `quorum_lost`).

`evaluate()` returns one `Outcome` per expectation: `met`, `missed` (with the time and the nodes
that broke it, and what was seen) or `unknown` (the run ended first, or a nemesis never ran).
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from votemesh_lab.scenario import Expect

DOWN = frozenset({"exited", "killed"})


@dataclass(frozen=True)
class NodeState:
    """What one node showed from some time on."""

    up: bool = False
    paused: bool = False
    quorate: bool = False
    ring: str | None = None
    members: tuple[int, ...] = ()
    vote: bool = False

    def acting_quorate(self) -> bool:
        return self.up and not self.paused and self.quorate

    def show(self) -> str:
        if not self.up:
            return "down"
        members = ",".join(map(str, self.members))
        text = f"{'quorate' if self.quorate else 'inquorate'} ring {self.ring} [{members}]"
        return text + (" paused" if self.paused else "") + (" +qd" if self.vote else "")


@dataclass(frozen=True)
class Outcome:
    """One expectation's result; `t` and `nodes` say where it failed."""

    index: int
    text: str
    status: str
    """met | missed | unknown."""
    at: float | None = None
    """met: when the picture was reached; missed: when the check failed."""
    seen: str = ""
    nodes: tuple[int, ...] = ()
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The report's `expectations` entry."""
        return {"index": self.index, "text": self.text, "status": self.status, "at": self.at,
                "seen": self.seen, "nodes": list(self.nodes), "detail": self.detail}  # fmt: skip


@dataclass
class History:
    """Every node's state as steps: times[node] ascending, states[node] the state from then."""

    times: dict[int, list[float]] = field(default_factory=dict)
    states: dict[int, list[NodeState]] = field(default_factory=dict)

    def at(self, node: int, t: float) -> NodeState:
        times = self.times.get(node, [])
        i = bisect.bisect_right(times, t) - 1
        return self.states[node][i] if i >= 0 else NodeState()

    def changes(self, start: float, end: float) -> list[float]:
        """Every time in (start, end] at which some node's state changed."""
        return sorted({t for ts in self.times.values() for t in ts if start < t <= end})

    def _push(self, node: int, t: float, state: NodeState) -> None:
        times, states = self.times.setdefault(node, []), self.states.setdefault(node, [])
        if states and states[-1] == state:
            return
        if times and times[-1] == t:
            states[-1] = state
            return
        times.append(t)
        states.append(state)


def history(records: Iterable[Mapping[str, Any]], nodes: Sequence[int]) -> History:
    """The step functions of every node from its `state` and `proc` records."""
    records = list(records)
    from_events = {r["node"] for r in records if r.get("kind") == "state" and r["src"] != "status"}
    h = History()
    current = {n: NodeState() for n in nodes}
    for r in sorted(records, key=lambda r: float(r["t"])):
        node = r.get("node")
        if node not in current:
            continue
        old = current[node]
        if r["kind"] == "proc":
            state = r.get("state")
            if state in DOWN:
                new = NodeState()
            elif state == "started":
                new = NodeState(up=True)
            else:
                new = NodeState(**{**old.__dict__, "paused": state == "paused"})
        elif r["kind"] == "state" and (r["src"] != "status" or node not in from_events):
            new = NodeState(
                up=True, paused=old.paused, quorate=bool(r.get("quorate")), ring=r.get("ring"),
                members=tuple(r.get("members") or ()), vote=bool(r.get("qdevice_vote")),
            )  # fmt: skip
        else:
            continue
        current[node] = new
        h._push(node, float(r["t"]), new)
    return h


# ------------------------------------------------------------------------------- judging
def fault_times(records: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Nemesis id -> the time its fault counts from (verified, else applied, else recorded);
    an undo is the fault `<id>.undo` (phase stop)."""
    out: dict[str, float] = {}
    for r in records:
        if r.get("kind") == "fault":
            when = r.get("verified_t", r.get("applied_t"))
            out.setdefault(str(r["id"]), float(when if when is not None else r["t"]))
    return out


def picture_problems(expect: Expect, h: History, t: float, nodes: Sequence[int]) -> list[int]:
    """The nodes that break the picture at time t (empty: it holds)."""
    bad = [n for n in expect.quorate or () if not h.at(n, t).acting_quorate()]
    bad += [n for n in expect.inquorate or () if h.at(n, t).acting_quorate()]
    if expect.one_view is not None:
        want = tuple(sorted(expect.one_view))
        rings = {h.at(n, t).ring for n in want}
        for n in want:
            s = h.at(n, t)
            if not s.up or s.paused or s.members != want or len(rings) != 1:
                bad.append(n)
    if expect.one_quorate_of is not None:
        quorate = [g for g in expect.one_quorate_of if all(h.at(n, t).acting_quorate() for n in g)]
        for g in expect.one_quorate_of:
            if g in quorate[:1]:
                continue
            acting = [n for n in g if h.at(n, t).acting_quorate()]
            bad += acting if quorate else list(g)
    if expect.qdevice_vote is not None:
        for n in nodes:
            s = h.at(n, t)
            holds = s.up and not s.paused and s.vote
            if holds != (n in expect.qdevice_vote):
                bad.append(n)
    return sorted(set(bad))


def _holds(expect: Expect, h: History, start: float, end: float, nodes: Sequence[int]) -> float:
    """The first time in [start, end] the picture breaks, or -1 if it holds throughout."""
    for t in [start, *h.changes(start, end)]:
        if picture_problems(expect, h, t, nodes):
            return t
    return -1.0


def _seen(h: History, t: float, nodes: Sequence[int]) -> str:
    return "; ".join(f"n{n} {h.at(n, t).show()}" for n in nodes)


def judge_picture(
    expect: Expect, h: History, start: float, run_end: float, nodes: Sequence[int]
) -> Outcome:
    """A picture reached within `within` of `start` and held for `hold`."""
    deadline = start + expect.within
    candidates = [start, *h.changes(start, deadline)]
    for t in candidates:
        if picture_problems(expect, h, t, nodes):
            continue
        if t + expect.hold > run_end:
            why = f"the run ended {run_end:.2f} s before the hold ended"
            return Outcome(expect.index, expect.text, "unknown", t, _seen(h, t, nodes), detail=why)
        broke = _holds(expect, h, t, t + expect.hold, nodes)
        if broke < 0:
            return Outcome(expect.index, expect.text, "met", t, _seen(h, t, nodes))
    if deadline > run_end:
        return Outcome(expect.index, expect.text, "unknown", None, _seen(h, run_end, nodes),
                       detail=f"the run ended at {run_end:.2f} s, before the deadline")  # fmt: skip
    bad = picture_problems(expect, h, deadline, nodes) or _first_break(expect, h, start, deadline,
                                                                       nodes)  # fmt: skip
    detail = (f"not reached by {deadline:.2f} s (within {expect.within:g} s of {start:.2f} s)"
              if picture_problems(expect, h, deadline, nodes) else
              f"reached but not held for {expect.hold:g} s")  # fmt: skip
    return Outcome(expect.index, expect.text, "missed", deadline,
                   _seen(h, deadline, bad or nodes), tuple(bad), detail)  # fmt: skip


def _first_break(
    expect: Expect, h: History, start: float, deadline: float, nodes: Sequence[int]
) -> list[int]:
    """The nodes that broke the held picture first (when it was reached but did not hold)."""
    for t in [start, *h.changes(start, deadline + expect.hold)]:
        if bad := picture_problems(expect, h, t, nodes):
            return bad
    return []


def judge_window(
    expect: Expect,
    h: History,
    records: Sequence[Mapping[str, Any]],
    window: tuple[float, float],
    nodes: Sequence[int],
) -> Outcome:
    """max_view_changes, max_inquorate_s and never_lost over [start, end]."""
    start, end = window
    watched = expect.nodes or tuple(nodes)
    problems: list[tuple[float, int, str]] = []
    inside = [r for r in records if start <= float(r["t"]) <= end]
    for n in expect.never_lost or ():
        for r in inside:
            if r.get("node") == n and r.get("kind") == "quorum_lost":
                problems.append((float(r["t"]), n, f"n{n} lost quorum at {float(r['t']):.2f} s"))
                break
    if expect.max_view_changes is not None:
        for n in watched:
            views = [float(r["t"]) for r in inside
                     if r.get("node") == n and r.get("kind") == "view_installed"]  # fmt: skip
            if len(views) > expect.max_view_changes:
                t = views[expect.max_view_changes]
                text = f"n{n} installed {len(views)} views (at most {expect.max_view_changes})"
                problems.append((t, n, text))
    if expect.max_inquorate_s is not None:
        for n in watched:
            seconds = _inquorate_seconds(h, n, start, end)
            if seconds > expect.max_inquorate_s:
                text = f"n{n} inquorate {seconds:.2f} s (at most {expect.max_inquorate_s:g} s)"
                problems.append((end, n, text))
    if not problems:
        return Outcome(expect.index, expect.text, "met", start)
    problems.sort()
    t = problems[0][0]
    bad = tuple(sorted({n for _, n, _ in problems}))
    detail = "; ".join(text for _, _, text in problems)
    return Outcome(expect.index, expect.text, "missed", t, _seen(h, t, bad), bad, detail)


def _inquorate_seconds(h: History, node: int, start: float, end: float) -> float:
    edges = [start, *[t for t in h.times.get(node, []) if start < t < end], end]
    return sum(b - a for a, b in itertools.pairwise(edges) if not h.at(node, a).acting_quorate())


def evaluate(
    records: Iterable[Mapping[str, Any]],
    expects: Sequence[Expect],
    *,
    t0: float,
    end: float,
    nodes: Sequence[int],
) -> list[Outcome]:
    """Every expectation over the run's records; t0 = formed, end = when the run ended."""
    records = sorted(records, key=lambda r: float(r["t"]))
    h = history(records, nodes)
    faults = fault_times(records)
    out = []
    for expect in expects:
        if expect.during is not None:
            first, last = (faults.get(i) for i in expect.during)
            if first is None or last is None:
                missing = [i for i in expect.during if i not in faults]
                out.append(Outcome(expect.index, expect.text, "unknown",
                                   detail=f"nemesis {missing[0]} never ran"))  # fmt: skip
                continue
            out.append(judge_window(expect, h, records, (first, last), nodes))
            continue
        if isinstance(expect.after, str):
            start = faults.get(expect.after)
            if start is None:
                out.append(Outcome(expect.index, expect.text, "unknown",
                                   detail=f"nemesis {expect.after} never ran"))  # fmt: skip
                continue
        else:
            start = t0 + float(expect.after or 0.0)
        out.append(judge_picture(expect, h, start, end, nodes))
    return out
