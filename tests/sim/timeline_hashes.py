"""Behaviour identity of the node core across two source trees: hashes of simulator runs.

`python tests/sim/timeline_hashes.py --root TREE [--seeds 0-59] [--out FILE]` runs, with the
`agent` and `votemesh_lab` packages of TREE (a checkout, e.g. `git archive <rev> | tar -x -C
/tmp/base`), the random fault schedules of the seeds and a set of fixed scenarios, and prints
one JSON object: scenario -> sha256 of

* the run's timeline (every record, as JSONL),
* every `handle` call of every node: the time, the event's type, the effects (repr), the
  node's `last_drop` and `last_fresh_peer` after it, and every `next_deadline()` answer,
* the final status document of every node that runs at the end (links, RTTs, loss, timeouts),
* the simulator's handle / delivery / spin counts.

Run it for the tree before a change and after it: equal hashes mean the change did not alter a
single effect, deadline or reported value (design §3.14, "as built (fast-core)"). Figures
only, not a test: it takes minutes (seeds 0-59 and the scenarios: ~3 min on a quiet core).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any


def _load(root: Path) -> None:
    sys.path.insert(0, str(root / "deploy" / "lab"))
    sys.path.insert(0, str(root))


def _traced_factory(digests: dict[int, Any]) -> Callable[..., Any]:
    from votemesh_lab.sim.network import default_factory

    def factory(config: Any, incarnation: int, max_seq: int) -> Any:
        core: Any = default_factory(config, incarnation, max_seq)
        digest = digests.setdefault(config.node_id, hashlib.sha256())
        handle, deadline = core.handle, core.next_deadline

        def traced_handle(event: Any, now: float) -> list[Any]:
            effects: list[Any] = handle(event, now)
            seen = (now, type(event).__name__, effects, core.last_drop, core.last_fresh_peer)
            digest.update(repr(seen).encode())
            return effects

        def traced_deadline() -> float | None:
            at: float | None = deadline()
            digest.update(repr(("deadline", at)).encode())
            return at

        core.handle, core.next_deadline = traced_handle, traced_deadline
        return core

    return factory


def _digest(net: Any, digests: dict[int, Any]) -> str:
    total = hashlib.sha256()
    for line in net.timeline().lines():
        total.update(line.encode())
    for node, digest in sorted(digests.items()):
        total.update(f"{node}:{digest.hexdigest()}".encode())
    for node, slot in sorted(net.slots.items()):
        if slot.core is not None:
            status = json.dumps(slot.core.status(net.now), sort_keys=True, default=repr)
            total.update(f"{node}:{status}".encode())
    total.update(repr((net.handled, net.delivered, net.spins)).encode())
    return total.hexdigest()


def _scenarios() -> dict[str, Callable[[Callable[..., Any]], Any]]:
    """Fixed runs: loss, jitter, a partition and its heal, a crash and restart, a pause longer
    than the failure timeout (the stall rule), a clean leave, two links with cuts, 64 nodes."""
    from votemesh_lab.sim.network import LinkModel, SimNetwork, cluster_configs

    def run(
        nodes: int, end: float, link: Any, *, links: int = 1, faults: Any = None
    ) -> Callable[[Callable[..., Any]], Any]:
        def go(factory: Callable[..., Any]) -> Any:
            configs = cluster_configs(nodes, links=links)
            net = SimNetwork(configs, 7, default_link=link, factory=factory)
            for n in range(1, nodes + 1):
                net.at(0.013 * n, partial(net.start, n))
            for at, action in faults or ():
                net.at(at, partial(action, net))
            net.run_until(end)
            return net

        return go

    lan = LinkModel(delay=0.0005)
    return {
        "loss5": run(5, 30.0, LinkModel(delay=0.001, loss=0.05)),
        "loss20": run(5, 30.0, LinkModel(delay=0.001, loss=0.2)),
        "jitter": run(5, 20.0, LinkModel(delay=0.025, jitter=0.02, loss=0.05)),
        "reorder_dup": run(
            4, 15.0, LinkModel(delay=0.002, jitter=0.005, duplicate=0.1, reorder=0.1)
        ),
        "partition_heal": run(
            7,
            8.0,
            lan,
            faults=[
                (2.0, lambda net: net.partition({1, 2, 3, 4}, {5, 6, 7})),
                (5.0, lambda net: net.heal()),
            ],
        ),
        "crash_restart": run(
            5,
            8.0,
            lan,
            faults=[(2.0, lambda net: net.crash(3)), (4.0, lambda net: net.restart(3))],
        ),
        "pause_leave": run(
            5,
            8.0,
            lan,
            faults=[(2.0, lambda net: net.pause(2, 1.5)), (5.0, lambda net: net.leave(4))],
        ),
        "oneway": run(
            4,
            8.0,
            lan,
            faults=[(2.0, lambda net: net.cut(1, 2)), (4.5, lambda net: net.uncut(1, 2))],
        ),
        "two_links_cuts": run(
            3,
            20.0,
            LinkModel(delay=0.002, jitter=0.02, loss=0.05),
            links=2,
            faults=[
                (3.0, lambda net: net.cut_link(1, 2, 0)),
                (6.0, lambda net: net.cut_link(2, 1, 0)),
                (9.0, lambda net: net.uncut_link(1, 2, 0)),
                (9.5, lambda net: net.uncut_link(2, 1, 0)),
                (12.0, lambda net: net.cut_link(3, 1, 1)),
                (15.0, lambda net: net.uncut_link(3, 1, 1)),
            ],
        ),
        "steady64": run(64, 3.0, lan),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="the source tree to run")
    parser.add_argument("--seeds", default="0-59", help="random schedule seeds, e.g. 0-59,1234")
    parser.add_argument("--only", default="", help="comma-separated scenario names (fixed)")
    parser.add_argument("--no-fixed", action="store_true", help="the seeds only")
    args = parser.parse_args()
    _load(args.root.resolve())
    from votemesh_lab.sim.schedules import random_schedule, run_schedule

    import agent.node

    if not Path(agent.node.__file__).resolve().is_relative_to(args.root.resolve()):
        raise SystemExit(f"agent.node came from {agent.node.__file__}, not from {args.root}")
    seeds: list[int] = []
    for part in filter(None, args.seeds.split(",")):
        first, _, last = part.partition("-")
        seeds += range(int(first), int(last or first) + 1)
    out: dict[str, str] = {}
    for seed in seeds:
        digests: dict[int, Any] = {}
        result = run_schedule(random_schedule(seed), factory=_traced_factory(digests))
        out[f"seed{seed}"] = _digest(result.net, digests)
        print(f"seed{seed} {out[f'seed{seed}'][:16]}", file=sys.stderr, flush=True)
    only = {name for name in args.only.split(",") if name}
    for name, scenario in ({} if args.no_fixed else _scenarios()).items():
        if only and name not in only:
            continue
        digests = {}
        net = scenario(_traced_factory(digests))
        out[name] = _digest(net, digests)
        print(f"{name} {out[name][:16]}", file=sys.stderr, flush=True)
    print(json.dumps(out, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
