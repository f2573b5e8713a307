"""The core's fast paths equal the slow paths they shortcut (design §3.14, "as built
(fast-core)").

* `Links.steady_heartbeat` = `Links.received(..., heartbeat=True)` when it is taken, and
  touches nothing when it is not; `AgentNode._steady_report` = `_take_report` likewise;
  `Links.due_round` = `Links.due_sends` grouped the way the node sends it: checked by running
  simulated clusters (loss, jitter, partitions, crashes, pauses, two links with cuts, a skewed
  clock) where before every event each node is copied and the copy handles the event with the
  fast paths switched off: the effects and the whole state (every field, recursively) must be
  equal, and each fast path must have been both taken and refused along the way;
* the inputs each fast path must refuse go the slow way (one case per condition);
* `SharedDeadlines` answers as `Deadlines` under random operations and stays bounded.
"""

from __future__ import annotations

import copy
import math
import random
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import fields, is_dataclass, replace
from enum import Enum
from functools import partial
from typing import Any

import pytest
from votemesh_lab.sim.network import LinkModel, SimNetwork, cluster_configs
from votemesh_lab.sim.schedules import random_schedule, run_schedule

from agent.config import LinkConfig, Timing
from agent.deadline_heap import SLACK, Deadlines, SharedDeadlines
from agent.links import Links, LinkUp, _Reach
from agent.node import AgentNode, MessageIn, Tick
from proto.mesh_messages import ExpectedSetWire, Heartbeat, View

MEMOS = frozenset({"_last_round"})
"""Attributes that only memoize a pure function (`Links._round_after`): not state."""


def dump(obj: Any, depth: int = 0) -> Any:  # noqa: PLR0911 - one return per kind of value
    """Everything an object holds, as comparable plain data (floats by repr, so NaN == NaN;
    deadline structures by their current values, not their heap layout)."""
    assert depth < 40, "a cycle?"
    if isinstance(obj, float):
        return repr(obj)
    if obj is None or isinstance(obj, bool | int | str | Enum):
        return obj
    if isinstance(obj, Deadlines | SharedDeadlines):
        return ("deadlines", dump(obj.at, depth + 1))
    if isinstance(obj, dict):
        return sorted((repr(k), dump(v, depth + 1)) for k, v in obj.items())
    if isinstance(obj, list | tuple | deque):
        return [dump(x, depth + 1) for x in obj]
    if isinstance(obj, set | frozenset):
        return sorted(repr(x) for x in obj)
    if is_dataclass(obj):
        names = [f.name for f in fields(obj)]
    elif hasattr(obj, "__dict__"):
        names = [k for k, v in vars(obj).items() if not callable(v)]
    else:
        names = [n for c in type(obj).__mro__ for n in getattr(c, "__slots__", ())]
    return (
        type(obj).__name__,
        [(n, dump(getattr(obj, n), depth + 1)) for n in sorted(names) if n not in MEMOS],
    )


def slow_round(links: Links, now: float) -> tuple[dict[int, list[int]], dict[int, list[int]], Any]:
    """`due_round` as the node grouped `due_sends` before (the reference)."""
    beats: dict[int, list[int]] = {}
    hedges: dict[int, list[int]] = {}
    probes = []
    for due in links.due_sends(now):
        if due.kind == "heartbeat":
            beats.setdefault(due.link, []).append(due.peer)
        elif due.kind == "hedge":
            hedges.setdefault(due.link, []).append(due.peer)
        else:
            probes.append(due)
    return beats, hedges, probes


def slowed(core: AgentNode) -> AgentNode:
    """A copy of `core` with every fast path switched off."""
    twin = copy.deepcopy(core)
    twin.links.steady_heartbeat = lambda *_args, **_kwargs: False  # type: ignore[method-assign]
    twin._steady_report = lambda *_args: False  # type: ignore[method-assign]
    twin.links.due_round = partial(slow_round, twin.links)  # type: ignore[method-assign]
    return twin


class Shadow:
    """Wraps every core of a simulated run: before each Tick or MessageIn the core is copied
    with its fast paths off, both handle the event, and effects and state must be equal."""

    def __init__(self) -> None:
        self.taken: Counter[tuple[str, bool]] = Counter()
        self.events = 0

    def factory(self, config: Any, incarnation: int, max_seq: int) -> Any:
        core = AgentNode(config, incarnation, max_seq=max_seq)
        handle = core.handle
        steady, report = core.links.steady_heartbeat, core._steady_report

        def counted_steady(*a: Any, **k: Any) -> bool:
            taken = steady(*a, **k)
            self.taken["links", taken] += 1
            return taken

        def counted_report(*a: Any) -> bool:
            taken = report(*a)
            self.taken["report", taken] += 1
            return taken

        def checked(event: Any, now: float) -> list[Any]:
            if not isinstance(event, MessageIn | Tick):
                return handle(event, now)
            del core.handle  # copied without the wrappers (they are not state)
            try:
                twin = slowed(core)
                expected = twin.handle(event, now)
                got = handle(event, now)
                twin_deadline, deadline = twin.next_deadline(), core.next_deadline()
            finally:
                core.handle = checked  # type: ignore[method-assign]
            assert repr(got) == repr(expected), (now, event)
            assert deadline == twin_deadline, (now, event)
            for name in ("last_drop", "last_fresh_peer"):
                assert getattr(core, name) == getattr(twin, name), (now, name)
            assert dump(core.links) == dump(twin.links), (now, event)
            assert dump(core) == dump(twin), (now, event)
            self.events += 1
            return got

        core.links.steady_heartbeat = counted_steady  # type: ignore[method-assign]
        core._steady_report = counted_report  # type: ignore[method-assign,assignment]
        core.handle = checked  # type: ignore[method-assign]
        return core


def _run(
    shadow: Shadow,
    nodes: int,
    end: float,
    link: LinkModel,
    *,
    links: int = 1,
    faults: tuple[tuple[float, Callable[[SimNetwork], None]], ...] = (),
) -> SimNetwork:
    net = SimNetwork(
        cluster_configs(nodes, links=links), 3, default_link=link, factory=shadow.factory
    )
    for n in range(1, nodes + 1):
        net.at(0.011 * n, partial(net.start, n))
    for at, action in faults:
        net.at(at, partial(action, net))
    net.run_until(end)
    return net


SCENARIOS: dict[str, Callable[[Shadow], SimNetwork]] = {
    "loss_jitter": lambda s: _run(s, 4, 6.0, LinkModel(delay=0.002, jitter=0.01, loss=0.1)),
    "reorder_duplicate": lambda s: _run(
        s, 3, 4.0, LinkModel(delay=0.002, jitter=0.004, duplicate=0.2, reorder=0.2)
    ),
    "partition_crash_pause_leave": lambda s: _run(
        s,
        5,
        6.5,
        LinkModel(delay=0.0005),
        faults=(
            (1.5, lambda net: net.partition({1, 2, 3}, {4, 5})),
            (2.5, lambda net: net.heal()),
            (3.0, lambda net: net.crash(2)),
            (3.8, lambda net: net.restart(2)),
            (4.5, lambda net: net.pause(3, 1.2)),
            (6.0, lambda net: net.leave(5)),
        ),
    ),
    "two_links_cuts": lambda s: _run(
        s,
        3,
        9.0,
        LinkModel(delay=0.002, jitter=0.01, loss=0.05),
        links=2,
        faults=(
            (2.0, lambda net: net.cut_link(1, 2, 0)),
            (4.0, lambda net: net.cut_link(2, 1, 0)),
            (5.5, lambda net: net.uncut_link(1, 2, 0)),
            (5.7, lambda net: net.uncut_link(2, 1, 0)),
            (7.0, lambda net: net.cut(3, 1)),
            (8.0, lambda net: net.uncut(3, 1)),
        ),
    ),
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_fast_paths_equal_the_slow_paths_in_simulated_runs(name: str) -> None:
    """Every Tick and heartbeat of the run: the node with its fast paths and a copy without
    them give the same effects, deadline, drop reason and state; each fast path was taken
    and refused (a fault, a first contact, a changed report) at least once, and the links'
    one never for peers with two links."""
    shadow = Shadow()
    SCENARIOS[name](shadow)
    assert shadow.events > 300
    assert shadow.taken["report", True] > 100, shadow.taken
    assert shadow.taken["report", False] > 0, shadow.taken
    if name == "two_links_cuts":  # a peer with two links is never the steady case
        assert shadow.taken["links", True] == 0, shadow.taken
    else:
        assert shadow.taken["links", True] > 100, shadow.taken
        assert shadow.taken["links", False] > 0, shadow.taken


@pytest.mark.parametrize("seed", [3, 12, 58])
def test_fast_paths_equal_the_slow_paths_in_random_schedules(seed: int) -> None:
    """Random fault schedules of the CI sample (3 nodes: partitions, pauses, one-way cuts,
    mangled links, a qnetd), whole."""
    shadow = Shadow()
    result = run_schedule(random_schedule(seed), factory=shadow.factory)
    assert result.ok, result.report()
    assert shadow.taken["links", True] > 100, shadow.taken
    assert shadow.taken["links", False] > 0, shadow.taken


# ------------------------------------------------------------------ refusals, one by one
HB = 0.1


def steady_links(links: int = 1) -> Links:
    """Peer 2 heard on link 0 with echoes: steady (settled, active, reachable, reached)."""
    local = tuple(LinkConfig(k, f"127.0.{k}.1", priority=links - k) for k in range(links))
    lk = Links(1, local, Timing.lan())
    lk.set_peer(2, frozenset(range(links)))
    for i in range(5):
        lk.received(2, 0, i * HB, rtt_sample=0.001, expected_interval=HB, heartbeat=True,
                    reached=i * HB - 0.001)  # fmt: skip
    return lk


def _steady(lk: Links, **over: Any) -> bool:
    args: dict[str, Any] = {"rtt_sample": 0.001, "interval": HB, "reached": 0.499}
    return lk.steady_heartbeat(2, over.pop("link", 0), 0.5, **(args | over))


def test_steady_heartbeat_is_taken_for_the_steady_case_and_equals_received() -> None:
    fast, slow = steady_links(), steady_links()
    assert _steady(fast)
    assert slow.received(2, 0, 0.5, rtt_sample=0.001, expected_interval=HB, heartbeat=True,
                         reached=0.499) == []  # fmt: skip
    assert dump(fast) == dump(slow)


@pytest.mark.parametrize(
    ("why", "prepare", "over"),
    [
        ("two links", lambda: steady_links(2), {}),
        ("another link", steady_links, {"link": 1}),
        ("unknown peer", lambda: Links(1, (LinkConfig(0, "127.0.0.1"),), Timing.lan()), {}),
        ("no cadence", steady_links, {"interval": 0.0}),
        ("NaN cadence", steady_links, {"interval": math.nan}),
        ("infinite cadence", steady_links, {"interval": math.inf}),
    ],
)
def test_steady_heartbeat_refuses_and_touches_nothing(
    why: str, prepare: Callable[[], Links], over: dict[str, Any]
) -> None:
    lk = prepare()
    before = dump(lk)
    assert not _steady(lk, **over), why
    assert dump(lk) == before, why


def _mutated(change: Callable[[Links], None]) -> Links:
    lk = steady_links()
    change(lk)
    return lk


def _peer(lk: Links) -> Any:
    return lk._peers[2]


@pytest.mark.parametrize(
    ("why", "change"),
    [
        ("pending change", lambda lk: lk._pending.append(LinkUp(2, 0, "x"))),
        ("link down", lambda lk: setattr(_peer(lk).links[0], "up", False)),
        ("not settled", lambda lk: _unsettle(_peer(lk).links[0])),
        ("suspected", lambda lk: setattr(_peer(lk), "reach", _Reach.SUSPECTED)),
        ("no active link", lambda lk: setattr(_peer(lk), "active", None)),
        ("first reached", lambda lk: setattr(_peer(lk), "reached", -math.inf)),
    ],
)
def test_steady_heartbeat_refuses_states_that_change_something(
    why: str, change: Callable[[Links], None]
) -> None:
    """Each of these can make `received` raise an event or recompute a deadline."""
    lk = _mutated(change)
    before = dump(lk)
    assert not _steady(lk), why
    assert dump(lk) == before, why


def _unsettle(link: Any) -> None:
    link.went_down, link.streak = True, 0


def test_a_non_finite_reached_is_ignored_as_received_ignores_it() -> None:
    fast, slow = steady_links(), steady_links()
    assert _steady(fast, reached=math.nan)
    slow.received(2, 0, 0.5, rtt_sample=0.001, expected_interval=HB, heartbeat=True,
                  reached=math.nan)  # fmt: skip
    assert dump(fast) == dump(slow)


def steady_node() -> tuple[AgentNode, Heartbeat, int]:
    """Node 1 of a formed 3-node simulated cluster, the last heartbeat it took from node 2
    and that heartbeat's wall clock."""
    got: list[tuple[AgentNode, MessageIn]] = []

    def factory(config: Any, incarnation: int, max_seq: int) -> Any:
        core = AgentNode(config, incarnation, max_seq=max_seq)
        if config.node_id == 1:
            handle = core.handle

            def seen(event: Any, now: float) -> list[Any]:
                if isinstance(event, MessageIn) and event.peer == 2:
                    got.append((core, event))
                return handle(event, now)

            core.handle = seen  # type: ignore[method-assign]
        return core

    net = SimNetwork(cluster_configs(3), 1, default_link=LinkModel(delay=0.0005))
    net.factory = factory
    for n in (1, 2, 3):
        net.at(0.01 * n, partial(net.start, n))
    net.run_until(2.0)
    core, event = got[-1]
    del core.handle
    assert core.view.members == {1, 2, 3}
    hb = event.message
    assert isinstance(hb, Heartbeat)
    return copy.deepcopy(core), hb, event.wall_ms


def _report(change: dict[str, Any], peer_change: dict[str, Any] | None = None) -> bool:
    core, hb, wall_ms = steady_node()
    for name, value in (peer_change or {}).items():
        setattr(core.peers[2], name, value)
    before = dump(core)
    taken = core._steady_report(2, core.peers[2], replace(hb, **change), wall_ms)
    if not taken:
        assert dump(core) == before, change
    return taken


def test_steady_report_is_taken_for_a_repeated_report_and_equals_take_report() -> None:
    core, hb, wall_ms = steady_node()
    twin = copy.deepcopy(core)
    later = replace(hb, stamp_us=hb.stamp_us + 100_000, node_name="renamed")
    assert core._steady_report(2, core.peers[2], later, wall_ms + 100)
    twin._take_report(2, twin.peers[2], later, wall_ms + 100)
    assert dump(core) == dump(twin)
    assert core.peers[2].name == "renamed"


@pytest.mark.parametrize(
    "change",
    [
        {"votes": 2},
        {"expected_votes": 7},
        {"quorate": False},
        {"tie_breaker": 3},
        {"config_version": 4},
        {"expected_set": ExpectedSetWire(1, 2, 3, 1, 1)},
        {"wall_ms": 10_000_000},  # beyond the 1 s skew bound
        {"heard": (1,)},
        {"view": View(1, 999, (1, 2))},
        {"proposal": View(1, 999, (1, 2))},
    ],
)
def test_steady_report_refuses_a_changed_report(change: dict[str, Any]) -> None:
    assert not _report(change)


@pytest.mark.parametrize(
    "peer_change",
    [
        {"raw": None},  # never took a report
        {"skewed": True},  # its clock was off: _clock_check must see it come back
        {"expected_set": object()},  # it had an override: the comparison is _take_report's
    ],
)
def test_steady_report_refuses_peers_it_cannot_judge(peer_change: dict[str, Any]) -> None:
    assert not _report({}, peer_change)


def test_steady_report_refuses_when_membership_dropped_the_report() -> None:
    core, hb, wall_ms = steady_node()
    core.membership.forget(2)
    before = dump(core)
    assert not core._steady_report(2, core.peers[2], hb, wall_ms)
    assert dump(core) == before


# ------------------------------------------------------------------ SharedDeadlines
@pytest.mark.parametrize("seed", range(8))
def test_shared_deadlines_answer_as_deadlines(seed: int) -> None:
    """Random set / set_many / discard / pop_due (and the heap's replace_first) on few
    distinct values: the same `at`, `earliest`, `first` and due keys as the heap, and the
    buckets stay bounded."""
    rng = random.Random(seed)
    heap, shared = Deadlines(), SharedDeadlines()
    now = 0.0
    for _ in range(3000):
        op = rng.random()
        if op < 0.4:
            key, at = rng.randrange(40), now + rng.choice([0.1, 0.2, 0.3, math.inf])
            heap.set(key, at)
            shared.set(key, at)
        elif op < 0.6:
            keys, at = rng.sample(range(40), rng.randrange(1, 20)), now + rng.choice([0.1, 0.2])
            for key in keys:
                heap.set(key, at)
            shared.set_many(keys, at)
        elif op < 0.65:
            key = rng.randrange(40)
            heap.discard(key)
            shared.discard(key)
        elif op < 0.7 and (first := heap.first()) is not None:
            at = rng.choice([first[0] + 0.05, now + 0.3, math.inf])
            heap.replace_first(at)  # = set(first key, at)
            shared.set(first[1], at)
        elif op < 0.85:
            now += rng.choice([0.05, 0.1])
            assert shared.pop_due(now) == heap.pop_due(now)
        assert shared.at == heap.at
        assert shared.earliest() == heap.earliest()
        assert shared.first() == heap.first()
        assert len(shared) <= 2 * len(shared.at) + SLACK + 20
