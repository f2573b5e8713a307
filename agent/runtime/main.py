"""`votemesh-agent --config FILE`: run one agent until SIGTERM.

Adapter ring: the only agent code that reads the clock. The core is fed from loop callbacks,
with no task of its own (one wake-up per datagram or deadline, nothing else):

* each opened message goes to the core from the socket's callback, at once (a queue and a
  drain callback cost 7 % more CPU on an idle agent and bought nothing);
* one loop timer (`call_at`) fires at the core's `next_deadline()` and sends `Tick`; after each
  event it is moved only if the new deadline is earlier (a later one is found when it fires).

One `asyncio.TaskGroup` with named tasks:

* `control`: serves the unix control socket (`status`, `expected N`, `events`, `config`,
  `delnode X`, `leave`, `link add|remove`);
* `config`: ticks the cluster configuration's replica (every heartbeat interval while anything
  is under way, else once a second) and tells removed nodes; the replica itself
  (`agent.runtime.replication`: CONFIG_* datagrams, the store) is fed from the core's effects,
  and a committed configuration goes back into the core as `Reconfigure`;
* `qdevice` (with a `[qdevice]` table): `agent.runtime.qdevice.QdeviceRunner`, which gets every
  `QdeviceUpdate` and comes back with `QdeviceVote` events;
* `signals`: waits for SIGTERM/SIGINT and stops the others.

Every effect of `AgentNode.handle` is executed here: datagrams go out through
`agent.runtime.udp`, `Emit` becomes one structlog JSON line (`event` = the kind, `reason`,
details), `PersistMaxSeq` is written to the state directory. The incarnation is persisted before
the first datagram is sealed. Under systemd (Type=notify, `agent.runtime.systemd`) it says
READY=1 once the core runs, pings the watchdog from a `watchdog` task when WatchdogSec= is set,
and says STOPPING=1 on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import enum
import functools
import logging
import signal
import sys
import time
from collections.abc import Callable, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any, NoReturn

import structlog

from agent.config import AgentConfig, ConfigError
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
    Removed,
    SendTo,
    SetExpected,
    Start,
    Stop,
    Tick,
)
from agent.runtime import qdevice_setup
from agent.runtime.config_file import Startup, load_outputs, load_startup, local_of, startup_of
from agent.runtime.config_ops import ConfigOps
from agent.runtime.config_runtime import ClusterConfigRuntime
from agent.runtime.config_wire import CONFIG_MESSAGES
from agent.runtime.control import ControlHandlers, serve_control
from agent.runtime.discovery import DiscoveredPeer, Discovery, DiscoveryError
from agent.runtime.fanout import FanOut, LogSink, RecentSink, SinkContext
from agent.runtime.join import JoinServer, start_join_server
from agent.runtime.key_rotation import KeyRing
from agent.runtime.keys import load_keys
from agent.runtime.qdevice import QdeviceRunner
from agent.runtime.replication import ChangeOutcome, Replication
from agent.runtime.sinks import make_sinks
from agent.runtime.state import StateDir
from agent.runtime.systemd import sd_notify, watchdog
from agent.runtime.udp import MeshTransport
from agent.status import RuntimeInfo, to_json
from proto.datagram_seal import ClusterKey, Opener, Sealer
from proto.mesh_messages import ConfigFetch

__all__ = ["AgentRuntime", "ChangeOutcome", "main", "sd_notify"]

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


class AgentRuntime(ClusterConfigRuntime):
    """One running agent: its core, sockets, control socket and state directory (the cluster
    configuration's part: `agent.runtime.config_runtime`)."""

    _batching = False
    """Between the first message of a socket's wake-up and its end: `dispatch` leaves the timer
    and the replica's observation to `_batch_done` (once per batch, design §3.14)."""
    _observed: tuple[object, object] = (None, None)
    """The core's view and verdict objects last handed to `_observe`."""

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
            max_seq=self.state.boot_max_seq(startup.promised_seq),
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
            stranger=lambda node, link, source: self._guarded(self._stranger, node, link, source),
            batch_done=lambda: self._guarded(self._batch_done),
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
        self._probation: dict[int, float] = {}
        """Node ids the configuration does not list, admitted until when (design §3.9)."""
        self._probation_at = 0.0
        self._removed_why: str | None = None
        self._qdevice_task: asyncio.Task[None] | None = None
        self.removed: str | None = None
        """Why this node stopped taking part: it is not in the agreed configuration."""
        self.leaving = False
        """`votemesh leave` asked the cluster to remove this node: its removal is expected."""
        self.outputs = startup.outputs
        self.recent = RecentSink(RECENT_EVENTS)
        self.fanout = FanOut([LogSink(), self.recent])
        """Every event and status change leaves through here (design §3.13)."""
        self._background: set[asyncio.Task[None]] = set()
        # Held while sinks are stopped and started (a reload, the shutdown): one at a time;
        # closed: the shutdown stopped them, a reload still waiting starts none.
        self._outputs_lock, self._outputs_closed = asyncio.Lock(), False
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
        self.keys = KeyRing(self, keys)
        self.keys.load_pending()
        self.keys.apply(self.cluster_config)  # a rotation under way or cut by a restart

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
        if effects:  # most messages (heartbeats) have none
            stored: list[MaxSeqStored] = []
            for effect in effects:
                if isinstance(effect, PersistMaxSeq):
                    stored.append(self._store_max_seq(effect.value))
                else:
                    self._execute(effect)
            for answer in stored:  # the core holds every datagram back until it hears this
                self.dispatch(answer)
        if not self._batching:
            self._arm()
            self._observe_changed()

    def _batch_done(self) -> None:
        """The end of one socket wake-up's messages: the next deadline and the replica's view
        once for all of them."""
        if self._batching:
            self._batching = False
            self._arm()
            self._observe_changed()

    def _observe_changed(self) -> None:
        """`_observe` unless the core's view and verdict are the very objects last observed
        (both frozen: the same object is the same state, and the replica is fed changes only)."""
        seen = (self.node.view, self.node.quorum.status)
        if seen[0] is not self._observed[0] or seen[1] is not self._observed[1]:
            self._observed = seen
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
        """One core event, made JSON-ready, out through the fan-out (log line first)."""
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
        record = {"event": str(ev.kind), "reason": ev.reason, **details}
        self.fanout.publish(str(ev.kind), record, level)

    def _offer(self, message: MessageIn) -> bool:
        """From a socket callback: an opened message for the core (False: not running)."""
        if not self._accepting:
            return False
        self._config_drop = None
        if not self._batching:
            self._batching = True
            # Ends the batch even for a caller that never says so (a socket's wake-up does:
            # no second loop turn for it).
            if self._loop is not None and not self.mesh.reading:
                self._loop.call_soon(self._guarded, self._batch_done)
        try:  # as `_guarded(self.dispatch, message)`, one call less per datagram
            self.dispatch(message)
        except Exception as exc:  # noqa: BLE001 (re-raised by run() once everything is closed)
            self._crash = exc
            self.stop()
        if self._probation and message.peer in self._probation:
            self._guarded(self._vouched, message.peer)
        if not isinstance(message.message, CONFIG_MESSAGES):
            return True  # a heartbeat: the replica has nothing to do with it
        # A node outside the configuration (told it was removed) may only fetch what we told it:
        # it may hold the key, but its Commit or Forward must not change our configuration.
        taken = self.node.last_drop is None or (
            message.peer in self._farewell and isinstance(message.message, ConfigFetch)
        )
        if taken:
            self._guarded(self._observe)  # the replica sees the view this message came in
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
        """Run a core callback; a failure (a core bug) stops the agent loudly, like a task's.
        Mirrored inline in `_offer` for `dispatch` (one call less per datagram)."""
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
            events=lambda: list(self.recent.events),
            config=ConfigOps(self).answer,
            join=None if self.join is None else self.join.control,
            qdevice=functools.partial(qdevice_setup.answer, self),
        )

    # ------------------------------------------------------------ event outputs
    def sink_context(self) -> SinkContext:
        """What the optional sinks may read of this agent."""
        return SinkContext(
            cluster=self.config.cluster_name,
            node_id=self.config.node_id,
            node_name=self.config.node_name,
            status=self.status,
            stats=self.fanout.stats,
        )

    def _start_outputs(self) -> None:
        for sink in make_sinks(self.outputs, self.sink_context()):
            self.fanout.start(sink)

    async def _close_outputs(self) -> None:
        """The shutdown: stop the optional sinks (after a reload under way); none start after."""
        async with self._outputs_lock:
            self._outputs_closed = True
            await self.fanout.close(grace=1.0)

    async def reload(self) -> None:
        """SIGHUP: re-read the node-local event outputs ([mqtt], [[hook]], [metrics]) and
        restart those sinks; anything else node-local needs a restart (logged). A file that
        does not parse changes nothing (one error line)."""
        async with self._outputs_lock:  # a SIGHUP while one is stopping sinks waits for it
            if not self._outputs_closed:
                await self._reload()

    async def _reload(self) -> None:
        path = self.startup.path
        try:
            outputs, local = load_outputs(path), local_of(path)
        except ConfigError as exc:
            refused: str | None = str(exc)
        else:
            refused = None
        if refused is not None:
            log.error("reload refused; the running settings stay", reason=refused)
            return
        if local != self.local:
            log.warning(
                "reload: node-local settings other than [mqtt], [[hook]], [metrics] changed; "
                "they take effect at the next restart",
                config=str(path),
            )
        if outputs == self.outputs:
            log.info("reloaded; event outputs unchanged", config=str(path))
            return
        await self.fanout.close(grace=1.0)
        self.outputs = outputs
        self._start_outputs()
        log.info(
            "reloaded event outputs", config=str(path), sinks=[s.name for s in self.fanout.sinks]
        )

    def _hangup(self) -> None:
        if self._loop is not None and not self._stop.is_set():
            task = self._loop.create_task(self.reload(), name="reload")
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _log_started(self) -> None:
        """The "agent started" line and unsafe quorum settings."""
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

    def _signal_handlers(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self._hangup)

    # ------------------------------------------------------------ run
    async def run(self) -> None:
        """Bind, start the core, serve until stopped; then close everything."""
        self._loop = asyncio.get_running_loop()
        self.join = await start_join_server(self)
        control = await serve_control(Path(self.config.control_socket), self.handlers())
        try:
            # Bound last: from here to Start nothing awaits, so no datagram can arrive before
            # the core runs (one did, and was dropped as not_running, while the control socket
            # and the join port were set up after the bind).
            await self.mesh.start()
        except BaseException:
            control.close()
            if self.join is not None and self.join.server is not None:
                self.join.server.close()
            with contextlib.suppress(FileNotFoundError):
                Path(self.config.control_socket).unlink()
            raise
        self._signal_handlers(self._loop)
        self._log_started()
        try:
            self._start_outputs()  # before Start (nothing awaits): they hear the first view
            self.dispatch(Start(wall_ms()))
            self._accepting = True
            sd_notify("READY=1")
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(control.serve_forever(), name="control"),
                    group.create_task(self._config_ticks(), name="config"),
                    group.create_task(watchdog(), name="watchdog"),  # when WatchdogSec= is set
                ]
                if self.qdevice is not None:
                    self._qdevice_task = group.create_task(self.qdevice.run(), name="qdevice")
                if self.config.discovery:
                    tasks.append(group.create_task(self._discover(), name="discovery"))
                if self.join is not None:
                    tasks.append(group.create_task(self.join.run(), name="join"))
                tasks.append(group.create_task(self.keys.run(), name="keys"))
                group.create_task(self._signals(tasks), name="signals")
        finally:
            sd_notify("STOPPING=1")
            self._accepting = False
            if self._crash is None:
                self.dispatch(Stop("shutdown"))  # Leave on every link: peers re-form at once
            if self._timer is not None:
                self._timer.cancel()
            await self._close_outputs()  # the last events and state reach the broker
            self._loop.remove_signal_handler(signal.SIGHUP)
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
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('votemesh')}")
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
