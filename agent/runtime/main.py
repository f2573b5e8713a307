"""`votemesh-agent --config FILE`: run one agent until SIGTERM.

Adapter ring: the only agent code that reads the clock. The core is fed from loop callbacks,
with no task of its own (one wake-up per datagram or deadline, nothing else):

* each opened message goes to the core from the socket's callback, at once (a queue and a
  drain callback cost 7 % more CPU on an idle agent and bought nothing);
* one loop timer (`call_at`) fires at the core's `next_deadline()` and sends `Tick`; after each
  event it is moved only if the new deadline is earlier (a later one is found when it fires).

One `asyncio.TaskGroup` with named tasks:

* `control`: serves the unix control socket (`status`, `expected N`, `events`, `config`,
  `delnode`, `leave`);
* `config`: ticks the cluster configuration's replica every heartbeat interval
  (`agent.runtime.replication`: CONFIG_* datagrams, the store, run-time reconfiguration);
* `qdevice` (with a `[qdevice]` table): `agent.runtime.qdevice.QdeviceRunner`, which gets every
  `QdeviceUpdate` and comes back with `QdeviceVote` events;
* `signals`: waits for SIGTERM/SIGINT and stops the others.

Every effect of `AgentNode.handle` is executed here: datagrams go out through
`agent.runtime.udp`, `Emit` becomes one structlog JSON line (`event` = the kind, `reason`,
details), `PersistMaxSeq` is written to the state directory. The incarnation is persisted before
the first datagram is sealed. Under systemd (Type=notify) it says READY=1 once the sockets are
bound and STOPPING=1 on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import enum
import functools
import logging
import os
import shutil
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import structlog

from agent import cluster_config
from agent.cluster_config import ClusterConfig
from agent.config import AgentConfig, ConfigError, LinkConfig
from agent.config_replication import ConfigReplica, QuorumInput, Ring
from agent.events import EventKind
from agent.node import (
    AgentNode,
    Broadcast,
    ConfigApplied,
    Emit,
    MaxSeqStored,
    MessageIn,
    NodeEffect,
    NodeEvent,
    PeerAddresses,
    PersistMaxSeq,
    QdeviceReconfigure,
    QdeviceUpdate,
    QdeviceVote,
    Reconfigure,
    Removed,
    SendTo,
    SetExpected,
    Start,
    Stop,
    Tick,
)
from agent.node_local import agent_config
from agent.runtime import cluster_store, qdevice_setup
from agent.runtime.config_file import Startup, load_startup, startup_of
from agent.runtime.config_ops import ConfigOps
from agent.runtime.config_wire import CONFIG_MESSAGES
from agent.runtime.control import ControlHandlers, serve_control
from agent.runtime.discovery import DiscoveredPeer, Discovery, DiscoveryError
from agent.runtime.join import JoinServer, start_join_server
from agent.runtime.keys import load_keys
from agent.runtime.qdevice import QdeviceRunner
from agent.runtime.replication import ChangeOutcome, Replication
from agent.runtime.state import StateDir
from agent.runtime.udp import MeshTransport
from agent.status import RuntimeInfo, to_json
from proto.datagram_seal import ClusterKey, Opener, Sealer
from proto.mesh_messages import MeshMessage

__all__ = ["AgentRuntime", "ChangeOutcome", "main"]

FAREWELL = 300.0
"""Seconds a removed node stays reachable and is told, once a second, the configuration that
removed it (it may be cut off when the change is made and learn it only after the heal)."""
FAREWELL_EVERY = 1.0
RECENT_EVENTS = 256  # events kept for `votemesh events` / the control socket
EVENT_LEVELS = {
    EventKind.DUPLICATE_NODE: "error",
    EventKind.VIEWS_HALTED: "error",
    EventKind.VIEWS_RESUMED: "warning",
    EventKind.CONFIG_REFUSED: "error",
    EventKind.REMOVED_FROM_CLUSTER: "error",
}
"""Log level of events that need an operator (every other event is an info line)."""
RESERVED_LOG_KEYS = {"event", "level", "timestamp", "logger"}
log = structlog.get_logger("votemesh.agent")


def wall_ms() -> int:
    """Wall clock in ms since the epoch (heartbeat stamps, clock-skew check)."""
    return time.time_ns() // 1_000_000


def jsonable(value: Any) -> Any:
    """Event details as plain JSON values (sets sorted, dataclasses and enums unpacked)."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, set | frozenset):
        return sorted(jsonable(v) for v in value)
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


@dataclasses.dataclass
class TimerStats:
    """How late `Tick`s are delivered (seconds after the core's deadline)."""

    ticks: int = 0
    late_total: float = 0.0
    late_max: float = 0.0

    def note(self, late: float) -> None:
        """One Tick, `late` seconds after its deadline."""
        self.ticks += 1
        self.late_total += late
        self.late_max = max(self.late_max, late)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: tick count, mean and max lateness in ms."""
        mean = self.late_total / self.ticks if self.ticks else 0.0
        return {
            "ticks": self.ticks,
            "late_mean_ms": round(mean * 1000, 3),
            "late_max_ms": round(self.late_max * 1000, 3),
        }


class AgentRuntime:
    """One running agent: its core, sockets, control socket and state directory."""

    def __init__(
        self, config: AgentConfig, keys: list[ClusterKey], startup: Startup | None = None
    ) -> None:
        startup = startup or startup_of(config)
        config = startup.agent
        self.startup = startup
        self.local = startup.local
        self.config = config
        self.state = StateDir(Path(config.state_dir))
        self.incarnation = self.state.next_incarnation()
        self.node = AgentNode(
            config,
            self.incarnation,
            max_seq=self.state.load_max_seq(),
            config_version=startup.stored.committed.version if startup.stored else 0,
        )
        sealer = Sealer(config.cluster_name, keys[0], config.node_id, self.incarnation)
        # Replay state only for nodes with an address (configured or discovered), and our own
        # id, so the core can tell another process using it (design §3.3).
        opener = Opener(
            config.cluster_name,
            keys,
            admit=lambda sender: sender in self.mesh.addresses or sender == config.node_id,
        )
        self.mesh = MeshTransport(
            config,
            sealer,
            opener,
            self._offer,
            fresh=lambda peer: self.node.last_fresh_peer == peer,
            core_drop=lambda: self.node.last_drop or self._config_drop,
        )
        self._config_drop: str | None = None
        self.replication = Replication(
            self._replica(startup),
            Path(config.state_dir),
            self._config_send,
            self._applied,
            disabled=startup.unreplicated,
        )
        self._farewell: dict[int, float] = {}
        """Removed nodes still reachable, until when (monotonic)."""
        self._farewell_at = 0.0
        self._removed_why: str | None = None
        self._qdevice_task: asyncio.Task[None] | None = None
        self.removed: str | None = None
        """Why this node stopped taking part: it is not in the agreed configuration."""
        self.leaving = False
        """`votemesh leave` asked the cluster to remove this node: its removal is expected."""
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT_EVENTS)
        self.core_errors = 0
        self.timer_stats = TimerStats()
        self.started = time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._accepting = False  # between Start and Stop
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._crash: BaseException | None = None
        self._stop = asyncio.Event()
        self.qdevice: QdeviceRunner | None = None
        self.discovery: Discovery | None = None
        self.join: JoinServer | None = None
        self.static_links = {
            p.node_id: frozenset(link for link, _, _ in p.addresses) for p in config.peers
        }
        if config.qdevice is not None:
            self.qdevice = QdeviceRunner(
                config.qdevice, config.node_id, config.cluster_name, self._qdevice_vote
            )
            self.qdevice.set_config(tuple(config.configured_votes()))

    # ------------------------------------------------------------ the configuration
    @staticmethod
    def _replica(startup: Startup) -> ConfigReplica:
        """The replica from the stored state; from the file's bootstrap (version 0); or, when the
        stored state was refused, at version 0 without the right to bootstrap (design §3.9)."""
        node_id = startup.local.node_id
        if startup.stored is not None:
            s = startup.stored
            return ConfigReplica(node_id, s.committed, s.staged, s.promised)
        if startup.refused is not None:
            seed = cluster_config.from_agent_config(startup.agent)
            return ConfigReplica(node_id, seed, bootstrap=False)
        bootstrap = startup.bootstrap or cluster_config.from_agent_config(startup.agent)
        return ConfigReplica(node_id, bootstrap)

    @property
    def cluster_config(self) -> ClusterConfig:
        """The committed cluster configuration (version 0: a bootstrap not agreed yet)."""
        return self.replication.committed

    async def change_config(
        self, mutate: Callable[[ClusterConfig], ClusterConfig]
    ) -> ChangeOutcome:
        """Ask the cluster for `mutate(committed)` as the next version (design §3.9, step 2).
        `mutate` raises ConfigError to refuse; the outcome says why in one line."""
        return await self.replication.change(mutate)

    def _observe(self) -> None:
        """Feed the replica the core's installed view and verdict (only changes reach it)."""
        view, status = self.node.view, self.node.quorum.status
        ring = Ring(view.ring_id.seq, view.ring_id.representative)
        verdict = QuorumInput(status.quorate, status.total_votes, status.expected_votes)
        self.replication.observe(ring, view.members, verdict)

    def _config_send(self, peer: int, message: MeshMessage) -> None:
        """One configuration datagram to `peer` on the link its heartbeats use."""
        link = self.node.links.active_link(peer)
        if link is None:
            links = self.mesh.peer_links(peer)
            link = min(links) if links else None
        if link is not None:
            self.mesh.send(link, (peer,), message)

    def _applied(self, cluster: ClusterConfig) -> None:
        """A newer committed configuration: applied once the replica's effects of this event are
        carried out (its Commit datagrams still reach the members it removes)."""
        if self._loop is not None:
            self._loop.call_soon(self._guarded, self._apply, cluster)
        else:
            self._apply(cluster)

    def _apply(self, cluster: ClusterConfig) -> None:
        """Hand the core the new configuration (design §3.9, "Run-time changes"); its effects
        (`ConfigApplied`, `QdeviceReconfigure`, `Removed`) update the rest of the runtime."""
        if cluster is not self.cluster_config:
            return  # a newer one came meanwhile and is applied by its own call
        try:
            new = agent_config(self.local, cluster)
        except ConfigError as exc:
            self._removed_why = str(exc)
            self.dispatch(Reconfigure(self.config, cluster.version, member=False))
            return
        self.dispatch(Reconfigure(new, cluster.version))
        if self.node.reconfigure_refusal:
            log.error(
                "configuration not applied",
                reason=self.node.reconfigure_refusal,
                version=cluster.version,
            )

    def _config_applied(self, effect: ConfigApplied) -> None:
        """The core applied a configuration: the runtime's copy, peers and warnings follow."""
        old, self.config = self.config, effect.config
        self._update_peers(old, effect.config)
        self._update_links(old, effect.config)
        for what in effect.restart_needed:
            log.warning("configuration change needs a restart", change=what)

    def _update_links(self, old: AgentConfig, new: AgentConfig) -> None:
        """Bind a link added at run time, close a removed one (`votemesh link add|remove`)."""
        before = {k.index for k in old.links}
        for index in sorted(before - {k.index for k in new.links}):
            self.mesh.remove_link(index)
            log.info("link closed", link=index, reason="removed from the configuration")
        for link in new.links:
            if link.index not in before and self._loop is not None:
                self._loop.create_task(self._bind(link), name=f"bind-link{link.index}")

    async def _bind(self, link: LinkConfig) -> None:
        """Bind one new link; a failure is logged (the others keep working), never fatal."""
        try:
            await self.mesh.add_link(link)
        except OSError as exc:
            log.error(  # noqa: TRY400 - one line, the reason says it all
                "link not bound",
                link=link.index,
                address=f"{link.address}:{link.port}",
                reason=exc.strerror or str(exc),
                effect="the node does not use this link; fix the address and restart",
            )
            return
        host, port = self.mesh.local_address(link.index)
        log.info("link bound", link=link.index, address=f"{host}:{port}")

    def _qdevice_reconfigure(self, effect: QdeviceReconfigure) -> None:
        """A new node list for the running session, or a new session with new settings."""
        if not effect.restart:
            if self.qdevice is not None:
                self.qdevice.set_config(effect.nodes)
            return
        old, self.qdevice = self.qdevice, None
        if effect.config is not None:
            runner = QdeviceRunner(
                effect.config, self.config.node_id, self.config.cluster_name, self._qdevice_vote
            )
            runner.set_config(effect.nodes)
            self.qdevice = runner
        if self._loop is not None:
            old_task, self._qdevice_task = self._qdevice_task, None
            self._qdevice_task = self._loop.create_task(
                self._swap_qdevice(old, old_task, self.qdevice), name="qdevice"
            )

    async def _swap_qdevice(
        self,
        old: QdeviceRunner | None,
        old_task: asyncio.Task[None] | None,
        new: QdeviceRunner | None,
    ) -> None:
        """Close the old qdevice session and stop its task, then run the new one (until the
        agent stops)."""
        if old is not None:
            await old.close()
        if old_task is not None:
            old_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await old_task
        log.info(
            "qdevice session restarted", server=None if new is None else new.status()["server"]
        )
        if new is not None:
            await new.run()

    def _update_peers(self, old: AgentConfig, new: AgentConfig) -> None:
        """The mesh's peer addresses and opener admit set follow the configuration. A removed
        node stays reachable for FAREWELL seconds: it is told the new configuration (and may
        fetch it) so it learns it was removed and stops (design §3.9)."""
        self.mesh.config = new
        gone = {p.node_id for p in old.peers} - {p.node_id for p in new.peers}
        farewell_until = time.monotonic() + FAREWELL
        for node_id in gone:
            self._farewell[node_id] = farewell_until
        for peer in new.peers:
            self._farewell.pop(peer.node_id, None)
        self.mesh.pinned = {(p.node_id, k) for p in new.peers for k, _, _ in p.addresses}
        for peer in new.peers:
            for link, host, port in peer.addresses:
                self.mesh.set_peer_address(peer.node_id, link, (host, port))
        self.static_links = {
            p.node_id: frozenset(link for link, _, _ in p.addresses) for p in new.peers
        }
        if gone:
            log.info("peers removed", peers=sorted(gone), reason="not in the configuration")

    def _removed_from(self, effect: Removed) -> None:
        """The core stopped taking part (not in the applied configuration): stop, loudly."""
        why = self._removed_why or effect.reason
        self.removed = why
        if self.leaving:
            log.warning("left the cluster", version=effect.version)
        else:
            log.error(
                "removed from the cluster",
                reason=why,
                version=effect.version,
                effect="stopping: this node takes no part any more",
            )
        if self._loop is not None:  # the answer and the Commit datagrams go out first
            self._loop.call_later(0.3, self.stop)
        else:
            self.stop()

    async def _config_ticks(self) -> None:
        """Tick the replica (resends, fetches, a refused write): every heartbeat interval while
        anything is under way, once a second when settled (`Replication.tick_interval`)."""
        woken = asyncio.Event()
        self.replication.wake = woken.set
        while True:
            interval = self.replication.tick_interval(self.config.timing.heartbeat_interval)
            # On the wall-clock multiples the heartbeat rounds use: one wake-up serves both.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), interval - time.time() % interval + 0.001)
            woken.clear()
            self._guarded(self.replication.tick)
            self._guarded(self._tell_removed)

    def _tell_removed(self) -> None:
        """Send removed nodes the committed configuration until their farewell ends."""
        now = time.monotonic()
        if now < self._farewell_at:
            return
        self._farewell_at = now + FAREWELL_EVERY
        for node_id, until in list(self._farewell.items()):
            if now >= until:
                del self._farewell[node_id]
                self.mesh.addresses.pop(node_id, None)
                continue
            self._config_send(node_id, self.replication.commit_notice())

    # ------------------------------------------------------------ the core
    def dispatch(self, event: NodeEvent) -> None:
        """Feed one event to the core and carry out its effects, in order."""
        try:
            effects = self.node.handle(event, time.monotonic())
        except Exception:  # a core bug triggered by one message must not stop the agent
            if not isinstance(event, MessageIn):
                raise
            self.core_errors += 1
            log.exception("core failed on a message", peer=event.peer, link=event.link)
            return
        stored: list[MaxSeqStored] = []
        for effect in effects:
            if isinstance(effect, PersistMaxSeq):
                stored.append(self._store_max_seq(effect.value))
            else:
                self._execute(effect)
        for answer in stored:  # the core holds every datagram back until it hears this
            self.dispatch(answer)
        self._arm()
        self._observe()

    def _store_max_seq(self, value: int) -> MaxSeqStored:
        """Persist max_seq (atomic, fsynced); the answer the core waits for."""
        try:
            self.state.store_max_seq(value)
        except ConfigError as exc:
            return MaxSeqStored(value, str(exc))
        return MaxSeqStored(value)

    def _execute(self, effect: NodeEffect) -> None:
        if isinstance(effect, Broadcast):
            self.mesh.send(effect.link, effect.peers, effect.message)
        elif isinstance(effect, SendTo):
            self.mesh.send(effect.link, (effect.peer,), effect.message)
        elif isinstance(effect, Emit):
            self._log_event(effect)
        elif isinstance(effect, QdeviceUpdate) and self.qdevice is not None:
            self.qdevice.update(effect.ring, effect.members, effect.quorate)
        elif isinstance(effect, ConfigApplied):
            self._config_applied(effect)
        elif isinstance(effect, QdeviceReconfigure):
            self._qdevice_reconfigure(effect)
        elif isinstance(effect, Removed):
            self._removed_from(effect)

    def _qdevice_vote(
        self, vote: bool, connected: bool, reason: str, ring: tuple[int, int] | None
    ) -> None:
        self.dispatch(QdeviceVote(vote, connected, reason, ring))

    def _log_event(self, effect: Emit) -> None:
        ev = effect.event
        details = {
            (f"detail_{k}" if k in RESERVED_LOG_KEYS else k): jsonable(v)
            for k, v in ev.details.items()
        }
        if ev.kind is EventKind.DUPLICATE_NODE:  # name both processes' addresses
            peer = int(ev.details["peer"])
            details["kept_address"] = self.mesh.source_of(peer, int(ev.details["kept"]))
            details["refused_address"] = self.mesh.source_of(peer, int(ev.details["refused"]))
        level = EVENT_LEVELS.get(ev.kind, "info")
        if ev.kind is EventKind.REMOVED_FROM_CLUSTER and self.leaving:
            level = "warning"  # asked for by `votemesh leave`
        getattr(log, level)(str(ev.kind), reason=ev.reason, **details)
        self.recent.append(
            {"event": str(ev.kind), "reason": ev.reason, "wall_ms": wall_ms(), **details}
        )

    def _offer(self, message: MessageIn) -> bool:
        """From a socket callback: an opened message for the core (False: not running)."""
        if not self._accepting:
            return False
        self._config_drop = None
        self._guarded(self.dispatch, message)
        taken = self.node.last_drop is None or message.peer in self._farewell
        if isinstance(message.message, CONFIG_MESSAGES) and taken:
            self._guarded(self.replication.receive, message.peer, message.message)
            self._config_drop = self.replication.last_drop
        return True

    def _arm(self) -> None:
        """Make the loop timer fire by the core's next deadline."""
        deadline = self.node.next_deadline()
        if deadline is None or self._loop is None:
            return  # an armed timer that finds nothing due is harmless
        if self._timer is not None:
            if self._timer_at <= deadline:
                return
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self._loop.call_at(deadline, self._guarded, self._fire)

    def _fire(self) -> None:
        """The loop timer: Tick if the core's deadline has come, else re-arm."""
        self._timer = None
        deadline, now = self.node.next_deadline(), time.monotonic()
        if deadline is not None and deadline <= now:
            self.timer_stats.note(now - deadline)
            self.dispatch(Tick(wall_ms()))
        else:
            self._arm()

    def _guarded(self, callback: Callable[..., None], *args: Any) -> None:
        """Run a core callback; a failure (a core bug) stops the agent loudly, like a task's."""
        try:
            callback(*args)
        except Exception as exc:  # noqa: BLE001 (re-raised by run() once everything is closed)
            self._crash = exc
            self.stop()

    # ------------------------------------------------------------ discovery
    def _discovered(self, peer: DiscoveredPeer) -> None:
        """A member's announced addresses: use them on links we have and config does not pin."""
        static = self.static_links.get(peer.node_id, frozenset())
        for link, host, port in peer.addresses:
            if link in self.mesh.transports and link not in static:
                self.mesh.discovered_address(peer.node_id, link, (host, port))
        links = self.mesh.peer_links(peer.node_id)
        if links:
            self.dispatch(PeerAddresses(peer.node_id, links))

    def _discovery_gone(self, node_id: int) -> None:
        """A member unregistered (clean shutdown): only logged; heartbeats decide liveness."""

    async def _discover(self) -> None:
        """Announce the bound ports and browse; discovery failing never stops the agent."""
        ports = {i: self.mesh.local_address(i)[1] for i in self.mesh.transports}
        links = tuple(dataclasses.replace(x, port=ports[x.index]) for x in self.config.links)
        discovery = Discovery(
            dataclasses.replace(self.config, links=links), self._discovered, self._discovery_gone
        )
        try:
            await discovery.start()
        except (DiscoveryError, OSError) as exc:
            log.warning("discovery off", reason=str(exc))
            return
        self.discovery = discovery

    # ------------------------------------------------------------ tasks
    async def _signals(self, tasks: list[asyncio.Task[None]]) -> None:
        await self._stop.wait()
        if self.qdevice is not None:
            # Before the Leave: qnetd must have dropped us when the survivors report their new
            # ring, else lms sees us on the old one and waits (design §3.4, clean stop).
            await self.qdevice.close()
        if self._qdevice_task is not None:  # the running session's task (maybe a restarted one)
            self._qdevice_task.cancel()
        for task in tasks:
            task.cancel()

    def stop(self) -> None:
        """Ask the agent to stop (signal handlers call this)."""
        self._stop.set()

    # ------------------------------------------------------------ control socket
    def status(self) -> dict[str, Any]:
        """The core's typed status extended with what only the runtime knows, as JSON."""
        snap = self.node.snapshot(time.monotonic())
        datagrams: dict[str, Any] = dict(self.mesh.counters.as_dict())
        datagrams["core_errors"] = self.core_errors
        datagrams["config"] = self.replication.as_dict()
        runtime = RuntimeInfo(
            uptime_s=round(time.monotonic() - self.started, 3),
            local_links={
                str(i): "{}:{}".format(*self.mesh.local_address(i)) for i in self.mesh.transports
            },
            datagrams=jsonable(datagrams),
            timers=jsonable(self.timer_stats.as_dict()),
        )
        qdevice = snap.qdevice
        if self.qdevice is not None:
            session = self.qdevice.status()
            qdevice = dataclasses.replace(
                qdevice,
                state=str(session["state"]),
                server=str(session["server"]),
                tls=session["tls"],
                connects=int(session["connects"]),
                last_close=session["last_close"],
            )
        snap = dataclasses.replace(
            snap, runtime=runtime, qdevice=qdevice, config_version=self.cluster_config.version
        )
        doc: dict[str, Any] = to_json(snap)
        return doc

    def set_expected(self, value: int | None) -> str | None:
        """`expected N` / `reset` from the control socket: None, or why the core refused."""
        self.dispatch(SetExpected(value))
        return self.node.expected_refusal

    def handlers(self) -> ControlHandlers:
        """What the control socket may call."""
        return ControlHandlers(
            status=self.status,
            set_expected=self.set_expected,
            events=lambda: list(self.recent),
            config=ConfigOps(self).answer,
            join=None if self.join is None else self.join.control,
            qdevice=functools.partial(qdevice_setup.answer, self),
        )

    def _log_startup(self) -> None:
        """Where the cluster configuration comes from; a refused store loudly."""
        start, committed = self.startup, self.cluster_config
        for warning in start.warnings:
            log.warning("configuration file and agreed configuration differ", problem=warning)
        if start.unreplicated is not None:
            log.warning(
                "cluster configuration not replicated",
                reason=start.unreplicated,
                effect="the agent runs on the file; configuration changes are refused",
            )
        if start.refused is not None:
            state_dir = Path(self.config.state_dir)
            with contextlib.suppress(OSError):  # keep the refused bytes for a post-mortem
                shutil.copyfile(
                    state_dir / cluster_store.FILE_NAME, state_dir / "cluster-config.refused"
                )
            log.error(
                "stored cluster configuration refused",
                reason=start.refused,
                effect="starting at version 0 without a vote in changes; the cluster's "
                "configuration is fetched from the first view (copy in cluster-config.refused)",
            )
        log.info(
            "cluster configuration",
            version=committed.version,
            digest=cluster_config.digest(committed).hex()[:16],
            source="stored" if start.stored else "refused" if start.refused else "file bootstrap",
        )

    # ------------------------------------------------------------ run
    async def run(self) -> None:
        """Bind, start the core, serve until stopped; then close everything."""
        self._loop = asyncio.get_running_loop()
        await self.mesh.start()
        self.join = await start_join_server(self)
        control = await serve_control(Path(self.config.control_socket), self.handlers())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        log.info(
            "agent started",
            cluster=self.config.cluster_name,
            node_id=self.config.node_id,
            node_name=self.config.node_name,
            incarnation=self.incarnation,
            links={
                str(i): "{}:{}".format(*self.mesh.local_address(i)) for i in self.mesh.transports
            },
            peers=[p.node_id for p in self.config.peers],
            control_socket=self.config.control_socket,
        )
        for warning in self.config.quorum_warnings():
            log.warning("unsafe quorum setting", problem=warning)
        self._log_startup()
        try:
            self.dispatch(Start(wall_ms()))
            self._accepting = True
            sd_notify("READY=1")
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(control.serve_forever(), name="control"),
                    group.create_task(self._config_ticks(), name="config"),
                ]
                if self.qdevice is not None:
                    self._qdevice_task = group.create_task(self.qdevice.run(), name="qdevice")
                if self.config.discovery:
                    tasks.append(group.create_task(self._discover(), name="discovery"))
                if self.join is not None:
                    tasks.append(group.create_task(self.join.run(), name="join"))
                group.create_task(self._signals(tasks), name="signals")
        finally:
            sd_notify("STOPPING=1")
            self._accepting = False
            if self._crash is None:
                self.dispatch(Stop("shutdown"))  # Leave on every link: peers re-form at once
            if self._timer is not None:
                self._timer.cancel()
            self._loop = None  # nothing more reaches the core
            if self.discovery is not None:
                await self.discovery.close()  # goodbye first: peers hear it within ~1 ms
            control.close()
            self.mesh.close()
            with contextlib.suppress(FileNotFoundError):
                Path(self.config.control_socket).unlink()
            log.info("agent stopped", datagrams=self.mesh.counters.as_dict())
        if self._crash is not None:
            raise self._crash


# ---------------------------------------------------------------- process edges
def configure_logging(level: str = "info") -> None:
    """One JSON object per line on stdout, with an ISO UTC timestamp and the level."""
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(default=str),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )


def sd_notify(state: str) -> bool:
    """Tell systemd (Type=notify) our state, e.g. "READY=1"; False when not under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(address)
            sock.sendall(state.encode())
        except OSError:
            return False
    return True


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """`votemesh-agent --config FILE [--log-level LEVEL]`."""
    parser = _Parser(prog="votemesh-agent", description="run one votemesh agent (foreground)")
    parser.add_argument(
        "--config",
        "-c",
        type=Path,
        required=True,
        help="node.toml, or a single file with cluster_name (bootstraps version 0)",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    return parser


EXIT_REMOVED = 3
"""Exit status of an agent that stopped because it was removed from the cluster."""


async def _run(startup: Startup, keys: list[ClusterKey]) -> int:
    runtime = AgentRuntime(startup.agent, keys, startup)
    await runtime.run()
    if runtime.removed is not None and not runtime.leaving:
        print(f"votemesh-agent: {runtime.removed}", file=sys.stderr)
        return EXIT_REMOVED
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for a configuration mistake)."""
    args = build_parser().parse_args(argv)
    try:
        startup = load_startup(args.config)
        keys = load_keys(startup.agent.key_files)
        configure_logging(args.log_level)
        return asyncio.run(_run(startup, keys))
    except ConfigError as exc:
        print(f"votemesh-agent: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        print(
            f"votemesh-agent: cannot start:{where} {exc.strerror or exc}; check the [[link]] "
            "addresses are local and their ports free, and control_socket is writable",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
