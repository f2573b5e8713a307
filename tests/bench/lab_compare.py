"""Pure parts of `bench_lab_corosync`: log records, the figures derived from them, the table.

No processes, sockets or clocks here: the live bench (tests/bench/bench_lab_corosync.py) reads
each daemon's log and hands the text in; tests/bench/test_lab_compare.py pins this module.

Both stacks' logs become `Record`s with wall-clock times (seconds since the epoch):

* votemesh-agent: one JSON object per line, ISO UTC `timestamp`; `view_installed` (with
  `members`) is a view, `quorum_gained` / `quorum_lost` the quorum transitions.
* corosync with `timestamp: hires`: `Dec 07 13:33:05.270 notice  [QUORUM] Sync members[3]: 1 2 3`
  is a view: logged with every membership totem forms (next to `A new membership (1.9) was
  formed`). Not `[QUORUM] Members[3]: ...`, which follows only once the services' synchronization
  completed: under heavy loss a membership is often replaced before that, and counting those
  lines missed views (a lab run at 20 % loss: 3-4 memberships formed on a node, 0 `Members`
  lines). `This node is within the primary component` / `non-primary component` are the quorum
  transitions votequorum reports; a node in a membership whose synchronization never completed
  reports none, so inquorate seconds can only be undercounted for corosync. The year is not in
  the line: it is the caller's, moved back one when the date would lie in the future.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

VIEW = "view"
QUORATE = "quorate"
INQUORATE = "inquorate"
STACKS = ("corosync", "votemesh")


@dataclass(frozen=True)
class Record:
    """One membership or quorum change a daemon logged."""

    t: float
    kind: str
    """VIEW, QUORATE or INQUORATE."""
    members: tuple[int, ...] = ()
    """Node ids of the new view (VIEW only)."""


# -- parsing ------------------------------------------------------------------------------------

_AGENT_KINDS = {"view_installed": VIEW, "quorum_gained": QUORATE, "quorum_lost": INQUORATE}


def parse_agent_log(text: str) -> list[Record]:
    """Records from a votemesh-agent JSON log; lines that are not JSON objects are skipped."""
    records = []
    for line in text.splitlines():
        try:
            doc = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(doc, dict) or doc.get("event") not in _AGENT_KINDS:
            continue
        try:
            at = datetime.fromisoformat(str(doc["timestamp"]).replace("Z", "+00:00"))
        except (KeyError, ValueError):
            continue
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
        members = tuple(int(m) for m in doc.get("members", ()) if isinstance(m, int))
        records.append(Record(at.timestamp(), _AGENT_KINDS[doc["event"]], members))
    return records


_COROSYNC_LINE = re.compile(
    r"^(?P<stamp>[A-Z][a-z]{2} [ 0-9]\d \d\d:\d\d:\d\d\.\d{3})\s+\w+\s+\[(?P<sub>[A-Z ]+)\]\s+"
    r"(?P<text>.*)$"
)
_COROSYNC_MEMBERS = re.compile(r"^Sync members\[\d+\]:(?P<ids>(?: \d+)*)\s*$")


def parse_corosync_log(text: str, year: int, now: float, utc_offset: float = 0.0) -> list[Record]:
    """Records from corosync's stderr with `timestamp: hires` (local time, `utc_offset` s east).

    `year` is the year the run took place in; a stamp that would lie more than a day after `now`
    belongs to the year before (a run across New Year).
    """
    records = []
    for line in text.splitlines():
        match = _COROSYNC_LINE.match(line)
        if match is None or match.group("sub").strip() != "QUORUM":
            continue
        body = match.group("text")
        if (members := _COROSYNC_MEMBERS.match(body)) is not None:
            kind, ids = VIEW, tuple(int(i) for i in members.group("ids").split())
        elif "within the non-primary component" in body:
            kind, ids = INQUORATE, ()
        elif "within the primary component" in body:
            kind, ids = QUORATE, ()
        else:
            continue
        at = _corosync_time(match.group("stamp"), year, utc_offset)
        if at > now + 86400:
            at = _corosync_time(match.group("stamp"), year - 1, utc_offset)
        records.append(Record(at, kind, ids))
    return records


def _corosync_time(stamp: str, year: int, utc_offset: float) -> float:
    parsed = datetime.strptime(f"{year} {stamp}", "%Y %b %d %H:%M:%S.%f")
    return parsed.replace(tzinfo=UTC).timestamp() - utc_offset


# -- figures from records -----------------------------------------------------------------------


def between(records: Iterable[Record], start: float, end: float = math.inf) -> list[Record]:
    """Records with start <= t < end, in time order."""
    return sorted((r for r in records if start <= r.t < end), key=lambda r: r.t)


def first_quorate(records: Iterable[Record], start: float) -> float | None:
    """Time of the first QUORATE record at or after `start`."""
    found = [r.t for r in between(records, start) if r.kind == QUORATE]
    return found[0] if found else None


def first_inquorate(records: Iterable[Record], start: float) -> float | None:
    """Time of the first INQUORATE record at or after `start`."""
    found = [r.t for r in between(records, start) if r.kind == INQUORATE]
    return found[0] if found else None


def first_view_without(
    records: Iterable[Record], start: float, gone: Iterable[int]
) -> float | None:
    """Time of the first view at or after `start` that contains none of `gone`."""
    excluded = set(gone)
    for record in between(records, start):
        if record.kind == VIEW and record.members and not excluded & set(record.members):
            return record.t
    return None


def latest(values: Iterable[float | None]) -> float | None:
    """The latest of several nodes' times, or None if any node has none (not there yet)."""
    found = list(values)
    if not found or any(v is None for v in found):
        return None
    return max(v for v in found if v is not None)


def last_change(records_by_node: Mapping[str, Iterable[Record]], start: float) -> float | None:
    """The time of the last record any node logged at or after `start` (None: no change)."""
    times = [r.t for records in records_by_node.values() for r in between(records, start)]
    return max(times) if times else None


def in_view_of(records: Sequence[Record], members: Sequence[int], since: float) -> bool:
    """The node's last view (logged at or after `since`) is exactly `members`, and its last
    quorum record says quorate."""
    views = [r for r in records if r.kind == VIEW]
    quorum = [r for r in records if r.kind in (QUORATE, INQUORATE)]
    if not views or views[-1].t < since or sorted(views[-1].members) != sorted(members):
        return False
    return bool(quorum) and quorum[-1].kind == QUORATE


def view_changes(records: Iterable[Record], start: float, end: float) -> int:
    """Views one node installed in [start, end)."""
    return sum(1 for r in between(records, start, end) if r.kind == VIEW)


def inquorate_seconds(
    records: Iterable[Record], start: float, end: float, *, quorate_at_start: bool = True
) -> float:
    """Seconds of [start, end) one node spent inquorate, from its quorum transitions."""
    quorate, since, total = quorate_at_start, start, 0.0
    for record in between(records, start, end):
        if record.kind == INQUORATE and quorate:
            quorate, since = False, record.t
        elif record.kind == QUORATE and not quorate:
            total += record.t - since
            quorate = True
    if not quorate:
        total += end - since
    return total


def per_ten_minutes(value: float, seconds: float) -> float:
    """Scale a count or duration measured over `seconds` to 600 s."""
    return value * 600.0 / seconds if seconds > 0 else math.nan


# -- statistics and the table -------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty sequence; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def aggregate(values: Sequence[float], how: str) -> float:
    """p50 | p99 | mean | max | sum of the samples (NaN when there are none)."""
    if not values:
        return math.nan
    if how == "p50":
        return float(statistics.median(values))
    if how == "p99":
        return percentile(values, 99)
    if how == "mean":
        return float(statistics.fmean(values))
    if how == "max":
        return max(values)
    if how == "sum":
        return float(sum(values))
    raise ValueError(f"unknown aggregate {how!r}")


def ratio(corosync: float, votemesh: float) -> str:
    """corosync / votemesh as `12.3x` ("-" when either is missing, "inf" over a zero)."""
    if math.isnan(corosync) or math.isnan(votemesh):
        return "-"
    if votemesh == 0:
        return "=" if corosync == 0 else "inf"
    return f"{corosync / votemesh:.1f}x"


def stack_order(repetitions: int, first: str = STACKS[0]) -> list[str]:
    """A B B A A B ... : which stack runs in each slot, two slots per repetition."""
    other = STACKS[1] if first == STACKS[0] else STACKS[0]
    order: list[str] = []
    for rep in range(repetitions):
        order += [first, other] if rep % 2 == 0 else [other, first]
    return order


@dataclass(frozen=True)
class Metric:
    """One row of the table: what, in which unit, and how samples become one figure."""

    key: str
    label: str
    unit: str
    how: str
    """An `aggregate` name."""
    digits: int = 0


@dataclass
class Samples:
    """Every sample of every metric, per stack."""

    values: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, stack: str, key: str, value: float | None) -> None:
        """One sample (None, e.g. a wait that timed out, is kept out and noted by the caller)."""
        if value is not None and not math.isnan(value):
            self.values.setdefault((stack, key), []).append(value)

    def get(self, stack: str, key: str) -> list[float]:
        """The samples of one metric for one stack."""
        return self.values.get((stack, key), [])


def cell(value: float, digits: int) -> str:
    """A table cell: '-' for no value."""
    return "-" if math.isnan(value) else f"{value:,.{digits}f}"


def table(metrics: Sequence[Metric], samples: Samples) -> list[str]:
    """Markdown lines: `metric | corosync | votemesh | ratio` (ratio = corosync / votemesh).

    Each metric cell is its aggregate over every sample, with `(n=...)` when there was more than
    one sample.
    """
    lines = [
        "| metric | corosync | votemesh | ratio (corosync / votemesh) |",
        "|---|---:|---:|---:|",
    ]
    for metric in metrics:
        cells = []
        figures = []
        for stack in STACKS:
            values = samples.get(stack, metric.key)
            figure = aggregate(values, metric.how)
            figures.append(figure)
            text = cell(figure, metric.digits)
            if len(values) > 1:
                text += f" (n={len(values)})"
            cells.append(text)
        label = f"{metric.label} ({metric.unit}, {metric.how})"
        lines.append(f"| {label} | {cells[0]} | {cells[1]} | {ratio(figures[0], figures[1])} |")
    return lines
