"""The replica's messages <-> CONFIG_* datagrams, configurations moved by content hash.

No clock, sockets or logging (the adapter `agent/runtime/replication.py` owns those), so it is
unit-tested like a codec. A replica message carries whole `ClusterConfig`s; on the wire each is a
`ConfigRef` (version, SHA-256 of the canonical bytes, size), design §3.9. Outgoing, the bytes
are kept under their digest (`blobs`, bounded) so a peer can fetch them; incoming, a message
whose configurations are all known is handed on at once, else it waits while the missing bytes
are fetched from its sender in `ConfigChunk`s (a window of `ConfigFetch`es, resent on `tick`),
reassembled, checked against the digest, decoded and validated. Anything that does not fit is
dropped and counted under a reason (`counters`); `DecodeError` never escapes `incoming`.
"""

from __future__ import annotations

import hashlib
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from agent import cluster_config
from agent.cluster_config import ClusterConfig
from agent.config import ConfigError
from agent.config_replication import (
    Ack,
    Commit,
    Forward,
    Message,
    Propose,
    Received,
    Result,
    Ring,
    Staged,
    State,
    Sync,
)
from proto.config_transfer import WINDOW, Assembly, chunks
from proto.errors import DecodeError
from proto.mesh_messages import (
    CHUNK_BYTES,
    ConfigAck,
    ConfigChunk,
    ConfigCommit,
    ConfigFetch,
    ConfigForward,
    ConfigPropose,
    ConfigRef,
    ConfigResult,
    ConfigStaged,
    ConfigState,
    MeshMessage,
)
from proto.tagged_map import MAX_STR

CONFIG_MESSAGES = (
    ConfigState,
    ConfigPropose,
    ConfigAck,
    ConfigCommit,
    ConfigForward,
    ConfigResult,
    ConfigFetch,
    ConfigChunk,
)
"""The mesh kinds this module takes (the runtime routes them here)."""
BLOBS_KEPT = 16
"""Configurations kept to answer fetches: the committed, a staged one, a few recent ones."""
REFS_CACHED = 4
FETCHES_AT_ONCE = 4
"""Configurations being fetched at once; a fifth is dropped (its message is resent anyway)."""
WAITING_PER_FETCH = 8
"""Messages waiting for one configuration's bytes (the oldest goes first)."""
FETCH_PATIENCE = 25
"""Ticks without a new chunk after which a fetch is given up (2.5 s at 10 Hz; the message that
named it is resent by its sender and starts a new one)."""

WireConfigMessage = (
    ConfigState
    | ConfigPropose
    | ConfigAck
    | ConfigCommit
    | ConfigForward
    | ConfigResult
    | ConfigFetch
    | ConfigChunk
)
Outgoing = list[tuple[int, MeshMessage]]


@dataclass
class _Fetch:
    assembly: Assembly
    source: int
    idle_ticks: int = 0
    waiting: list[tuple[int, WireConfigMessage]] = field(default_factory=list)
    asked: set[int] = field(default_factory=set)
    """Chunk indexes asked for and not received yet (at most the window)."""

    def top_up(self) -> list[ConfigFetch]:
        """Fetches that bring the outstanding requests back to the window (lowest first)."""
        more = [f for f in self.assembly.wanted() if f.index not in self.asked]
        more = more[: max(0, WINDOW - len(self.asked))]
        self.asked.update(f.index for f in more)
        return more

    def resend(self) -> list[ConfigFetch]:
        """The whole window again (some requests or chunks may have been lost)."""
        wanted = self.assembly.wanted()
        self.asked = {f.index for f in wanted}
        return wanted


def _ring(representative: int, seq: int) -> Ring:
    return Ring(seq, representative)


class ConfigWire:
    """One node's codec and content store for configuration messages."""

    def __init__(self) -> None:
        self.blobs: OrderedDict[bytes, bytes] = OrderedDict()
        """digest -> canonical bytes (most recently used last)."""
        self.configs: dict[bytes, ClusterConfig] = {}
        """digest -> the decoded configuration of a blob (kept with it)."""
        self.fetches: dict[bytes, _Fetch] = {}
        self.counters: Counter[str] = Counter()
        """Dropped messages by reason, and `fetched` / `chunks_served`."""
        self._refs: list[tuple[ClusterConfig, ConfigRef]] = []
        """The last few configurations referenced, by identity (encoding costs ~1 ms/15 kB)."""
        self.last_drop: tuple[str, str] | None = None
        """(reason, detail) of the last drop, for the adapter's log line."""

    # ------------------------------------------------------------ content store
    def ref(self, config: ClusterConfig) -> ConfigRef:
        """The reference to `config`, its bytes kept to answer fetches. The same object is
        encoded once (the replica reports its committed one on every tick)."""
        for held, ref in self._refs:
            if held is config and ref.digest in self.blobs:
                return ref
        blob = cluster_config.encode(config)
        digest = hashlib.sha256(blob).digest()  # = cluster_config.digest(config)
        self._keep(digest, blob, config)
        ref = ConfigRef(config.version, digest, len(blob))
        self._refs = [(config, ref), *self._refs[: REFS_CACHED - 1]]
        return ref

    def _keep(self, digest: bytes, blob: bytes, config: ClusterConfig) -> None:
        self.blobs[digest] = blob
        self.blobs.move_to_end(digest)
        self.configs[digest] = config
        while len(self.blobs) > BLOBS_KEPT:
            old, _ = self.blobs.popitem(last=False)
            self.configs.pop(old, None)

    # ------------------------------------------------------------ outgoing
    def outgoing(self, msg: Message) -> MeshMessage:
        """The datagram payload for one replica message."""
        match msg:
            case State():
                staged = None
                if msg.staged is not None:
                    r = msg.staged.ring
                    staged = ConfigStaged(r.representative, r.seq, self.ref(msg.staged.config))
                ring = msg.ring
                return ConfigState(ring.representative, ring.seq, self.ref(msg.committed), staged)
            case Propose():
                ring = msg.ring
                return ConfigPropose(ring.representative, ring.seq, self.ref(msg.config))
            case Ack():
                return ConfigAck(msg.ring.representative, msg.ring.seq, msg.version, msg.digest)
            case Sync() | Commit():
                return ConfigCommit(self.ref(msg.config))
            case Forward():
                ring = msg.ring
                ref = self.ref(msg.config)
                return ConfigForward(
                    ring.representative, ring.seq, msg.request_id, msg.base_version, ref
                )
            case Result():
                return ConfigResult(msg.request_id, msg.ok, msg.text[:MAX_STR])
        raise TypeError(msg)  # pragma: no cover - Message is closed

    # ------------------------------------------------------------ incoming
    def incoming(self, sender: int, wire: WireConfigMessage) -> tuple[list[Received], Outgoing]:
        """(replica events ready now, datagrams to send back: fetches or chunks)."""
        self.last_drop = None
        try:
            if isinstance(wire, ConfigFetch):
                return [], self._serve(sender, wire)
            if isinstance(wire, ConfigChunk):
                return self._chunk(wire)
            return self._message(sender, wire)
        except DecodeError as exc:
            self._drop(exc.reason, exc.detail)
            return [], []

    def _drop(self, reason: str, detail: str) -> None:
        self.counters[reason] += 1
        self.last_drop = (reason, detail)

    def _message(self, sender: int, wire: WireConfigMessage) -> tuple[list[Received], Outgoing]:
        missing = [r for r in _refs(wire) if r.digest not in self.blobs]
        if not missing:
            return [Received(sender, self._convert(wire))], []
        out: Outgoing = []
        for i, ref in enumerate(missing):  # it waits on one fetch at a time: handed on once
            out += self._want(sender, wire if i == 0 else None, ref)
        return [], out

    def _want(self, sender: int, wire: WireConfigMessage | None, ref: ConfigRef) -> Outgoing:
        fetch = self.fetches.get(ref.digest)
        if fetch is None:
            if len(self.fetches) >= FETCHES_AT_ONCE:
                self._drop("fetches_full", f"{len(self.fetches)} configurations being fetched")
                return []
            fetch = _Fetch(Assembly(ref.digest, ref.size), sender)
            self.fetches[ref.digest] = fetch
            if wire is not None:
                fetch.waiting.append((sender, wire))
            return [(sender, f) for f in fetch.top_up()]
        if fetch.assembly.size != ref.size:
            raise DecodeError("bad_value", f"config {ref.digest.hex()[:12]}: two sizes")
        if wire is not None:
            fetch.waiting.append((sender, wire))
            del fetch.waiting[:-WAITING_PER_FETCH]
        return []

    def _serve(self, sender: int, fetch: ConfigFetch) -> Outgoing:
        blob = self.blobs.get(fetch.digest)
        if blob is None:
            raise DecodeError("fetch_unknown", f"config {fetch.digest.hex()[:12]} not held")
        if fetch.index * CHUNK_BYTES >= len(blob):
            raise DecodeError("bad_value", f"chunk {fetch.index} of {len(blob)} bytes")
        self.counters["chunks_served"] += 1
        return [(sender, chunks(blob)[fetch.index])]

    def _chunk(self, chunk: ConfigChunk) -> tuple[list[Received], Outgoing]:
        fetch = self.fetches.get(chunk.digest)
        if fetch is None:
            raise DecodeError("chunk_unsolicited", f"config {chunk.digest.hex()[:12]}")
        fetch.assembly.add(chunk)
        fetch.idle_ticks = 0
        fetch.asked.discard(chunk.index)
        if not fetch.assembly.complete:
            return [], [(fetch.source, f) for f in fetch.top_up()]
        del self.fetches[chunk.digest]
        try:
            blob = fetch.assembly.result()
            config = cluster_config.decode(blob)
        except ConfigError as exc:
            raise DecodeError("bad_config", str(exc)) from None
        self._keep(chunk.digest, blob, config)
        self.counters["fetched"] += 1
        ready: list[Received] = []
        out: Outgoing = []
        for waiter, wire in fetch.waiting:
            got, more = self._message(waiter, wire)
            ready += got
            out += more
        return ready, out

    def _config(self, ref: ConfigRef) -> ClusterConfig:
        config = self.configs[ref.digest]
        if config.version != ref.version or len(self.blobs[ref.digest]) != ref.size:
            raise DecodeError(
                "bad_value", f"config {ref.digest.hex()[:12]} is version {config.version}"
            )
        return config

    def _convert(self, wire: WireConfigMessage) -> Message:
        match wire:
            case ConfigState():
                staged = None
                if wire.staged is not None:
                    s = wire.staged
                    staged = Staged(
                        _ring(s.ring_representative, s.ring_seq), self._config(s.config)
                    )
                ring = _ring(wire.ring_representative, wire.ring_seq)
                return State(ring, self._config(wire.committed), staged)
            case ConfigPropose():
                ring = _ring(wire.ring_representative, wire.ring_seq)
                return Propose(ring, self._config(wire.config))
            case ConfigAck():
                return Ack(
                    _ring(wire.ring_representative, wire.ring_seq), wire.version, wire.digest
                )
            case ConfigCommit():
                return Commit(self._config(wire.config))
            case ConfigForward():
                ring = _ring(wire.ring_representative, wire.ring_seq)
                return Forward(ring, wire.request_id, wire.base_version, self._config(wire.config))
            case ConfigResult():
                if not wire.text.isprintable():  # it is shown to the user as one line
                    raise DecodeError("bad_value", "result text with control characters")
                return Result(wire.request_id, wire.ok, wire.text)
        raise DecodeError("bad_value", f"{type(wire).__name__} is not a replica message")

    # ------------------------------------------------------------ tick
    def tick(self) -> Outgoing:
        """Resend the window of every fetch; give up those idle for FETCH_PATIENCE ticks."""
        out: Outgoing = []
        for digest, fetch in list(self.fetches.items()):
            fetch.idle_ticks += 1
            if fetch.idle_ticks > FETCH_PATIENCE:
                del self.fetches[digest]
                self._drop("fetch_timeout", f"config {digest.hex()[:12]} from {fetch.source}")
                continue
            out += [(fetch.source, f) for f in fetch.resend()]
        return out


def _refs(wire: WireConfigMessage) -> list[ConfigRef]:
    match wire:
        case ConfigState():
            return [wire.committed] + ([wire.staged.config] if wire.staged else [])
        case ConfigPropose() | ConfigCommit() | ConfigForward():
            return [wire.config]
    return []
