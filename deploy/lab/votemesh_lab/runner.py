"""`votemesh-lab run`: one scenario against one backend, judged, stored (design §4.5-4.7).

    votemesh-lab run split-3-2 [--seed S] [--out DIR] [--backend netns|ssh --inventory FILE]

Steps: check the file and every node's generated agent config (the agent's own loader) before
anything starts; `up`; apply the baseline matrix ([topology] shape) and verify it; wait for t0
(every node in one quorate view, within `form_within`, else the run is unknown); fire every
nemesis on time (`at` counts from t0), each recorded as a `fault` record with `applied_t` (the
lab made it) and `verified_t` (the probes saw it); poll every agent's status (changes become
`state` records, `src: status`); at `duration` undo everything (heal, unshape to the baseline,
resume, start, links up) and let the cluster settle; collect the logs; tear down (always: on
Ctrl-C, SIGTERM, a failure); judge (the checker's properties and the scenario's [[expect]]);
write the store `lab-store/<scenario>/<UTC>-s<seed>/` (report.json, timeline.jsonl,
timeline.png, scenario.toml, logs/) and print one verdict line.

Exit: 0 valid, 3 invalid, 2 unknown, 1 a user mistake (nothing ran).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import importlib
import os
import random
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from types import FrameType
from typing import Any

from votemesh_lab import collect, expect, grudge, netem, report, scenario
from votemesh_lab.backends import Backend, LabPlan, NetnsBackend, check_node_configs
from votemesh_lab.checker import Checker
from votemesh_lab.netns import LabError
from votemesh_lab.scenario import Nemesis, Scenario, ScenarioError
from votemesh_lab.timeline import Timeline

POLL = 0.2
STORE = Path("lab-store")
#: Seconds the cluster gets after the final heal before the run ends (then the checker's own
#: settle bound applies to what it saw).
FINAL_SETTLE = 4.0
EXIT = report.EXIT

Record = dict[str, Any]


class RunAbortedError(Exception):
    """The run could not go on (a fault that would not verify, formation not reached, ...);
    the verdict is unknown with this reason."""


class Interrupted(BaseException):
    """SIGTERM: treated like Ctrl-C (teardown, then unknown)."""


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


# ------------------------------------------------------------------------------- the run
@dataclass
class Run:
    """One scenario run against one backend; `execute()` drives it, records what happened."""

    scenario: Scenario
    backend: Backend
    seed: int
    workdir: Path
    log: Callable[[str], None] = print
    records: list[Record] = field(default_factory=list)
    start_wall_ms: int = 0
    start_mono: float = 0.0
    t0: float | None = None
    form_deadline: float | None = None
    """When formation had to be reached (run time): `form_within` after the lab was up."""
    aborted: str | None = None
    exec_failures: list[expect.Outcome] = field(default_factory=list)
    addresses: dict[str, list[str]] = field(default_factory=dict)
    first_expected: dict[int, int] = field(default_factory=dict)
    """Each node's expected votes in its first status (its configured value)."""
    _matrix: grudge.Matrix | None = None
    _baseline: tuple[grudge.Rule, ...] = ()
    _last_status: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    _down: set[str] = field(default_factory=set)
    _paused: set[str] = field(default_factory=set)
    _links_down: set[tuple[str, int]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    # -- time and records ---------------------------------------------------------------------
    def now(self) -> float:
        return time.monotonic() - self.start_mono

    def record(self, kind: str, node: int | str = "lab", src: str = "lab", **fields: Any) -> Record:
        rec: Record = {"t": round(self.now(), 4), "node": node, "kind": kind, "src": src,
                       **_jsonable(fields)}  # fmt: skip
        self.records.append(rec)
        return rec

    def proc(self, host: str, state: str) -> None:
        self.record("proc", node=_owner(host), state=state)

    # -- the whole run -------------------------------------------------------------------------
    def execute(self, plan: LabPlan) -> None:
        """Up, form, nemeses, final heal, settle; the caller tears down and collects."""
        self.start_wall_ms = time.time_ns() // 1_000_000
        self.start_mono = time.monotonic()
        self.log(f"{self.scenario.name}: seed {self.seed}, {self.scenario.topology.nodes} nodes, "
                 f"backend {self.backend.name}")  # fmt: skip
        self.backend.up(plan)
        self.addresses = {h: self.backend.addresses(h) for h in self.backend.hosts()}
        for host in self.backend.hosts():
            self.proc(host, "started")
        hosts = tuple(self.backend.hosts())
        matrix = grudge.Matrix(hosts)
        shape = self.scenario.topology.shape
        if shape:
            matrix = matrix.shape(grudge.Rule(None, None, False, netem.Impairment.parse(shape)))
        self._baseline = matrix.rules
        self._apply(matrix, "baseline")
        self._form()
        self._nemeses()
        self._final_heal()

    def _form(self) -> None:
        limit = self.scenario.topology.form_within
        deadline = self.now() + limit
        self.form_deadline = round(deadline, 4)
        nodes = [f"n{i}" for i in range(1, self.scenario.topology.nodes + 1)]
        want = list(range(1, len(nodes) + 1))
        while True:
            docs = self.poll()
            rings = {tuple(d.get("ring_id") or ()) for d in docs.values()}
            if all(d.get("quorate") and d.get("members") == want for d in docs.values()) and (
                len(rings) == 1 and len(docs) == len(nodes)
            ):
                self.t0 = self.now()
                self.record("note", text=f"formed: all {len(nodes)} nodes in one quorate view")
                self.log(f"formed at {self.t0:.2f} s")
                return
            if self.now() > deadline:
                seen = "; ".join(f"{h}: {d.get('members')} q={d.get('quorate')}"
                                 for h, d in sorted(docs.items()))  # fmt: skip
                raise RunAbortedError(f"formation not reached within {limit:g} s ({seen})")
            time.sleep(POLL)

    def poll(self) -> dict[str, dict[str, Any]]:
        """Every running agent's status; a changed picture becomes a `state` record."""
        docs = {}
        for i in range(1, self.scenario.topology.nodes + 1):
            host = f"n{i}"
            doc = self.backend.status(host) if host not in self._down | self._paused else {}
            docs[host] = doc
            if not doc:
                continue
            self.first_expected.setdefault(i, int(doc.get("expected_votes") or 0))
            vote = bool((doc.get("qdevice") or {}).get("vote"))
            key = (doc.get("ring"), tuple(doc.get("members") or ()), doc.get("quorate"), vote,
                   doc.get("config_version"))  # fmt: skip
            if self._last_status.get(host) != key:
                self._last_status[host] = key
                self.record("state", node=i, src="status", ring=doc.get("ring"),
                            members=list(doc.get("members") or []), counted=doc.get("counted"),
                            quorate=bool(doc.get("quorate")),
                            expected=int(doc.get("expected_votes") or 0), qdevice_vote=vote,
                            config_version=doc.get("config_version"))  # fmt: skip
        return docs

    def _sleep_until(self, t: float) -> None:
        while (left := t - self.now()) > 0:
            self.poll()
            time.sleep(min(POLL, max(left, 0.0)))

    def _nemeses(self) -> None:
        if self.t0 is None:
            raise RuntimeError("the cluster has not formed")
        schedule = self._expand(self.scenario.timeline())
        for at, nemesis, label in schedule:
            self._sleep_until(self.t0 + at)
            self.log(f"{self.now() - self.t0:7.2f} s  {label}")
            self._fire(nemesis)
        self._sleep_until(self.t0 + self.scenario.duration)

    def _expand(self, timeline: list[Nemesis]) -> list[tuple[float, Nemesis, str]]:
        """Flaps become their cut/heal (or link down/up) steps; others stay as they are."""
        out: list[tuple[float, Nemesis, str]] = []
        for n in timeline:
            if n.f != "flap":
                out.append((n.at, n, n.id))
                continue
            period = scenario.parse_time("period", n.params["period"])
            for k in range(int(n.params["count"])):
                on = Nemesis(n.id, "flap-on", n.at + k * period, n.params)
                off = Nemesis(n.id, "flap-off", n.at + (k + 0.5) * period, n.params)
                out += [(on.at, on, f"{n.id} {k + 1}/{n.params['count']} on"),
                        (off.at, off, f"{n.id} {k + 1}/{n.params['count']} off")]  # fmt: skip
        return sorted(out, key=lambda item: item[0])

    # -- one nemesis ---------------------------------------------------------------------------
    def _fire(self, n: Nemesis) -> None:
        """Run one nemesis and record it: a start, or the stop of what it undoes (`<id>.undo`,
        a flap's off step)."""
        handler = getattr(self, "_f_" + n.f.replace("-", "_"))
        applied, verified = handler(n)
        f, phase = n.f, "stop" if n.undo else "start"
        if n.f in ("flap-on", "flap-off"):
            f, phase = "flap", "start" if n.f == "flap-on" else "stop"
        params = {k: v for k, v in n.params.items() if k not in ("period", "count")}
        rec = self.record("fault", id=n.id, f=f, phase=phase, params=params)
        rec["t"] = rec["applied_t"] = round(applied, 4)
        rec["verified_t"] = None if verified is None else round(verified, 4)

    def _apply(self, matrix: grudge.Matrix, why: str) -> tuple[float, float | None]:
        verification = self.backend.apply(matrix)
        self._matrix = matrix
        applied = self.now() - float(verification.seconds)  # the switch took it then
        net = self.record("net", blocks=sorted([s, d] for s, d in matrix.blocks),
                    links={f"{s}>{d}": matrix.effective(s, d).to_dict() for s, d in matrix.pairs()
                           if matrix.effective(s, d) != matrix.default()},
                    default=matrix.default().to_dict(), generation=matrix.generation)  # fmt: skip
        net["t"] = round(applied, 4)
        mismatches = [dataclasses.asdict(m) for m in verification.mismatches]
        self.record("verify", generation=matrix.generation, ok=verification.ok,
                    mismatches=mismatches, unverified=[list(p) for p in verification.unverified],
                    pairs=verification.pairs, seconds=verification.seconds)  # fmt: skip
        if not verification.ok:
            self.record("verify_failed", text=f"{why}: {verification}")
            raise RunAbortedError(f"the lab could not make {why}: {verification}")
        return applied, self.now()

    def _current(self) -> grudge.Matrix:
        if self._matrix is None:
            raise RuntimeError("no matrix applied yet")
        return self._matrix

    def _f_partition(self, n: Nemesis) -> tuple[float, float | None]:
        blocks = scenario.blocks(n.id, n.params, self.scenario.topology, self.rng)
        return self._apply(self._current().with_blocks(blocks), n.id)

    def _f_cut(self, n: Nemesis) -> tuple[float, float | None]:
        new = scenario.blocks(n.id, {"shape": "cut", **n.params}, self.scenario.topology, self.rng)
        current = self._current()
        return self._apply(current.with_blocks(current.blocks | new), n.id)

    def _f_heal(self, n: Nemesis) -> tuple[float, float | None]:
        return self._apply(self._current().heal(), n.id)

    def _f_shape(self, n: Nemesis) -> tuple[float, float | None]:
        keys = {k: v for k, v in n.params.items() if k in netem.Impairment.__dataclass_fields__}
        rule = grudge.Rule(_host_set(n.params.get("from")), _host_set(n.params.get("to")),
                           n.params.get("direction") == "one-way",
                           netem.Impairment.parse(keys))  # fmt: skip
        return self._apply(self._current().shape(rule), n.id)

    def _f_unshape(self, n: Nemesis) -> tuple[float, float | None]:
        src, dst = _host_set(n.params.get("from")), _host_set(n.params.get("to"))
        current = self._current()
        if src is None and dst is None:  # every rule but the baseline
            matrix = dataclasses.replace(current, rules=self._baseline,
                                         generation=current.generation + 1)  # fmt: skip
        else:
            matrix = current.unshape(src, dst)
        return self._apply(matrix, n.id)

    def _hosts_of(self, n: Nemesis) -> list[str]:
        raw = n.params.get("nodes")
        if raw == "random":
            return [self.rng.choice(self.scenario.topology.node_names())]
        return [grudge.node_name(v) for v in raw or ()]

    def _signal(self, n: Nemesis, what: str, state: str) -> tuple[float, float | None]:
        at = self.now()
        for host in self._hosts_of(n):
            self.backend.signal(host, what)  # type: ignore[arg-type]
            self.proc(host, state)
            if what in ("kill", "term"):
                self._down.add(host)
                self._paused.discard(host)
            elif what == "pause":
                self._paused.add(host)
            else:
                self._paused.discard(host)
        return at, self.now()

    def _f_kill(self, n: Nemesis) -> tuple[float, float | None]:
        return self._signal(n, "kill", "killed")

    def _f_term(self, n: Nemesis) -> tuple[float, float | None]:
        return self._signal(n, "term", "exited")

    def _f_pause(self, n: Nemesis) -> tuple[float, float | None]:
        return self._signal(n, "pause", "paused")

    def _f_resume(self, n: Nemesis) -> tuple[float, float | None]:
        return self._signal(n, "resume", "resumed")

    def _f_start(self, n: Nemesis) -> tuple[float, float | None]:
        at = self.now()
        for host in self._hosts_of(n):
            self.backend.start(host)
            self._down.discard(host)
            self.proc(host, "started")
        return at, self.now()

    def _f_restart(self, n: Nemesis) -> tuple[float, float | None]:
        at, _ = self._signal(n, "term", "exited")
        self._f_start(n)
        return at, self.now()

    def _link(self, n: Nemesis, up: bool) -> tuple[float, float | None]:
        at = self.now()
        link = int(n.params["link"])
        for host in self._hosts_of(n):
            self.backend.link(host, link, up)
            (self._links_down.discard if up else self._links_down.add)((host, link))
        return at, self.now()

    def _f_link_down(self, n: Nemesis) -> tuple[float, float | None]:
        return self._link(n, up=False)

    def _f_link_up(self, n: Nemesis) -> tuple[float, float | None]:
        return self._link(n, up=True)

    def _flap(self, n: Nemesis, *, on: bool) -> tuple[float, float | None]:
        """One step of a flap: the link down (on) / up, or the pair cut both ways / healed."""
        if "link" in n.params:
            return self._link(n, up=not on)
        params = {"shape": "cut", **n.params}
        pairs = scenario.blocks(n.id, params, self.scenario.topology, self.rng)
        both = pairs | {(d, s) for s, d in pairs}
        current = self._current()
        blocks = current.blocks | both if on else current.blocks - both
        return self._apply(current.with_blocks(blocks), n.id)

    def _f_flap_on(self, n: Nemesis) -> tuple[float, float | None]:
        return self._flap(n, on=True)

    def _f_flap_off(self, n: Nemesis) -> tuple[float, float | None]:
        return self._flap(n, on=False)

    def _f_clock(self, n: Nemesis) -> tuple[float, float | None]:
        raise RunAbortedError(f"{n.id}: the {self.backend.name} backend cannot set a host's clock")

    def _f_exec(self, n: Nemesis) -> tuple[float, float | None]:
        at = self.now()
        host = grudge.node_name(n.params["node"])
        timeout = scenario.parse_time("timeout", n.params.get("timeout", 30.0))
        rc, output = self.backend.exec(host, list(n.params["argv"]), timeout)
        first = output.strip().splitlines()[-1] if output.strip() else ""
        self.record("note", node=_owner(host), text=f"exec {' '.join(n.params['argv'])}: "
                                                    f"exit {rc}: {first[:200]}")  # fmt: skip
        want = n.params.get("expect_rc")
        if want is not None and rc != want:
            owner = _owner(host)
            text = f"{n.id}: exec {' '.join(n.params['argv'])} on {host} exits {want}"
            nodes = (owner,) if isinstance(owner, int) else ()
            self.exec_failures.append(
                expect.Outcome(-1, text, "missed", at, first[:200], nodes, f"exit {rc}")
            )
        return at, self.now()

    # -- the end -------------------------------------------------------------------------------
    def _final_heal(self) -> None:
        """Everything back: processes, links, blocks, shapes (to the baseline); then settle."""
        for host in sorted(self._paused):
            self.backend.signal(host, "resume")
            self.proc(host, "resumed")
        self._paused.clear()
        for host in sorted(self._down):
            self.backend.start(host)
            self.proc(host, "started")
        self._down.clear()
        for host, link in sorted(self._links_down):
            self.backend.link(host, link, True)
        self._links_down.clear()
        current = self._current()
        if current.blocks or current.rules != self._baseline:
            final = dataclasses.replace(current, blocks=frozenset(), rules=self._baseline,
                                        generation=current.generation + 1)  # fmt: skip
            self._apply(final, "the final heal")
        self.record("note", text="end of the scenario: everything healed")
        self._sleep_until(self.now() + FINAL_SETTLE)


def _owner(host: str) -> int | str:
    return int(host[1:]) if host[:1] == "n" and host[1:].isdigit() else host


def _host_set(raw: object) -> frozenset[str] | None:
    if raw is None:
        return None
    return frozenset(grudge.node_name(v) for v in raw)  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------- judging
def run_record(run: Run, plan: LabPlan, parsed: dict[str, Any]) -> Record:
    """The timeline's first record."""
    backend = run.backend
    nodes = {str(i): {"name": f"n{i}", "addresses": run.addresses.get(f"n{i}", []), "votes": 1}
             for i in range(1, plan.nodes + 1)}  # fmt: skip
    record = {"t": 0.0, "node": "lab", "kind": "run", "src": "lab",
            "scenario": run.scenario.name, "seed": run.seed, "backend": backend.name,
            "version": version("votemesh"), "start_wall_ms": run.start_wall_ms, "nodes": nodes,
            "t0": run.t0, "duration": run.scenario.duration,
            "form_within": run.form_deadline, **_jsonable(parsed)}  # fmt: skip
    if run.scenario.properties is not None:
        record["properties"] = list(run.scenario.properties)
    hosts = getattr(backend, "run_hosts_record", None)  # SSH: each host's clock offset
    if callable(hosts):
        with contextlib.suppress(LabError, OSError):
            record["hosts"] = hosts()
    return record


def drop_startup_polls(records: Sequence[Record]) -> list[Record]:
    """Polled `state` records of a node taken after its (re)start but before its first
    `view_installed`: the agent's start-up singleton view has a ring id no event announces (the
    folded state says ring null there), which is not a silent change. The rest is kept."""
    out: list[Record] = []
    announced: dict[Any, bool] = {}
    for r in sorted(records, key=lambda r: float(r["t"])):
        node = r.get("node")
        if r["kind"] == "proc" and r.get("state") == "started":
            announced[node] = False
        elif r["kind"] == "state" and r["src"] != "status" and r.get("ring") is not None:
            announced[node] = True
        elif r["kind"] == "state" and r["src"] == "status" and not announced.get(node, True):
            continue
        out.append(r)
    return out


def store_dir(out: str | None, name: str, seed: int) -> Path:
    """`--out`, else lab-store/<name>/<UTC>-s<seed>/ (and a `latest` link beside it)."""
    if out:
        return Path(out)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    return STORE / name / f"{stamp}-s{seed}"


def judge(run: Run, records: list[Record], out: Path) -> tuple[str, str]:
    """The checker's properties and the scenario's expectations over the records; writes
    timeline.jsonl, scenario.toml, timeline.png and report.json; (status, verdict line)."""
    from votemesh_lab import render  # noqa: PLC0415 (matplotlib only when drawing)

    tl = Timeline(records)
    s = run.scenario
    verdict = Checker(tl, properties=s.properties).check()
    outcomes: list[expect.Outcome] = []
    if run.t0 is not None:
        nodes = list(range(1, s.topology.nodes + 1))
        outcomes = expect.evaluate(tl.records, s.expects, t0=run.t0, end=tl.end, nodes=nodes)
    outcomes += run.exec_failures
    expectations = [o.to_dict() for o in outcomes]
    verdict = report.with_expectations(verdict, expectations)
    tl.write_jsonl(out / report.TIMELINE)
    (out / report.SCENARIO).write_text(s.text, encoding="utf-8")
    line = report.verdict_line(verdict, tl, out / report.REPORT)
    try:
        render.render_png(tl, verdict, out / report.PICTURE, title=line)
    except Exception as exc:  # noqa: BLE001 (a picture that fails must not lose the verdict)
        print(f"timeline.png not drawn: {exc}", file=sys.stderr)
    report.write(out, tl, verdict, s.text, expectations=expectations)
    return verdict.status, line


# ------------------------------------------------------------------------------- the command
def make_backend(args: argparse.Namespace) -> Backend:
    """The backend named by --backend (netns by default)."""
    name = getattr(args, "backend", None) or "netns"
    if name == "netns":
        return NetnsBackend()
    if name == "ssh":
        inventory = getattr(args, "inventory", None)
        if not inventory:
            raise ScenarioError("--backend ssh needs --inventory FILE")
        # lab-ssh's module, looked up when asked for (it needs OpenSSH, not every install has it)
        ssh = importlib.import_module("votemesh_lab.ssh")
        try:
            backend: Backend = ssh.SshBackend.from_inventory(Path(inventory))
        except (ValueError, OSError) as exc:  # ssh.InventoryError is a ValueError
            raise ScenarioError(f"--inventory {inventory}: {exc}") from None
        return backend
    raise ScenarioError(f"--backend {name}: use netns or ssh")


def preflight(s: Scenario, backend: Backend) -> None:
    """What this backend cannot do, as one line, before anything starts."""
    if backend.name == "netns":
        if os.geteuid() != 0:
            raise ScenarioError("votemesh-lab run needs root (network namespaces): use sudo")
        if any(n.f == "clock" for n in s.nemeses):
            raise ScenarioError("clock nemeses need the ssh backend: namespaces share one clock")
        from votemesh_lab import broker, netns  # noqa: PLC0415

        reason = netns.missing_reason("tap")
        if reason is None and s.topology.broker:
            reason = broker.unavailable_reason()
        if reason is not None:
            raise ScenarioError(f"cannot run here: {reason}")


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    def handler(_signum: int, _frame: FrameType | None) -> None:
        raise Interrupted

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def command_run(args: argparse.Namespace) -> int:
    """`votemesh-lab run SCENARIO`: exit 0 valid, 3 invalid, 2 unknown, 1 a user mistake."""
    try:
        s = scenario.load(scenario.find(str(args.scenario)))
        parsed = check_node_configs(LabPlan.of(s))
        seed_arg = getattr(args, "seed", None)
        seed = seed_arg if seed_arg is not None else s.seed
        if seed is None:
            seed = secrets.randbelow(2**31)
        backend = make_backend(args)
        preflight(s, backend)
        if getattr(args, "shaper", None) and args.shaper != s.topology.shaper:
            topology = dataclasses.replace(s.topology, shaper=args.shaper)
            s = dataclasses.replace(s, topology=topology)
    except ScenarioError as exc:
        print(f"votemesh-lab run: {exc}", file=sys.stderr)
        return 1
    out = store_dir(getattr(args, "out", None), s.name, seed)
    status, line = run_scenario(s, backend, seed, out, parsed)
    print(line)
    return EXIT.get(status, 2)


def run_scenario(  # noqa: PLR0917 (the scenario, where, and what to record)
    s: Scenario,
    backend: Backend,
    seed: int,
    out: Path,
    parsed: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> tuple[str, str]:
    """Run, tear down (always), collect, judge, write the store: (status, verdict line)."""
    parsed = parsed if parsed is not None else check_node_configs(LabPlan.of(s))
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="vmlrun-"))
    run = Run(s, backend, seed, workdir, log=log)
    plan = LabPlan.of(s, seed, workdir)
    logs: dict[str, Path] = {}
    interrupted = False
    try:
        with _sigterm_as_interrupt():
            try:
                run.execute(plan)
            except RunAbortedError as exc:
                run.aborted = str(exc)
            except (LabError, OSError, grudge.GrudgeError, netem.ImpairmentError) as exc:
                run.aborted = f"{type(exc).__name__}: {exc}"
            except (KeyboardInterrupt, Interrupted):
                run.aborted = "interrupted"
                interrupted = True
            finally:
                run.record("end", reason="aborted" if run.aborted else "done")
                with contextlib.suppress(LabError, OSError):
                    logs = backend.collect(out)
                try:
                    backend.down()
                except LabError as exc:
                    log(f"teardown: {exc}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if run.aborted:
        log(f"aborted: {run.aborted}")
    if run.aborted:
        run.record("note", text=f"aborted: {run.aborted}")
    records = [run_record(run, plan, parsed), *run.records]
    if run.start_wall_ms:
        records += collect.collect(logs, run.start_wall_ms, run.first_expected)
    status, line = judge(run, drop_startup_polls(records), out)
    _link_latest(out)
    if interrupted:
        raise KeyboardInterrupt
    return status, line


def _link_latest(out: Path) -> None:
    latest = out.parent / "latest"
    with contextlib.suppress(OSError):
        if latest.is_symlink():
            latest.unlink()
        if not latest.exists():
            latest.symlink_to(out.name)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m votemesh_lab.runner [NAME...]` (`make chaos`): run library scenarios one after
    another (all of them without names), each into the store; one verdict line each, then a
    summary. Exit 0 when every run was valid, else the worst exit code (3 over 2 over 1)."""
    parser = argparse.ArgumentParser(prog="python -m votemesh_lab.runner")
    parser.add_argument("names", nargs="*", help="library scenarios (default: every one)")
    parser.add_argument("--out", default=str(STORE), help="the store (default lab-store)")
    args = parser.parse_args(argv)
    names = args.names or [p.stem for p in scenario.library()]
    worst = 0
    summary = []
    for name in names:
        try:
            s = scenario.load(scenario.find(name))
            parsed = check_node_configs(LabPlan.of(s))
            backend = make_backend(argparse.Namespace(backend="netns"))
            preflight(s, backend)
        except ScenarioError as exc:
            print(f"votemesh-lab run: {exc}", file=sys.stderr)
            worst = max(worst, 1)
            continue
        seed = s.seed if s.seed is not None else secrets.randbelow(2**31)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
        out = Path(args.out) / s.name / f"{stamp}-s{seed}"
        status, line = run_scenario(s, backend, seed, out, parsed)
        print(line, flush=True)
        summary.append(f"{status:<8} {s.name}")
        worst = max(worst, EXIT.get(status, 2))
    print(f"\n{len(summary)} scenarios:")
    print("\n".join(summary))
    return worst


if __name__ == "__main__":
    sys.exit(main())
