"""Differential harness: one membership scenario through Debian's `corosync-vqsim` (corosync's
own votequorum.c on simulated nodes) and through our `agent.votequorum` core.

A `Scenario` is a cluster (node ids and votes), votequorum options and a list of steps. Every
configured node starts in partition 0 (vqsim starts them all); the steps are:

* `("move", {node: partition, ...})`: a network split/merge, atomic (vqsim `split`);
* `("down", node)`: the node stops (vqsim `down`); `("up", node, partition)`: it starts fresh
  (a cold start: wait_for_all applies anew);
* `("wait",)`: the last_man_standing window elapses (the harness sleeps the window and more).

After every step both sides report quorate per running node; `run_vqsim` and `run_model`
return one `{node: quorate}` per step. vqsim runs each node in a forked process and answers
asynchronously, so the harness polls `show` until every node reports the expected membership
and two polls agree. Our side: one `Votequorum` per node, fed the same views; the members'
reports (expected votes, quorate) are exchanged until nothing changes, as heartbeats would.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent.config import QuorumOptions, TieBreaker
from agent.votequorum import QuorumInput, QuorumStatus, Votequorum

VQSIM = shutil.which("corosync-vqsim")
PROMPT = "#vqsim> "
LINE = re.compile(r"^(\d+):(\d+): q=(\d) ring=\[[^\]]*\] nodes=\[([\d ]*)\]$")
NO_LMS_WINDOW_MS = 600_000
"""A window that never elapses during a scenario."""
LMS_WINDOW_MS = 1500
"""A window `wait` lets elapse (the harness sleeps it plus `LMS_MARGIN`)."""
LMS_MARGIN = 0.8

Step = tuple[object, ...]
Verdicts = dict[int, bool]


@dataclass(frozen=True)
class Scenario:
    """One membership sequence and the cluster it runs on."""

    name: str
    votes: Mapping[int, int]
    steps: Sequence[Step]
    two_node: bool = False
    wait_for_all: bool | None = None
    last_man_standing: bool = False
    lms_elapses: bool = False
    """True: `wait` steps let the window elapse (a short window); else it never does."""
    auto_tie_breaker: str | None = None
    """None, "lowest", "highest" or a space-separated list of node ids."""
    expected_votes: int | None = None
    tags: frozenset[str] = field(default_factory=frozenset)

    @property
    def window_ms(self) -> int:
        return LMS_WINDOW_MS if self.lms_elapses else NO_LMS_WINDOW_MS

    def options(self) -> QuorumOptions:
        """Our QuorumOptions for the same settings."""
        atb = self.auto_tie_breaker
        mode, listed = TieBreaker.LOWEST, tuple[int, ...]()
        if atb == "highest":
            mode = TieBreaker.HIGHEST
        elif atb not in (None, "lowest"):
            mode, listed = TieBreaker.LIST, tuple(int(x) for x in atb.split())
        return QuorumOptions(
            expected_votes=self.expected_votes,
            two_node=self.two_node,
            wait_for_all=self.wait_for_all,
            last_man_standing=self.last_man_standing,
            last_man_standing_window=self.window_ms / 1000,
            auto_tie_breaker=atb is not None,
            auto_tie_breaker_node=mode,
            tie_breaker_nodes=listed,
        )

    def corosync_conf(self) -> str:
        """corosync.conf for vqsim."""
        nodes = "".join(
            f"\tnode {{\n\t\tnodeid: {n}\n\t\tring0_addr: 10.250.0.{n}\n"
            f"\t\tquorum_votes: {v}\n\t}}\n"
            for n, v in sorted(self.votes.items())
        )
        quorum = ["\tprovider: corosync_votequorum"]
        if self.two_node:
            quorum.append("\ttwo_node: 1")
        if self.wait_for_all is not None:
            quorum.append(f"\twait_for_all: {int(self.wait_for_all)}")
        if self.last_man_standing:
            quorum.append("\tlast_man_standing: 1")
            quorum.append(f"\tlast_man_standing_window: {self.window_ms}")
        if self.auto_tie_breaker is not None:
            quorum.append("\tauto_tie_breaker: 1")
            quorum.append(f"\tauto_tie_breaker_node: {self.auto_tie_breaker}")
        if self.expected_votes is not None:
            quorum.append(f"\texpected_votes: {self.expected_votes}")
        return (
            "totem {\n\tversion: 2\n\tcluster_name: vqdiff\n}\n\n"
            f"nodelist {{\n{nodes}}}\n\nquorum {{\n" + "\n".join(quorum) + "\n}\n\n"
            "logging {\n\tto_stderr: no\n\tto_syslog: no\n\tto_logfile: no\n}\n"
        )


class Layout:
    """Which nodes run and in which partition (the scenario's truth after each step)."""

    def __init__(self, nodes: Sequence[int]) -> None:
        self.part: dict[int, int] = dict.fromkeys(nodes, 0)

    def apply(self, step: Step) -> None:
        kind = step[0]
        if kind == "move":
            moves = step[1]
            assert isinstance(moves, dict)
            self.part.update(moves)
        elif kind == "down":
            node = step[1]
            assert isinstance(node, int)
            del self.part[node]
        elif kind == "up":
            node, partition = step[1], step[2]
            assert isinstance(node, int)
            assert isinstance(partition, int)
            self.part[node] = partition

    def members(self, node: int) -> frozenset[int]:
        p = self.part[node]
        return frozenset(n for n, q in self.part.items() if q == p)

    def partitions(self) -> dict[int, frozenset[int]]:
        out: dict[int, set[int]] = {}
        for n, p in self.part.items():
            out.setdefault(p, set()).add(n)
        return {p: frozenset(ns) for p, ns in out.items()}


# -- vqsim ------------------------------------------------------------------------------------


class VqsimError(RuntimeError):
    """vqsim did not settle or died."""


class Vqsim:
    """One `corosync-vqsim` process driven through its stdin pipe."""

    def __init__(self, conf: Path, cwd: Path) -> None:
        assert VQSIM is not None
        self.proc = subprocess.Popen(
            [VQSIM, "-c", conf.name],  # relative: vqsim refuses -c paths of 8+ characters
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=cwd,
        )
        self.buf = ""
        self._read_until_prompt(20.0)

    def _read_until_prompt(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while PROMPT not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise VqsimError(f"no prompt within {timeout} s; output so far {self.buf!r}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise VqsimError(f"vqsim exited; output {self.buf!r}")
                self.buf += chunk.decode("utf-8", "replace")
        text, _, self.buf = self.buf.partition(PROMPT)
        return text

    def command(self, line: str, timeout: float = 20.0) -> str:
        """Send one command; its output up to the next prompt."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()
        return self._read_until_prompt(timeout)

    def show(self) -> dict[int, tuple[bool, frozenset[int]]]:
        """node -> (quorate, members) as vqsim last heard from each node."""
        out = {}
        for raw in self.command("show").splitlines():
            m = LINE.match(raw.strip())
            if m:
                members = frozenset(int(x) for x in m.group(4).split())
                out[int(m.group(2))] = (m.group(3) == "1", members)
        return out

    def settled(self, layout: Layout, timeout: float = 15.0) -> Verdicts:
        """Poll `show` until every running node reports its partition's members and two polls
        50 ms apart agree; the verdicts then."""
        deadline = time.monotonic() + timeout
        last: dict[int, tuple[bool, frozenset[int]]] | None = None
        while time.monotonic() < deadline:
            time.sleep(0.05)
            now = self.show()
            good = set(now) == set(layout.part) and all(
                now[n][1] == layout.members(n) for n in layout.part
            )
            if good and now == last:
                return {n: q for n, (q, _) in now.items()}
            last = now if good else None
        raise VqsimError(f"vqsim did not settle on {layout.partitions()}: {last}")

    def close(self) -> None:
        """Quit vqsim (it stops its nodes), kill it if it does not; close the pipes."""
        try:
            if self.proc.poll() is None:
                assert self.proc.stdin is not None
                self.proc.stdin.write(b"quit\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait(timeout=5)
        finally:
            for pipe in (self.proc.stdin, self.proc.stdout):
                if pipe is not None:
                    pipe.close()


def run_vqsim(scenario: Scenario) -> list[Verdicts]:
    """Quorate per running node after the start and after every step, by corosync's code."""
    with tempfile.TemporaryDirectory(prefix="vqdiff-") as tmp:
        conf = Path(tmp) / "c.conf"
        conf.write_text(scenario.corosync_conf())
        sim = Vqsim(conf, Path(tmp))
        try:
            layout = Layout(sorted(scenario.votes))
            out = [sim.settled(layout)]
            for step in scenario.steps:
                layout.apply(step)
                kind = step[0]
                if kind == "move":
                    moves = step[1]
                    assert isinstance(moves, dict)
                    by_part: dict[int, list[int]] = {}
                    for n, p in sorted(moves.items()):
                        by_part.setdefault(p, []).append(n)
                    args = " ".join(
                        f"{p}:{','.join(map(str, ns))}" for p, ns in sorted(by_part.items())
                    )
                    sim.command(f"split {args}")
                elif kind == "down":
                    sim.command(f"down {step[1]}")
                elif kind == "up":
                    sim.command(f"up {step[2]}:{step[1]}")
                elif kind == "wait":
                    time.sleep(scenario.window_ms / 1000 + LMS_MARGIN)
                out.append(sim.settled(layout))
            return out
        finally:
            sim.close()


# -- our core ---------------------------------------------------------------------------------


def run_model(scenario: Scenario) -> list[dict[int, QuorumStatus]]:
    """Each running node's status after the start and after every step, by agent.votequorum.

    Views: a partition whose members changed gets a new ring id (lowest member, a new sequence),
    as our membership would; an unchanged partition keeps its view. Time: 10 ms per step, and
    `wait` moves it past the window. The start is every node booting one after the other into
    partition 0, as vqsim does."""
    opts = scenario.options()
    votes = dict(scenario.votes)
    cores: dict[int, Votequorum] = {}
    views: dict[int, tuple[frozenset[int], tuple[int, int]]] = {}
    seq = [0]
    now = [0.0]
    layout = Layout([])

    def install() -> None:
        for members in layout.partitions().values():
            keys = {views[n][1] for n in members if n in views and views[n][0] == members}
            unchanged = len(keys) == 1 and all(n in views for n in members)
            if unchanged:
                (key,) = keys
            else:
                seq[0] += 1
                key = (min(members), seq[0])
            for n in members:
                views[n] = (members, key)
        settle()

    def settle() -> None:
        for _ in range(20):
            before = {n: (c.status, c.reported_expected, c.tie_breaker) for n, c in cores.items()}
            for n in sorted(cores):
                members, key = views[n]
                quorate = frozenset(
                    m
                    for m in members
                    if cores[m].status.quorate and "WaitForAllStatus" not in cores[m].status.flags
                )
                inp = QuorumInput(
                    members,
                    {m: votes[m] for m in members},
                    {m: cores[m].reported_expected for m in members},
                    0,
                    key,
                    quorate,
                    member_tie_breakers={m: cores[m].tie_breaker for m in members},
                )
                cores[n].update(inp, now[0])
            after = {n: (c.status, c.reported_expected, c.tie_breaker) for n, c in cores.items()}
            if before == after:
                return

    def boot(node: int, partition: int) -> None:
        cores[node] = Votequorum(node, opts, votes)
        layout.part[node] = partition

    for n in sorted(votes):  # vqsim starts the nodes one by one
        boot(n, 0)
        install()
    out = [{n: c.status for n, c in cores.items()}]
    for step in scenario.steps:
        now[0] += 0.01
        kind = step[0]
        if kind == "up":
            node, partition = step[1], step[2]
            assert isinstance(node, int)
            assert isinstance(partition, int)
            boot(node, partition)
        elif kind == "down":
            node = step[1]
            assert isinstance(node, int)
            del cores[node], views[node]
            layout.apply(step)
        elif kind == "wait":
            now[0] += scenario.window_ms / 1000 + LMS_MARGIN
            for c in cores.values():
                c.tick(now[0])
        else:
            layout.apply(step)
        install()
        out.append({n: c.status for n, c in cores.items()})
    return out


# -- the scenario library ---------------------------------------------------------------------


def _ones(n: int) -> dict[int, int]:
    return dict.fromkeys(range(1, n + 1), 1)


def _split(*groups: Sequence[int]) -> Step:
    """Partition k gets groups[k] (nodes not named stay where they are)."""
    return ("move", {n: k for k, group in enumerate(groups) for n in group})


def _cold(n: int, first: Sequence[int]) -> list[Step]:
    """Stop every node, then start only `first` (a cold start of part of the cluster)."""
    steps: list[Step] = [("down", i) for i in range(1, n + 1)]
    return steps + [("up", i, 0) for i in first]


def named_scenarios() -> list[Scenario]:
    """The named library: 2-8 nodes, uneven votes, each option alone and combined."""
    s: list[Scenario] = []
    add = s.append
    # plain majority, partitions of every size
    for n in range(2, 9):
        add(
            Scenario(
                f"plain-{n}-every-split",
                _ones(n),
                [_split(range(1, k + 1), range(k + 1, n + 1)) for k in range(1, n)]
                + [_split(range(1, n + 1))],
            )
        )
    add(
        Scenario(
            "plain-5-three-ways",
            _ones(5),
            [_split([1, 2], [3, 4], [5]), _split([1, 2, 3, 4], [], [5]), _split([1, 2, 3, 4, 5])],
        )
    )
    add(
        Scenario(
            "plain-7-down-up",
            _ones(7),
            [("down", 7), ("down", 6), ("down", 5), ("down", 4), ("up", 4, 0), ("up", 5, 1)],
        )
    )
    # uneven votes
    add(
        Scenario(
            "votes-3-heavy-node",
            {1: 3, 2: 1, 3: 1},
            [_split([1], [2, 3]), _split([1, 2], [3]), _split([2, 3, 1])],
        )
    )
    add(
        Scenario(
            "votes-4-uneven",
            {1: 2, 2: 2, 3: 1, 4: 1},
            [
                _split([1, 3], [2, 4]),
                _split([1, 2], [3, 4]),
                _split([1], [2, 3, 4]),
                _split([1, 2, 3, 4]),
            ],
        )
    )
    add(
        Scenario(
            "votes-6-weighted",
            {1: 3, 2: 1, 3: 1, 4: 1, 5: 1, 6: 1},
            [
                _split([1, 2], [3, 4, 5, 6]),
                _split([1, 2, 3], [4, 5, 6]),
                ("down", 1),
                _split([2, 3, 4, 5, 6]),
            ],
        )
    )
    add(
        Scenario(
            "votes-zero-vote-node",
            {1: 1, 2: 1, 3: 0},
            [_split([1, 3], [2]), _split([3], [1, 2]), _split([1, 2, 3])],
        )
    )
    # configured expected_votes
    add(
        Scenario(
            "expected-higher-than-nodes",
            _ones(3),
            [_split([1, 2], [3]), _split([1, 2, 3])],
            expected_votes=5,
        )
    )
    add(
        Scenario(
            "expected-lower-than-nodes",
            _ones(5),
            [_split([1, 2], [3, 4, 5]), _split([1], [2, 3, 4, 5])],
            expected_votes=3,
        )
    )
    add(
        Scenario(
            "expected-cold-start", _ones(4), [*_cold(4, [1, 2]), ("up", 3, 0)], expected_votes=4
        )
    )
    # two_node
    add(Scenario("two-node-split", _ones(2), [_split([1], [2]), _split([1, 2])], two_node=True))
    add(
        Scenario(
            "two-node-no-wfa-split",
            _ones(2),
            [_split([1], [2]), _split([1, 2])],
            two_node=True,
            wait_for_all=False,
        )
    )
    add(
        Scenario("two-node-cold-start-one", _ones(2), [*_cold(2, [1]), ("up", 2, 0)], two_node=True)
    )
    add(
        Scenario(
            "two-node-no-wfa-cold-one",
            _ones(2),
            [*_cold(2, [1]), ("up", 2, 1), _split([1, 2])],
            two_node=True,
            wait_for_all=False,
        )
    )
    add(Scenario("two-node-down-one", _ones(2), [("down", 2), ("up", 2, 0)], two_node=True))
    # wait_for_all
    for n in (3, 4, 5, 8):
        add(
            Scenario(
                f"wfa-{n}-cold-start",
                _ones(n),
                [*_cold(n, range(1, n)), ("up", n, 0)],
                wait_for_all=True,
            )
        )
    add(
        Scenario(
            "wfa-3-cold-split-then-full",
            _ones(3),
            [*_cold(3, [1, 2, 3]), _split([1, 2], [3]), _split([1, 2, 3])],
            wait_for_all=True,
        )
    )
    add(
        Scenario(
            "wfa-5-rejoin-quorate",
            _ones(5),
            [_split([1, 2, 3], [4, 5]), ("down", 5), ("up", 5, 1), _split([1, 2, 3, 4, 5])],
            wait_for_all=True,
        )
    )
    add(
        Scenario(
            "wfa-4-uneven-cold",
            {1: 2, 2: 1, 3: 1, 4: 1},
            [*_cold(4, [1, 2, 3]), ("up", 4, 0)],
            wait_for_all=True,
        )
    )
    # last_man_standing
    add(
        Scenario(
            "lms-5-window-elapses",
            _ones(5),
            [
                _split([1, 2, 3], [4, 5]),
                ("wait",),
                _split([1, 2], [3]),
                ("wait",),
                _split([1], [2]),
            ],
            last_man_standing=True,
            lms_elapses=True,
        )
    )
    add(
        Scenario(
            "lms-5-window-not-elapsed",
            _ones(5),
            [_split([1, 2, 3], [4, 5]), _split([1, 2], [3]), _split([1], [2])],
            last_man_standing=True,
        )
    )
    add(
        Scenario(
            "lms-8-shrinks",
            _ones(8),
            [
                _split(range(1, 7), [7, 8]),
                ("wait",),
                _split([1, 2, 3, 4], [5, 6]),
                ("wait",),
                _split([1, 2, 3], [4]),
            ],
            last_man_standing=True,
            lms_elapses=True,
        )
    )
    add(
        Scenario(
            "lms-4-rejoin-after-shrink",
            _ones(4),
            [_split([1, 2, 3], [4]), ("wait",), _split([1, 2, 3, 4])],
            last_man_standing=True,
            lms_elapses=True,
        )
    )
    add(
        Scenario(
            "lms-atb-down-to-one",
            _ones(4),
            [
                _split([1, 2, 3], [4]),
                ("wait",),
                _split([1, 2], [3]),
                ("wait",),
                _split([1], [2]),
                ("wait",),
            ],
            last_man_standing=True,
            lms_elapses=True,
            auto_tie_breaker="lowest",
        )
    )
    add(
        Scenario(
            "lms-wfa-combined",
            _ones(5),
            [_split([1, 2, 3, 4], [5]), ("wait",), _split([1, 2, 3], [4])],
            last_man_standing=True,
            lms_elapses=True,
            wait_for_all=True,
        )
    )
    add(
        Scenario(
            "lms-cold-three-of-five",
            _ones(5),
            [*_cold(5, [1, 2, 3]), ("wait",), _split([1, 2], [3])],
            last_man_standing=True,
            lms_elapses=True,
            wait_for_all=False,
        )
    )
    # auto_tie_breaker: lowest, highest, list
    add(
        Scenario(
            "atb-lowest-4",
            _ones(4),
            [_split([1, 2], [3, 4]), _split([1, 3], [2, 4]), _split([1, 2, 3, 4])],
            auto_tie_breaker="lowest",
        )
    )
    add(
        Scenario(
            "atb-highest-4",
            _ones(4),
            [_split([1, 2], [3, 4]), _split([1, 4], [2, 3]), _split([1, 2, 3, 4])],
            auto_tie_breaker="highest",
        )
    )
    add(
        Scenario(
            "atb-list-4",
            _ones(4),
            [_split([1, 2], [3, 4]), _split([1, 2, 3, 4]), _split([1, 4], [2, 3])],
            auto_tie_breaker="3 1",
        )
    )
    add(
        Scenario(
            "atb-lowest-6-node1-down",
            _ones(6),
            [("down", 1), _split([2, 3, 4], [5, 6])],
            auto_tie_breaker="lowest",
        )
    )
    add(
        Scenario(
            "atb-highest-6-node6-down",
            _ones(6),
            [("down", 6), _split([1, 2], [3, 4, 5])],
            auto_tie_breaker="highest",
        )
    )
    add(
        Scenario(
            "atb-list-6-first-down",
            _ones(6),
            [("down", 1), _split([2, 3, 6], [4, 5])],
            auto_tie_breaker="1 6",
        )
    )
    add(
        Scenario(
            "atb-list-6-first-other-side",
            _ones(6),
            [("down", 1), _split([2, 3, 6], [4, 5])],
            auto_tie_breaker="1 4 6",
        )
    )
    add(
        Scenario(
            "atb-8-four-four",
            _ones(8),
            [_split([1, 2, 3, 4], [5, 6, 7, 8]), _split([1, 5, 6, 7], [2, 3, 4, 8])],
            auto_tie_breaker="lowest",
        )
    )
    add(
        Scenario(
            "atb-uneven-votes",
            {1: 2, 2: 1, 3: 1, 4: 2},
            [_split([1, 2], [3, 4]), _split([1, 4], [2, 3])],
            auto_tie_breaker="lowest",
        )
    )
    add(Scenario("atb-cold-half", _ones(4), _cold(4, [3, 4]), auto_tie_breaker="lowest"))
    add(
        Scenario(
            "atb-wfa-combined",
            _ones(4),
            [*_cold(4, [1, 2, 3, 4]), _split([1, 2], [3, 4])],
            auto_tie_breaker="lowest",
            wait_for_all=True,
        )
    )
    add(
        Scenario(
            "atb-odd-expected-5",
            _ones(5),
            [("down", 5), _split([1, 2], [3, 4]), ("up", 5, 1)],
            auto_tie_breaker="lowest",
            wait_for_all=True,  # corosync needs it with an odd number of votes
        )
    )
    add(
        Scenario(
            "atb-lowest-cascade-6",
            _ones(6),
            [_split([1, 2, 3], [4, 5, 6]), _split([1, 2], [3], [4, 5, 6])],
            auto_tie_breaker="lowest",
        )
    )
    # rejoins
    add(
        Scenario(
            "rejoin-minority-3",
            _ones(3),
            [_split([1, 2], [3]), ("down", 3), ("up", 3, 1), _split([1, 2, 3])],
        )
    )
    add(
        Scenario(
            "rejoin-after-restart-5",
            _ones(5),
            [("down", 1), ("down", 2), ("down", 3), ("up", 1, 0), ("up", 2, 0), ("up", 3, 0)],
        )
    )
    add(
        Scenario("rejoin-wfa-restart-one", _ones(3), [("down", 3), ("up", 3, 0)], wait_for_all=True)
    )
    add(
        Scenario(
            "rejoin-expected-config-lower",
            _ones(4),
            [_split([1, 2], [3, 4]), _split([1, 2, 3, 4])],
            expected_votes=3,
        )
    )
    return s


def random_scenario(seed: int) -> Scenario:
    """A seeded random scenario: 2-8 nodes, random votes and options, 3-7 steps."""
    import random

    rng = random.Random(seed)
    n = rng.randint(2, 8)
    uneven = rng.random() < 0.3
    votes = {i: (rng.choice([1, 1, 2, 3]) if uneven else 1) for i in range(1, n + 1)}
    atb = rng.choice(
        [
            None,
            None,
            "lowest",
            "highest",
            " ".join(map(str, rng.sample(range(1, n + 1), min(n, 2)))),
        ]
    )
    two_node = n == 2 and atb is None and not uneven and rng.random() < 0.5
    wfa = rng.choice([None, True, False])
    if atb is not None and sum(votes.values()) % 2 and not wfa:
        wfa = True  # else corosync disables auto_tie_breaker (with LMS: refuses to start)
    lms = not uneven and rng.random() < 0.25
    expected = rng.choice([None] * 4 + [sum(votes.values()) + rng.randint(-1, 2)])
    if expected is not None and expected < 1:
        expected = None
    running = set(votes)
    part = dict.fromkeys(votes, 0)
    steps: list[Step] = []
    for _ in range(rng.randint(3, 7)):
        r = rng.random()
        down = sorted(set(votes) - running)
        if r < 0.12 and len(running) > 1:
            node = rng.choice(sorted(running))
            running.discard(node)
            del part[node]
            steps.append(("down", node))
        elif r < 0.24 and down:
            node = rng.choice(down)
            p = rng.randint(0, 2)
            running.add(node)
            part[node] = p
            steps.append(("up", node, p))
        elif r < 0.36:
            steps.append(("move", dict.fromkeys(sorted(running), 0)))
            part = dict.fromkeys(running, 0)
        else:
            k = rng.randint(1, min(3, len(running)))
            moves = {node: rng.randrange(k) for node in sorted(running)}
            part.update(moves)
            steps.append(("move", moves))
    return Scenario(
        f"random-{seed}",
        votes,
        steps,
        two_node=two_node,
        wait_for_all=wfa,
        last_man_standing=lms,
        auto_tie_breaker=atb,
        expected_votes=expected,
    )


# -- the documented differences (docs/agent.md "Differences from corosync's votequorum") ------

EXCEPTIONS = {
    "mixed-partition": "corosync leaves members of one partition with different verdicts (its "
    "expected votes and sticky quorum depend on the order of nodeinfo messages); ours gives "
    "the partition one verdict, that of its quorate members",
    "atb-odd-expected": "corosync's auto_tie_breaker grants a partition holding expected // 2 "
    "votes with odd expected votes (integer division): two partitions can be quorate; ours "
    "needs exactly half",
    "atb-list-rering": "corosync's list tie-breaker compares with the previous ring only; after "
    "a new ring with the same members it forgets the earlier-listed node on the other side; "
    "ours compares with the previous member set",
    "atb-tie-disagreement": "corosync breaks a tie with each node's own tie-breaker (from the "
    "last view in which that node was quorate); members of one partition can name different "
    "nodes and two partitions become quorate (4 nodes, highest: {1,2,3}|{4} then {1,3}|{2,4}); "
    "ours breaks it only when every member names the same node",
    "wfa-rearm": "corosync's code puts an inquorate wait_for_all node back to waiting; whether "
    "that holds depends on stale quorate flags in the next ring's nodeinfo (it varies between "
    "vqsim runs); ours applies wait_for_all after a start only",
    "two-node-expected": "corosync's two_node sets quorum 1 whenever at most 2 nodes are present, "
    "whatever expected votes are; ours only while expected votes are 2",
}


def explain(  # noqa: PLR0911, PLR0917 (one rule per documented difference; one call site)
    scenario: Scenario,
    node: int,
    layout: Layout,
    previous: Layout | None,
    corosync: Verdicts,
    ours: Mapping[int, QuorumStatus],
) -> str | None:
    """The documented difference that explains `node`'s differing verdict, or None."""
    members = layout.members(node)
    theirs, mine = corosync[node], ours[node].quorate
    status = ours[node]
    waiting = status.total_votes < status.expected_votes  # a majority, not all votes
    nobody = not any(corosync[m] for m in members)
    if scenario.options().effective_wait_for_all and mine and nobody and waiting:
        return "wfa-rearm"
    mixed = len({corosync[m] for m in members}) > 1
    if mixed and all(ours[m].quorate for m in members):
        return "mixed-partition"
    atb = scenario.auto_tie_breaker
    if theirs and not mine and atb is not None:
        if status.expected_votes % 2 and status.total_votes == status.expected_votes // 2:
            return "atb-odd-expected"
        if "do not name tie-breaker node" in status.reason:
            return "atb-tie-disagreement"
        listed = atb not in ("lowest", "highest")
        same = previous is not None and node in previous.part and previous.members(node) == members
        if listed and same:
            return "atb-list-rering"
    if theirs and not mine and scenario.two_node and len(members) <= 2:
        return "two-node-expected"
    return None
