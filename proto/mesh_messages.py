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

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

import msgpack

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
DIGEST_BYTES = (32, 32)
"""A SHA-256 digest of a cluster configuration (agent/cluster_config.py)."""
CHUNK_BYTES = 1024
"""Payload bytes per ConfigChunk: a sealed chunk stays below 1,280 bytes (IPv6's minimum MTU),
so no datagram of a configuration transfer depends on IP fragmentation (design §3.9)."""
MAX_CONFIG_BYTES = 1024 * CHUNK_BYTES
"""1 MiB: a 1024-node configuration with certificates is ~200 kB."""
CHUNK_INDEXES = (0, MAX_CONFIG_BYTES // CHUNK_BYTES - 1)
REQUEST_IDS = (1, 2**32 - 1)


class MeshKind(IntEnum):
    """Message kinds (u8 in the envelope header); append-only."""

    HEARTBEAT = 1
    PROBE = 2
    PROBE_REPLY = 3
    LEAVE = 4
    CONFIG_STATE = 5
    CONFIG_PROPOSE = 6
    CONFIG_ACK = 7
    CONFIG_COMMIT = 8
    CONFIG_FORWARD = 9
    CONFIG_RESULT = 10
    CONFIG_FETCH = 11
    CONFIG_CHUNK = 12


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


# ---- cluster configuration replication (agent/config_replication.py, design §3.9) ----
# A configuration travels by reference (version, digest, size); a member that lacks the content
# pulls it in CHUNK_BYTES pieces with ConfigFetch/ConfigChunk and checks the digest.


@dataclass(frozen=True, slots=True)
class ConfigRef:
    """A cluster configuration named by version and SHA-256 digest of its canonical bytes."""

    version: int = tagged(1, bounds=CONFIG_VERSIONS)
    digest: bytes = tagged(2, bounds=DIGEST_BYTES)
    size: int = tagged(3, bounds=(1, MAX_CONFIG_BYTES))


@dataclass(frozen=True, slots=True)
class ConfigStaged:
    """A proposal the sender acknowledged, with the ring it was made in."""

    ring_representative: int = tagged(1, bounds=NODE_IDS)
    ring_seq: int = tagged(2, bounds=SEQS)
    config: ConfigRef = tagged(3)


@dataclass(frozen=True, slots=True)
class ConfigState:
    """A member's committed and staged configurations, for its view's representative."""

    ring_representative: int = tagged(1, bounds=NODE_IDS)
    ring_seq: int = tagged(2, bounds=SEQS)
    committed: ConfigRef = tagged(3)
    staged: ConfigStaged | None = tagged(4, None)


@dataclass(frozen=True, slots=True)
class ConfigPropose:
    ring_representative: int = tagged(1, bounds=NODE_IDS)
    ring_seq: int = tagged(2, bounds=SEQS)
    config: ConfigRef = tagged(3)


@dataclass(frozen=True, slots=True)
class ConfigAck:
    ring_representative: int = tagged(1, bounds=NODE_IDS)
    ring_seq: int = tagged(2, bounds=SEQS)
    version: int = tagged(3, bounds=CONFIG_VERSIONS)
    digest: bytes = tagged(4, bounds=DIGEST_BYTES)


@dataclass(frozen=True, slots=True)
class ConfigCommit:
    """A committed configuration (after a commit, or for a member that is behind)."""

    config: ConfigRef = tagged(1)


@dataclass(frozen=True, slots=True)
class ConfigForward:
    """A change asked on the sender, for the representative of the ring."""

    ring_representative: int = tagged(1, bounds=NODE_IDS)
    ring_seq: int = tagged(2, bounds=SEQS)
    request_id: int = tagged(3, bounds=REQUEST_IDS)
    base_version: int = tagged(4, bounds=CONFIG_VERSIONS)
    config: ConfigRef = tagged(5)


@dataclass(frozen=True, slots=True)
class ConfigResult:
    request_id: int = tagged(1, bounds=REQUEST_IDS)
    ok: bool = tagged(2, False)
    text: str = tagged(3, "")


@dataclass(frozen=True, slots=True)
class ConfigFetch:
    """Ask for one chunk of the configuration with this digest."""

    digest: bytes = tagged(1, bounds=DIGEST_BYTES)
    index: int = tagged(2, bounds=CHUNK_INDEXES)


@dataclass(frozen=True, slots=True)
class ConfigChunk:
    """Bytes [index x CHUNK_BYTES, +CHUNK_BYTES) of the configuration with this digest."""

    digest: bytes = tagged(1, bounds=DIGEST_BYTES)
    size: int = tagged(2, bounds=(1, MAX_CONFIG_BYTES))
    index: int = tagged(3, bounds=CHUNK_INDEXES)
    data: bytes = tagged(4, bounds=(1, CHUNK_BYTES))


MeshMessage = (
    Heartbeat
    | Probe
    | ProbeReply
    | Leave
    | ConfigState
    | ConfigPropose
    | ConfigAck
    | ConfigCommit
    | ConfigForward
    | ConfigResult
    | ConfigFetch
    | ConfigChunk
)
MESH_KINDS: dict[MeshKind, type[MeshMessage]] = {
    MeshKind.HEARTBEAT: Heartbeat,
    MeshKind.PROBE: Probe,
    MeshKind.PROBE_REPLY: ProbeReply,
    MeshKind.LEAVE: Leave,
    MeshKind.CONFIG_STATE: ConfigState,
    MeshKind.CONFIG_PROPOSE: ConfigPropose,
    MeshKind.CONFIG_ACK: ConfigAck,
    MeshKind.CONFIG_COMMIT: ConfigCommit,
    MeshKind.CONFIG_FORWARD: ConfigForward,
    MeshKind.CONFIG_RESULT: ConfigResult,
    MeshKind.CONFIG_FETCH: ConfigFetch,
    MeshKind.CONFIG_CHUNK: ConfigChunk,
}
_KIND_OF: dict[type, MeshKind] = {cls: kind for kind, cls in MESH_KINDS.items()}
_CLASS_OF: dict[int, type[MeshMessage]] = {int(kind): cls for kind, cls in MESH_KINDS.items()}


def kind_of(msg: MeshMessage) -> MeshKind:
    """The envelope kind of a message."""
    return _KIND_OF[type(msg)]


def encode(msg: MeshMessage) -> bytes:
    """The payload bytes of a message (to be sealed)."""
    return tagged_map.pack(msg)


def decode(kind: int, payload: bytes) -> MeshMessage:
    """A message from its envelope kind and opened payload."""
    cls = _CLASS_OF.get(kind)
    if cls is None:
        raise DecodeError("unknown_kind", f"mesh kind {kind}")
    msg = tagged_map.unpack(cls, payload)
    if cls is Heartbeat:
        for view in (msg.view, msg.proposal):  # type: ignore[union-attr]
            if view is not None:
                _check_view(view)
    return msg


def _check_view(view: View) -> None:
    """Members sorted without repeats, not empty, the representative the lowest of them (how
    every node builds a view; anything else would name one ring id with two readings)."""
    members = view.members
    if not members or members[0] != view.representative:
        raise DecodeError("bad_value", f"view {view.representative}: not its lowest member")
    if members is _sorted_members[0]:
        return  # the tuple the decoder gave for an equal list last time, checked then
    if list(members) != sorted(set(members)):  # in C: no Python step per member
        raise DecodeError("bad_value", "view members not sorted and distinct")
    _sorted_members[0] = members


_sorted_members: list[tuple[int, ...]] = [()]
"""The members tuple last found sorted and distinct (the decoder hands out the same tuple
object for a list equal to the last one that passed its checks)."""


def heartbeat_per_peer(hb: Heartbeat) -> Callable[[int], bytes]:
    """The payload for each peer of a round's heartbeat: `echoes` holds only that peer's own
    echo (or none). The core builds one heartbeat with every peer's echo; on the wire each peer
    gets its own (design §1.3): same field and tag, so an agent that looks for its id in the
    tuple reads it. The rest of the heartbeat is packed once, here."""
    apart = tagged_map.PackedApart(hb, "echoes")
    echoes = {echo.node_id: echo for echo in hb.echoes}
    none = apart.with_value(())
    pack = msgpack.Packer().pack  # one packer for the round (packb makes one per call)

    def payload(peer: int) -> bytes:
        echo = echoes.get(peer)
        if echo is None:
            return none
        # An array of one Echo map, packed here in one call (tags 1-3 of Echo).
        plain = {1: echo.node_id, 2: echo.stamp_us, 3: echo.held_us}
        return apart.with_packed(b"\x91" + pack(plain))

    return payload


def seal_message(sealer: Sealer, msg: MeshMessage) -> bytes:
    """One sealed datagram carrying `msg`."""
    return sealer.seal(kind_of(msg), encode(msg))


def open_message(opener: Opener, datagram: bytes) -> tuple[EnvelopeHeader, MeshMessage]:
    """Authenticate, replay-check and decode one datagram."""
    header, payload = opener.open(datagram)
    return header, decode(header.kind, payload)
