"""Random fault schedules from a seed, and running one through the simulator and the checker.

A schedule is: 3-9 nodes (1 % of the seeds, from a fourth generator: 12, 16, 24 or 32) start
within the first 0.3 s and form a view; in some schedules (drawn from
a second generator, so older seeds keep their schedules) the cluster has a qnetd (ffsplit, or
lms from a third generator: the real arbitration core and client sessions) and/or first splits
cleanly into two groups once it has settled, for the settle time (what F1 checks), and half of
the qnetd schedules cut one node's path to the qnetd for a while during the faults; then 1-3
fault phases of 0.5-2.5 s, each with 1-3 faults (partitions, one-way cuts, crash + restart,
process pauses, lossy, duplicating, reordering or slow links, a flapping link); each phase ends
by healing everything;
then a stable phase long enough for S3 and L1 to apply (the settle time and a margin). The same
seed always gives the same schedule and, through `random.Random(seed)` in the network, the same
run, so a failing seed replays exactly (`python -m votemesh_lab.sim.replay SEED`).
"""

from __future__ import annotations

import random
import traceback
from dataclasses import dataclass, field
from typing import Any

from agent.config import QdeviceConfig, QuorumOptions, TieBreaker, Timing
from votemesh_lab.checker import Checker, Violation, settle_time
from votemesh_lab.sim.network import (
    LinkModel,
    NodeFactory,
    SimNetwork,
    cluster_configs,
    default_factory,
)
from votemesh_lab.sim.qdevice import sim_qdevice_config

FORMATION = 1.5
"""Seconds of calm at the start for the first view to form."""
CHECK_WINDOW = 0.5
"""Seconds the run goes on after the settle time, while S3 and L1 are checked."""
TRACE_TAIL = 50
QDEVICE_SHARE = 0.35
"""Share of schedules whose cluster has a qnetd."""
SPLIT_SHARE = 0.35
"""Share of schedules that start with a settled split (F1)."""
RANDOM_ALGORITHMS = ("ffsplit",)
"""The algorithm of the `QDEVICE_SHARE` schedules (one choice, so their draws stay as they were)."""
LMS_SHARE = 0.15
"""Share of all schedules that get a qnetd with lms, taken from those without a qnetd by a third
generator, so every older ffsplit (or qnetd-less, not chosen) seed keeps its schedule. Our lms
revokes before it grants (docs/design.md 3.4); 3.0.3's did not (SIM_LMS_SEED broke S1)."""
SIM_LMS_SEED = 5135
LARGE_SHARE = 0.01
"""Share of schedules whose cluster is large (one of `LARGE_SIZES` nodes instead of 3-9), drawn
from a fourth generator, so every other seed keeps its schedule (issue 11)."""
LARGE_SIZES = (12, 16, 24, 32)
QNETD_CUT_SHARE = 0.5
"""Share of the qnetd schedules where one node's path to the qnetd is cut for a while."""


@dataclass(frozen=True, slots=True)
class Step:
    """At `at`, call the network's method `action` with `args`."""

    at: float
    action: str
    args: tuple[Any, ...] = ()

    def apply(self, net: SimNetwork) -> None:
        getattr(net, self.action)(*self.args)

    def __str__(self) -> str:
        args = ", ".join(str(sorted(a)) if isinstance(a, frozenset) else str(a) for a in self.args)
        return f"{self.at:9.4f} {self.action}({args})"


@dataclass(frozen=True, slots=True)
class Schedule:
    """A whole run: cluster shape, baseline link, the fault steps and when it ends."""

    seed: int
    nodes: int
    quorum: QuorumOptions
    timing: Timing
    base: LinkModel
    steps: tuple[Step, ...]
    healed_at: float
    end: float
    forced_nodes: bool = False
    qdevice: QdeviceConfig | None = None

    def replay_command(self) -> str:
        extra = f" --nodes {self.nodes}" if self.forced_nodes else ""
        return f"python -m votemesh_lab.sim.replay {self.seed}{extra}"

    def describe(self) -> str:
        q = self.quorum
        opts = f"auto_tie_breaker={q.auto_tie_breaker_node}" if q.auto_tie_breaker else "default"
        device = f", qnetd {self.qdevice.algorithm}" if self.qdevice else ""
        head = (
            f"seed {self.seed}: {self.nodes} nodes, quorum {opts}{device}, base link {self.base}, "
            f"healed at {self.healed_at:.3f}, end {self.end:.3f}"
        )
        return "\n".join([head, *(f"  {s}" for s in self.steps)])


@dataclass(slots=True)
class RunResult:
    """A finished run: its schedule, the network (trace, history) and what the checker found."""

    schedule: Schedule
    net: SimNetwork
    violations: list[Violation] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    """Why the checker could not judge the run (missing records, no formation)."""

    @property
    def ok(self) -> bool:
        return not self.violations and not self.unknown

    def report(self, tail: int = TRACE_TAIL) -> str:
        """Seed, replay command, violations, the schedule and the trace tail."""
        s, count = self.schedule, len(self.violations)
        return "\n".join(
            [
                f"seed {s.seed} FAILED ({count} violations); replay: {s.replay_command()}",
                *(f"  {v}" for v in self.violations[:10]),
                *(f"  unknown: {why}" for why in self.unknown),
                s.describe(),
                f"--- trace tail ({tail} lines) ---",
                self.net.trace_tail(tail),
            ]
        )


def random_schedule(seed: int, nodes: int | None = None, algorithm: str | None = None) -> Schedule:
    """The fault schedule of `seed` (3-9 nodes, or for `LARGE_SHARE` of the seeds one of
    `LARGE_SIZES`, unless `nodes` is given; a qnetd schedule's
    algorithm is ffsplit or lms as drawn unless `algorithm` is given)."""
    rng = random.Random(seed * 7919 + 17)
    count = nodes or rng.randint(3, 9)
    if nodes is None:
        count = large_size(seed) or count
    quorum = QuorumOptions()
    if rng.random() < 0.2:
        breaker = rng.choice([TieBreaker.LOWEST, TieBreaker.HIGHEST])
        quorum = QuorumOptions(auto_tie_breaker=True, auto_tie_breaker_node=breaker)
    timing = Timing.lan()
    base = LinkModel(
        delay=rng.uniform(0.0002, 0.005),
        jitter=rng.choice([0.0, 0.002, 0.01, 0.02]),
        loss=rng.choice([0.0, 0.0, 0.01, 0.05]),
    )
    ids = list(range(1, count + 1))
    steps = [Step(rng.uniform(0.0, 0.3), "start", (n,)) for n in ids]
    t = FORMATION
    for _ in range(rng.randint(1, 3)):
        duration = rng.uniform(0.5, 2.5)
        for _ in range(rng.randint(1, 3)):
            steps += _fault(rng, ids, t, duration, base)
        t += duration
        steps += _heal(t, base)
    extra = random.Random(seed * 104729 + 3)  # a second generator: older seeds stay the same
    qdevice, faults_from = None, FORMATION
    if extra.random() < QDEVICE_SHARE:
        drawn = extra.choice(RANDOM_ALGORITHMS)
        qdevice = sim_qdevice_config(algorithm or drawn)
    elif random.Random(seed * 1299709 + 11).random() < LMS_SHARE / (1 - QDEVICE_SHARE):
        qdevice = sim_qdevice_config(algorithm or "lms")
    settle = settle_time(timing.sized_for(count))  # the checker's (design §3.14: sized)
    if extra.random() < SPLIT_SHARE:
        split_at = 0.5 + settle
        split_end = split_at + settle + CHECK_WINDOW
        shift = split_end - FORMATION
        starts, faults = steps[:count], steps[count:]
        shuffled = extra.sample(ids, len(ids))
        cut = extra.randint(1, len(ids) - 1)
        groups = (frozenset(shuffled[:cut]), frozenset(shuffled[cut:]))
        steps = [
            *starts,
            Step(split_at, "partition", groups),
            *_heal(split_end, base),
            *(Step(s.at + shift, s.action, s.args) for s in faults),
        ]
        t += shift
        faults_from += shift
    if qdevice is not None and extra.random() < QNETD_CUT_SHARE:
        at = extra.uniform(faults_from, max(faults_from, t - 0.5))  # in the fault phases
        node = extra.choice(ids)
        steps += [
            Step(at, "cut_qnetd", (node,)),
            Step(min(t, at + extra.uniform(0.3, 2.5)), "uncut_qnetd", (node,)),
        ]
    end = t + settle + CHECK_WINDOW
    steps.sort(key=lambda s: s.at)
    return Schedule(
        seed, count, quorum, timing, base, tuple(steps), t, end, nodes is not None, qdevice
    )


def large_size(seed: int) -> int | None:
    """The node count of a large-cluster seed (`LARGE_SHARE` of them), else None. A fourth
    generator: every other seed keeps its schedule."""
    large = random.Random(seed * 15485863 + 29)
    return large.choice(LARGE_SIZES) if large.random() < LARGE_SHARE else None


@dataclass(frozen=True, slots=True)
class _Pick:
    """The random choices one fault is built from."""

    rng: random.Random
    ids: list[int]
    t: float
    duration: float
    base: LinkModel
    a: int
    b: int
    mid: float


def _partition(p: _Pick) -> list[Step]:
    shuffled = p.rng.sample(p.ids, len(p.ids))
    cut = p.rng.randint(1, len(p.ids) - 1)
    return [Step(p.t, "partition", (frozenset(shuffled[:cut]), frozenset(shuffled[cut:])))]


def _oneway(p: _Pick) -> list[Step]:
    return [Step(p.mid, "cut", (p.a, p.b))]


def _crash(p: _Pick) -> list[Step]:
    return [Step(p.mid, "crash", (p.a,)), Step(p.t + p.duration, "restart", (p.a,))]


def _pause(p: _Pick) -> list[Step]:
    return [Step(p.mid, "pause", (p.a, p.rng.uniform(0.2, 2.0)))]


def _lossy(p: _Pick) -> list[Step]:
    model = LinkModel(p.base.delay, p.base.jitter, loss=p.rng.uniform(0.1, 0.6))
    return [Step(p.t, "set_link", (p.a, p.b, model)), Step(p.t, "set_link", (p.b, p.a, model))]


def _mangle(p: _Pick) -> list[Step]:
    model = LinkModel(
        p.base.delay,
        p.rng.uniform(0.0, 0.05),
        p.base.loss,
        duplicate=p.rng.uniform(0.0, 0.3),
        reorder=p.rng.uniform(0.0, 0.3),
    )
    return [Step(p.t, "set_default_link", (model,))]


def _slow(p: _Pick) -> list[Step]:
    model = LinkModel(p.rng.uniform(0.1, 0.5), p.base.jitter, p.base.loss)
    return [Step(p.t, "set_link", (p.a, p.b, model))]


def _flap(p: _Pick) -> list[Step]:
    period = p.rng.uniform(0.1, 0.8)
    flaps, at, down = [], p.t, True
    while at < p.t + p.duration:
        action = "cut" if down else "uncut"
        flaps += [Step(at, action, (p.a, p.b)), Step(at, action, (p.b, p.a))]
        at, down = at + period, not down
    return flaps


FAULTS = {
    "partition": _partition,
    "partition2": _partition,
    "oneway": _oneway,
    "crash": _crash,
    "pause": _pause,
    "lossy": _lossy,
    "mangle": _mangle,
    "slow": _slow,
    "flap": _flap,
}
"""Fault kinds, drawn uniformly (partitions twice as often)."""


def _fault(
    rng: random.Random, ids: list[int], t: float, duration: float, base: LinkModel
) -> list[Step]:
    build = FAULTS[rng.choice(sorted(FAULTS))]
    a, b = rng.sample(ids, 2)
    mid = t + rng.uniform(0.0, duration / 2)
    return build(_Pick(rng, ids, t, duration, base, a, b, mid))


def _heal(t: float, base: LinkModel) -> list[Step]:
    return [Step(t, "recover", (base,))]


def run_schedule(
    schedule: Schedule, *, factory: NodeFactory = default_factory, trace_limit: int | None = 2000
) -> RunResult:
    """Simulate one schedule and check every property on the result."""
    configs = cluster_configs(
        schedule.nodes, quorum=schedule.quorum, timing=schedule.timing, qdevice=schedule.qdevice
    )
    net = SimNetwork(
        configs, schedule.seed, default_link=schedule.base, factory=factory, trace_limit=trace_limit
    )
    if schedule.qdevice is not None:
        net.attach_qnetd(schedule.qdevice)
    for step in schedule.steps:
        net.at(step.at, lambda step=step: step.apply(net))  # type: ignore[misc]
    try:
        net.run_until(schedule.end)
    except Exception as exc:  # noqa: BLE001 -- a core raising or a busy loop is a finding
        net.note("".join(traceback.format_exception(exc, limit=-4)).rstrip())
        return RunResult(schedule, net, [Violation("ERROR", net.now, (), f"{exc!r}")])
    return judge(schedule, net)


def judge(schedule: Schedule, net: SimNetwork) -> RunResult:
    """The checker's verdict on a finished run, read from the run's timeline."""
    verdict = Checker(net.timeline()).check()
    return RunResult(schedule, net, verdict.violations, verdict.unknown)


def run_seed(
    seed: int, nodes: int | None = None, algorithm: str | None = None, **kwargs: Any
) -> RunResult:
    """`run_schedule(random_schedule(seed, nodes, algorithm))`."""
    return run_schedule(random_schedule(seed, nodes, algorithm), **kwargs)
