"""The timeline picture as data (design §4.7): rows, spans, ticks, bands and marks.

One row per node: spans of quorate / inquorate / down / paused, each with the ring id it was
in (the picture colours a strip by ring: two quorate rows in two colours at one time is a split
brain at a glance); ticks for `view_installed` and `quorum_lost` (from the node's events, or
from its state changes when the timeline has no events); a qnetd row of which nodes hold its
vote; faults as bands (from the fault's verified, else applied, else record time to its stop
or its `.undo`); the checker's violations as marks. `render.py` draws it; this module only
reads the timeline. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass

from votemesh_lab.checker import Verdict
from votemesh_lab.timeline import DOWN_STATES, Record, Timeline

QUORATE, INQUORATE, DOWN, PAUSED = "quorate", "inquorate", "down", "paused"


@dataclass(frozen=True, slots=True)
class Span:
    """[start, stop): the node was in `state`, in ring `ring` (None: no view)."""

    start: float
    stop: float
    state: str
    ring: str | None = None


@dataclass(frozen=True, slots=True)
class Tick:
    """A view installed ("view") or quorum lost ("lost") at `t`."""

    t: float
    kind: str


@dataclass(frozen=True, slots=True)
class Row:
    node: int
    name: str
    spans: tuple[Span, ...]
    ticks: tuple[Tick, ...]


@dataclass(frozen=True, slots=True)
class Vote:
    """[start, stop): the qnetd's vote (ACK) was held by `holders`."""

    start: float
    stop: float
    holders: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Band:
    """A fault from `start` to `stop` (equal for a one-off such as a kill)."""

    start: float
    stop: float
    id: str
    f: str


@dataclass(frozen=True, slots=True)
class Mark:
    """A violation of `prop` at `t`."""

    t: float
    prop: str


@dataclass(frozen=True, slots=True)
class Picture:
    title: str
    start: float
    end: float
    rows: tuple[Row, ...]
    votes: tuple[Vote, ...]
    qnetd: bool
    """The run had a qnetd (draw its row even when it never gave a vote)."""
    bands: tuple[Band, ...]
    marks: tuple[Mark, ...]
    rings: tuple[str, ...]
    """Every ring id seen, in order of first appearance (the picture's colour index)."""


def node_spans(records: list[Record], start: float, end: float) -> list[Span]:
    """One node's states over [start, end) from its state and proc records."""
    spans: list[Span] = []
    state, ring, since = DOWN, None, start
    last_view: tuple[str, str | None] = (INQUORATE, None)
    for r in records:
        kind, t = r["kind"], float(r["t"])
        if kind == "state":
            new = (QUORATE if r["quorate"] else INQUORATE, r.get("ring"))
            last_view = new
            if state == PAUSED:
                continue
        elif kind == "proc" and r["state"] in DOWN_STATES:
            new, last_view = (DOWN, None), (INQUORATE, None)
        elif kind == "proc" and r["state"] == "paused":
            new = (PAUSED, ring)
        elif kind == "proc" and r["state"] in {"started", "resumed"}:
            new = last_view if r["state"] == "resumed" else (INQUORATE, None)
        else:
            continue
        if new != (state, ring):
            if t > since:
                spans.append(Span(since, t, state, ring))
            state, ring = new
            since = max(since, t)
    if end > since:
        spans.append(Span(since, end, state, ring))
    return spans


def node_ticks(records: list[Record]) -> list[Tick]:
    """View installs and quorum losses: the node's events, else its state changes."""
    events = [r for r in records if r["kind"] in {"view_installed", "quorum_lost"}]
    if events:
        return [
            Tick(float(r["t"]), "view" if r["kind"] == "view_installed" else "lost") for r in events
        ]
    ticks, ring, quorate = [], None, False
    for r in records:
        if r["kind"] != "state":
            continue
        if r.get("ring") is not None and r.get("ring") != ring:
            ticks.append(Tick(float(r["t"]), "view"))
        if quorate and not r["quorate"]:
            ticks.append(Tick(float(r["t"]), "lost"))
        ring, quorate = r.get("ring"), bool(r["quorate"])
    return ticks


def votes(timeline: Timeline, end: float) -> list[Vote]:
    """Who held the qnetd's vote over time (from `qnetd_vote` records)."""
    out: list[Vote] = []
    holders: set[int] = set()
    since = timeline.start
    for r in timeline.of_kind("qnetd_vote"):
        t, to = float(r["t"]), r["to"]
        node = int(to[1:]) if isinstance(to, str) else int(to)
        now = holders | {node} if r["vote"] == "ack" else holders - {node}
        if now != holders:
            if holders and t > since:
                out.append(Vote(since, t, tuple(sorted(holders))))
            holders, since = now, t
    if holders and end > since:
        out.append(Vote(since, end, tuple(sorted(holders))))
    return out


def bands(timeline: Timeline, end: float) -> list[Band]:
    """Faults as bands: from when the fault held (verified, else applied, else its record) to
    its stop record, its `.undo` fault, or the end of the run."""
    starts: dict[str, Band] = {}
    stops: dict[str, float] = {}
    for r in timeline.of_kind("fault"):
        fid, t = str(r["id"]), float(r["t"])
        held = r.get("verified_t") or r.get("applied_t") or t
        if r.get("phase", "start") == "stop":
            stops.setdefault(fid.removesuffix(".undo"), float(held))
        elif fid.endswith(".undo"):
            stops.setdefault(fid[: -len(".undo")], float(held))
        elif fid not in starts:
            starts[fid] = Band(float(held), float(held), fid, str(r["f"]))
    out = []
    for fid, band in starts.items():
        stop = stops.get(fid, band.start if _one_off(band.f) else end)
        out.append(Band(band.start, max(band.start, stop), fid, band.f))
    return sorted(out, key=lambda b: b.start)


ONE_OFF = frozenset({"kill", "term", "restart", "start", "exec", "heal", "resume", "link-up"})
"""Fault kinds that happen at an instant (no band unless a stop record says otherwise)."""


def _one_off(f: str) -> bool:
    return f in ONE_OFF


def picture(timeline: Timeline, verdict: Verdict, title: str) -> Picture:
    """The whole figure's data."""
    start, end = min(0.0, timeline.start), timeline.end
    rows = []
    for node in timeline.nodes():
        records = timeline.of_node(node)
        name = str(timeline.node_info(node).get("name") or f"n{node}")
        rows.append(
            Row(
                node,
                name,
                tuple(node_spans(records, start, end)),
                tuple(node_ticks(records)),
            )
        )
    rings: list[str] = []
    for span in sorted((s for row in rows for s in row.spans), key=lambda s: s.start):
        if span.ring is not None and span.ring not in rings:
            rings.append(span.ring)
    return Picture(
        title,
        start,
        end,
        tuple(rows),
        tuple(votes(timeline, end)),
        bool(timeline.run.get("qdevice")) or bool(timeline.of_kind("qnetd_vote")),
        tuple(bands(timeline, end)),
        tuple(Mark(v.t, v.prop) for v in verdict.violations),
        tuple(rings),
    )


def seconds_in(spans: tuple[Span, ...] | list[Span], state: str, after: float = 0.0) -> float:
    """Seconds the spans spend in `state` after `after`."""
    return sum(max(0.0, s.stop - max(s.start, after)) for s in spans if s.state == state)
