"""Seeded discrete-event network that drives many node cores (`handle(event, now)`).

One heap of pending happenings keyed by (time, seq): datagram deliveries, node timers (a node's
`next_deadline()`), scheduled fault actions and the end of process pauses. Every directed pair
of nodes has a link model (base delay, jitter, loss, duplication, reordering); one-way cuts are
pairs in a set and a partition is a set of cuts. With redundant links
(`cluster_configs(links=2)`) one link of a pair can be cut alone (`cut_link`): the checker's
topology counts a pair as cut only when every link they share is, so L2 (no view change) also
covers a failover. A crash drops the node object; a restart builds a new core with a higher
incarnation and the last `PersistMaxSeq` value. A paused node receives nothing and its timers
do not fire; when it resumes, everything queued for it arrives in order.
All randomness comes from one `random.Random(seed)`, so a seed replays exactly.

Cost (design §3.14): one datagram's copies that arrive at one instant are one heap entry (a
broadcast on a clean link: one entry for all peers) and share one immutable `MessageIn`; the
deliveries to one node at one instant are a batch, as the runtime drains a socket: `handle`
per datagram, then `next_deadline()` once.

The network records what the checker needs: every node's reported state (ring id, members,
quorate, expected votes) whenever it changes, and a snapshot of the topology whenever a fault
changes it; `timeline()` gives the run as timeline records (design §4.6: `run`, `state`,
`proc`, `net`, `config`, the nodes' events, `qnetd_vote`, `end`), which the checker reads as
it reads a lab run's. A bounded trace of faults and node events is kept for failure reports.
The network reads a node's status (`iface.reported`: the fields it records, not the whole
document) after it emits a state event (view installed, quorum gained or lost, expected votes
changed), and audits every node's status once a simulated second: a state change that no
event announced is recorded in `silent_changes` and as a `state` record with `src` "status"
(DESIGN §3 "no silent failure").
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from agent.config import AgentConfig, LinkConfig, PeerConfig, QdeviceConfig, QuorumOptions, Timing
from agent.events import EventKind
from agent.status import ring_text
from proto.mesh_messages import MeshMessage
from votemesh_lab.checker import NodeView
from votemesh_lab.sim import iface
from votemesh_lab.timeline import Link, Network, Record, Timeline, net_record

if TYPE_CHECKING:
    from votemesh_lab.sim.qdevice import SimQnetd

EPOCH_MS = 1_764_000_000_000
"""Wall clock (ms since the epoch) at simulated time 0."""
_DELIVER, _TIMER, _ACTION, _RESUME = 0, 1, 2, 3
SPIN_STEP = 1e-6
"""How far the clock moves when a core asks for a Tick at `now` right after one (seconds)."""
MAX_SPINS = 10_000
"""A core whose deadline never moves past `now` is a busy loop: fail instead of hanging."""


STATE_EVENTS = frozenset(
    {
        EventKind.VIEW_INSTALLED,
        EventKind.QUORUM_GAINED,
        EventKind.QUORUM_LOST,
        EventKind.EXPECTED_VOTES_CHANGED,
        EventKind.QUORUM_COUNTS_CHANGED,
    }
)
"""Events after which the simulator reads the node's status (view, quorate, expected votes)."""


class SimulationError(RuntimeError):
    """The simulated system misbehaved in a way that is not a property violation (a busy loop)."""


@dataclass(frozen=True, slots=True)
class LinkModel(Link):
    """One direction of one node pair: what happens to each datagram (the timeline's `Link`,
    whose `benign` is DESIGN L2's conditions, with a LAN's 0.5 ms as the default delay).
    `jitter` is uniform in [-jitter, +jitter] (never below zero in total) and reorders too;
    `reorder` holds a datagram back by up to `reorder_delay`, letting later ones pass."""

    delay: float = 0.0005

    @property
    def plain(self) -> bool:
        """Every datagram arrives once after `delay` (no random draw)."""
        return not (self.loss or self.duplicate or self.jitter or self.reorder)


class Core(Protocol):
    """What the simulator needs from a node core (agent.node.AgentNode, design §3.3)."""

    def handle(self, event: Any, now: float) -> list[Any]: ...
    def next_deadline(self) -> float | None: ...
    def status(self, now: float) -> dict[str, Any]: ...


NodeFactory = Callable[[AgentConfig, int, int], Core]
"""(config, incarnation, max_seq) -> a started-fresh core."""


def default_factory(config: AgentConfig, incarnation: int, max_seq: int) -> Core:
    """The real node core."""
    node: Core = iface.AgentNode(config, incarnation, max_seq=max_seq)
    return node


def cluster_configs(
    count: int,
    *,
    quorum: QuorumOptions | None = None,
    timing: Timing | None = None,
    votes: Mapping[int, int] | None = None,
    links: int = 1,
    qdevice: QdeviceConfig | None = None,
) -> dict[int, AgentConfig]:
    """Configurations of nodes 1..count, all peers static on links 0..links-1 (link 0 has the
    highest priority), no discovery; `qdevice` for a cluster with a qnetd (then
    `SimNetwork.attach_qnetd(qdevice)`)."""
    votes = votes or {}
    timing = timing or Timing.lan()
    quorum = quorum or QuorumOptions()
    ids = range(1, count + 1)
    peers = {
        i: PeerConfig(
            i, f"node{i}", tuple((k, f"10.0.{k}.{i}", 5407) for k in range(links)), votes.get(i, 1)
        )
        for i in ids
    }
    out: dict[int, AgentConfig] = {}
    for i in ids:
        q = QuorumOptions(**{**_fields(quorum), "votes": votes.get(i, quorum.votes)})
        out[i] = AgentConfig(
            cluster_name="sim",
            node_id=i,
            node_name=f"node{i}",
            links=tuple(LinkConfig(k, f"10.0.{k}.{i}", priority=links - k) for k in range(links)),
            peers=tuple(p for j, p in peers.items() if j != i),
            timing=timing,
            quorum=q,
            discovery=False,
            qdevice=qdevice,
        )
    return out


def _fields(q: QuorumOptions) -> dict[str, Any]:
    return {name: getattr(q, name) for name in q.__dataclass_fields__}


_RESERVED = frozenset({"t", "node", "kind", "src", "seq", "incarnation", "reason"})
"""Record fields an event's details must not shadow."""


def _device(q: QdeviceConfig | None) -> dict[str, Any] | None:
    """What the checker needs of a qdevice configuration."""
    if q is None:
        return None
    return {"algorithm": q.algorithm, "votes": q.votes, "sync_timeout": q.sync_timeout}


def _plain(obj: Any) -> dict[str, Any]:
    """A frozen dataclass's fields as JSON values (enums as their values, tuples as lists)."""
    out: dict[str, Any] = {}
    for name in obj.__dataclass_fields__:
        value = getattr(obj, name)
        out[name] = list(value) if isinstance(value, tuple) else value
    return out


@dataclass(frozen=True, slots=True)
class NodeState:
    """What a node reports: installed view, quorate flag, expected votes, and the members its
    quorum counts (design §3.4: the installed view's heard members, or a held view)."""

    ring: tuple[int, int] | None
    members: frozenset[int]
    quorate: bool
    expected: int
    counted: frozenset[int] | None = None
    """None: the same as `members` (a core whose status has no "counted")."""

    @property
    def counts(self) -> frozenset[int]:
        """The member set quorum counts."""
        return self.members if self.counted is None else self.counted

    def view(self) -> NodeView:
        """The state as the timeline has it (the ring id as text, "1.1a")."""
        ring = ring_text(*self.ring) if self.ring else None
        return NodeView(ring, self.members, self.quorate, self.expected, self.counted)

    def describe(self) -> str:
        return self.view().describe()


Topology = Network
"""The network from `at` until the next snapshot (the timeline's `Network`)."""


@dataclass(slots=True)
class _Slot:
    config: AgentConfig
    core: Core | None = None
    incarnation: int = 0
    max_seq: int = 0
    paused_until: float | None = None
    inbox: list[tuple[int, int, int, MeshMessage]] = field(default_factory=list)
    timer_token: int = 0
    timer_at: float | None = None
    state: NodeState | None = None
    ticked_at: float = -1.0
    spin_streak: int = 0
    version: int = 0
    """The configuration version it applied (a restart starts from it, as from its disk)."""
    startable: bool = True
    """False for a node not added yet, or removed from the configuration (it stopped)."""


class SimNetwork:
    """The simulated cluster: nodes, links, faults, the event heap and the recording."""

    def __init__(
        self,
        configs: Mapping[int, AgentConfig],
        seed: int,
        *,
        default_link: LinkModel | None = None,
        factory: NodeFactory = default_factory,
        trace_limit: int | None = 5000,
    ) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.configs = dict(configs)
        self.factory = factory
        self.slots = {i: _Slot(c) for i, c in sorted(configs.items())}
        self.default_link = default_link or LinkModel()
        self.links: dict[tuple[int, int], LinkModel] = {}
        self.cuts: set[tuple[int, int]] = set()
        self.link_cuts: set[tuple[int, int, int]] = set()
        """(src, dst, link): one link of a pair cut one way (`cut_link`)."""
        self.now = 0.0
        self._heap: list[tuple[float, int, int, int, Any]] = []
        self._seq = 0
        self.trace: deque[str] = deque(maxlen=trace_limit)
        self.history: dict[int, list[tuple[float, NodeState | None]]] = {i: [] for i in configs}
        self.topologies: list[Topology] = []
        self.handled = 0
        self.delivered = 0
        self.qdevice_updates = 0
        self.spins = 0
        self.operator_lowered = False
        """Set once an operator changed expected votes (S1 does not apply afterwards)."""
        """Ticks the clock had to move on by SPIN_STEP (a core's deadline stuck at `now`)."""
        self.observe_every = False
        """Query status() after every handle() instead of after state events (slow)."""
        self.qnetd: SimQnetd | None = None
        """The cluster's qnetd when its nodes have a `[qdevice]` (`attach_qnetd`)."""
        self.audit_interval = 1.0
        self.silent_changes: list[tuple[float, int]] = []
        self.config_history: dict[int, list[tuple[float, int, AgentConfig]]] = {
            i: [(0.0, 0, c)] for i, c in self.configs.items()
        }
        """(time, version, configuration) each node applied (`reconfigure`, design §3.9)."""
        self.removed_at: dict[int, float] = {}
        """When each node removed from the configuration stopped."""
        self.reconfigured = False
        """Set once a node applied a configuration at run time."""
        self.records: list[Record] = []
        """Timeline records as they happened (`timeline()` adds the run, config and end)."""
        self.held_back: set[int] = set()
        self._event_seq: dict[int, int] = {}
        self._unarmed: dict[int, None] = {}
        """Nodes that took deliveries at this instant and whose timer is not re-armed yet."""
        self._push(self.audit_interval, _ACTION, 0, self._audit)
        self._snapshot()

    # ---- scheduling ---------------------------------------------------------------------

    def _push(self, at: float, kind: int, node: int, data: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, kind, node, data))

    def at(self, when: float, action: Callable[[], None]) -> None:
        """Run `action` (usually a fault method of this network) at simulated time `when`."""
        self._push(max(when, self.now), _ACTION, 0, action)

    def run_until(self, end: float) -> None:
        """Process everything due up to and including `end`; then the clock reads `end`.

        Deliveries to one node at one instant are a batch (design §3.14, as the runtime drains
        a socket): each is handed to the core with `handle`, and the node's `next_deadline()` is
        read once, when the next happening is not another delivery at that instant."""
        heap, unarmed = self._heap, self._unarmed
        pop = heapq.heappop
        while True:
            if unarmed and (not heap or heap[0][2] != _DELIVER or heap[0][0] != self.now):
                self._arm_batches()
            if not heap or heap[0][0] > end:
                break
            at, _, kind, node, data = pop(heap)
            self.now = at
            if kind == _DELIVER:
                self._deliver(node, data)
            elif kind == _TIMER:
                self._timer(node, data)
            elif kind == _ACTION:
                data()
            else:
                self._resume(node, data)
        self.now = max(self.now, end)

    def attach_qnetd(self, cfg: QdeviceConfig) -> SimQnetd:
        """Run a qnetd (real core, real client sessions) for nodes configured with `cfg`."""
        from votemesh_lab.sim.qdevice import SimQnetd  # noqa: PLC0415 (qdevice imports network)

        self.qnetd = SimQnetd(self, cfg)
        return self.qnetd

    def call(self, node: int, event: Any) -> None:
        """Hand one event to a running node now (after its pause if it is paused)."""
        slot = self.slots[node]
        if slot.core is None:
            return
        if slot.paused_until is not None:
            self.at(slot.paused_until, lambda: self.call(node, event))
            return
        self._call(node, event)

    # ---- faults and operator actions ------------------------------------------------------

    def cut_qnetd(self, node: int) -> None:
        """The node's path to the qnetd stops carrying data (no-op without a qnetd)."""
        if self.qnetd is not None:
            self.qnetd.cut_qnetd(node)

    def uncut_qnetd(self, node: int) -> None:
        """The node's path to the qnetd works again."""
        if self.qnetd is not None:
            self.qnetd.uncut_qnetd(node)

    def note(self, text: str) -> None:
        """One line in the trace, stamped with the current time."""
        self.trace.append(f"{self.now:10.4f} {text}")

    def start(self, node: int) -> None:
        """(Re)start a node: a fresh core, incarnation + 1, the last persisted max_seq."""
        slot = self.slots[node]
        if slot.core is not None or not slot.startable:
            return
        slot.incarnation += 1
        slot.core = self.factory(slot.config, slot.incarnation, slot.max_seq)
        if slot.version and isinstance(slot.core, iface.AgentNode):
            slot.core.config_version = slot.version  # restarted from the stored configuration
        slot.paused_until = None
        slot.inbox.clear()
        self.note(f"n{node} start incarnation={slot.incarnation} max_seq={slot.max_seq}")
        self._event_seq[node] = 0
        self._proc(node, "started")
        self._snapshot()
        self._call(node, iface.Start(self._wall()))
        for peer in slot.config.peers:
            if slot.core is not None:
                links = frozenset(a[0] for a in peer.addresses)
                self._call(node, iface.PeerAddresses(peer.node_id, links))
        if self.qnetd is not None and slot.core is not None:
            self.qnetd.node_started(node)

    def crash(self, node: int, *, reason: str = "") -> None:
        """kill -9: the core is dropped; datagrams to it are lost until it restarts. `reason`
        (leave, removed): the process exited on its own."""
        slot = self.slots[node]
        if slot.core is None:
            return
        slot.core = None
        slot.paused_until = None
        slot.inbox.clear()
        slot.timer_token += 1
        slot.timer_at = None
        if self.qnetd is not None:
            self.qnetd.node_gone(node, "crash")
        self.note(f"n{node} CRASH")
        self._proc(node, "exited" if reason else "killed", reason)
        self._record(node, None)
        self._snapshot()

    def leave(self, node: int) -> None:
        """A clean shutdown (SIGTERM): the qdevice connection is closed first (the runtime
        waits until it is), then the core says Leave and is gone like a crash."""
        if self.slots[node].core is None:
            return
        self.note(f"n{node} LEAVE")
        if self.qnetd is not None:
            self.qnetd.node_gone(node, "stop")
            self.at(self.now + 2 * self.qnetd.delay, lambda: self._say_leave(node))
            return
        self._say_leave(node)

    def _say_leave(self, node: int) -> None:
        if self.slots[node].core is None:
            return
        self._call(node, iface.Stop("shutdown"))
        self.crash(node, reason="leave")

    def restart(self, node: int) -> None:
        """Start a crashed node again (no-op when it runs)."""
        self.start(node)

    def pause(self, node: int, duration: float) -> None:
        """SIGSTOP for `duration`: nothing is received or fires; queued datagrams arrive later."""
        slot = self.slots[node]
        if slot.core is None or slot.paused_until is not None:
            return
        slot.paused_until = self.now + duration
        self.note(f"n{node} PAUSE {duration:.3f}s")
        self._proc(node, "paused")
        self._push(slot.paused_until, _RESUME, node, slot.incarnation)
        self._snapshot()

    def cut(self, src: int, dst: int) -> None:
        """One-way cut: datagrams from src to dst are lost (both links, all kinds)."""
        self.cuts.add((src, dst))
        self.note(f"cut n{src}->n{dst}")
        self._snapshot()

    def cut_link(self, src: int, dst: int, link: int) -> None:
        """One-way cut of one link: datagrams from src to dst on `link` are lost."""
        self.link_cuts.add((src, dst, link))
        self.note(f"cut n{src}->n{dst} link{link}")
        self._snapshot()

    def uncut_link(self, src: int, dst: int, link: int) -> None:
        """Remove a one-link cut."""
        self.link_cuts.discard((src, dst, link))
        self.note(f"uncut n{src}->n{dst} link{link}")
        self._snapshot()

    def uncut(self, src: int, dst: int) -> None:
        """Remove a one-way cut."""
        self.cuts.discard((src, dst))
        self.note(f"uncut n{src}->n{dst}")
        self._snapshot()

    def partition(self, *groups: frozenset[int] | set[int] | tuple[int, ...]) -> None:
        """Replace all cuts by a partition: nodes in different groups do not hear each other.
        Nodes in no group form their own group each."""
        sets = [frozenset(g) for g in groups]
        placed = frozenset().union(*sets)
        sets += [frozenset({n}) for n in self.slots if n not in placed]
        side = {n: i for i, g in enumerate(sets) for n in g}
        self.cuts = {(a, b) for a in self.slots for b in self.slots if side[a] != side[b]}
        self.note("partition " + " | ".join(str(sorted(g)) for g in sets))
        self._snapshot()

    def heal(self) -> None:
        """Remove every cut (link models stay)."""
        self.cuts.clear()
        self.link_cuts.clear()
        self.note("heal: all cuts removed")
        self._snapshot()

    def set_link(self, src: int, dst: int, model: LinkModel | None) -> None:
        """Change one direction's link model (None: back to the default)."""
        if model is None:
            self.links.pop((src, dst), None)
        else:
            self.links[(src, dst)] = model
        self.note(f"link n{src}->n{dst} {model or 'default'}")
        self._snapshot()

    def set_default_link(self, model: LinkModel) -> None:
        """Change the model of every pair without an override."""
        self.default_link = model
        self.note(f"default link {model}")
        self._snapshot()

    def reset_links(self) -> None:
        """Every pair back to the default link model."""
        self.links.clear()
        self.note("links reset to default")
        self._snapshot()

    def recover(self, base: LinkModel) -> None:
        """End of a fault phase: no cuts, every link back to `base`, crashed nodes restarted."""
        self.cuts.clear()
        self.link_cuts.clear()
        self.links.clear()
        self.default_link = base
        self.note("recover: no cuts, default links")
        self._snapshot()
        for node, slot in self.slots.items():
            if slot.core is None:
                self.start(node)

    def reconfigure(
        self, node: int, config: AgentConfig, version: int, member: bool = True
    ) -> None:
        """The node applies a committed configuration (replication's `Applied`, design §3.9);
        `member` False: it is not in it (the node stops, as the runtime does on `Removed`)."""
        slot = self.slots[node]
        self.note(f"n{node} reconfigure to version {version}{'' if member else ' (removed)'}")
        if slot.core is None:
            return
        self.call(node, iface.Reconfigure(config, version, member))

    def add_node(self, node: int, config: AgentConfig, version: int) -> None:
        """A node joins (`votemesh add`): it starts with the configuration it was handed."""
        slot = self.slots[node]
        slot.config, slot.version, slot.startable = config, version, True
        self.configs[node] = config
        self.config_history[node].append((self.now, version, config))
        self.reconfigured = True
        self.note(f"n{node} added with version {version}")
        self.start(node)

    def hold_back(self, node: int) -> None:
        """A node that is not started until it is added (`add_node`)."""
        self.slots[node].startable = False
        self.held_back.add(node)

    def set_expected(self, node: int, value: int | None) -> None:
        """`votemesh expected N` on one node."""
        self.note(f"n{node} operator sets expected votes {value}")
        self.records.append(
            {
                "t": self.now,
                "node": node,
                "kind": "note",
                "src": "sim",
                "operator": "expected",
                "text": f"votemesh expected {value}",
            }
        )
        self.operator_lowered = True
        if self.slots[node].core is not None:
            self._call(node, iface.SetExpected(value))

    # ---- the machinery ----------------------------------------------------------------------

    def _wall(self) -> int:
        return EPOCH_MS + int(self.now * 1000)

    def _snapshot(self) -> None:
        running = frozenset(n for n, s in self.slots.items() if s.core is not None)
        paused = frozenset(n for n, s in self.slots.items() if s.paused_until is not None)
        cuts = frozenset(self.cuts | self._cut_by_links())
        topo = Topology(self.now, running, paused, cuts, dict(self.links), self.default_link)
        if self.topologies and self.topologies[-1].at == self.now:
            self.topologies[-1] = topo
        else:
            self.topologies.append(topo)
        links = {pair: model.to_dict() for pair, model in topo.links.items()}
        self.records.append(
            net_record(self.now, running, paused, cuts, links, topo.default.to_dict(), "sim")
        )

    def _cut_by_links(self) -> set[tuple[int, int]]:
        """Pairs whose every shared link is cut in that direction (`cut_link`)."""
        out = set()
        for src, dst, _ in self.link_cuts:
            shared = self._shared_links(src, dst)
            if shared and all((src, dst, k) in self.link_cuts for k in shared):
                out.add((src, dst))
        return out

    def _shared_links(self, src: int, dst: int) -> set[int]:
        mine = {lk.index for lk in self.configs[src].links}
        peer = next((p for p in self.configs[src].peers if p.node_id == dst), None)
        return set() if peer is None else mine & {a[0] for a in peer.addresses}

    def _call(self, node: int, event: Any, *, batch: bool = False) -> None:
        """Hand `event` to the node's core and carry out its effects; then re-arm its timer,
        or (`batch`: a delivery) leave that to the end of the batch (`_arm_batches`).
        Mirrored, for a delivery, inline in `_deliver`: change both."""
        slot = self.slots[node]
        core = slot.core
        if core is None:
            raise RuntimeError("core is not set")
        effects = core.handle(event, self.now)
        self.handled += 1
        if effects or self.observe_every or not batch:
            self._after(node, slot, core, event, effects)
            if slot.core is not core:
                return
        if batch:
            self._unarmed[node] = None
        else:
            self._arm(node, slot, core)

    def _after(self, node: int, slot: _Slot, core: Core, event: Any, effects: list[Any]) -> None:
        """Carry out a core's effects (a Removed stops it; a PersistMaxSeq is stored at once)."""
        changed = self.observe_every or isinstance(event, iface.Start | iface.SetExpected)
        for effect in effects:
            changed = self._effect(node, slot, effect) or changed
        if not slot.startable and slot.core is core:  # Removed: the runtime stops
            self.crash(node, reason="removed")
            return
        if changed:
            self._observe(node, core)
        for effect in effects:  # stored at once, as the runtime does (design §3.3)
            if isinstance(effect, iface.PersistMaxSeq) and slot.core is core:
                self._call(node, iface.MaxSeqStored(effect.value))

    def _arm_batches(self) -> None:
        """Re-arm the timer of every node that took a batch of deliveries at this instant."""
        unarmed, slots = self._unarmed, self.slots
        while unarmed:
            node = next(iter(unarmed))
            del unarmed[node]
            slot = slots[node]
            core = slot.core
            if core is not None and slot.paused_until is None:
                self._arm(node, slot, core)

    def _effect(self, node: int, slot: _Slot, effect: Any) -> bool:
        """Carry out one effect; True when it announces a change of the reported state."""
        if isinstance(effect, iface.Broadcast):
            self._send(node, slot.incarnation, effect.peers, effect.link, effect.message)
        elif isinstance(effect, iface.SendTo):
            self._send(node, slot.incarnation, (effect.peer,), effect.link, effect.message)
        elif isinstance(effect, iface.Emit):
            ev = effect.event
            self.note(f"n{node} {ev.kind}: {ev.reason}")
            self._event(node, slot, ev)
            return ev.kind in STATE_EVENTS
        elif isinstance(effect, iface.PersistMaxSeq):
            slot.max_seq = max(slot.max_seq, effect.value)
        elif isinstance(effect, iface.QdeviceUpdate):
            self.qdevice_updates += 1
            if self.qnetd is not None:
                self.qnetd.update(node, effect)
        elif isinstance(effect, iface.ConfigApplied):
            slot.config, self.configs[node] = effect.config, effect.config
            slot.version = effect.version or slot.version
            self.config_history[node].append((self.now, slot.version, effect.config))
            self.reconfigured = True
            return True
        elif isinstance(effect, iface.Removed):
            slot.startable = False
            self.removed_at[node] = self.now
            self.reconfigured = True
        return False

    def _send(self, src: int, inc: int, dsts: Iterable[int], link: int, msg: MeshMessage) -> None:
        """One datagram from `src` to each of `dsts` through their links: the copies that
        arrive at one instant are one happening (one heap entry, in `dsts` order), so a
        broadcast on a clean LAN costs one entry, not one per peer. The random draws are made
        per destination in `dsts` order, as they always were (a seed replays as before)."""
        slots, now = self.slots, self.now
        cuts, link_cuts, links, default = self.cuts, self.link_cuts, self.links, self.default_link
        if not links and default.plain:  # every copy arrives after one delay: one entry
            group = [d for d in dsts if d in slots]
            if cuts or link_cuts:
                group = [
                    d
                    for d in group
                    if (src, d) not in cuts and not (link_cuts and (src, d, link) in link_cuts)
                ]
            if group:
                self._push(now + default.delay, _DELIVER, src, (group, inc, link, msg))
            return
        rand = self.rng.random
        arrivals: dict[float, list[int]] = {}
        for dst in dsts:
            if (src, dst) in cuts or dst not in slots:
                continue
            if link_cuts and (src, dst, link) in link_cuts:
                continue
            model = links.get((src, dst), default)
            if model.plain:
                arrivals.setdefault(now + model.delay, []).append(dst)
                continue
            if model.loss and rand() < model.loss:
                continue
            copies = 2 if model.duplicate and rand() < model.duplicate else 1
            for _ in range(copies):
                delay = model.delay
                if model.jitter:
                    delay = max(0.0, delay + model.jitter * (2 * rand() - 1))
                if model.reorder and rand() < model.reorder:
                    delay += model.reorder_delay * rand()
                arrivals.setdefault(now + delay, []).append(dst)
        for at, group in arrivals.items():
            self._push(at, _DELIVER, src, (group, inc, link, msg))

    def _deliver(self, src: int, data: tuple[list[int], int, int, MeshMessage]) -> None:
        """One datagram arriving at each of its destinations (one `MessageIn` shared by all:
        it is immutable); a paused node queues it, a crashed one loses it."""
        dsts, inc, link, msg = data
        slots, now, observe, unarmed = self.slots, self.now, self.observe_every, self._unarmed
        event = None
        for dst in dsts:
            slot = slots[dst]
            core = slot.core
            if core is None:
                continue
            if slot.paused_until is not None:
                slot.inbox.append((src, inc, link, msg))
                continue
            if event is None:
                event = iface.MessageIn(src, inc, link, msg, self._wall())
            self.delivered += 1
            # _call(dst, event, batch=True), inline (the simulator's most frequent step)
            effects = core.handle(event, now)
            self.handled += 1
            if effects or observe:
                self._after(dst, slot, core, event, effects)
                if slot.core is not core:
                    continue
            unarmed[dst] = None

    def _timer(self, node: int, token: int) -> None:
        slot = self.slots[node]
        if slot.core is None or token != slot.timer_token or slot.paused_until is not None:
            return
        slot.timer_at = None
        slot.ticked_at = self.now
        self._call(node, iface.Tick(self._wall()))

    def _resume(self, node: int, incarnation: int) -> None:
        slot = self.slots[node]
        if slot.core is None or slot.incarnation != incarnation or slot.paused_until is None:
            return
        slot.paused_until = None
        inbox, slot.inbox = slot.inbox, []
        self.note(f"n{node} RESUME with {len(inbox)} queued datagrams")
        self._proc(node, "resumed")
        self._snapshot()
        for src, inc, link, msg in inbox:  # one batch: the deadline is read once, after it
            if self.slots[node].core is None:  # removed by what it received
                return
            self.delivered += 1
            self._call(node, iface.MessageIn(src, inc, link, msg, self._wall()), batch=True)
        self._unarmed.pop(node, None)
        core = self.slots[node].core
        if core is None:
            return
        slot.timer_at = None
        self._arm(node, slot, core)
        if self.qnetd is not None:
            self.qnetd.resumed(node)

    def _arm(self, node: int, slot: _Slot, core: Core) -> None:
        deadline = core.next_deadline()
        if deadline == slot.timer_at and slot.ticked_at != self.now:
            return
        slot.timer_token += 1
        slot.timer_at = deadline
        if deadline is None or slot.paused_until is not None:
            return
        at = max(deadline, self.now)
        if at <= self.now and slot.ticked_at == self.now:
            # A Tick at `now` left the deadline at or before `now`: a real runtime would spin
            # until its clock moves on. Let the clock move by one microsecond, and count it.
            at = self.now + SPIN_STEP
            self.spins += 1
            slot.spin_streak += 1
            if slot.spin_streak == 1 and self.spins <= 5:
                self.note(f"n{node} SPIN: deadline {deadline!r} <= now after a Tick")
            if slot.spin_streak > MAX_SPINS:
                raise SimulationError(f"n{node} busy-loops: its deadline never moves past now")
        else:
            slot.spin_streak = 0
        self._push(at, _TIMER, node, slot.timer_token)

    def _audit(self) -> None:
        """Compare every running node's status with what its events said (no silent change)."""
        for node, slot in self.slots.items():
            if slot.core is not None and slot.paused_until is None:
                before = slot.state
                self._observe(node, slot.core, "status")
                if slot.state != before:
                    self.silent_changes.append((self.now, node))
                    self.note(f"n{node} SILENT state change (no event announced it)")
        self._push(self.now + self.audit_interval, _ACTION, 0, self._audit)

    def _observe(self, node: int, core: Core, src: str = "sim") -> None:
        status = iface.reported(core, self.now)
        ring = status.get("ring_id")
        state = NodeState(
            (int(ring[0]), int(ring[1])) if ring else None,
            frozenset(status.get("members") or ()),
            bool(status.get("quorate")),
            int(status.get("expected_votes") or 0),
            frozenset(status["counted"]) if "counted" in status else None,
        )
        if state != self.slots[node].state:
            self._record(node, state)
            record: Record = {"t": self.now, "node": node, "kind": "state", "src": src}
            self.records.append(record | state.view().record_fields())

    def _proc(self, node: int, state: str, reason: str = "") -> None:
        record: Record = {"t": self.now, "node": node, "kind": "proc", "src": "sim"}
        record |= {"state": state, "incarnation": self.slots[node].incarnation}
        if reason:
            record["reason"] = reason
        self.records.append(record)

    def _event(self, node: int, slot: _Slot, ev: Any) -> None:
        """An agent event as a timeline record (its details under their own names; one that
        would shadow a record field gets an `event_` prefix)."""
        seq = self._event_seq.get(node, 0) + 1
        self._event_seq[node] = seq
        record: Record = {"t": self.now, "node": node, "kind": str(ev.kind), "src": "sim"}
        for key, value in ev.details.items():
            record[f"event_{key}" if key in _RESERVED else key] = value
        record |= {"reason": ev.reason, "seq": seq, "incarnation": slot.incarnation}
        self.records.append(record)

    def timeline(self) -> Timeline:
        """The run so far as a timeline: the run record (the first node's configuration, each
        node's votes; `held` for nodes not started from the start), what happened, every
        configuration each node applied (`config`), and the end (now)."""
        first = next(iter(self.configs.values()))
        votes = first.configured_votes()
        nodes = {
            str(n): {
                "name": c.node_name,
                "addresses": [lk.address for lk in c.links],
                "votes": votes.get(n, 0),
                "held": n in self.held_back or self.slots[n].incarnation == 0,
            }
            for n, c in sorted(self.configs.items())
        }
        qdevice = _device(first.qdevice) if self.qnetd is not None else None
        run: Record = {"t": 0.0, "node": "lab", "kind": "run", "src": "sim"}
        run |= {
            "scenario": "sim",
            "seed": self.seed,
            "backend": "sim",
            "nodes": nodes,
            "timing": _plain(first.timing),
            "quorum": _plain(first.quorum),
            "qdevice": qdevice,
        }
        configs = [
            {
                "t": t,
                "node": n,
                "kind": "config",
                "src": "sim",
                "config_version": version,
                "votes": {str(k): v for k, v in sorted(config.configured_votes().items())},
                "quorum": _plain(config.quorum),
                "qdevice": _device(config.qdevice) if qdevice else None,
            }
            for n, history in self.config_history.items()
            for t, version, config in history
        ]
        end: Record = {"t": self.now, "node": "lab", "kind": "end", "src": "sim", "reason": "done"}
        return Timeline([run, *self.records, *configs, end])

    def _record(self, node: int, state: NodeState | None) -> None:
        self.slots[node].state = state
        self.history[node].append((self.now, state))
        self.note(f"n{node} state {state.describe() if state else 'DOWN'}")

    # ---- queries --------------------------------------------------------------------------

    def state(self, node: int) -> NodeState | None:
        """The node's last reported state (None while down)."""
        return self.slots[node].state

    def quorate(self) -> set[int]:
        """Nodes that currently report quorate."""
        return {n for n, s in self.slots.items() if s.state is not None and s.state.quorate}

    def trace_tail(self, lines: int = 50) -> str:
        """The last `lines` trace lines, one per line."""
        tail = list(self.trace)[-lines:]
        return "\n".join(tail)
