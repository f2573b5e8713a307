"""Agent-to-agent message kinds carried inside sealed datagrams.

Each kind is a frozen dataclass whose fields are `tagged` (see `proto.tagged_map`); `MeshKind`
numbers the kinds in the envelope header. Adding a kind: a new `MeshKind` value, a dataclass, a
row in `MESH_KINDS`. Adding a field: a new tag with a default (older peers ignore it).
No clock, sockets or logging.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from proto import tagged_map
from proto.datagram_seal import EnvelopeHeader, Opener, Sealer
from proto.errors import DecodeError
from proto.tagged_map import tagged


class MeshKind(IntEnum):
    """Message kinds (u8 in the envelope header); append-only."""

    HEARTBEAT = 1
    PROBE = 2
    PROBE_REPLY = 3
    LEAVE = 4


@dataclass(frozen=True, slots=True)
class View:
    """An installed membership view: ring id (representative, sequence) and its members."""

    representative: int = tagged(1)
    seq: int = tagged(2)
    members: tuple[int, ...] = tagged(3)


@dataclass(frozen=True, slots=True)
class ExpectedSetWire:
    """An accepted `votemesh expected N` (agent.votequorum.ExpectedSet): every member of the view
    `ring_representative/ring_seq` applies the newest (generation, origin) once."""

    generation: int = tagged(1)
    origin: int = tagged(2)
    value: int = tagged(3)
    ring_representative: int = tagged(4)
    ring_seq: int = tagged(5)


@dataclass(frozen=True, slots=True)
class Echo:
    """The last stamp received from a peer, echoed back with how long we held it (RTT)."""

    node_id: int = tagged(1)
    stamp_us: int = tagged(2)
    held_us: int = tagged(3, 0)


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Periodic liveness and membership gossip, sent to every peer on its best link."""

    link: int = tagged(1)
    """Link index the datagram was sent on."""
    stamp_us: int = tagged(2)
    """Sender's monotonic clock in microseconds (echoed back for RTT)."""
    wall_ms: int = tagged(3)
    """Sender's wall clock in ms since the epoch (clock-skew check)."""
    heard: tuple[int, ...] = tagged(4, ())
    """Nodes whose heartbeats the sender received within its failure timeout."""
    view: View | None = tagged(5, None)
    """The sender's installed view."""
    proposal: View | None = tagged(6, None)
    """The view the sender proposes (members and the ring id it would get)."""
    echoes: tuple[Echo, ...] = tagged(7, ())
    votes: int = tagged(8, 1)
    expected_votes: int = tagged(9, 0)
    config_version: int = tagged(10, 0)
    node_name: str = tagged(11, "")
    quorate: bool = tagged(12, False)
    """The sender is quorate and not waiting for all (lets a restarted node end wait_for_all)."""
    expected_set: ExpectedSetWire | None = tagged(13, None)
    """The newest expected votes override the sender applied (design §3.8)."""
    tie_breaker: int = tagged(14, 0)
    """The sender's auto_tie_breaker node (0 = none): a tie is broken only by unanimity."""


@dataclass(frozen=True, slots=True)
class Probe:
    """Liveness/RTT probe on a link that is not the active one."""

    link: int = tagged(1)
    stamp_us: int = tagged(2)


@dataclass(frozen=True, slots=True)
class ProbeReply:
    """Answer to a Probe on the same link."""

    link: int = tagged(1)
    stamp_us: int = tagged(2)
    held_us: int = tagged(3, 0)


@dataclass(frozen=True, slots=True)
class Leave:
    """A node announces it is shutting down cleanly."""

    reason: str = tagged(1, "")


MeshMessage = Heartbeat | Probe | ProbeReply | Leave
MESH_KINDS: dict[MeshKind, type[MeshMessage]] = {
    MeshKind.HEARTBEAT: Heartbeat,
    MeshKind.PROBE: Probe,
    MeshKind.PROBE_REPLY: ProbeReply,
    MeshKind.LEAVE: Leave,
}
_KIND_OF: dict[type, MeshKind] = {cls: kind for kind, cls in MESH_KINDS.items()}


def kind_of(msg: MeshMessage) -> MeshKind:
    """The envelope kind of a message."""
    return _KIND_OF[type(msg)]


def encode(msg: MeshMessage) -> bytes:
    """The payload bytes of a message (to be sealed)."""
    return tagged_map.pack(msg)


def decode(kind: int, payload: bytes) -> MeshMessage:
    """A message from its envelope kind and opened payload."""
    try:
        cls = MESH_KINDS[MeshKind(kind)]
    except ValueError:
        raise DecodeError("unknown_kind", f"mesh kind {kind}") from None
    return tagged_map.unpack(cls, payload)


def seal_message(sealer: Sealer, msg: MeshMessage) -> bytes:
    """One sealed datagram carrying `msg`."""
    return sealer.seal(kind_of(msg), encode(msg))


def open_message(opener: Opener, datagram: bytes) -> tuple[EnvelopeHeader, MeshMessage]:
    """Authenticate, replay-check and decode one datagram."""
    header, payload = opener.open(datagram)
    return header, decode(header.kind, payload)
