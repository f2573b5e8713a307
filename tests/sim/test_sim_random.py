"""Random fault schedules (CI sample): every DESIGN §3 property after every run.

1,608 seeds over 3-9 nodes: 0-1599, and the 8 seeds of 1600-1999 that are large clusters of
12-32 nodes (issue 11: 16 large clusters in all, 1 % of seeds), about a third
with an ffsplit qnetd, a sixth more with an lms one, a third starting with a settled split for
F1, spread over two worker processes (this machine has two cores). On a failure the assertion
message holds the seed, the replay command and the trace tail.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor

import pytest
from votemesh_lab.sim.config_beside import replay_beside
from votemesh_lab.sim.schedules import LARGE_SIZES, large_size, random_schedule, run_seed

SMALL_UP_TO = 1600
LARGE_UP_TO = 2000
SEEDS = [*range(SMALL_UP_TO), *(s for s in range(SMALL_UP_TO, LARGE_UP_TO) if large_size(s))]
"""The CI sample: every seed below 1600, and the large clusters up to 2000 (they are what issue
11 asks the sample to hold; the small seeds past 1600 were cut to keep CI under 30 minutes)."""
WORKERS = 2
CHUNK = 25


def run_chunk(seeds: list[int]) -> tuple[int, list[str]]:
    """Run these seeds; (node count total, reports of failing seeds)."""
    nodes, failures = 0, []
    for seed in seeds:
        result = run_seed(seed)
        nodes += result.schedule.nodes
        if not result.ok:
            failures.append(result.report())
        replay = replay_beside(result.net, seed)  # S4 on these views (design §3.9), ~10 ms
        if replay.violations:
            failures.append(f"seed {seed} config replicas: {replay.violations[:3]}")
    return nodes, failures


@pytest.mark.timeout(1200)
def test_random_fault_schedules_hold_every_property() -> None:
    """1,608 seeded random fault schedules (partitions, one-way cuts, crash/restart, pauses,
    loss, duplication, reordering, slow and flapping links; a qnetd with ffsplit or lms; settled
    splits) over 3-9 nodes and, for 16 of the seeds, 12-32 nodes: S1, S2, S3, L1, F1 and no
    silent state change hold in every run; configuration replicas driven by the nodes' views
    (votemesh_lab/sim/config_beside.py) never make two configurations with one version (S4) and
    take part in every view their node installs (its ring ids rise)."""
    chunks = [SEEDS[i : i + CHUNK] for i in range(0, len(SEEDS), CHUNK)]
    # The chunks with a large cluster first, so that no worker is left with one at the end.
    ordered = sorted(chunks, key=lambda c: not any(large_size(seed) for seed in c))
    with ProcessPoolExecutor(max_workers=WORKERS) as pool:
        futures = [pool.submit(run_chunk, c) for c in ordered]
        results = [f.result() for f in futures]
    failures = [r for _, fs in results for r in fs]
    assert not failures, f"{len(failures)} failing seeds; first:\n{failures[0]}"
    assert sum(n for n, _ in results) >= 3 * len(SEEDS)


def test_schedules_cover_sizes_and_faults() -> None:
    """The CI sample covers every cluster size 3-9, large clusters up to 32 nodes (issue 11)
    and every fault kind."""
    schedules = [random_schedule(seed) for seed in SEEDS]
    assert {s.nodes for s in schedules} == set(range(3, 10)) | set(LARGE_SIZES)
    assert max(s.nodes for s in schedules) == 32
    large = [s for s in schedules if s.nodes > 9]
    assert any(s.qdevice for s in large)
    assert any(s.steps[s.nodes].action == "partition" for s in large)
    actions = {step.action for s in schedules for step in s.steps}
    expected = {"partition", "cut", "uncut", "crash", "restart", "pause", "set_link"}
    assert expected | {"set_default_link", "recover"} <= actions
    assert any(s.quorum.auto_tie_breaker for s in schedules)
    algorithms = {s.qdevice.algorithm for s in schedules if s.qdevice is not None}
    assert algorithms == {"ffsplit", "lms"}
    assert "cut_qnetd" in actions
    settled_splits = [s for s in schedules if s.steps[s.nodes].action == "partition"]
    assert len(settled_splits) > len(SEEDS) // 5


def test_a_seed_replays_exactly() -> None:
    """The same seed gives the same schedule and the same trace, line for line."""
    first, second = run_seed(7, trace_limit=None), run_seed(7, trace_limit=None)
    assert first.schedule == second.schedule
    assert list(first.net.trace) == list(second.net.trace)
    assert first.net.handled == second.net.handled
