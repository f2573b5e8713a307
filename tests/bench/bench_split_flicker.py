"""qnetd-decided splits with real agents: does the winning side ever show inquorate?

    python -m tests.bench split_flicker
    BENCH_SPLIT_ROUNDS=3 python -m tests.bench split_flicker     # fewer splits per scenario
    BENCH_SPLIT_QNETD=votemesh python -m tests.bench split_flicker  # one qnetd only

Issue 12 item 1. For each qnetd (votemesh-qnetd, Debian's corosync-qnetd 3.0.3) and each scenario
(2 nodes split 1|1, 4 nodes split 2|2), one lab on the tap switch: host `qnetd` runs the server,
hosts n1..nN one `votemesh-agent` each (static peers, LAN timing, `[qdevice]` ffsplit, tie-breaker
lowest, 1 vote, TLS with the qnetd's client certificate, heartbeat 2 s). Then BENCH_SPLIT_ROUNDS
(default 20) times: partition the nodes into two equal halves (the qnetd stays reachable from
both), wait until the picture settles (the half with node 1 quorate with the device vote, the
other half inquorate) and hold it HOLD s, heal, wait until all are quorate in one view with the
device vote again.

From each agent's JSON event log (wall-clock timestamps, compared with the wall time the
partition was requested):
* winner's longest inquorate interval: over the winning half's agents, the longest time from a
  `quorum_lost` to the next `quorum_gained` (or to the heal) between the partition and the heal;
  0 when none logged `quorum_lost` (the target);
* loser's time to inquorate: from the partition to the later of the losing agents' first
  `quorum_lost`.

Prints one table: p50 and max of each column per qnetd and scenario, and how many splits had a
winner flicker. Needs root (namespaces, /dev/net/tun); prints why and returns otherwise. Bounded:
each wait has a deadline (a missed one ends that scenario with a note), and the splits per
scenario are capped at 100. Never fails on a timing.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from votemesh_lab.agents import LabAgent, pem_credentials, start_agents
from votemesh_lab.netns import Lab, missing_reason
from votemesh_lab.qnetd import IMPLEMENTATIONS, QnetdUnderTest

ROUNDS = 20
MAX_ROUNDS = 100
SETTLE = 30.0  # deadline for every picture (start, split, heal)
HOLD = 1.5  # the split picture must hold this long: a late flicker shows up in the log
REST = 0.5  # after healing, before the next split
HEARTBEAT = 2.0  # qdevice heartbeat, as in the qdevice live test
SCENARIOS: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...] = (
    ("2 nodes 1|1", (1,), (2,)),
    ("4 nodes 2|2", (1, 2), (3, 4)),
)


@dataclass
class Result:
    """One qnetd x scenario: per split, the winner's longest inquorate interval and the loser's
    time to inquorate (seconds)."""

    qnetd: str
    scenario: str
    winner_gap: list[float] = field(default_factory=list)
    loser_lost: list[float] = field(default_factory=list)
    note: str = ""


def rounds() -> int:
    """Splits per scenario: BENCH_SPLIT_ROUNDS (default 20, at most 100)."""
    wanted = int(os.environ.get("BENCH_SPLIT_ROUNDS", str(ROUNDS)))
    return max(1, min(MAX_ROUNDS, wanted))


def implementations() -> list[type[QnetdUnderTest]]:
    """BENCH_SPLIT_QNETD=votemesh|debian picks one; default both."""
    only = os.environ.get("BENCH_SPLIT_QNETD", "")
    return [impl for impl in IMPLEMENTATIONS if only in ("", impl.name)]


def status(agent: LabAgent) -> dict[str, Any]:
    """The status document; {} when the agent does not answer (AssertionError if it died)."""
    return agent.status()


def events(agent: LabAgent, since: float, until: float) -> list[tuple[float, str]]:
    """(wall time, event) of the agent's quorum_lost / quorum_gained in [since, until)."""
    found = []
    for record in agent.log_records():
        kind = record.get("event")
        if kind not in ("quorum_lost", "quorum_gained"):
            continue
        at = datetime.fromisoformat(str(record["timestamp"]).replace("Z", "+00:00")).timestamp()
        if since <= at < until:
            found.append((at, str(kind)))
    return sorted(found)


def longest_inquorate(changes: list[tuple[float, str]], until: float) -> float:
    """The longest quorum_lost -> quorum_gained interval (an open one ends at `until`)."""
    longest, lost_at = 0.0, None
    for at, kind in changes:
        if kind == "quorum_lost" and lost_at is None:
            lost_at = at
        elif kind == "quorum_gained" and lost_at is not None:
            longest, lost_at = max(longest, at - lost_at), None
    if lost_at is not None:
        longest = max(longest, until - lost_at)
    return longest


def healthy(agents: Sequence[LabAgent]) -> bool:
    """All quorate in one view of all of them, each counting the device vote."""
    ids = sorted(a.node_id for a in agents)
    for doc in (status(a) for a in agents):
        if doc.get("members") != ids or not doc.get("quorate"):
            return False
        if doc.get("qdevice", {}).get("vote") is not True:
            return False
    return True


def split_settled(winners: Sequence[LabAgent], losers: Sequence[LabAgent]) -> bool:
    """Winners quorate in a view of the winners with the device vote; losers inquorate."""
    ids = sorted(a.node_id for a in winners)
    for doc in (status(a) for a in winners):
        if doc.get("members") != ids or not doc.get("quorate"):
            return False
        if doc.get("qdevice", {}).get("vote") is not True:
            return False
    return all(status(a).get("quorate") is False for a in losers)


def wait(condition: Any, deadline: float) -> bool:
    """Poll `condition()` every 20 ms until it holds (True) or the deadline passes (False)."""
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def run_scenario(
    impl: type[QnetdUnderTest],
    scenario: tuple[str, tuple[int, ...], tuple[int, ...]],
    workdir: Path,
    splits: int,
) -> Result:
    """One lab, one qnetd, `splits` splits of the scenario."""
    title, win_ids, lose_ids = scenario
    result = Result(impl.name, title)
    node_ids = sorted(win_ids + lose_ids)
    names = ["qnetd", *(f"n{i}" for i in node_ids)]
    with Lab(workdir / "lab", names, private_dirs=impl.private_dirs, switch="tap") as lab:
        qnetd = impl(workdir / "qnetd")
        qnetd.start(lab["qnetd"])
        cluster = "flicker"
        pem = pem_credentials(qnetd, qnetd.client_credentials(cluster), workdir / "pem")
        agents = start_agents(
            lab,
            qnetd,
            pem,
            workdir / "agents",
            node_ids,
            cluster=cluster,
            timing="lan",
            qdevice_heartbeat=HEARTBEAT,
        )
        by_id = {a.node_id: a for a in agents}
        winners = [by_id[i] for i in win_ids]
        losers = [by_id[i] for i in lose_ids]
        if not wait(lambda: healthy(agents), time.monotonic() + SETTLE * 2):
            result.note = f"no healthy cluster within {SETTLE * 2:.0f} s of start"
            return result
        time.sleep(REST)
        for n in range(splits):
            split_wall = time.time()
            lab.partition([f"n{i}" for i in win_ids], [f"n{i}" for i in lose_ids])
            if not wait(lambda: split_settled(winners, losers), time.monotonic() + SETTLE):
                result.note = f"split {n + 1}: picture not settled within {SETTLE:.0f} s"
                lab.heal()
                return result
            time.sleep(HOLD)
            heal_wall = time.time()
            lab.heal()
            result.winner_gap.append(
                max(longest_inquorate(events(a, split_wall, heal_wall), heal_wall) for a in winners)
            )
            firsts = []
            for agent in losers:
                lost = [
                    at for at, kind in events(agent, split_wall, heal_wall) if kind == "quorum_lost"
                ]
                firsts.append(lost[0] - split_wall if lost else float("nan"))
            result.loser_lost.append(max(firsts))
            if not wait(lambda: healthy(agents), time.monotonic() + SETTLE):
                result.note = f"split {n + 1}: not healthy within {SETTLE:.0f} s of healing"
                return result
            time.sleep(REST)
    return result


def ms(values: list[float], pick: str) -> str:
    """p50 or max of `values` in ms ('-' when empty)."""
    if not values:
        return "-"
    value = statistics.median(values) if pick == "p50" else max(values)
    return f"{value * 1000:.0f}"


def print_table(results: list[Result]) -> None:
    """One row per qnetd x scenario: p50 / max in ms, and splits where a winner flickered."""
    print(
        f"  {'qnetd':<9} {'scenario':<12} {'splits':>6}  {'winner inquorate ms':>19}  "
        f"{'winner flickered':>16}  {'loser to inquorate ms':>21}"
    )
    print(f"  {'':<9} {'':<12} {'':>6}  {'p50 / max':>19}  {'':>16}  {'p50 / max':>21}")
    for r in results:
        flickers = sum(1 for gap in r.winner_gap if gap > 0)
        winner = f"{ms(r.winner_gap, 'p50')} / {ms(r.winner_gap, 'max')}"
        loser = f"{ms(r.loser_lost, 'p50')} / {ms(r.loser_lost, 'max')}"
        print(
            f"  {r.qnetd:<9} {r.scenario:<12} {len(r.winner_gap):>6}  {winner:>19}  "
            f"{f'{flickers} of {len(r.winner_gap)}':>16}  {loser:>21}"
        )
        if r.note:
            print(f"    note: {r.note}")


def main() -> None:
    """Every qnetd x scenario; print the table (or why it cannot run here)."""
    reason = missing_reason("tap")
    if reason is not None:
        print(f"  skipped: {reason}")
        return
    splits = rounds()
    print(
        f"  {splits} splits per scenario, LAN timing, qdevice heartbeat {HEARTBEAT:.0f} s; "
        f"host load average (1 min) at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    results = []
    for impl in implementations():
        unavailable = impl.unavailable_reason()
        if unavailable is not None:
            print(f"  {impl.name}: skipped: {unavailable}")
            continue
        for scenario in SCENARIOS:
            with tempfile.TemporaryDirectory(prefix="bench-flicker-") as tmp:
                started = time.monotonic()
                result = run_scenario(impl, scenario, Path(tmp), splits)
                print(
                    f"  {impl.name}, {scenario[0]}: {len(result.winner_gap)} splits in "
                    f"{time.monotonic() - started:.0f} s",
                    flush=True,
                )
            results.append(result)
    print_table(results)


if __name__ == "__main__":
    main()
