"""The cluster configuration's replica inside the running agent (design §3.9, "Runtime").

Adapter ring. Drives `agent.config_replication.ConfigReplica` and carries out its effects:

* `observe` feeds it the node core's installed view (`ViewChanged`) and verdict (`QuorumInput`)
  after every core event, only when they changed; `tick` (every heartbeat interval) sends `Tick`
  and resends the chunk fetches;
* `receive` takes CONFIG_* datagrams; `agent/runtime/config_wire.py` turns them into replica
  messages (configurations by content hash, fetched in chunks and checked); anything bad is
  dropped, counted and logged by the mesh transport (`last_drop`);
* `Persist` is written through `cluster_store` before any later `Send` of the same or a later
  batch is executed: if the disk refuses, every `Send` is held back (counted) until a retry on
  `tick` succeeds, so an acknowledgement never goes out for a proposal that is not durable;
* `Applied` goes to the runtime's callback (it reconfigures the core and the sockets);
  `Conflict` (S4 violated) is an error line and a counter; `ChangeDone` answers `change`.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from agent.cluster_config import ClusterConfig, encode
from agent.config import ConfigError
from agent.config_replication import (
    SETTLING,
    Applied,
    ChangeDone,
    ChangeRequested,
    Commit,
    ConfigReplica,
    Conflict,
    Effect,
    Event,
    Persist,
    QuorumInput,
    Ring,
    Send,
    Tick,
    ViewChanged,
)
from agent.runtime import cluster_store
from agent.runtime.config_wire import ConfigWire, WireConfigMessage
from proto.mesh_messages import REQUEST_IDS, ConfigState, MeshMessage

CHANGE_TIMEOUT = 10.0
"""Seconds a change waits for the representative's answer (a view change answers at once)."""
APPLY_WAIT = 2.0
"""Seconds an accepted change waits for the local commit (the Commit datagram precedes the
answer, so this is normally a few ms)."""
BUSY = "another configuration change is in progress; retry"
NO_ANSWER = (
    f"no answer from the representative within {CHANGE_TIMEOUT:g} s; check "
    "`votemesh config show` and retry if the change is not applied"
)
SETTLE_WAIT = 3.0
"""Seconds a change asked just after a view change keeps asking while the view settles."""
SETTLE_RETRY = 0.1
BRISK_FOR = 2.0
"""Seconds after a view change or a replication message (other than a State report) during which
the replica is ticked every heartbeat interval; otherwise `IDLE_TICK`."""
IDLE_TICK = 1.0
"""Seconds between ticks of a settled replica: its State report to the representative is a
resend only, and ten a second per member doubled an idle representative's datagrams."""
log = structlog.get_logger("votemesh.agent.config")


@dataclass(frozen=True, slots=True)
class ChangeOutcome:
    """What a configuration change came to (`AgentRuntime.change_config`)."""

    ok: bool
    text: str
    """One line: `applied as config_version N`, or the refusal's reason."""
    version: int
    """The committed version on this node afterwards."""


class Replication:
    """One node's replica, its wire codec and its store."""

    def __init__(
        self,
        replica: ConfigReplica,
        state_dir: Path,
        send: Callable[[int, MeshMessage], None],
        applied: Callable[[ClusterConfig], None],
        *,
        disabled: str | None = None,
    ) -> None:
        self.replica = replica
        self.disabled = disabled
        """Why this node does not replicate (a single file whose cluster part breaks a rule):
        nothing is fed to the replica, changes are refused with this reason."""
        self.state_dir = state_dir
        self.send = send
        self.applied = applied
        self.wire = ConfigWire()
        self.counters: Counter[str] = Counter()
        """sent, received, held_unpersisted, persist_errors, s4_conflicts."""
        self._unpersisted: Persist | None = None
        """The last Persist the disk refused: Sends wait until it is written."""
        self._seen: tuple[Ring, frozenset[int]] | None = None
        self._quorum: QuorumInput | None = None
        self._next_request = secrets.randbelow(REQUEST_IDS[1] // 2) + 1
        """Request ids start at a random point: a representative keeps recent answers by
        (origin, request id), and a restarted agent must not be answered for its old life."""
        self._waiting: dict[int, asyncio.Future[tuple[bool, str]]] = {}
        self._brisk_until = 0.0
        self._changing = False
        self.wake: Callable[[], None] = lambda: None
        """Called when the replica should be ticked soon (a view change): the runtime's tick
        loop stops sleeping its idle second."""

    def tick_interval(self, heartbeat_interval: float) -> float:
        """Seconds until the next tick: every heartbeat while anything is under way (a view
        just changed, a change, a fetch, a refused write), else IDLE_TICK."""
        busy = (
            not self.replica.settled
            or self._changing
            or self.wire.fetches
            or self._waiting
            or self._unpersisted is not None
            or time.monotonic() < self._brisk_until
        )
        return heartbeat_interval if busy else max(heartbeat_interval, IDLE_TICK)

    def _brisk(self) -> None:
        if time.monotonic() >= self._brisk_until:
            self.wake()
        self._brisk_until = time.monotonic() + BRISK_FOR

    @property
    def committed(self) -> ClusterConfig:
        return self.replica.committed

    @property
    def last_drop(self) -> str | None:
        """Why the last `receive` dropped its datagram (the transport counts and logs it)."""
        drop = self.wire.last_drop
        return None if drop is None else drop[0]

    # ------------------------------------------------------------ inputs
    def observe(self, ring: Ring, members: frozenset[int], quorum: QuorumInput) -> None:
        """The node core's installed view and verdict after an event (fed only on change)."""
        if self.disabled:
            return
        if quorum != self._quorum:
            self._quorum = quorum
            self._run(quorum)
        if ring.seq >= 1 and (ring, members) != self._seen:
            self._seen = (ring, members)
            self._brisk()
            self._run(ViewChanged(ring, members))

    def receive(self, sender: int, message: WireConfigMessage) -> None:
        """One authentic CONFIG_* message from `sender`."""
        self.counters["received"] += 1
        if self.disabled:
            self.wire.last_drop = ("not_replicating", self.disabled)
            return
        if not isinstance(message, ConfigState):
            self._brisk()
        events, replies = self.wire.incoming(sender, message)
        self._transmit(replies)
        for event in events:
            self._run(event)

    def tick(self) -> None:
        """Every heartbeat interval: retry a refused write, resend fetches, Tick the replica."""
        if self.disabled:
            return
        if self._unpersisted is not None:
            self._persist(self._unpersisted)
        self._transmit(self.wire.tick())
        self._run(Tick())

    def commit_notice(self) -> MeshMessage:
        """The committed configuration as a CONFIG_COMMIT (for a node that was removed)."""
        return self.wire.outgoing(Commit(self.committed))

    # ------------------------------------------------------------ changes
    async def change(self, mutate: Callable[[ClusterConfig], ClusterConfig]) -> ChangeOutcome:
        """Ask for `mutate(committed)` as the next version; the outcome in one line. A refusal
        that only says a new view is still settling is asked again for up to SETTLE_WAIT."""
        if self.disabled:
            return ChangeOutcome(False, self.disabled, self.committed.version)
        if self._changing:
            return ChangeOutcome(False, BUSY, self.committed.version)
        self._changing = True
        loop = asyncio.get_running_loop()
        until = loop.time() + SETTLE_WAIT
        try:
            while True:
                outcome = await self._change_once(mutate)
                if outcome.ok or outcome.text not in SETTLING or loop.time() >= until:
                    break
                await asyncio.sleep(SETTLE_RETRY)
        finally:
            self._changing = False
        log.info(
            "configuration change", ok=outcome.ok, result=outcome.text, version=outcome.version
        )
        return outcome

    async def _change_once(self, mutate: Callable[[ClusterConfig], ClusterConfig]) -> ChangeOutcome:
        base = self.committed
        try:
            wanted = mutate(base)
        except ConfigError as exc:
            return ChangeOutcome(False, str(exc), base.version)
        if encode(wanted.with_version(base.version)) == encode(base):
            return ChangeOutcome(True, f"nothing to change (version {base.version})", base.version)
        request_id = self._request_id()
        future: asyncio.Future[tuple[bool, str]] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        try:
            self._run(ChangeRequested(request_id, base.version, wanted))
            ok, text = await asyncio.wait_for(asyncio.shield(future), CHANGE_TIMEOUT)
        except TimeoutError:
            ok, text = False, NO_ANSWER
        finally:
            self._waiting.pop(request_id, None)
        if ok:
            await self._committed_beyond(base.version)
        return ChangeOutcome(ok, text, self.committed.version)

    async def _committed_beyond(self, version: int) -> None:
        loop = asyncio.get_running_loop()
        until = loop.time() + APPLY_WAIT
        while self.committed.version <= version and loop.time() < until:
            await asyncio.sleep(0.01)

    def _request_id(self) -> int:
        request_id = self._next_request
        self._next_request = request_id % REQUEST_IDS[1] + 1
        return request_id

    # ------------------------------------------------------------ effects
    def _run(self, event: Event) -> None:
        self._execute(self.replica.handle(event))

    def _execute(self, effects: list[Effect]) -> None:
        for effect in effects:
            match effect:
                case Persist():
                    self._persist(effect)
                case Send():
                    if self._unpersisted is not None:
                        self.counters["held_unpersisted"] += 1
                        continue
                    self._transmit([(effect.to, self.wire.outgoing(effect.message))])
                case Applied():
                    log.info(
                        "configuration applied",
                        version=effect.config.version,
                        nodes=[n.node_id for n in effect.config.nodes],
                    )
                    self.applied(effect.config)
                case ChangeDone():
                    future = self._waiting.get(effect.request_id)
                    if future is not None and not future.done():
                        future.set_result((effect.ok, effect.text))
                case Conflict():
                    self.counters["s4_conflicts"] += 1
                    log.error(
                        "S4 violated",
                        reason="two configurations with one version; kept ours",
                        version=effect.version,
                        ours=effect.ours.hex(),
                        theirs=effect.theirs.hex(),
                    )

    def _persist(self, state: Persist) -> None:
        try:
            cluster_store.save(self.state_dir, state)
        except (ConfigError, OSError) as exc:
            self.counters["persist_errors"] += 1
            if self._unpersisted is None:
                log.error(  # noqa: TRY400 - one line, the reason says it all
                    "cluster configuration not stored",
                    reason=str(exc),
                    effect="configuration messages held back until it is",
                )
            self._unpersisted = state
            return
        if self._unpersisted is not None:
            log.warning("cluster configuration stored again", version=state.committed.version)
        self._unpersisted = None

    def _transmit(self, messages: list[tuple[int, MeshMessage]]) -> None:
        for peer, message in messages:
            self.counters["sent"] += 1
            self.send(peer, message)

    def as_dict(self) -> dict[str, int]:
        """Counters for the status document."""
        return dict(sorted((self.counters + self.wire.counters).items()))
