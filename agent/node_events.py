"""Events the runtime feeds an `AgentNode`, and effects the node asks the runtime to carry out.

Plain frozen dataclasses (docs/design.md §3.3). Core ring: no clock, sockets or logging.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.config import AgentConfig, QdeviceConfig
from agent.events import AgentEvent
from proto.mesh_messages import MeshMessage


# ---------------------------------------------------------------- events in
@dataclass(frozen=True, slots=True)
class Start:
    """The runtime is up; the first call."""

    wall_ms: int


@dataclass(frozen=True, slots=True)
class Tick:
    """`now` reached `next_deadline()`."""

    wall_ms: int


@dataclass(frozen=True, slots=True)
class MessageIn:
    """An authentic, fresh, decoded mesh message from `peer` on `link`."""

    peer: int
    incarnation: int
    link: int
    message: MeshMessage
    wall_ms: int


@dataclass(frozen=True, slots=True)
class PeerAddresses:
    """The link indexes `peer` can be reached on (static config or discovery)."""

    peer: int
    links: frozenset[int]


@dataclass(frozen=True, slots=True)
class SetExpected:
    """Operator override of expected votes (None clears it), like `pvecm expected`."""

    value: int | None


@dataclass(frozen=True, slots=True)
class QdeviceVote:
    """The qdevice session's state: connected, whether its votes count for the current ring,
    and `ring`, the (node id, seq) of the ring the last unrevoked ACK was for (None: none held;
    design §3.4: the node may keep counting that ring for a short while after a view change)."""

    vote: bool
    connected: bool
    reason: str
    ring: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class Stop:
    """The agent is shutting down cleanly: tell the peers (a `Leave` on every link) so they
    re-form at once instead of after the failure timeout. The core handles nothing after it."""

    reason: str = "shutdown"


@dataclass(frozen=True, slots=True)
class MaxSeqStored:
    """The runtime's answer to `PersistMaxSeq(value)`: durable (`error` empty), or why not.

    The core sends no ring sequence above the last durable value (heartbeats, probes, qdevice
    updates wait) until this arrives; the runtime sends it right after the effects of the call
    that asked, so on a healthy disk nothing waits longer than one fsync (design §3.3)."""

    value: int
    error: str = ""


@dataclass(frozen=True, slots=True)
class Reconfigure:
    """Apply a new configuration at run time, without a restart (design §3.9, "Run-time
    changes"): nodes, votes, expected votes, quorum options that may change, timings, links and
    qdevice settings. `version` is the cluster configuration's version (0 = unknown); it is
    carried in heartbeats and the status. Refused (a `config_refused` event, nothing changes)
    for another node id or cluster name, an invalid configuration or an older version."""

    config: AgentConfig
    version: int = 0
    member: bool = True
    """False: the applied cluster configuration does not list this node (`agent_config`
    refused it): the node stops taking part (`Removed`); `config` is then not applied (pass
    the running one) and only `version` is read."""


NodeEvent = (
    Start
    | Tick
    | MessageIn
    | PeerAddresses
    | SetExpected
    | QdeviceVote
    | Stop
    | MaxSeqStored
    | Reconfigure
)


# ---------------------------------------------------------------- effects out
@dataclass(frozen=True, slots=True)
class Broadcast:
    """One datagram (sealed once) to each of `peers` on link `link`."""

    link: int
    peers: tuple[int, ...]
    message: MeshMessage


@dataclass(frozen=True, slots=True)
class SendTo:
    """One datagram to one peer on one link."""

    peer: int
    link: int
    message: MeshMessage


@dataclass(frozen=True, slots=True)
class Emit:
    """A state change for logs, MQTT, hooks, metrics."""

    event: AgentEvent


@dataclass(frozen=True, slots=True)
class PersistMaxSeq:
    """Store the highest ring sequence seen, so a restart never reuses one; answer with
    `MaxSeqStored` (the core holds every datagram back until then)."""

    value: int


@dataclass(frozen=True, slots=True)
class QdeviceUpdate:
    """Tell the qdevice session about the installed view and the verdict."""

    ring: tuple[int, int]
    members: tuple[int, ...]
    quorate: bool


@dataclass(frozen=True, slots=True)
class ConfigApplied:
    """A `Reconfigure` was applied: the runtime replaces its copy of the configuration, the
    mesh's peer addresses and admitted senders (`added`, `removed`), and warns about what only a
    restart applies (`restart_needed`, one short phrase each). Comes before any datagram of the
    same call, so a new peer's address is known before its first heartbeat."""

    config: AgentConfig
    version: int
    added: tuple[int, ...]
    removed: tuple[int, ...]
    restart_needed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class QdeviceReconfigure:
    """The qdevice settings or the configured node list changed. `restart`: close the session
    and, if `config` is not None, open a new one with it (the core already stopped counting the
    old session's vote); else only send the new node list (`nodes`) on the running session."""

    config: QdeviceConfig | None
    nodes: tuple[int, ...]
    restart: bool


@dataclass(frozen=True, slots=True)
class Removed:
    """This node is not in the applied configuration: it said Leave and takes no part any
    more; the runtime closes the qdevice session and stops (design §3.9)."""

    reason: str
    version: int


NodeEffect = (
    Broadcast
    | SendTo
    | Emit
    | PersistMaxSeq
    | QdeviceUpdate
    | ConfigApplied
    | QdeviceReconfigure
    | Removed
)
