"""The timeline: one format for what a lab run and a simulator run recorded (design §4.6).

A record is a plain dict, one JSON object per line of `timeline.jsonl`: `t` (seconds since the
run started), `node` (an agent's node id, or "qnetd", "broker", "lab"), `kind`, `src` (`log`,
`mqtt`, `status`, `lab`, `sim`) and the kind's fields. The kinds this module checks:

| kind | fields |
|---|---|
| `run` (first) | scenario, seed, backend, version, start_wall_ms, timing, quorum, qdevice, |
|  | nodes {id: {name, addresses, votes, held}}, form_within |
| `state` | ring ("1.1a" or null), members, counted (or null), quorate, expected, |
|  | qdevice_vote, config_version |
| `proc` | state: started, exited, killed, paused, resumed; pid, rc, reason |
| `fault` | id, f, phase (start, stop), params, applied_t, verified_t |
| `net` | alive, paused (node ids; optional), blocks [[s, d], ...], |
|  | links {"s>d": impairment}, default |
| `config` | config_version, votes {id: votes}, quorum, qdevice (or `digest`): a node applied it |
| `qnetd_vote` | cluster, to, vote (ack, nack) |
| `verify` | generation, mismatches [{pair, expected, seen, probes}] |
| `verify_failed`, `note` | text |
| `end` (last) | reason: done, aborted |
| an agent event kind | the event's fields (reason, ring, members, ...), seq, incarnation |

Hosts in `net` records may be named ("n3", "qnetd") or numbered (3). Impairments use seconds
and fractions as numbers, or tc's units as strings ("20ms", "5%"), as `netem.Impairment.to_dict`
writes them. `Link` and `Network` are the timeline form of the simulator's topology: what the
checker needs to know of the network at any time, from `net` and `proc` records. Pure (no
clock, processes or sockets); the file functions at the end read and write one file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Record = dict[str, Any]
"""One timeline record (a JSON object)."""

SOURCES = frozenset({"log", "mqtt", "status", "lab", "sim"})
HOSTS = frozenset({"qnetd", "broker", "lab"})
"""Record owners that are not agents."""
PROC_STATES = frozenset({"started", "exited", "killed", "paused", "resumed"})
DOWN_STATES = frozenset({"exited", "killed"})
FAULT_PHASES = frozenset({"start", "stop"})
VOTES = frozenset({"ack", "nack"})
MAX_NODE_ID = 65535
MAX_KIND = 64
LAB_KINDS = frozenset(
    {"run", "state", "proc", "fault", "net", "config", "qnetd_vote", "verify", "verify_failed"}
    | {"note", "end"}
)
"""Kinds the lab and the simulator write; every other kind is an agent event."""


class TimelineError(ValueError):
    """A record that does not follow design §4.6; the message names the record and the field."""


def node_name(node: int | str) -> str:
    """How a record's owner is shown: "n3" for node 3, else the host's name."""
    return f"n{node}" if isinstance(node, int) else node


def host_id(host: object) -> int | str | None:
    """A host in a `net` record as a node id (3 for 3 or "n3") or a host name; None if neither."""
    if isinstance(host, int) and not isinstance(host, bool) and 1 <= host <= MAX_NODE_ID:
        return host
    if isinstance(host, str):
        if host in HOSTS:
            return host
        digits = host[1:] if host[:1] == "n" else host
        if digits.isdigit() and 1 <= int(digits) <= MAX_NODE_ID:
            return int(digits)
    return None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _node_list(value: object) -> bool:
    return isinstance(value, list) and all(host_id(n) == n and _is_int(n) for n in value)


def _check_state(r: Mapping[str, Any]) -> str | None:
    if not (r.get("ring") is None or isinstance(r["ring"], str)):
        return 'ring must be a string like "1.1a" or null'
    if not _node_list(r.get("members")):
        return "members must be a list of node ids"
    if r.get("counted") is not None and not _node_list(r["counted"]):
        return "counted must be a list of node ids or null"
    if not isinstance(r.get("quorate"), bool):
        return "quorate must be true or false"
    if not _is_int(r.get("expected", 0)) or r.get("expected", 0) < 0:
        return "expected must be a non-negative integer"
    return None


def _check_proc(r: Mapping[str, Any]) -> str | None:
    if r.get("state") not in PROC_STATES:
        return f"state must be one of {', '.join(sorted(PROC_STATES))}"
    return None


def _check_fault(r: Mapping[str, Any]) -> str | None:
    if not isinstance(r.get("id"), str) or not isinstance(r.get("f"), str):
        return "a fault needs an id and an f (strings)"
    if r.get("phase", "start") not in FAULT_PHASES:
        return "phase must be start or stop"
    for key in ("applied_t", "verified_t"):
        if r.get(key) is not None and not _is_number(r[key]):
            return f"{key} must be a number of seconds or null"
    return None


def _check_net(r: Mapping[str, Any]) -> str | None:
    blocks = r.get("blocks", [])
    if not isinstance(blocks, list) or not all(
        isinstance(b, list) and len(b) == 2 and None not in map(host_id, b) for b in blocks
    ):
        return "blocks must be a list of [src, dst] host pairs"
    for key in ("alive", "paused"):
        if key in r and not all(host_id(h) is not None for h in r[key] or ()):
            return f"{key} must be a list of hosts"
    links = r.get("links", {})
    if not isinstance(links, dict) or not all(
        isinstance(k, str) and isinstance(v, dict) for k, v in links.items()
    ):
        return 'links must map "src>dst" to an impairment'
    if not isinstance(r.get("default", {}), dict):
        return "default must be an impairment (an object)"
    return None


def _check_vote(r: Mapping[str, Any]) -> str | None:
    if r.get("vote") not in VOTES or host_id(r.get("to")) is None:
        return "a qnetd_vote needs to (a node id) and vote (ack or nack)"
    return None


def _check_config(r: Mapping[str, Any]) -> str | None:
    if not _is_int(r.get("config_version")):
        return "config_version must be an integer"
    return None


def _check_event(r: Mapping[str, Any]) -> str | None:
    for key in ("seq", "incarnation"):
        if r.get(key) is not None and (not _is_int(r[key]) or r[key] < 0):
            return f"{key} must be a non-negative integer"
    return None


_CHECKS = {
    "state": _check_state,
    "proc": _check_proc,
    "fault": _check_fault,
    "net": _check_net,
    "qnetd_vote": _check_vote,
    "config": _check_config,
}


def validate(record: object) -> Record:
    """The record if it follows design §4.6; else TimelineError naming the field."""
    if not isinstance(record, dict):
        raise TimelineError("a record must be a JSON object")
    t, node, kind = record.get("t"), record.get("node"), record.get("kind")
    if not _is_number(t):
        raise TimelineError("t must be a number of seconds")
    if not ((isinstance(node, int) and host_id(node) == node) or node in HOSTS):
        raise TimelineError(f"node must be a node id or one of {', '.join(sorted(HOSTS))}")
    if not isinstance(kind, str) or not 0 < len(kind) <= MAX_KIND:
        raise TimelineError("kind must be a short string")
    if record.get("src") not in SOURCES:
        raise TimelineError(f"src must be one of {', '.join(sorted(SOURCES))}")
    check = _CHECKS.get(kind, _check_event if kind not in LAB_KINDS else None)
    problem = check(record) if check else None
    if problem:
        raise TimelineError(f"{kind} record: {problem}")
    return record


def _order(record: Record) -> tuple[int, float]:
    """The run record first, the end record last, the rest by time (stable)."""
    kind = record["kind"]
    return (0 if kind == "run" else 2 if kind == "end" else 1, float(record["t"]))


class Timeline:
    """Records in time order (stable: records at one time keep the order they were given)."""

    def __init__(self, records: Iterable[Record]) -> None:
        self.records: tuple[Record, ...] = tuple(sorted(records, key=_order))
        self._by_node: dict[int | str, list[Record]] | None = None

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def run(self) -> Record:
        """The `run` record ({} when the timeline has none)."""
        first = self.records[0] if self.records else {}
        return first if first.get("kind") == "run" else {}

    @property
    def start(self) -> float:
        """The time of the first record (the run's start is 0)."""
        return min((float(r["t"]) for r in self.records), default=0.0)

    @property
    def end(self) -> float:
        """When the run ended: the `end` record's time, else the last record's."""
        return max((float(r["t"]) for r in self.records), default=0.0)

    @property
    def aborted(self) -> bool:
        """The run was cut short (an `end` record with reason aborted)."""
        return any(r["kind"] == "end" and r.get("reason") == "aborted" for r in self.records)

    def nodes(self) -> list[int]:
        """The cluster's node ids: the run record's, else every agent that recorded something."""
        named = self.run.get("nodes")
        if isinstance(named, dict) and named:
            return sorted(int(n) for n in named)
        return sorted({r["node"] for r in self.records if isinstance(r["node"], int)})

    def node_info(self, node: int) -> Mapping[str, Any]:
        """The run record's entry for `node` ({} if none)."""
        named = self.run.get("nodes")
        info = named.get(str(node), named.get(node)) if isinstance(named, dict) else None
        return info if isinstance(info, dict) else {}

    def of_node(self, node: int | str) -> list[Record]:
        """The records one node (or host) wrote, in order: its own view of the run."""
        if self._by_node is None:
            self._by_node = {}
            for r in self.records:
                self._by_node.setdefault(r["node"], []).append(r)
        return self._by_node.get(node, [])

    def of_kind(self, *kinds: str) -> list[Record]:
        """The records of these kinds, in order."""
        return [r for r in self.records if r["kind"] in kinds]

    def events(self) -> list[Record]:
        """The agents' own events (every kind the lab and the simulator do not write)."""
        return [r for r in self.records if r["kind"] not in LAB_KINDS]

    def events_of(self, node: int) -> list[Record]:
        """One node's own events, in order."""
        return [r for r in self.of_node(node) if r["kind"] not in LAB_KINDS]

    def merged(self, *others: Timeline) -> Timeline:
        """One timeline of this one's records and the others' (one run record: the first)."""
        records = list(self.records)
        have_run = bool(self.run)
        for other in others:
            for r in other.records:
                if r["kind"] == "run":
                    if have_run:
                        continue
                    have_run = True
                records.append(r)
        return Timeline(records)

    def lines(self) -> Iterator[str]:
        """The JSONL lines (no newline)."""
        for r in self.records:
            yield json.dumps(r, sort_keys=False, separators=(", ", ": "), default=_json_default)

    def write_jsonl(self, path: Path | str) -> Path:
        """Write `timeline.jsonl`; returns the path."""
        out = Path(path)
        out.write_text("".join(line + "\n" for line in self.lines()), encoding="utf-8")
        return out


def _json_default(value: object) -> object:
    if isinstance(value, frozenset | set | tuple):
        return sorted(value) if isinstance(value, frozenset | set) else list(value)
    return str(value)


def parse_lines(lines: Iterable[str], name: str = "timeline") -> Timeline:
    """Records from JSONL lines (blank lines skipped); TimelineError "NAME line N: ..." on the
    first bad one."""
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(validate(json.loads(line)))
        except json.JSONDecodeError as exc:
            raise TimelineError(f"{name} line {number}: not JSON ({exc.msg})") from None
        except TimelineError as exc:
            raise TimelineError(f"{name} line {number}: {exc}") from None
    return Timeline(records)


def read_jsonl(path: Path | str) -> Timeline:
    """A stored `timeline.jsonl`; TimelineError naming the file and line of a bad record."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TimelineError(f"{source}: cannot read ({exc})") from None
    return parse_lines(text.splitlines(), str(source))


# ---- the network over time (the simulator's Topology, as records) -------------------------

_TIME_UNITS = (("us", 1e-6), ("ms", 1e-3), ("s", 1.0))
_HARMLESS = frozenset(
    {"delay_corr", "loss_corr", "duplicate_corr", "corrupt_corr", "reorder_corr", "gap"}
    | {"distribution", "limit", "reorder_delay"}
)
"""Impairment keys that do not make a link worse than DESIGN L2's conditions on their own."""
L2_LOSS, L2_JITTER, L2_DELAY = 0.05, 0.02, 0.05
"""DESIGN L2's benign conditions: loss <= 5 %, jitter <= 20 ms (and a LAN-like delay)."""


def _number(text: str, value: object, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise TimelineError(f"{value!r} is not a {what}") from None


def seconds(value: object) -> float:
    """A time: a number of seconds, or tc's "20ms" / "300us" / "1.5s"."""
    if isinstance(value, str):
        text = value.strip()
        for unit, scale in _TIME_UNITS:
            if text.endswith(unit) and not (unit == "s" and text[-2:] in {"ms", "us"}):
                return _number(text[: -len(unit)], value, "time") * scale
        return _number(text, value, "time")
    if _is_number(value):
        return float(value)  # type: ignore[arg-type]
    raise TimelineError(f"{value!r} is not a time")


def fraction(value: object) -> float:
    """A share: a number 0..1, or tc's "5%"."""
    if isinstance(value, str):
        text = value.strip()
        if text.endswith("%"):
            return _number(text[:-1], value, "share") / 100
        return _number(text, value, "share")
    if _is_number(value):
        return float(value)  # type: ignore[arg-type]
    raise TimelineError(f"{value!r} is not a share")


def _nonzero(value: object) -> bool:
    if value is None or value is False:
        return False
    if isinstance(value, str):
        digits = value.strip().rstrip("%").rstrip("bitkmgKMG/s ").strip()
        try:
            return float(digits) != 0
        except ValueError:
            return True
    return value != 0


@dataclass(frozen=True, slots=True)
class Link:
    """One direction of one node pair, as far as the checker cares."""

    delay: float = 0.0
    jitter: float = 0.0
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_delay: float = 0.05
    """How far a reordered datagram may be held back (the simulator's model)."""
    other: bool = False
    """Some other impairment is set (corruption, a rate, a loss model): never benign."""

    @property
    def benign(self) -> bool:
        """No worse than DESIGN L2's conditions: loss <= 5 %, jitter <= 20 ms, nothing else."""
        return (
            self.loss <= L2_LOSS
            and self.jitter <= L2_JITTER
            and self.delay <= L2_DELAY
            and self.duplicate == 0
            and self.reorder == 0
            and not self.other
        )

    @property
    def slowest(self) -> float:
        """The longest one-way delay a datagram can take on this link."""
        return self.delay + self.jitter + (self.reorder_delay if self.reorder else 0)

    def to_dict(self) -> dict[str, float]:
        """The impairment as a `net` record's numbers (seconds and shares, every field)."""
        return {
            "delay": self.delay,
            "jitter": self.jitter,
            "loss": self.loss,
            "duplicate": self.duplicate,
            "reorder": self.reorder,
            "reorder_delay": self.reorder_delay,
        }

    @classmethod
    def parse(cls, impairment: Mapping[str, object]) -> Link:
        """From a record's impairment (numbers, or tc's units as `netem.Impairment` writes)."""
        get = impairment.get
        other = any(_nonzero(v) for k, v in impairment.items() if k not in _KNOWN)
        return cls(
            seconds(get("delay", 0.0)),
            seconds(get("jitter", 0.0)),
            fraction(get("loss", 0.0)),
            fraction(get("duplicate", 0.0)),
            fraction(get("reorder", 0.0)),
            seconds(get("reorder_delay", 0.05)),
            other,
        )


_KNOWN = frozenset({"delay", "jitter", "loss", "duplicate", "reorder"}) | _HARMLESS


@dataclass(frozen=True, slots=True)
class Network:
    """The network from `at` until the next change: who runs, who is paused, which directions
    are cut (node ids; a block (s, d): d drops what s sends), and each pair's link."""

    at: float
    alive: frozenset[int]
    paused: frozenset[int]
    cuts: frozenset[tuple[int, int]]
    links: Mapping[tuple[int, int], Link]
    default: Link
    running: frozenset[int] = field(init=False, compare=False, repr=False)
    """alive - paused (made once: `mutual` is asked O(N^2) times per topology at 256 nodes)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "running", self.alive - self.paused)

    def link(self, src: int, dst: int) -> Link:
        return self.links.get((src, dst), self.default)

    def mutual(self, a: int, b: int) -> bool:
        """Both directions up (not cut) between two running nodes."""
        running, cuts = self.running, self.cuts
        return a in running and b in running and (a, b) not in cuts and (b, a) not in cuts

    def benign(self) -> bool:
        """Every link between running nodes is no worse than L2's conditions."""
        return all(link.benign for link in self.between(self.running))

    def between(self, nodes: frozenset[int]) -> list[Link]:
        """The link models the directed pairs of `nodes` use: their own models, and the default
        once if any pair has none. O(overrides), not O(N^2) pairs."""
        count = len(nodes)
        own = [m for (a, b), m in self.links.items() if a != b and a in nodes and b in nodes]
        if count < 2 or len(own) == count * (count - 1):
            return own
        return [*own, self.default]


def net_record(  # noqa: PLR0917 (the Topology's fields, in its order)
    t: float,
    alive: Iterable[int],
    paused: Iterable[int],
    blocks: Iterable[tuple[int | str, int | str]],
    links: Mapping[tuple[int, int], Mapping[str, object]]
    | Mapping[tuple[int | str, int | str], Mapping[str, object]],
    default: Mapping[str, object],
    src: str = "lab",
) -> Record:
    """A `net` record: the whole network after a change (the runner writes one per change)."""
    return {
        "t": t,
        "node": "lab",
        "kind": "net",
        "src": src,
        "alive": sorted(alive),
        "paused": sorted(paused),
        "blocks": sorted([s, d] for s, d in blocks),
        "links": {f"{s}>{d}": dict(v) for (s, d), v in sorted(links.items(), key=str)},
        "default": dict(default),
    }


def networks(timeline: Timeline) -> list[Network]:
    """The network over the run, from `net` records (blocks, links, and who runs if given) and
    agents' `proc` records (started, killed, exited, paused, resumed). Changes at one time fold
    into one `Network`. Empty when the timeline has no `net` record (the network is unknown)."""
    if not timeline.of_kind("net"):
        return []
    out: list[Network] = []
    alive: set[int] = set()
    paused: set[int] = set()
    cuts: frozenset[tuple[int, int]] = frozenset()
    links: dict[tuple[int, int], Link] = {}
    default = Link()
    for r in timeline.records:
        kind = r["kind"]
        if kind == "net":
            cuts, links, default = _net_fields(r)
            if "alive" in r:
                alive = {n for n in map(host_id, r["alive"]) if isinstance(n, int)}
            if "paused" in r:
                paused = {n for n in map(host_id, r["paused"]) if isinstance(n, int)}
        elif kind == "proc" and isinstance(r["node"], int):
            _proc(r["node"], r["state"], alive, paused)
        else:
            continue
        net = Network(float(r["t"]), frozenset(alive), frozenset(paused), cuts, links, default)
        if out and out[-1].at == net.at:
            out[-1] = net
        else:
            out.append(net)
    return out


def _net_fields(
    r: Mapping[str, Any],
) -> tuple[frozenset[tuple[int, int]], dict[tuple[int, int], Link], Link]:
    cuts = set()
    for s, d in r.get("blocks", ()):
        a, b = host_id(s), host_id(d)
        if isinstance(a, int) and isinstance(b, int):
            cuts.add((a, b))
    links = {}
    for pair, impairment in (r.get("links") or {}).items():
        a, _, b = pair.partition(">")
        s, d = host_id(a), host_id(b)
        if isinstance(s, int) and isinstance(d, int):
            links[(s, d)] = Link.parse(impairment)
    return frozenset(cuts), links, Link.parse(r.get("default") or {})


def _proc(node: int, state: str, alive: set[int], paused: set[int]) -> None:
    if state in {"started", "resumed"}:
        alive.add(node)
        paused.discard(node)
    elif state in DOWN_STATES:
        alive.discard(node)
        paused.discard(node)
    elif state == "paused":
        paused.add(node)
