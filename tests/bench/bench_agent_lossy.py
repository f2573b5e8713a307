"""Five real agents on a lossy, jittery network (the tap switch): view changes and quorum gaps.

    python -m tests.bench agent_lossy
    BENCH_LOSSY_QUICK=1 python -m tests.bench agent_lossy    # 60 s + 30 s instead

One `votemesh-agent` per namespace host (n1..n5) on a `Lab(..., switch="tap")`, static peers,
default LAN timing. After one quorate view of 5, every directed pair gets
(a) 5 % loss and 20 ms ± 20 ms delay (uniform 0-40 ms, so frames overtake) for
    BENCH_LOSSY_SECONDS (default 600: DESIGN.md L2, "no view change in 10 minutes"), then
(b) 20 % loss with the same delay for BENCH_LOSSY20_SECONDS (default 120).
The jitter rides on a 20 ms base delay because a ± jitter around 0 would be clamped at 0.

First, on the clean network, SPLIT_ROUNDS 3|2 splits: how soon the minority's agents log
`quorum_lost` (target: within 1.2 s), and that the majority never does.

Per phase it prints the `view_installed` and `quorum_lost` log events of each agent logged
during the phase, the share of 0.5 s samples of every agent's status in which at least one agent
was inquorate (or did not answer), and the switch's forwarded / dropped frame counts.

Needs root (network namespaces, /dev/net/tun); prints why and returns otherwise. Prints
figures; never fails on a timing.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from votemesh_lab.agents import LabAgent, start_agents
from votemesh_lab.netns import Lab, missing_reason

NODES = 5
SETTLE = 60.0
SAMPLE_EVERY = 0.5
DELAY_MS = 20.0
JITTER_MS = 20.0
SPLIT_ROUNDS = 10


def phase_seconds() -> tuple[float, float]:
    """(5 % phase, 20 % phase) durations from the environment."""
    quick = os.environ.get("BENCH_LOSSY_QUICK") == "1"
    five = float(os.environ.get("BENCH_LOSSY_SECONDS", "60" if quick else "600"))
    twenty = float(os.environ.get("BENCH_LOSSY20_SECONDS", "30" if quick else "120"))
    return five, twenty


@dataclass
class PhaseResult:
    """What one impairment phase did to the cluster."""

    name: str
    seconds: float
    samples: int = 0
    any_inquorate: int = 0
    no_answer: int = 0
    inquorate_by_node: dict[int, int] = field(default_factory=dict)
    views_by_node: dict[int, int] = field(default_factory=dict)
    quorum_lost_by_node: dict[int, int] = field(default_factory=dict)
    switch: dict[str, int] = field(default_factory=dict)


def status(agent: LabAgent) -> dict[str, Any] | None:
    """The agent's status document, or None if it exited or did not answer."""
    if agent.process is None or not agent.process.alive():
        return None
    return agent.status() or None


def events_since(agent: LabAgent, kind: str, since: float, until: float) -> int:
    """How many log events of `kind` the agent logged between two wall-clock times."""
    count = 0
    for record in agent.log_records():
        if record.get("event") == kind:
            at = datetime.fromisoformat(record["timestamp"]).timestamp()
            count += since <= at < until
    return count


def one_view(agents: list[LabAgent]) -> bool:
    """Every agent quorate in one view of all of them."""
    docs = [status(a) for a in agents]
    if any(d is None or not d.get("quorate") for d in docs):
        return False
    views = {(tuple(d["ring_id"]), tuple(d["members"])) for d in docs if d is not None}
    return len(views) == 1 and list(views.pop()[1]) == [a.node_id for a in agents]


def switch_totals(counters: dict[str, Any]) -> dict[str, int]:
    """The switch's whole-switch counters (not per pair)."""
    return {k: v for k, v in counters.items() if isinstance(v, int)}


def run_phase(
    lab: Lab, agents: list[LabAgent], name: str, loss: float, seconds: float
) -> PhaseResult:
    """Impair every pair, sample every agent's status every 0.5 s, count events after."""
    result = PhaseResult(name, seconds)
    before = switch_totals(lab.switch_counters())
    started = time.time()
    lab.impair_all(loss=loss, delay_ms=DELAY_MS, jitter_ms=JITTER_MS)
    deadline = time.monotonic() + seconds
    next_sample = time.monotonic()
    while (now := time.monotonic()) < deadline:
        if now < next_sample:
            time.sleep(next_sample - now)
            continue
        next_sample += SAMPLE_EVERY
        docs = {a.node_id: status(a) for a in agents}
        result.samples += 1
        bad = [n for n, d in docs.items() if d is None or not d.get("quorate")]
        result.no_answer += any(d is None for d in docs.values())
        result.any_inquorate += bool(bad)
        for node in bad:
            result.inquorate_by_node[node] = result.inquorate_by_node.get(node, 0) + 1
    ended = time.time()
    after = switch_totals(lab.switch_counters())
    result.switch = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    for agent in agents:
        result.views_by_node[agent.node_id] = events_since(agent, "view_installed", started, ended)
        result.quorum_lost_by_node[agent.node_id] = events_since(
            agent, "quorum_lost", started, ended
        )
    return result


def first_event_after(agent: LabAgent, kind: str, since: float) -> float | None:
    """Wall time of the agent's first `kind` event logged at or after `since`."""
    for record in agent.log_records():
        if record.get("event") == kind:
            at = datetime.fromisoformat(record["timestamp"]).timestamp()
            if at >= since:
                return at
    return None


def bench_split(lab: Lab, agents: list[LabAgent], rounds: int = SPLIT_ROUNDS) -> None:
    """3|2 splits on a clean network: from the partition to the `quorum_lost` event of the
    later of the two minority agents (their log timestamps); the majority must not lose quorum.
    Heal and wait for one view of 5 between rounds."""
    times: list[float] = []
    majority_lost = 0
    for _ in range(rounds):
        started = time.time()
        lab.partition(["n1", "n2"], ["n3", "n4", "n5"])
        deadline = time.monotonic() + 30
        while any((d := status(a)) is None or d.get("quorate") for a in agents[:2]):
            if time.monotonic() > deadline:
                print("  3|2 split: the minority did not lose quorum within 30 s")
                return
            time.sleep(0.05)
        lost = [first_event_after(a, "quorum_lost", started) for a in agents[:2]]
        times += [max(t for t in lost if t is not None) - started]
        lab.heal()
        deadline = time.monotonic() + 30
        while not one_view(agents):
            if time.monotonic() > deadline:
                print("  3|2 split: no view of 5 within 30 s of healing")
                return
            time.sleep(0.1)
        majority_lost += sum(
            events_since(a, "quorum_lost", started, time.time()) for a in agents[2:]
        )
        time.sleep(1.0)
    ordered = sorted(times)
    print(
        f"  3|2 split, clean network ({rounds} rounds): minority inquorate after p50 "
        f"{ordered[len(ordered) // 2] * 1000:.0f} ms, max {ordered[-1] * 1000:.0f} ms; "
        f"quorum_lost on the majority side: {majority_lost}"
    )


def print_phase(result: PhaseResult) -> None:
    """The figures of one phase, in the style of bench_agent."""
    nodes = sorted(result.views_by_node)
    views = " ".join(f"n{n}:{result.views_by_node[n]}" for n in nodes)
    lost = " ".join(f"n{n}:{result.quorum_lost_by_node[n]}" for n in nodes)
    inq = " ".join(f"n{n}:{result.inquorate_by_node.get(n, 0)}" for n in nodes)
    share = result.any_inquorate / max(1, result.samples) * 100
    print(f"  {result.name}, {result.seconds:.0f} s, 5 agents, LAN timing:")
    print(f"    view changes per node   {views}   (total {sum(result.views_by_node.values())})")
    print(f"    quorum_lost per node    {lost}")
    print(
        f"    samples with any node inquorate {result.any_inquorate} / {result.samples} "
        f"({share:.1f} %), of which some agent did not answer {result.no_answer}; per node {inq}"
    )
    dropped = {
        k.removeprefix("dropped_"): v for k, v in result.switch.items() if "dropped" in k and v
    }
    print(
        f"    switch: received {result.switch.get('received', 0)}, forwarded "
        f"{result.switch.get('forwarded', 0)}, duplicated {result.switch.get('duplicated', 0)}, "
        f"dropped {dropped or 0}"
    )


def bench(workdir: Path, five_s: float, twenty_s: float) -> None:
    """Build the lab, start the agents, run both phases, print."""
    names = [f"n{i}" for i in range(1, NODES + 1)]
    with Lab(workdir / "lab", names, switch="tap") as lab:
        nodes = range(1, NODES + 1)
        agents = start_agents(
            lab, None, None, workdir / "agents", nodes, cluster="lossy", timing="lan"
        )
        processes = [a.process for a in agents if a.process is not None]
        deadline = time.monotonic() + SETTLE
        while not one_view(agents):
            dead = [p for p in processes if not p.alive()]
            if dead or time.monotonic() > deadline:
                tail = dead[0].log_tail() if dead else ""
                print(f"  no quorate view of {NODES} within {SETTLE:.0f} s; {tail}")
                return
            time.sleep(0.1)
        time.sleep(2.0)
        startup = sum(events_since(a, "view_installed", 0, time.time()) for a in agents)
        print(f"  start-up: one quorate view of {NODES}; {startup} view_installed events logged")
        bench_split(lab, agents)
        phases = [("5 % loss, 20 ± 20 ms", 0.05, five_s), ("20 % loss, 20 ± 20 ms", 0.2, twenty_s)]
        for title, loss, seconds in phases:
            print_phase(run_phase(lab, agents, title, loss, seconds))
        crashed = [p.host for p in processes if not p.alive()]
        print(f"    agents that exited during the run: {crashed or 'none'}")


def main() -> None:
    """Run both phases and print the figures (or why it cannot run here)."""
    reason = missing_reason("tap")
    if reason is not None:
        print(f"  skipped: {reason}")
        return
    five_s, twenty_s = phase_seconds()
    print(
        f"  host load average (1 min) at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    with tempfile.TemporaryDirectory(prefix="bench-lossy-") as tmp:
        bench(Path(tmp), five_s, twenty_s)


if __name__ == "__main__":
    main()
