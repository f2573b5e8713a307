"""The running agent's side of the cluster configuration (design §3.9, "The runtime").

Adapter ring. `ClusterConfigRuntime` is the part of `AgentRuntime` (agent/runtime/main.py) that
owns the replica at run time: it builds the replica from what the agent starts from, feeds it the
core's view and verdict, sends its datagrams on the peers' active links, hands a committed
configuration to the core as `Reconfigure`, carries out the core's `ConfigApplied`,
`QdeviceReconfigure` and `Removed` (peer addresses and admit set, binding or closing links,
restarting the qdevice session, stopping loudly), tells removed nodes, and ticks the replica.
`AgentRuntime` provides the core, the sockets and the loop it uses (declared below).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from agent import cluster_config
from agent.cluster_config import ClusterConfig
from agent.config import AgentConfig, ConfigError, LinkConfig
from agent.config_replication import ConfigReplica, QuorumInput, Ring
from agent.node import ConfigApplied, QdeviceReconfigure, Reconfigure, Removed
from agent.node_local import NodeLocal, agent_config
from agent.runtime import cluster_store
from agent.runtime.qdevice import QdeviceRunner
from agent.runtime.replication import ChangeOutcome, Replication
from proto.mesh_messages import MeshMessage

if TYPE_CHECKING:
    from agent.node import AgentNode, NodeEvent
    from agent.runtime.config_file import Startup
    from agent.runtime.key_rotation import KeyRing
    from agent.runtime.udp import MeshTransport

FAREWELL = 300.0
"""Seconds a removed node stays reachable and is told, once a second, the configuration that
removed it (it may be cut off when the change is made and learn it only after the heal)."""
FAREWELL_EVERY = 1.0
PROBATION = 10.0
"""Seconds a node id our configuration does not list stays admitted after its first datagram:
if one of its datagrams authenticates meanwhile it is a removed member, told like one."""
PROBATION_EVERY = 1.0
"""Seconds between two node ids put on probation (their datagrams are not authenticated yet: a
spoofer must not make us keep state, or send anything)."""
STRANGERS_MAX = 16
"""Removed nodes told and node ids on probation, at most."""
BEHIND_HEARD = 5.0
"""Seconds since a behind peer's last datagram during which it is sent our configuration."""
log = structlog.get_logger("votemesh.agent")


class ClusterConfigRuntime:
    """The cluster configuration's part of `AgentRuntime`."""

    # provided by AgentRuntime
    startup: Startup
    local: NodeLocal
    config: AgentConfig
    node: AgentNode
    mesh: MeshTransport
    replication: Replication
    qdevice: QdeviceRunner | None
    keys: KeyRing
    static_links: dict[int, frozenset[int]]
    _loop: asyncio.AbstractEventLoop | None
    _farewell: dict[int, float]
    _farewell_at: float
    _probation: dict[int, float]
    _probation_at: float
    _removed_why: str | None
    _qdevice_task: asyncio.Task[None] | None
    removed: str | None
    leaving: bool

    def dispatch(self, event: NodeEvent) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def _guarded(self, callback: Callable[..., None], *args: object) -> None:
        raise NotImplementedError

    def _qdevice_vote(
        self, vote: bool, connected: bool, reason: str, ring: tuple[int, int] | None
    ) -> None:
        raise NotImplementedError

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
        self.keys.apply(cluster)  # a key rotation's phase (design §3.12)
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
            self._probation.pop(peer.node_id, None)
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
            interval = self.replication.tick_interval(self.node.timing.heartbeat_interval)
            # On the wall-clock multiples the heartbeat rounds use: one wake-up serves both.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), interval - time.time() % interval + 0.001)
            woken.clear()
            self._guarded(self.replication.tick)
            self._guarded(self._tell_removed)

    def _tell_removed(self) -> None:
        """Once a second: send removed nodes the committed configuration until their farewell
        ends, and peers outside our view that are behind (`_tell_behind`)."""
        now = time.monotonic()
        if now < self._farewell_at:
            return
        self._farewell_at = now + FAREWELL_EVERY
        self._tell_behind(now)
        for node_id, until in list(self._probation.items()):
            if now >= until:
                del self._probation[node_id]
                self.mesh.addresses.pop(node_id, None)
        for node_id, until in list(self._farewell.items()):
            if now >= until:
                del self._farewell[node_id]
                self.mesh.addresses.pop(node_id, None)
                continue
            self._config_send(node_id, self.replication.commit_notice())

    def _stranger(self, node_id: int, link: int, source: tuple[str, int]) -> None:
        """A datagram from a node id without an address here (not authenticated). A member
        removed while it was cut off, or while we were down, still sends with the cluster key;
        the members that made the change told it (FAREWELL), but one restarted since knows
        nothing of it. So admit the id on probation (its address, PROBATION seconds, one id a
        second, STRANGERS_MAX in all): if a datagram of it then authenticates (`_vouched`), it
        is told like a removed node. Nothing is sent before that."""
        now, committed = time.monotonic(), self.cluster_config
        if (
            committed.version < 1
            or self.removed is not None
            or now < self._probation_at
            or node_id == self.config.node_id
            or committed.node(node_id) is not None
            or node_id in self._farewell
            or len(self._farewell) + len(self._probation) >= STRANGERS_MAX
        ):
            return
        self._probation_at = now + PROBATION_EVERY
        self._probation[node_id] = now + PROBATION
        self.mesh.set_peer_address(node_id, link, source)

    def _vouched(self, node_id: int) -> None:
        """An authenticated datagram from a node id on probation: a removed member (it holds
        the key, our configuration does not list it): tell it until its farewell ends."""
        if self._probation.pop(node_id, None) is None:
            return
        self._farewell[node_id] = time.monotonic() + FAREWELL
        self._farewell_at = 0.0  # tell it at the next tick
        log.warning(
            "a node not in the configuration is sending",
            node=node_id,
            version=self.cluster_config.version,
            effect="telling it our configuration: a removed node stops (a node added after "
            "our version ignores it)",
        )

    def _tell_behind(self, now: float) -> None:
        """Send the committed configuration to every configured peer we heard within
        BEHIND_HEARD seconds whose heartbeats report an older version and that is not in our
        installed view (in the view, step 1 syncs it). Such a node may never share a view with
        us: it drops the datagrams of a node added meanwhile, and the clique rule may keep that
        node in the view instead (design §3.9, "Catch-up outside a view"). A committed
        configuration is safe to hand to anyone: the receiver takes it only if it is newer."""
        committed = self.cluster_config
        if committed.version < 1 or self.removed is not None:
            return
        members = self.node.view.members
        for peer_id, peer in self.node.peers.items():
            behind = 0 < peer.config_version < committed.version
            if behind and peer_id not in members and now - peer.seen_at < BEHIND_HEARD:
                self.replication.counters["behind_told"] += 1
                self._config_send(peer_id, self.replication.commit_notice())

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
