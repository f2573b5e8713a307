"""Events the runtime feeds an `AgentNode`, and effects the node asks the runtime to carry out.

Plain frozen dataclasses (docs/design.md §3.3). Core ring: no clock, sockets or logging.
"""

from __future__ import annotations

from dataclasses import dataclass

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


NodeEvent = (
    Start | Tick | MessageIn | PeerAddresses | SetExpected | QdeviceVote | Stop | MaxSeqStored
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


NodeEffect = Broadcast | SendTo | Emit | PersistMaxSeq | QdeviceUpdate
