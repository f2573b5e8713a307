"""Configuration replication on random schedules (design §3.9): S4 and convergence, CI sample.

500 seeds of `votemesh_lab.sim.config_sim` (2-7 nodes, splits into up to three groups, crashes and
restarts from disk, message loss, duplication and reordering, expected-votes overrides, changes
asked on random nodes on every side), about 6 s. `make soak` runs more (every fourth soak seed).
"""

from __future__ import annotations

import random

from votemesh_lab.sim.config_beside import replay_beside
from votemesh_lab.sim.config_sim import ConfigSim, run_config_seed
from votemesh_lab.sim.schedules import run_seed

CI_RUNS = 500


def test_random_schedules_never_give_two_configurations_one_version() -> None:
    """S4 holds, every node converges after the heal and a change then lands everywhere, in every
    run; and the runs do change the configuration (over 70 % of the seeds commit a change during
    the faults, besides the bootstrap and the final one)."""
    failures, versions = [], []
    for seed in range(CI_RUNS):
        sim = run_config_seed(seed)
        versions.append(max(sim.committed, default=0))
        if sim.violations:
            failures.append(sim.report())
    assert not failures, f"{len(failures)} failing seeds; first:\n{failures[0]}"
    assert sum(v >= 3 for v in versions) > CI_RUNS * 0.7


def test_the_checker_sees_s4_break_when_any_quorate_view_may_change_the_configuration() -> None:
    """With the majority-of-configured-votes rule switched off (a quorum reached by an override
    may commit), the same schedules make two configurations with one version, and the checker
    reports them: S4 is checked, not assumed."""
    broken = 0
    for seed in range(40):
        sim = ConfigSim(seed, random.Random(seed).randint(2, 7), unsafe_majority=True)
        sim.run(300)
        broken += any(v.startswith("S4") for v in sim.violations)
    assert broken >= 5


def test_a_seed_replays_exactly() -> None:
    """The same seed gives the same trace and the same committed versions."""
    first, second = run_config_seed(11), run_config_seed(11)
    assert first.trace == second.trace
    assert first.committed == second.committed


def test_replicas_beside_the_node_simulator_commit_changes_on_its_views() -> None:
    """Driven by the views real node cores installed under random faults (the CI sample of
    tests/sim/test_sim_random.py checks S4 on all 500 of its runs), the replicas do commit:
    every one of 8 runs gets past the bootstrap and applies changes, without an S4 violation."""
    for seed in range(8):
        replay = replay_beside(run_seed(seed).net, seed)
        assert not replay.violations, replay.violations
        assert replay.applied >= 1
        assert max(replay.committed) >= 2
