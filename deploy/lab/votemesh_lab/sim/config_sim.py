"""A seeded simulation of configuration replication (design §3.9) with the S4 checker.

One `ConfigReplica` per node, driven the way the agent will drive it: views and quorum verdicts
come from a random partition schedule (groups of running nodes install a view whose ring id is
(a fresh or sometimes a reused sequence, lowest member); quorate = the group holds a majority of
the votes the node's committed configuration gives, or is forced by an "expected-votes override"
fault), messages travel with random delay, loss, duplication and reordering only inside a group,
crashed nodes restart from what they persisted, and config changes are asked on random nodes on
both sides of splits. These views are a model of the membership core's output (one member set
per ring id, S2), not `AgentNode`'s own: the replicas run beside the schedule, not inside the
node simulator (design §3.9, status).

Checked: **S4** — every (version, digest) any node ever committed is unique per version, and no
replica reported a `Conflict`; **convergence** — after the final heal with no faults, every node
holds the same version and digest, and a change asked then is applied everywhere.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field, replace

from agent import config_replication as cr
from agent.cluster_config import ClusterConfig, ClusterNode, NodeLink, digest

Delivery = tuple[int, int, int, int, cr.Message]
"""(deliver at step, tie-break counter, to, from, message)."""


def bootstrap(nodes: int) -> ClusterConfig:
    """Version-0 configuration of nodes 1..n, one vote each."""
    members = tuple(
        ClusterNode(i, f"node{i}", 1, (NodeLink(0, f"10.0.0.{i}"),)) for i in range(1, nodes + 1)
    )
    return ClusterConfig("sim", 0, members)


@dataclass
class ConfigSim:
    """The whole simulated cluster; `run(steps)` executes a random schedule."""

    seed: int
    nodes: int
    unsafe_majority: bool = False
    """Test hook: let any quorate view change the configuration (breaks S4; the checker must see
    it)."""
    rng: random.Random = field(init=False)
    replicas: dict[int, cr.ConfigReplica | None] = field(init=False)
    disk: dict[int, cr.Persist] = field(init=False)
    groups: list[frozenset[int]] = field(init=False)
    forced: set[int] = field(init=False, default_factory=set)
    queue: list[Delivery] = field(init=False, default_factory=list)
    committed: dict[int, bytes] = field(init=False, default_factory=dict)
    violations: list[str] = field(init=False, default_factory=list)
    done: list[cr.ChangeDone] = field(init=False, default_factory=list)
    trace: list[str] = field(init=False, default_factory=list)
    step: int = field(init=False, default=0)
    max_seq: int = field(init=False, default=0)
    counter: int = field(init=False, default=0)
    request_id: int = field(init=False, default=0)
    loss: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        base = bootstrap(self.nodes)
        self.disk = {n: cr.Persist(base, None, None) for n in self.ids}
        self.replicas = {n: self._boot(n) for n in self.ids}
        self.groups = [frozenset(self.ids)]
        self._install()

    @property
    def ids(self) -> range:
        return range(1, self.nodes + 1)

    def _boot(self, n: int) -> cr.ConfigReplica:
        d = self.disk[n]
        replica = cr.ConfigReplica(n, d.committed, d.staged, d.promised)
        if self.unsafe_majority:
            replica._majority = lambda: (1, 1, 1)  # type: ignore[method-assign]
        return replica

    # ---- topology ----

    def _running(self) -> set[int]:
        return {n for n, r in self.replicas.items() if r is not None}

    def _install(self) -> None:
        """Every group of running nodes installs a new view; quorum follows."""
        running = self._running()
        reuse = self.rng.random() < 0.2
        seq = self.max_seq + 1
        for group in self.groups:
            members = frozenset(group & running)
            if not members:
                continue
            if not reuse:
                seq = self.max_seq + 1
            self.max_seq = max(self.max_seq, seq)
            ring = cr.Ring(seq, min(members))
            self.trace.append(f"{self.step}: view {ring} {sorted(members)}")
            for n in sorted(members):
                self._feed(n, cr.ViewChanged(ring, members))
            self._quorum(members)

    def _quorum(self, members: frozenset[int]) -> None:
        for n in sorted(members):
            replica = self.replicas[n]
            if replica is None:
                continue
            votes = replica.committed.votes()
            total = sum(votes.values())
            have = sum(v for m, v in votes.items() if m in members)
            quorate = 2 * have > total or n in self.forced
            self._feed(n, cr.QuorumInput(quorate, have, have if n in self.forced else total))

    def _group_of(self, n: int) -> frozenset[int]:
        return next(g for g in self.groups if n in g)

    # ---- effects and delivery ----

    def _feed(self, n: int, event: cr.Event) -> None:
        replica = self.replicas[n]
        if replica is None:
            return
        for effect in replica.handle(event):
            self._effect(n, effect)

    def _effect(self, n: int, effect: cr.Effect) -> None:
        match effect:
            case cr.Send(to, message):
                if self.rng.random() < self.loss:
                    return
                copies = 2 if self.rng.random() < 0.05 else 1
                for _ in range(copies):
                    self.counter += 1
                    at = self.step + self.rng.randint(1, 4)
                    self.queue.append((at, self.counter, to, n, message))
            case cr.Persist():
                self.disk[n] = effect
                self._record(n, effect.committed)
            case cr.Applied(config):
                self._record(n, config)
            case cr.ChangeDone():
                self.done.append(effect)
                self.trace.append(
                    f"{self.step}: node {n} change {effect.request_id}: {effect.text}"
                )
            case cr.Conflict(version):
                self.violations.append(f"S4: node {n} met two configurations at version {version}")

    def _record(self, n: int, config: ClusterConfig) -> None:
        if config.version == 0:
            return
        h = digest(config)
        seen = self.committed.setdefault(config.version, h)
        if seen != h:
            self.violations.append(
                f"S4: version {config.version} has two configurations (node {n}, step {self.step})"
            )

    def _deliver(self) -> None:
        due = sorted(d for d in self.queue if d[0] <= self.step)
        self.queue = [d for d in self.queue if d[0] > self.step]
        self.rng.shuffle(due) if self.rng.random() < 0.3 else None
        for _, _, to, sender, message in due:
            if self.replicas.get(to) is None or self.replicas.get(sender) is None:
                continue
            if to not in self._group_of(sender):
                continue
            self._feed(to, cr.Received(sender, message))

    # ---- faults and changes ----

    def _fault(self) -> None:
        kind = self.rng.choice(["split", "split", "heal", "crash", "restart", "force", "loss"])
        if kind == "split":
            ids = list(self.ids)
            self.rng.shuffle(ids)
            cuts = self.rng.randint(1, min(2, self.nodes - 1))
            cut = sorted(self.rng.sample(range(1, self.nodes), cuts))
            bounds = [0, *cut, self.nodes]
            self.groups = [frozenset(ids[a:b]) for a, b in itertools.pairwise(bounds)]
        elif kind == "heal":
            self.groups = [frozenset(self.ids)]
        elif kind == "crash" and len(self._running()) > 1:
            n = self.rng.choice(sorted(self._running()))
            self.replicas[n] = None
        elif kind == "restart":
            down = sorted(set(self.ids) - self._running())
            if down:
                n = self.rng.choice(down)
                self.replicas[n] = self._boot(n)
        elif kind == "force":
            self.forced = {self.rng.choice(list(self.ids))}
        elif kind == "loss":
            self.loss = self.rng.choice([0.0, 0.1, 0.3])
        self.trace.append(f"{self.step}: fault {kind} {[sorted(g) for g in self.groups]}")
        self._install()

    def change(self, n: int) -> None:
        """Ask node n for a random change based on what it holds."""
        replica = self.replicas[n]
        if replica is None:
            return
        base = replica.committed
        self.request_id += 1
        kind = self.rng.random()
        if kind < 0.6:
            window = self.rng.choice([5.0, 10.0, 20.0, 30.0]) + self.request_id
            new = replace(base, quorum=replace(base.quorum, last_man_standing_window=window))
        else:
            votes = self.rng.randint(0, 3)
            who = self.rng.choice(list(self.ids))
            nodes = tuple(replace(x, votes=votes) if x.node_id == who else x for x in base.nodes)
            if sum(x.votes for x in nodes) == 0:
                nodes = base.nodes
            new = replace(base, nodes=nodes)
        self._feed(n, cr.ChangeRequested(self.request_id, base.version, new))

    def tick(self) -> None:
        self.step += 1
        self._deliver()
        if self.step % 3 == 0:
            for n in sorted(self._running()):
                self._feed(n, cr.Tick())

    def run(self, steps: int) -> None:
        """Random faults and changes for `steps`, then heal and check convergence."""
        fault_rate = self.rng.choice([0.03, 0.08, 0.15, 0.25])
        for _ in range(steps):
            if self.rng.random() < fault_rate:
                self._fault()
            for _ in range(self.rng.choice([0, 0, 0, 1, 2])):
                self.change(self.rng.choice(list(self.ids)))
            self.tick()
        self.heal_and_check()

    def heal_and_check(self) -> None:
        """Restart everyone, one group, no loss or override: all converge and a change lands."""
        for n in self.ids:
            if self.replicas[n] is None:
                self.replicas[n] = self._boot(n)
        self.groups, self.forced, self.loss = [frozenset(self.ids)], set(), 0.0
        self._install()
        for _ in range(40):
            self.tick()
        self._check_converged("after the heal")
        self.change(1)
        for _ in range(40):
            self.tick()
        self._check_converged("after a change on the healed cluster")

    def _check_converged(self, when: str) -> None:
        held = {(r.committed.version, digest(r.committed)) for r in self.replicas.values() if r}
        if len(held) != 1:
            versions = sorted(v for v, _ in held)
            self.violations.append(f"not converged {when}: versions {versions}")

    def report(self) -> str:
        tail = "\n".join(self.trace[-30:])
        return f"seed {self.seed}, {self.nodes} nodes: {self.violations[:3]}\n{tail}"


def run_config_seed(seed: int, steps: int = 300) -> ConfigSim:
    """One random schedule over 2-7 nodes."""
    sim = ConfigSim(seed, random.Random(seed).randint(2, 7))
    sim.run(steps)
    return sim
