"""Agent-to-agent message kinds carried inside sealed datagrams.

Each kind is a frozen dataclass whose fields are `tagged` (see `proto.tagged_map`); `MeshKind`
numbers the kinds in the envelope header. Adding a kind: a new `MeshKind` value, a dataclass, a
row in `MESH_KINDS`. Adding a field: a new tag with a default (older peers ignore it).
No clock, sockets or logging.

Every int carries documented bounds (docs/design.md §1.4, "Bounds"): a datagram that opened under
the cluster key but holds a value outside them raises `DecodeError("bad_value")`, so a buggy or
hostile member cannot push a number the rest of the agent was not written for (a 2**64 vote
count, a ring sequence that leaves no room for a successor, a list of a million ids).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from enum import IntEnum

from proto import tagged_map
from proto.datagram_seal import EnvelopeHeader, Opener, Sealer
from proto.errors import DecodeError
from proto.tagged_map import tagged

MAX_NODE_ID = 0xFFFFFFFF
NODE_IDS = (1, MAX_NODE_ID)
SEQ_MAX = 2**62
"""Largest ring sequence accepted or made: 10 view changes a second for 1.4e10 years, and a
successor (seq + 1) always fits the u64 of the qdevice protocol."""
SEQS = (1, SEQ_MAX)
LINKS = (0, 7)
STAMPS = (0, 2**62)
"""Monotonic microseconds (146,000 years)."""
HELD_US = (0, 2**32)
"""Microseconds a stamp was held before it was echoed (71 minutes; really < 2 s)."""
WALL_MS = (0, 2**48)
"""Wall-clock ms since the epoch (year 10889)."""
VOTES = (0, 1000)
"""A node's votes, as `quorum.votes` allows."""
EXPECTED = (0, 1000 * 1024)
"""Expected votes: at most 1000 votes for each of 1024 nodes."""
MAX_NODES = 1024
"""Node ids in one list (heard, members, echoes): 10x the largest cluster designed for."""
CONFIG_VERSIONS = (0, 2**32 - 1)


class MeshKind(IntEnum):
    """Message kinds (u8 in the envelope header); append-only."""

    HEARTBEAT = 1
    PROBE = 2
    PROBE_REPLY = 3
    LEAVE = 4


@dataclass(frozen=True, slots=True)
class View:
    """An installed membership view: ring id (representative, sequence) and its members."""

    representative: int = tagged(1, bounds=NODE_IDS)
    seq: int = tagged(2, bounds=SEQS)
    members: tuple[int, ...] = tagged(3, bounds=NODE_IDS, max_items=MAX_NODES)
    """Sorted, no repeats, not empty, and `representative` is the lowest (checked at decode)."""


@dataclass(frozen=True, slots=True)
class ExpectedSetWire:
    """An accepted `votemesh expected N` (agent.votequorum.ExpectedSet): every member of the view
    `ring_representative/ring_seq` applies the newest (generation, origin) once."""

    generation: int = tagged(1, bounds=(1, EXPECTED[1]))
    origin: int = tagged(2, bounds=NODE_IDS)
    value: int = tagged(3, bounds=(1, EXPECTED[1]))
    ring_representative: int = tagged(4, bounds=NODE_IDS)
    ring_seq: int = tagged(5, bounds=SEQS)


@dataclass(frozen=True, slots=True)
class Echo:
    """The last stamp received from a peer, echoed back with how long we held it (RTT)."""

    node_id: int = tagged(1, bounds=NODE_IDS)
    stamp_us: int = tagged(2, bounds=STAMPS)
    held_us: int = tagged(3, 0, bounds=HELD_US)


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Periodic liveness and membership gossip, sent to every peer on its best link."""

    link: int = tagged(1, bounds=LINKS)
    """Link index the datagram was sent on."""
    stamp_us: int = tagged(2, bounds=STAMPS)
    """Sender's monotonic clock in microseconds (echoed back for RTT)."""
    wall_ms: int = tagged(3, bounds=WALL_MS)
    """Sender's wall clock in ms since the epoch (clock-skew check)."""
    heard: tuple[int, ...] = tagged(4, (), bounds=NODE_IDS, max_items=MAX_NODES)
    """Nodes whose heartbeats the sender received within its failure timeout."""
    view: View | None = tagged(5, None)
    """The sender's installed view."""
    proposal: View | None = tagged(6, None)
    """The view the sender proposes (members and the ring id it would get)."""
    echoes: tuple[Echo, ...] = tagged(7, (), max_items=MAX_NODES)
    votes: int = tagged(8, 1, bounds=VOTES)
    expected_votes: int = tagged(9, 0, bounds=EXPECTED)
    config_version: int = tagged(10, 0, bounds=CONFIG_VERSIONS)
    node_name: str = tagged(11, "")
    quorate: bool = tagged(12, False)
    """The sender is quorate and not waiting for all (lets a restarted node end wait_for_all)."""
    expected_set: ExpectedSetWire | None = tagged(13, None)
    """The newest expected votes override the sender applied (design §3.8)."""
    tie_breaker: int = tagged(14, 0, bounds=(0, MAX_NODE_ID))
    """The sender's auto_tie_breaker node (0 = none): a tie is broken only by unanimity."""


@dataclass(frozen=True, slots=True)
class Probe:
    """Liveness/RTT probe on a link that is not the active one."""

    link: int = tagged(1, bounds=LINKS)
    stamp_us: int = tagged(2, bounds=STAMPS)


@dataclass(frozen=True, slots=True)
class ProbeReply:
    """Answer to a Probe on the same link."""

    link: int = tagged(1, bounds=LINKS)
    stamp_us: int = tagged(2, bounds=STAMPS)
    held_us: int = tagged(3, 0, bounds=HELD_US)


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
    msg = tagged_map.unpack(cls, payload)
    if isinstance(msg, Heartbeat):
        for view in (msg.view, msg.proposal):
            if view is not None:
                _check_view(view)
    return msg


def _check_view(view: View) -> None:
    """Members sorted without repeats, not empty, the representative the lowest of them (how
    every node builds a view; anything else would name one ring id with two readings)."""
    members = view.members
    if not members or members[0] != view.representative:
        raise DecodeError("bad_value", f"view {view.representative}: not its lowest member")
    if any(a >= b for a, b in itertools.pairwise(members)):
        raise DecodeError("bad_value", "view members not sorted and distinct")


def seal_message(sealer: Sealer, msg: MeshMessage) -> bytes:
    """One sealed datagram carrying `msg`."""
    return sealer.seal(kind_of(msg), encode(msg))


def open_message(opener: Opener, datagram: bytes) -> tuple[EnvelopeHeader, MeshMessage]:
    """Authenticate, replay-check and decode one datagram."""
    header, payload = opener.open(datagram)
    return header, decode(header.kind, payload)
