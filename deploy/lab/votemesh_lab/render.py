"""Draw the timeline picture (picture.py) as a PNG with matplotlib's Agg backend (design §4.7).

1200 px wide, a 90 px gutter of row names, one 28 px row per node (green quorate, amber
inquorate, grey down, hatched grey paused) under a 5 px strip coloured by ring id; a black tick
per view installed, a red tick per quorum lost; a qnetd row (which nodes hold its vote, in the
colour of their ring); faults as translucent bands labelled with their ids; violations as red
vertical lines named under the rows; the verdict line as the title; a legend at the bottom.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib as mpl

mpl.use("Agg")

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from votemesh_lab.checker import Verdict
from votemesh_lab.picture import (
    DOWN,
    INQUORATE,
    PAUSED,
    QUORATE,
    Picture,
    picture,
)
from votemesh_lab.report import REPORT, verdict_line
from votemesh_lab.timeline import Timeline

WIDTH_PX, DPI, GUTTER_PX, ROW_PX, STRIP_PX = 1200, 100, 90, 28, 5
FILL = {QUORATE: "#4CAF50", INQUORATE: "#FFB300", DOWN: "#BDBDBD", PAUSED: "#BDBDBD"}
RING_COLOURS = (
    "#1565C0", "#6A1B9A", "#00838F", "#AD1457", "#4E342E", "#283593", "#2E7D32", "#EF6C00",
)  # fmt: skip
FAULT_COLOURS = {
    "partition": "#E9DCA0",
    "cut": "#F4C7A1",
    "shape": "#B3D4E8",
    "flap": "#D7C4E8",
    "kill": "#F2A7A7",
    "pause": "#CFCFCF",
    "term": "#F2A7A7",
    "link-down": "#C8E6C9",
}
OTHER_FAULT = "#DDDDDD"
LABEL_SHARE = 0.08
"""A qnetd vote interval narrower than this share of the run gets no label (they would overlap)."""
STEPS = (1, 2, 5, 10, 30, 60, 120, 300, 600)
"""Tick spacings in seconds; the first that gives at most 15 ticks is used."""


def _step(span: float) -> float:
    return next((s for s in STEPS if span / s <= 15), STEPS[-1])


def _ring_colour(pic: Picture, ring: str | None) -> str:
    if ring is None or ring not in pic.rings:
        return "#FFFFFF"
    return RING_COLOURS[pic.rings.index(ring) % len(RING_COLOURS)]


def render_png(timeline: Timeline, verdict: Verdict, path: Path | str, title: str = "") -> Path:
    """Draw the run's picture into `path` (a PNG); returns the path. The title is the verdict
    line (naming report.json beside the picture) unless given."""
    out = Path(path)
    line = title or verdict_line(verdict, timeline, out.parent / REPORT)
    return draw(picture(timeline, verdict, line), out)


def draw(pic: Picture, path: Path) -> Path:
    """Draw a Picture into a PNG file."""
    rows = len(pic.rows) + (1 if pic.qnetd else 0)
    height_px = 90 + rows * (ROW_PX + 6) + 90
    fig = Figure(figsize=(WIDTH_PX / DPI, height_px / DPI), dpi=DPI)
    left = GUTTER_PX / WIDTH_PX
    ax = fig.add_axes((left, 90 / height_px, 1 - left - 0.02, 1 - 180 / height_px))
    span = max(pic.end - pic.start, 1e-3)
    ax.set_ylim(rows * (ROW_PX + 6), 0)
    _rows(ax, pic)
    if pic.qnetd:
        _qnetd_row(ax, pic, len(pic.rows))
    _bands(ax, pic, rows)
    _marks(ax, pic, rows)
    names = [r.name for r in pic.rows] + (["qnetd"] if pic.qnetd else [])
    ax.set_yticks([i * (ROW_PX + 6) + (ROW_PX + 6) / 2 for i in range(rows)], names)
    step = _step(span)
    first = step * int(pic.start // step)
    ax.set_xticks([first + i * step for i in range(int(span // step) + 2)])
    ax.set_xlim(pic.start, pic.end if pic.end > pic.start else pic.start + 1)
    ax.set_xlabel("seconds since the run started")
    ax.tick_params(axis="y", length=0)
    fig.suptitle(pic.title, fontsize=10, x=0.01, ha="left")
    legend = [Patch(color=FILL[QUORATE], label="quorate")]
    legend += [Patch(color=FILL[INQUORATE], label="inquorate")]
    legend += [
        Patch(color=FILL[DOWN], label="down"),
        Patch(fill=False, hatch="///", label="paused"),
    ]
    legend += [
        Patch(color="black", label="view installed"),
        Patch(color="red", label="quorum lost"),
    ]
    fig.legend(handles=legend, loc="lower center", ncol=6, fontsize=8, frameon=False)
    fig.savefig(path, format="png")
    return path


def _rows(ax: Axes, pic: Picture) -> None:
    for i, row in enumerate(pic.rows):
        top = i * (ROW_PX + 6)
        for s in row.spans:
            hatch = "///" if s.state == PAUSED else None
            ax.add_patch(
                Rectangle(
                    (s.start, top + STRIP_PX),
                    s.stop - s.start,
                    ROW_PX - STRIP_PX,
                    facecolor=FILL[s.state],
                    hatch=hatch,
                    linewidth=0,
                )
            )
            if s.ring is not None and s.state != DOWN:
                ax.add_patch(
                    Rectangle(
                        (s.start, top),
                        s.stop - s.start,
                        STRIP_PX,
                        facecolor=_ring_colour(pic, s.ring),
                        linewidth=0,
                        zorder=3,
                    )
                )
        for tick in row.ticks:
            colour = "black" if tick.kind == "view" else "red"
            ax.vlines(tick.t, top + STRIP_PX, top + ROW_PX, colors=colour, linewidth=1.2)


def _qnetd_row(ax: Axes, pic: Picture, index: int) -> None:
    top = index * (ROW_PX + 6)
    rings = {row.node: row.spans for row in pic.rows}
    for vote in pic.votes:
        holder = vote.holders[0]
        ring = next((s.ring for s in rings.get(holder, ()) if s.start <= vote.start < s.stop), None)
        ax.add_patch(
            Rectangle(
                (vote.start, top + STRIP_PX),
                vote.stop - vote.start,
                ROW_PX - STRIP_PX,
                facecolor=_ring_colour(pic, ring),
                alpha=0.6,
                linewidth=0,
            )
        )
        if vote.stop - vote.start < LABEL_SHARE * (pic.end - pic.start):
            continue  # too narrow for its label
        label = ",".join(str(n) for n in vote.holders)
        ax.text(vote.start, top + ROW_PX / 2 + STRIP_PX / 2, f" {label}", va="center", fontsize=7)


def _bands(ax: Axes, pic: Picture, rows: int) -> None:
    bottom = rows * (ROW_PX + 6)
    for band in pic.bands:
        colour = FAULT_COLOURS.get(band.f, OTHER_FAULT)
        if band.stop > band.start:
            ax.axvspan(band.start, band.stop, color=colour, alpha=0.35, zorder=2, linewidth=0)
        else:
            ax.vlines(band.start, 0, bottom, colors=colour, linewidth=2, zorder=2)
        ax.text(band.start, -2, band.id, fontsize=7, va="bottom", clip_on=False)


def _marks(ax: Axes, pic: Picture, rows: int) -> None:
    bottom = rows * (ROW_PX + 6)
    for mark in pic.marks:
        ax.vlines(mark.t, 0, bottom, colors="red", linewidth=1.5, zorder=3)
        ax.text(mark.t, bottom + 2, mark.prop, color="red", fontsize=8, va="top", clip_on=False)
