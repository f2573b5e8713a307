"""Scenario files (design §4.5): TOML text -> a frozen `Scenario`, checked before anything runs.

A scenario is a topology, the agents' cluster settings, a timeline of nemeses (faults, each at a
time counted from t0 = the moment the cluster first formed) and expectations. Every mistake is
one `ScenarioError` line that names the key (`nemesis[2].groups: ...`), unknown keys included;
times are strings with a unit (`"20ms"`, `"1.5s"`, `"2m"`) or numbers of seconds; netem keys
(`shape`, `[topology] shape`) are checked by `netem.Impairment.parse`, partition shapes by
`grudge.blocks_for` against the topology's nodes. The `[cluster]` table is the agent's own keys
(docs/agent.md): `nodeconf.node_config` turns it into each node's config, which the runner has
the agent's own loader check before `up`.

Pure: no I/O except `load()` / `library_*()` reading files, no clock, randomness only from the
`random.Random` passed in. `command_library` is the CLI's `votemesh-lab library`.
"""

from __future__ import annotations

import argparse
import random
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from votemesh_lab import grudge, netem, nodeconf

MAX_NODES = 64
MAX_LINKS = 8
MAX_DURATION = 24 * 3600.0
MAX_REPEAT = 10_000
QNETD_ALGORITHMS = ("", "ffsplit", "lms")
SHAPERS = ("tap", "tc")
HOSTS = ("qnetd", "broker")
TOP_KEYS = frozenset({"name", "purpose", "seed", "duration", "topology", "cluster", "nemesis",
                      "expect", "checker"})  # fmt: skip
TOPOLOGY_KEYS = frozenset({"nodes", "links", "qnetd", "broker", "shaper", "shape", "form_within",
                           "static_peers"})  # fmt: skip
CHECKER_KEYS = frozenset({"properties"})
PROPERTIES = ("S1", "S2", "S3", "S4", "F1", "L1", "L2", "silent")
COMMON_KEYS = frozenset({"id", "at", "f", "duration", "repeat", "every"})
DIRECTIONS = ("both", "one-way")
#: Each nemesis kind: its own keys (besides COMMON_KEYS) and the kind that undoes it.
NEMESES: dict[str, tuple[frozenset[str], str | None]] = {
    "partition": (frozenset({"shape", "groups", "node", "from", "to", "grudge"}), "heal"),
    "cut": (frozenset({"from", "to"}), "heal"),
    "heal": (frozenset(), None),
    "shape": (
        frozenset({"from", "to", "direction", *netem.Impairment.__dataclass_fields__}),
        "unshape",
    ),
    "unshape": (frozenset({"from", "to"}), None),
    "kill": (frozenset({"nodes"}), "start"),
    "pause": (frozenset({"nodes"}), "resume"),
    "resume": (frozenset({"nodes"}), None),
    "term": (frozenset({"nodes"}), "start"),
    "start": (frozenset({"nodes"}), None),
    "restart": (frozenset({"nodes"}), None),
    "link-down": (frozenset({"nodes", "link"}), "link-up"),
    "link-up": (frozenset({"nodes", "link"}), None),
    "flap": (frozenset({"from", "to", "nodes", "link", "period", "count"}), None),
    "clock": (frozenset({"nodes", "mode", "delta"}), None),
    "exec": (frozenset({"node", "argv", "expect_rc", "timeout"}), None),
}
EXPECT_PICTURE = ("quorate", "inquorate", "one_view", "qdevice_vote", "one_quorate_of")
EXPECT_WINDOW = ("max_view_changes", "max_inquorate_s", "never_lost")
EXPECT_KEYS = frozenset({"after", "within", "hold", "during", "nodes", "note",
                         *EXPECT_PICTURE, *EXPECT_WINDOW})  # fmt: skip
_TIME = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*(us|ms|s|m|min)?\s*")
_TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, None: 1.0}
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,47}")
_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")


class ScenarioError(ValueError):
    """A mistake in a scenario file: one line that names the key and says what to write."""


# ------------------------------------------------------------------------------- the model
@dataclass(frozen=True)
class Topology:
    """[topology]: the hosts of the lab."""

    nodes: int
    links: int = 1
    qnetd: str = ""
    broker: bool = False
    shaper: str = "tap"
    shape: Mapping[str, Any] = field(default_factory=dict)
    """netem keys applied to every pair from the start (the lab's baseline)."""
    form_within: float = 30.0
    """Seconds from `up` to t0 (all nodes in one quorate view); later: the run is unknown."""
    static_peers: bool = True
    """False: nodes find each other by discovery only (the [cluster] must enable it)."""

    def node_names(self) -> list[str]:
        return [f"n{i}" for i in range(1, self.nodes + 1)]

    def host_names(self) -> list[str]:
        return self.node_names() + ["qnetd"] * bool(self.qnetd) + ["broker"] * self.broker


@dataclass(frozen=True)
class Nemesis:
    """One fault on the timeline (repeats and undos already expanded by `timeline()`)."""

    id: str
    f: str
    at: float
    """Seconds after t0."""
    params: Mapping[str, Any]
    duration: float | None = None
    """Then the undo (`undo_of(f)`), recorded as fault `<id>.undo`."""
    undo: bool = False
    """This entry is the undo of nemesis `id` without its `.undo` suffix."""
    repeat: int = 1
    every: float = 0.0


@dataclass(frozen=True)
class Expect:
    """One [[expect]]: a picture after a point in time, or a window's limits."""

    index: int
    text: str
    """The expectation in one line, for the report."""
    after: str | float | None = None
    """A nemesis id (its verified time) or seconds after t0; None with `during`."""
    within: float = 0.0
    hold: float = 0.0
    quorate: tuple[int, ...] | None = None
    inquorate: tuple[int, ...] | None = None
    one_view: tuple[int, ...] | None = None
    qdevice_vote: tuple[int, ...] | None = None
    one_quorate_of: tuple[tuple[int, ...], ...] | None = None
    """Exactly one of these groups is quorate (all of it), every other group inquorate."""
    during: tuple[str, str] | None = None
    nodes: tuple[int, ...] | None = None
    """The nodes `max_view_changes` / `max_inquorate_s` look at (default: every node)."""
    max_view_changes: int | None = None
    max_inquorate_s: float | None = None
    never_lost: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Scenario:
    """A checked scenario file."""

    name: str
    purpose: str
    duration: float
    topology: Topology
    cluster: Mapping[str, Any]
    nemeses: tuple[Nemesis, ...]
    """As written (one entry per [[nemesis]]), with ids given or `f<index>`."""
    expects: tuple[Expect, ...]
    seed: int | None = None
    properties: tuple[str, ...] | None = None
    text: str = ""

    def timeline(self) -> list[Nemesis]:
        """Every fault and undo in time order: repeats become `<id>#1`, `<id>#2`, ...; a
        nemesis with a duration gets its undo `<id>.undo` at `at + duration`."""
        out: list[Nemesis] = []
        for nemesis in self.nemeses:
            for k in range(nemesis.repeat):
                ident = nemesis.id if nemesis.repeat == 1 else f"{nemesis.id}#{k + 1}"
                at = nemesis.at + k * nemesis.every
                out.append(Nemesis(ident, nemesis.f, at, nemesis.params, nemesis.duration))
                undo = undo_of(nemesis.f)
                if nemesis.duration is not None and undo is not None:
                    params = _undo_params(nemesis)
                    out.append(
                        Nemesis(f"{ident}.undo", undo, at + nemesis.duration, params, undo=True)
                    )
        return sorted(out, key=lambda n: n.at)

    def fault_ids(self) -> set[str]:
        """Every id a [[expect]] may name."""
        return {n.id for n in self.timeline()}

    def plan_cluster(self) -> dict[str, Any]:
        """The [cluster] table (a plain dict, for the agents' configs)."""
        return dict(self.cluster)


def undo_of(f: str) -> str | None:
    """The nemesis kind that undoes `f` (partition -> heal, kill -> start, ...)."""
    return NEMESES[f][1]


def _undo_params(nemesis: Nemesis) -> dict[str, Any]:
    keep = {"nodes", "link", "from", "to"}
    return {k: v for k, v in nemesis.params.items() if k in keep}


# ------------------------------------------------------------------------------- values
def parse_time(where: str, raw: object, *, maximum: float = MAX_DURATION) -> float:
    """`"20ms"`, `"1.5s"`, `"2m"` or a number of seconds -> seconds in 0 .. maximum."""
    if isinstance(raw, bool):
        raise ScenarioError(f'{where}: {raw!r} is not a time; write e.g. {where} = "5s"')
    if isinstance(raw, int | float):
        value = float(raw)
    elif isinstance(raw, str) and (match := _TIME.fullmatch(raw)) is not None:
        value = float(match.group(1)) * _TIME_UNITS[match.group(2)]
    else:
        raise ScenarioError(f'{where}: {raw!r} is not a time; write e.g. {where} = "5s" or "200ms"')
    if not 0 <= value <= maximum:
        raise ScenarioError(f"{where}: {raw!r} is out of range 0 .. {maximum:g} s")
    return value


def _int(where: str, raw: object, low: int, high: int) -> int:
    if not isinstance(raw, int) or isinstance(raw, bool) or not low <= raw <= high:
        raise ScenarioError(f"{where}: {raw!r} must be a whole number in {low} .. {high}")
    return raw


def _text(where: str, raw: object, example: str) -> str:
    if not isinstance(raw, str) or not raw.strip() or "\n" in raw:
        raise ScenarioError(f'{where}: give one line of text, e.g. {where} = "{example}"')
    return raw


def _table(where: str, raw: object, known: frozenset[str]) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise ScenarioError(f"{where}: must be a table")
    for key in raw:
        if key not in known:
            name = f"{where}.{key}" if where else key
            raise ScenarioError(f"unknown key {name}; known here: {', '.join(sorted(known))}")
    return raw


def _node_ids(where: str, raw: object, nodes: int) -> tuple[int, ...]:
    if not isinstance(raw, list):
        raise ScenarioError(f"{where}: give a list of node ids, e.g. {where} = [1, 2]")
    for value in raw:
        _int(where, value, 1, nodes)
    return tuple(raw)


def _hosts(where: str, raw: object, topology: Topology) -> tuple[str, ...]:
    """Node ids and host names ("qnetd", "broker") -> host names; each must exist."""
    if not isinstance(raw, list) or not raw:
        raise ScenarioError(f'{where}: give a list of nodes or hosts, e.g. {where} = [1, "qnetd"]')
    names = []
    for value in raw:
        try:
            name = grudge.node_name(value)
        except grudge.GrudgeError as exc:
            raise ScenarioError(f"{where}: {exc}") from None
        if name not in topology.host_names():
            raise ScenarioError(f"{where}: no host {value!r}; this topology has "
                                f"{', '.join(topology.host_names())}")  # fmt: skip
        names.append(name)
    return tuple(names)


# ------------------------------------------------------------------------------- parsing
def parse(text: str, source: str = "scenario") -> Scenario:
    """A checked Scenario from TOML text; ScenarioError (one line, `SOURCE: ...`) if wrong."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{source}: not valid TOML: {exc}") from None
    try:
        return _scenario(data, text)
    except ScenarioError as exc:
        raise ScenarioError(f"{source}: {exc}") from None


def load(path: Path) -> Scenario:
    """Read and check a scenario file; ScenarioError naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ScenarioError(f"{path} is not UTF-8 text") from None
    return parse(text, str(path))


def _scenario(data: Mapping[str, Any], text: str) -> Scenario:
    _table("", data, TOP_KEYS)
    for key in ("name", "purpose", "duration", "topology"):
        if key not in data:
            raise ScenarioError(f"missing {key}; every scenario has name, purpose, duration and "
                                "a [topology] table")  # fmt: skip
    name = _text("name", data["name"], "split-3-2")
    if _NAME.fullmatch(name) is None:
        raise ScenarioError(f"name: {name!r}: use 1-48 of a-z, 0-9 and '-', e.g. split-3-2")
    seed = None if "seed" not in data else _int("seed", data["seed"], 0, 2**63 - 1)
    topology = _topology(_table("topology", data["topology"], TOPOLOGY_KEYS))
    cluster = _cluster(data.get("cluster", {}), topology)
    raw_nemeses = data.get("nemesis", [])
    if not isinstance(raw_nemeses, list):
        raise ScenarioError("nemesis: write each as a [[nemesis]] table")
    nemeses = tuple(_nemesis(i, n, topology) for i, n in enumerate(raw_nemeses))
    ids = [n.id for n in nemeses]
    if len(ids) != len(set(ids)):
        raise ScenarioError(f"nemesis ids must be unique: {', '.join(sorted(ids))}")
    duration = parse_time("duration", data["duration"])
    if duration <= 0:
        raise ScenarioError('duration: must be above 0, e.g. duration = "30s"')
    scenario = Scenario(
        name=name,
        purpose=_text("purpose", data["purpose"], "what this scenario shows"),
        duration=duration,
        topology=topology,
        cluster=cluster,
        nemeses=nemeses,
        expects=(),
        seed=seed,
        properties=_properties(data.get("checker", {})),
        text=text,
    )
    raw_expects = data.get("expect", [])
    if not isinstance(raw_expects, list):
        raise ScenarioError("expect: write each as an [[expect]] table")
    expects = tuple(_expect(i, e, scenario) for i, e in enumerate(raw_expects))
    late = [n.id for n in scenario.timeline() if n.at > duration]
    if late:
        raise ScenarioError(f"nemesis {late[0]} comes after the end (duration {duration:g} s): "
                            "move it or raise duration")  # fmt: skip
    return Scenario(**{**scenario.__dict__, "expects": expects})


def _topology(t: Mapping[str, Any]) -> Topology:
    if "nodes" not in t:
        raise ScenarioError("missing topology.nodes; write e.g. nodes = 3")
    qnetd = t.get("qnetd", "")
    if qnetd not in QNETD_ALGORITHMS:
        raise ScenarioError(f'topology.qnetd: {qnetd!r}: use "ffsplit", "lms" or "" (none)')
    shaper = t.get("shaper", "tap")
    if shaper not in SHAPERS:
        raise ScenarioError(f'topology.shaper: {shaper!r}: use "tap" or "tc"')
    for key in ("broker", "static_peers"):
        if not isinstance(t.get(key, False), bool):
            raise ScenarioError(f"topology.{key}: write true or false")
    shape = t.get("shape", {})
    _impairment("topology.shape", shape)
    return Topology(
        nodes=_int("topology.nodes", t["nodes"], 1, MAX_NODES),
        links=_int("topology.links", t.get("links", 1), 1, MAX_LINKS),
        qnetd=qnetd,
        broker=t.get("broker", False),
        shaper=shaper,
        shape=dict(shape),
        form_within=parse_time("topology.form_within", t.get("form_within", 30.0), maximum=600),
        static_peers=t.get("static_peers", True),
    )


def _impairment(where: str, raw: object) -> netem.Impairment:
    if not isinstance(raw, Mapping):
        raise ScenarioError(f'{where}: must be a table, e.g. {{ delay = "20ms", loss = "5%" }}')
    try:
        return netem.Impairment.parse(raw)
    except netem.ImpairmentError as exc:
        raise ScenarioError(f"{where}.{exc}") from None


def _cluster(raw: object, topology: Topology) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise ScenarioError("cluster: must be a table of the agent's own keys (docs/agent.md)")
    for key in raw:
        if key in nodeconf.LAB_KEYS:
            raise ScenarioError(f"cluster.{key}: the lab sets it for every node from [topology]; "
                                "remove it")  # fmt: skip
        if key not in nodeconf.CLUSTER_KEYS:
            known = ", ".join(sorted(nodeconf.CLUSTER_KEYS))
            raise ScenarioError(f"unknown key cluster.{key}; the agent's keys here: {known}")
    if "qdevice" in raw and not topology.qnetd:
        raise ScenarioError('cluster.qdevice: needs a qnetd; set topology.qnetd = "ffsplit"')
    if "mqtt" in raw and not topology.broker:
        raise ScenarioError("cluster.mqtt: needs a broker; set topology.broker = true")
    if not topology.static_peers and not raw.get("discovery", False):
        raise ScenarioError("topology.static_peers = false needs cluster.discovery = true")
    return dict(raw)


def _properties(raw: object) -> tuple[str, ...] | None:
    table = _table("checker", raw, CHECKER_KEYS)
    if "properties" not in table:
        return None
    props = table["properties"]
    if not isinstance(props, list) or any(p not in PROPERTIES for p in props):
        raise ScenarioError(f"checker.properties: a list of {', '.join(PROPERTIES)}")
    return tuple(props)


def _nemesis(index: int, raw: object, topology: Topology) -> Nemesis:
    where = f"nemesis[{index}]"
    if not isinstance(raw, Mapping):
        raise ScenarioError(f"{where}: must be a [[nemesis]] table")
    f = raw.get("f")
    if not isinstance(f, str) or f not in NEMESES:
        raise ScenarioError(f"{where}.f: {f!r}: use one of {', '.join(NEMESES)}")
    own, undo = NEMESES[f]
    _table(where, raw, COMMON_KEYS | own)
    ident = raw.get("id", f"f{index}")
    if not isinstance(ident, str) or _ID.fullmatch(ident) is None:
        raise ScenarioError(f"{where}.id: {ident!r}: use 1-32 of A-Z a-z 0-9 _ -")
    if "at" not in raw:
        raise ScenarioError(f'{where}: missing at; write e.g. at = "5s" (after the cluster formed)')
    at = parse_time(f"{where}.at", raw["at"])
    duration = None
    if "duration" in raw:
        if undo is None:
            raise ScenarioError(f"{where}.duration: {f} has nothing to undo; remove duration")
        duration = parse_time(f"{where}.duration", raw["duration"])
    params = {k: v for k, v in raw.items() if k not in COMMON_KEYS}
    repeat = _int(f"{where}.repeat", raw.get("repeat", 1), 1, MAX_REPEAT)
    every = 0.0
    if repeat > 1:
        if "every" not in raw:
            raise ScenarioError(f'{where}: repeat needs every; write e.g. every = "10s"')
        every = parse_time(f"{where}.every", raw["every"])
        if duration is not None and duration >= every:
            raise ScenarioError(f"{where}.duration: must be shorter than every")
    elif "every" in raw:
        raise ScenarioError(f"{where}.every: only with repeat = N (N > 1)")
    _CHECKS[f](where, params, topology)
    return Nemesis(ident, f, at, params, duration, repeat=repeat, every=every)


def _check_partition(where: str, p: Mapping[str, Any], topology: Topology) -> None:
    shape = p.get("shape", "groups" if "groups" in p else "cut" if "from" in p else None)
    if "grudge" in p and shape is None:
        shape = "grudge"
    if shape is None:
        raise ScenarioError(f'{where}: give groups = [[1, 2], [3]] or shape = "majorities-ring" '
                            f"(one of {', '.join(grudge.SHAPES)})")  # fmt: skip
    blocks(where, {**p, "shape": shape}, topology, random.Random(0))


def blocks(
    where: str, params: Mapping[str, Any], topology: Topology, rng: random.Random
) -> frozenset[tuple[str, str]]:
    """The directed blocks of a `partition` or `cut` nemesis, drawn with `rng`."""
    shape = params.get("shape", "groups" if "groups" in params else "cut")
    if "grudge" in params and "shape" not in params:
        shape = "grudge"
    extra = {k: v for k, v in params.items() if k in ("groups", "node", "from", "to", "grudge")}
    try:
        result = grudge.blocks_for(shape, topology.node_names(), rng, **extra)
    except grudge.GrudgeError as exc:
        raise ScenarioError(f"{where}: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise ScenarioError(f"{where}: {shape}: {exc}") from None
    hosts = set(topology.host_names())
    for pair in result:
        for host in pair:
            if host not in hosts:
                raise ScenarioError(f"{where}: no host {host} in this topology "
                                    f"({', '.join(topology.host_names())})")  # fmt: skip
    return result


def _check_cut(where: str, p: Mapping[str, Any], topology: Topology) -> None:
    for key in ("from", "to"):
        if key not in p:
            raise ScenarioError(f"{where}: missing {key}; write e.g. from = [1], to = [2]")
        _hosts(f"{where}.{key}", p[key], topology)


def _check_none(where: str, p: Mapping[str, Any], topology: Topology) -> None:
    pass


def _check_shape(where: str, p: Mapping[str, Any], topology: Topology) -> None:
    for key in ("from", "to"):
        if key in p:
            _hosts(f"{where}.{key}", p[key], topology)
    if p.get("direction", "both") not in DIRECTIONS:
        raise ScenarioError(f'{where}.direction: use "both" or "one-way"')
    netem_keys = {k: v for k, v in p.items() if k in netem.Impairment.__dataclass_fields__}
    if not netem_keys:
        raise ScenarioError(f'{where}: give netem keys, e.g. loss = "5%", delay = "20ms"')
    _impairment(where, netem_keys)


def _check_unshape(where: str, p: Mapping[str, Any], topology: Topology) -> None:
    for key in ("from", "to"):
        if key in p:
            _hosts(f"{where}.{key}", p[key], topology)


def _check_process(where: str, p: Mapping[str, Any], topology: Topology) -> None:
    if "nodes" not in p:
        raise ScenarioError(f'{where}: missing nodes; write e.g. nodes = [2] (or ["qnetd"])')
    if p["nodes"] == "random":
        return
    _hosts(f"{where}.nodes", p["nodes"], topology)


def _check_link(where: str, p: Mapping[str, Any], topology: Topology) -> None:
    _check_process(where, p, topology)
    if "link" not in p:
        raise ScenarioError(f"{where}: missing link; write e.g. link = 0")
    _int(f"{where}.link", p["link"], 0, topology.links - 1)


def _check_flap(where: str, p: Mapping[str, Any], topology: Topology) -> None:
    if "link" in p:
        _check_link(where, p, topology)
    else:
        _check_cut(where, p, topology)
    for key in ("period", "count"):
        if key not in p:
            raise ScenarioError(f'{where}: missing {key}; write e.g. period = "1.5s", count = 20')
    parse_time(f"{where}.period", p["period"])
    _int(f"{where}.count", p["count"], 1, MAX_REPEAT)


def _check_clock(where: str, p: Mapping[str, Any], topology: Topology) -> None:
    _check_process(where, p, topology)
    if p.get("mode") not in ("bump", "strobe"):
        raise ScenarioError(f'{where}.mode: use "bump" or "strobe"')
    parse_time(f"{where}.delta", p.get("delta", 0))


def _check_exec(where: str, p: Mapping[str, Any], topology: Topology) -> None:
    if "node" not in p:
        raise ScenarioError(f"{where}: missing node; write e.g. node = 1")
    _hosts(f"{where}.node", [p["node"]], topology)
    argv = p.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise ScenarioError(f'{where}.argv: a list of strings, e.g. argv = ["votemesh", "status"]')
    if "expect_rc" in p:
        _int(f"{where}.expect_rc", p["expect_rc"], 0, 255)
    parse_time(f"{where}.timeout", p.get("timeout", 30.0), maximum=600)


_CHECKS = {
    "partition": _check_partition,
    "cut": _check_cut,
    "heal": _check_none,
    "shape": _check_shape,
    "unshape": _check_unshape,
    "kill": _check_process,
    "pause": _check_process,
    "resume": _check_process,
    "term": _check_process,
    "start": _check_process,
    "restart": _check_process,
    "link-down": _check_link,
    "link-up": _check_link,
    "flap": _check_flap,
    "clock": _check_clock,
    "exec": _check_exec,
}


def _expect(index: int, raw: object, scenario: Scenario) -> Expect:
    where = f"expect[{index}]"
    t = _table(where, raw, EXPECT_KEYS)
    nodes = scenario.topology.nodes
    ids = scenario.fault_ids()
    lists = {
        k: _node_ids(f"{where}.{k}", t[k], nodes)
        for k in (*EXPECT_PICTURE, "never_lost", "nodes")
        if k in t and k != "one_quorate_of"
    }
    groups = None
    if "one_quorate_of" in t:
        raw_groups = t["one_quorate_of"]
        if not isinstance(raw_groups, list) or len(raw_groups) < 2:
            raise ScenarioError(
                f"{where}.one_quorate_of: two or more groups, e.g. [[1, 2], [3, 4]]"
            )
        groups = tuple(_node_ids(f"{where}.one_quorate_of", g, nodes) for g in raw_groups)
    picture = [k for k in EXPECT_PICTURE if k in t]
    window = [k for k in EXPECT_WINDOW if k in t]
    if "during" in t:
        during = t["during"]
        if not (isinstance(during, list) and len(during) == 2):
            raise ScenarioError(f'{where}.during: two nemesis ids, e.g. ["split", "split.undo"]')
        for ident in during:
            if not isinstance(ident, str) or ident not in ids:
                raise ScenarioError(f"{where}.during: no nemesis {ident!r}; ids: "
                                    f"{', '.join(sorted(ids)) or 'none'}")  # fmt: skip
        if picture or not window:
            raise ScenarioError(f"{where}: a during window takes {', '.join(EXPECT_WINDOW)}; "
                                f"a picture ({', '.join(picture)}) goes with after")  # fmt: skip
        return Expect(
            index=index, text=_describe(t), during=(during[0], during[1]),
            nodes=lists.get("nodes"),
            max_view_changes=(None if "max_view_changes" not in t else
                              _int(f"{where}.max_view_changes", t["max_view_changes"], 0, 10**6)),
            max_inquorate_s=(None if "max_inquorate_s" not in t else
                             parse_time(f"{where}.max_inquorate_s", t["max_inquorate_s"])),
            never_lost=lists.get("never_lost"),
        )  # fmt: skip
    if window or not picture:
        raise ScenarioError(f"{where}: give after + {' / '.join(EXPECT_PICTURE)}, or during + "
                            f"{' / '.join(EXPECT_WINDOW)}")  # fmt: skip
    after: str | float = 0.0
    if "after" in t:
        raw_after = t["after"]
        if isinstance(raw_after, str) and raw_after in ids:
            after = raw_after
        elif (
            isinstance(raw_after, str)
            and _ID.fullmatch(raw_after.split(".")[0] or "-")
            and (_TIME.fullmatch(raw_after) is None)
        ):
            raise ScenarioError(f"{where}.after: no nemesis {raw_after!r}; ids: "
                                f"{', '.join(sorted(ids)) or 'none'} (or a time)")  # fmt: skip
        else:
            after = parse_time(f"{where}.after", raw_after)
    return Expect(
        index=index, text=_describe(t), after=after,
        within=parse_time(f"{where}.within", t.get("within", 0.0)),
        hold=parse_time(f"{where}.hold", t.get("hold", 0.0)),
        quorate=lists.get("quorate"), inquorate=lists.get("inquorate"),
        one_view=lists.get("one_view"), qdevice_vote=lists.get("qdevice_vote"),
        one_quorate_of=groups,
    )  # fmt: skip


def _describe(t: Mapping[str, Any]) -> str:
    """The [[expect]] table as one line: `after split within 3s hold 5s: quorate [1, 2, 3] ...`."""
    head = [f"{k} {_show(t[k])}" for k in ("after", "during", "within", "hold") if k in t]
    body = [f"{k} {_show(t[k])}" for k in (*EXPECT_PICTURE, *EXPECT_WINDOW, "nodes") if k in t]
    text = " ".join(head) + (": " if head else "") + ", ".join(body)
    return f"{text} ({t['note']})" if "note" in t else text


def _show(value: object) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


# ------------------------------------------------------------------------------- the library
def library_dir() -> Path:
    """The directory of the scenarios shipped with the package."""
    return Path(str(resources.files("votemesh_lab") / "scenarios"))


def library() -> list[Path]:
    """Every library scenario file, by name."""
    return sorted(library_dir().glob("*.toml"))


def find(name_or_path: str) -> Path:
    """A path as given, else the library scenario of that name; ScenarioError if neither."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or "/" in name_or_path:
        if not path.is_file():
            raise ScenarioError(f"no scenario file {name_or_path}")
        return path
    candidate = library_dir() / f"{name_or_path}.toml"
    if not candidate.is_file():
        raise ScenarioError(f"no library scenario {name_or_path!r}; `votemesh-lab library` "
                            "lists them, or give a path to a .toml file")  # fmt: skip
    return candidate


def command_library(args: argparse.Namespace) -> int:  # noqa: ARG001 (the CLI's signature)
    """`votemesh-lab library`: every library scenario, its name and one-line purpose."""
    rows = []
    for path in library():
        try:
            scenario = load(path)
        except ScenarioError as exc:
            rows.append((path.stem, f"(broken: {exc})"))
            continue
        rows.append((scenario.name, scenario.purpose))
    width = max((len(name) for name, _ in rows), default=0)
    for name, purpose in rows:
        print(f"{name:<{width}}  {purpose}")
    return 0
