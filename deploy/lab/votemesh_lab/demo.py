"""`make demo`: four votemesh agents and votemesh-qnetd in network namespaces, live.

In namespaces this script creates (hosts on the lab's userspace tap switch, no route out): one
host runs `votemesh-qnetd`, four run `votemesh-agent` (static peers, LAN timing, discovery off,
a `[qdevice]` with ffsplit and tie-breaker lowest, certificates from `votemesh-qnetd certs
client`). About once a second it prints every node's ring id, members, quorum, votes and device
vote, and the votes the qnetd last gave, while it takes the cluster through: healthy, a 2|2 split
(the qnetd keeps the half with node 1 quorate), heal, 10 % loss with 20 ± 20 ms delay on every
link (the view must not change), kill -9 of one agent and its rejoin, a clean stop of another
and its rejoin. Each phase waits for its expected picture (or fails, after cleanup, with what it
saw) and then holds it for a few seconds. Everything it started is gone when it returns.

    python -m votemesh_lab.demo [--keep-seconds N] [--no-qdevice]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from votemesh_lab import netns
from votemesh_lab.agents import LabAgent, pem_credentials, start_agents
from votemesh_lab.demo_corosync import decisions, log_length, qnetd_view
from votemesh_lab.netns import Lab, LabError
from votemesh_lab.qnetd import VotemeshQnetd

CLUSTER = "demo"
NODES = (1, 2, 3, 4)
SETTLE = 20.0  # deadline for each picture; LAN timing loses a peer after 0.65 s
HOLD = 3.0  # seconds each picture must then hold
LOSS_SECONDS = 15.0
POLL = 0.1
HEADINGS = ("healthy", "split 2|2", "heal", "loss", "kill -9 n4", "stop n3")

Docs = dict[int, dict[str, Any] | None]
"""Status document by node id; None for an agent that is not running."""
Expect = tuple[tuple[int, ...], bool, bool]
"""(members, quorate, device vote) one node must show."""
Picture = dict[int, Expect]


class PhaseError(Exception):
    """A phase did not reach (or hold) its picture; the message says what was seen."""


def missing(device: bool) -> str | None:
    """Why the demo cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces): run it with sudo"
    reason = netns.missing_reason("tap")
    if reason is None and device:
        reason = VotemeshQnetd.unavailable_reason()
    return reason


def picture(groups: Sequence[Sequence[int]], quorate: Sequence[bool], device: bool) -> Picture:
    """Each group one view; nodes of a quorate group count the device vote (if there is one)."""
    want: Picture = {}
    for group, q in zip(groups, quorate, strict=True):
        for node_id in group:
            want[node_id] = (tuple(group), q, q and device)
    return want


def mismatch(docs: Docs, want: Picture) -> str | None:
    """None when every node in `want` shows its part and each view has one ring id."""
    rings: dict[tuple[int, ...], set[tuple[int, ...]]] = {}
    for node_id, (members, quorate, vote) in want.items():
        doc = docs.get(node_id) or {}
        got = (
            tuple(doc.get("members", ())),
            doc.get("quorate"),
            doc.get("qdevice", {}).get("vote") is True,
        )
        if got != (members, quorate, vote):
            return f"n{node_id}: members/quorate/device vote {got}, want {(members, quorate, vote)}"
        rings.setdefault(members, set()).add(tuple(doc.get("ring_id", ())))
    split_rings = {m: r for m, r in rings.items() if len(r) > 1}
    return f"ring ids differ within a view: {split_rings}" if split_rings else None


def cell(node_id: int, doc: dict[str, Any] | None) -> str:
    """`n1 r1.7 1234 Q 5/5 qd+`: ring id, members, quorate, votes/expected, device vote."""
    if doc is None:
        return f"n{node_id} {'(down)':<22}"
    if not doc:
        return f"n{node_id} {'(no answer)':<22}"
    ring = str(doc.get("ring", "-"))  # hex, as corosync prints it
    members = "".join(str(m) for m in doc.get("members", ()))
    quorate = "Q" if doc.get("quorate") else "-"
    votes = f"{doc.get('total_votes')}/{doc.get('expected_votes')}"
    vote = "qd+" if doc.get("qdevice", {}).get("vote") else "qd-"
    return f"n{node_id} r{ring:<5} {members:<4} {quorate} {votes:<4} {vote}"


def view_changes_since(agent: LabAgent, since_wall: float) -> int:
    """`view_installed` events the agent logged after `since_wall` (epoch seconds)."""
    count = 0
    for record in agent.log_records():
        if record.get("event") != "view_installed":
            continue
        stamp = record["timestamp"].replace("Z", "+00:00")
        if dt.datetime.fromisoformat(stamp).timestamp() >= since_wall:
            count += 1
    return count


class Demo:
    """The lab, the agents and the qnetd of one run, and the live table."""

    def __init__(self, lab: Lab, workdir: Path, device: bool) -> None:
        self.lab = lab
        self.started = time.monotonic()
        self.device = device
        self.qnetd: VotemeshQnetd | None = None
        self.down: set[int] = set()
        self.agents: dict[int, LabAgent] = {}
        self.workdir = workdir
        self.last_print = 0.0
        self.summary: list[str] = []

    def start(self) -> None:
        """The qnetd (with its CA), a cluster certificate, then the four agents."""
        pem = None
        if self.device:
            self.qnetd = VotemeshQnetd(self.workdir / "qnetd")
            self.qnetd.start(self.lab["qnetd"])
            print(f"votemesh-qnetd on {self.qnetd.address}:{self.qnetd.port} (made its own CA)")
            creds = self.qnetd.client_credentials(CLUSTER)
            pem = pem_credentials(self.qnetd, creds, self.workdir / "pem")
            print("cluster certificate from `votemesh-qnetd certs client`, PEM for each agent")
        agents = start_agents(
            self.lab, self.qnetd, pem, self.workdir / "agents", NODES, cluster=CLUSTER,
            timing="lan",
        )  # fmt: skip
        self.agents = {a.node_id: a for a in agents}
        qdevice = "[qdevice] ffsplit, tie-breaker lowest" if self.device else "no qdevice"
        print(f"4 votemesh-agents: static peers, LAN timing, discovery off, {qdevice}")

    # -- the table --------------------------------------------------------------------------

    def docs(self) -> Docs:
        """Every agent's status (None if down); PhaseError if one died unasked."""
        out: Docs = {}
        for node_id, agent in self.agents.items():
            if node_id in self.down:
                out[node_id] = None
                continue
            if agent.process is None:
                raise RuntimeError("agent.process is not set")
            if not agent.process.alive():
                raise PhaseError(f"agent n{node_id} exited:\n{agent.process.log_tail(10)}")
            out[node_id] = agent.status()
        return out

    def qnetd_cell(self) -> str:
        if self.qnetd is None:
            return ""
        try:
            votes = qnetd_view(self.qnetd)
        except (OSError, ValueError, KeyError):
            return " || qnetd: ?"
        view = " ".join(f"{n}={v}" for n, v in sorted(votes.items()))
        return f" || qnetd: {view or '(no clients yet)'}"

    def show(self, label: str, docs: Docs, *, force: bool = False) -> None:
        """One table line, at most about once a second unless `force`."""
        now = time.monotonic()
        if not force and now - self.last_print < 1.0:
            return
        self.last_print = now
        cells = " | ".join(cell(n, docs[n]) for n in sorted(docs))
        print(f"{now - self.started:6.1f}s {label:<7}| {cells}{self.qnetd_cell()}", flush=True)

    # -- waiting ----------------------------------------------------------------------------

    def wait(self, label: str, want: Picture, since: float) -> float:
        """Poll until `want` shows, then hold it HOLD s; seconds from `since` until it showed."""
        deadline = time.monotonic() + SETTLE
        while (wrong := mismatch(docs := self.docs(), want)) is not None:
            self.show(label, docs)
            if time.monotonic() > deadline:
                self.show(label, docs, force=True)
                raise PhaseError(f"{label}: not there after {SETTLE:.0f} s: {wrong}")
            time.sleep(POLL)
        reached = time.monotonic() - since
        self.show(label, docs, force=True)
        self.hold(label, want, HOLD)
        return reached

    def hold(self, label: str, want: Picture | None, seconds: float) -> None:
        """Keep printing for `seconds`; with `want`, PhaseError if the picture breaks."""
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            docs = self.docs()
            wrong = mismatch(docs, want) if want is not None else None
            self.show(label, docs, force=wrong is not None)
            if wrong is not None:
                raise PhaseError(f"{label}: broke while holding: {wrong}")
            time.sleep(POLL)

    def healthy(self) -> Picture:
        return picture([NODES], [True], self.device)

    # -- phases -----------------------------------------------------------------------------

    def phase_healthy(self) -> None:
        heading("healthy: one view of 4, all quorate" + (" with the device vote" * self.device))
        took = self.wait("start", self.healthy(), self.started)
        self.summary.append(f"healthy {took:.1f} s after start")

    def phase_split(self) -> None:
        if self.device:
            heading("split 2|2 {n1,n2} | {n3,n4}, both reach the qnetd: it keeps node 1's half")
        else:
            heading("split 2|2 {n1,n2} | {n3,n4}: no half has a majority of 4 votes")
        mark = log_length(self.qnetd) if self.qnetd is not None else 0
        at = time.monotonic()
        self.lab.partition(["n1", "n2"], ["n3", "n4"])
        want = picture([(1, 2), (3, 4)], [self.device, False], self.device)
        took = self.wait("split", want, at)
        print(f"  split picture after {took:.1f} s")
        if self.qnetd is not None:  # the decisions that cast votes, as the qnetd logged them
            print("\n".join(d for d in decisions(self.qnetd, mark) if not d.endswith("{}")))
        self.summary.append(f"split {took:.1f} s")

    def phase_heal(self) -> None:
        heading("heal: one view of 4 again")
        at = time.monotonic()
        self.lab.heal()
        took = self.wait("healed", self.healthy(), at)
        print(f"  one view of 4 after {took:.1f} s")
        self.summary.append(f"heal {took:.1f} s")

    def phase_loss(self) -> None:
        heading(f"loss: 10 % loss, 20 ± 20 ms delay on every link for {LOSS_SECONDS:.0f} s")
        wall, before = time.time(), self.lab.switch_counters()
        self.lab.impair_all(loss=0.1, delay_ms=20, jitter_ms=20)
        try:
            self.hold("loss", None, LOSS_SECONDS)
        finally:
            self.lab.impair_all()  # all zero: no impairment
        after = self.lab.switch_counters()
        lost, sent = (after.get(k, 0) - before.get(k, 0) for k in ("dropped_loss", "forwarded"))
        print(f"  the switch dropped {lost} frames and forwarded {sent}")
        changes = {n: view_changes_since(a, wall) for n, a in self.agents.items()}
        total = sum(changes.values())
        per_node = ", ".join(f"n{n} {c}" for n, c in changes.items())
        print(f"  impairment cleared; view changes during the loss: {total} ({per_node})")
        self.wait("clear", self.healthy(), time.monotonic())
        self.summary.append(f"{total} view changes under loss")

    def phase_kill(self) -> None:
        heading("kill -9 n4: n1-n3 re-form a view of 3 and stay quorate; then n4 rejoins")
        agent = self.agents[4]
        if agent.process is None:
            raise RuntimeError("agent.process is not set")
        at = time.monotonic()
        os.kill(agent.process.pid, signal.SIGKILL)  # the agent itself: nsenter exec'd into it
        self.down.add(4)
        agent.process.process.wait(timeout=10)
        took = self.wait("kill n4", picture([(1, 2, 3)], [True], self.device), at)
        print(f"  view of 3 after {took:.2f} s (failure timeout: nothing said goodbye)")
        self.summary.append(f"kill -9 -> view of 3 in {took:.2f} s")
        self.restart(4)

    def phase_stop(self) -> None:
        heading("stop n3 (SIGTERM): it says Leave, the others re-form at once; then it rejoins")
        agent = self.agents[3]
        if agent.process is None:
            raise RuntimeError("agent.process is not set")
        at = time.monotonic()
        agent.process.process.terminate()
        self.down.add(3)
        took = self.wait("stop n3", picture([(1, 2, 4)], [True], self.device), at)
        agent.process.process.wait(timeout=10)
        print(f"  view of 3 after {took:.2f} s")
        self.summary.append(f"SIGTERM -> view of 3 in {took:.2f} s")
        self.restart(3)

    def restart(self, node_id: int) -> None:
        at = time.monotonic()
        self.agents[node_id].start()
        self.down.discard(node_id)
        took = self.wait(f"rejoin{node_id}", self.healthy(), at)
        print(f"  n{node_id} restarted: one view of 4 after {took:.1f} s")
        self.summary.append(f"n{node_id} rejoined in {took:.1f} s")


def heading(text: str) -> None:
    print(f"\n--- {text} ---", flush=True)


def run(device: bool, keep: float) -> list[str]:
    """The whole demo; returns the summary. Cleans up on any exit."""
    with tempfile.TemporaryDirectory(prefix="votemesh-demo-") as tmp:
        workdir = Path(tmp)
        with Lab(workdir, ["qnetd", *(f"n{i}" for i in NODES)], switch="tap") as lab:
            print(f"lab {lab.lab_id}: tap switch + 5 hosts in network namespaces, no route out")
            demo = Demo(lab, workdir, device)
            demo.start()
            print("table: time phase | node ring-id members Q(uorate)/- votes/expected qd+/-")
            demo.phase_healthy()
            demo.phase_split()
            demo.phase_heal()
            demo.phase_loss()
            demo.phase_kill()
            demo.phase_stop()
            if keep > 0:
                heading(f"holding the healthy cluster {keep:.0f} s")
                demo.hold("keep", demo.healthy(), keep)
            summary = demo.summary
            elapsed = time.monotonic() - demo.started
    print(f"\nlab removed: namespaces, switch and processes are gone ({elapsed:.0f} s in all).")
    return summary


def _terminate(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through the `with` blocks: cleanup runs, one line, 130


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--keep-seconds", type=float, default=0.0, help="hold the healthy cluster at the end"
    )
    parser.add_argument("--no-qdevice", action="store_true", help="no qnetd, no [qdevice]")
    args = parser.parse_args(argv)
    device = not args.no_qdevice
    reason = missing(device)
    if reason is not None:
        print(f"votemesh demo: {reason}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    try:
        summary = run(device, args.keep_seconds)
    except (PhaseError, LabError) as exc:
        print(f"votemesh demo: FAILED: {exc} (lab removed)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("votemesh demo: interrupted (lab removed)", file=sys.stderr)
        return 130
    print("summary: " + "; ".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
