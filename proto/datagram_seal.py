"""Sealed agent-to-agent datagrams: the versioned envelope, `Sealer` and `Opener`.

Owns the byte layout of docs/design.md section 1.3, the per-sender key derivation and the replay
windows. ChaCha20-Poly1305 from `cryptography`; the 36-byte header is the associated data.
Must not read a clock, open a socket, log or draw random numbers: incarnations and keys come from
the caller.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from proto.errors import DecodeError, LocalProtocolError

MAGIC = b"VM"
ENVELOPE_VERSION = 1
HEADER = struct.Struct(">2sBB8s4sIQQ")  # magic, version, kind, cluster id, key id, node, inc, ctr
HEADER_SIZE = HEADER.size  # 36
TAG_SIZE = 16  # Poly1305
OVERHEAD = HEADER_SIZE + TAG_SIZE
MIN_KEY_BYTES = 32
MAX_KEYRING = 8
REPLAY_WINDOW = 1024  # counters remembered behind the highest one (as WireGuard's 2048-bit ring)
_WINDOW_MASK = (1 << REPLAY_WINDOW) - 1
_PREFIX = MAGIC + bytes([ENVELOPE_VERSION])  # the first 3 bytes of every datagram we open
_SLOT = slice(4, 28)
"""Header bytes naming one sender life: cluster id, key id, node id, incarnation."""
_NONCE_PAD = b"\0\0\0\0"
MAX_U32 = 0xFFFFFFFF
MAX_U64 = 0xFFFFFFFFFFFFFFFF
INCARNATION_MAX = 2**62
"""Largest incarnation sealed or accepted: wall-clock microseconds reach it in the year 148,000;
a larger one (2**64 - 1 from a hostile member) is a `bad_header`."""
INCARNATIONS_KEPT = 4
"""Replay windows kept per sender: its current life, a duplicate or hostile one, and the lives
before a restart whose reordered datagrams may still arrive (least recently used goes)."""
RESYNC_AFTER = 0.3
"""Seconds a replay window may accept nothing before an authentic datagram behind it re-anchors
it: after a counter jump (a hostile 2**64 - 1), the real sender is back within 0.3 s plus one
heartbeat (less than the failure timeout, so no view change) instead of never. Replays it lets
through are stopped by the agent's freshness rule (design §3.3); a live sender's own datagrams
are never behind its window, so only a jumped or long-silent window re-anchors."""


def claimed_sender(datagram: bytes) -> int | None:
    """The node id a datagram's header claims (None if it has no header): unauthenticated, for
    deciding what to do about a sender the Opener did not admit, never as proof."""
    if len(datagram) < OVERHEAD or datagram[:2] != MAGIC:
        return None
    sender: int = HEADER.unpack_from(datagram)[5]
    return sender


def cluster_id(cluster_name: str) -> bytes:
    """8-byte id of a cluster name, carried in every datagram header."""
    return hashlib.sha256(b"votemesh cluster id\0" + cluster_name.encode()).digest()[:8]


@dataclass(frozen=True)
class ClusterKey:
    """The shared secret of a cluster, and its public 4-byte id."""

    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) < MIN_KEY_BYTES:
            raise ValueError(
                f"cluster key has {len(self.secret)} bytes; it needs at least {MIN_KEY_BYTES} "
                "random bytes (create one with `votemesh keygen`)"
            )

    @property
    def key_id(self) -> bytes:
        """4-byte id naming this key in datagram headers (reveals nothing usable)."""
        return hashlib.sha256(b"votemesh key id\0" + self.secret).digest()[:4]

    def sender_cipher(self, cid: bytes, node_id: int, incarnation: int) -> ChaCha20Poly1305:
        """The AEAD for one sender incarnation: HKDF-SHA256 over the secret."""
        info = b"votemesh seal v1" + cid + struct.pack(">IQ", node_id, incarnation)
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info)
        return ChaCha20Poly1305(hkdf.derive(self.secret))


class EnvelopeHeader(NamedTuple):
    """The clear-text, authenticated header of a sealed datagram (a named tuple: made for
    every datagram received, at a third of a frozen dataclass's cost)."""

    kind: int
    cluster_id: bytes
    key_id: bytes
    sender: int
    incarnation: int
    counter: int

    def pack(self) -> bytes:
        """The 36 header bytes."""
        return HEADER.pack(
            MAGIC,
            ENVELOPE_VERSION,
            self.kind,
            self.cluster_id,
            self.key_id,
            self.sender,
            self.incarnation,
            self.counter,
        )


def _nonce(counter: int) -> bytes:
    return b"\0\0\0\0" + counter.to_bytes(8, "big")


class Sealer:
    """Seals this node's datagrams; one per (cluster, node, incarnation)."""

    def __init__(self, cluster_name: str, key: ClusterKey, node_id: int, incarnation: int) -> None:
        if not 0 < node_id <= MAX_U32:
            raise LocalProtocolError(f"node id {node_id} is not a non-zero u32")
        if not 0 < incarnation <= INCARNATION_MAX:
            raise LocalProtocolError(f"incarnation {incarnation} is not in 1..2**62")
        self.node_id = node_id
        self.incarnation = incarnation
        self._cid = cluster_id(cluster_name)
        self._key_id = key.key_id
        self._cipher = key.sender_cipher(self._cid, node_id, incarnation)
        self._prefixes: dict[int, bytes] = {}  # kind -> the header bytes before the counter
        self.counter = 0
        """Counter of the last datagram sealed (the next one uses counter + 1)."""

    def seal(self, kind: int, payload: bytes) -> bytes:
        """One datagram carrying `payload` as message kind `kind`."""
        if self.counter >= MAX_U64:
            raise LocalProtocolError("counter exhausted: restart with a new incarnation")
        self.counter += 1
        prefix = self._prefixes.get(kind)
        if prefix is None:  # the header but its counter: the same for every datagram of a kind
            whole = EnvelopeHeader(kind, self._cid, self._key_id, self.node_id, self.incarnation, 0)
            prefix = self._prefixes[kind] = whole.pack()[:-8]
        counter = self.counter.to_bytes(8, "big")
        header = prefix + counter
        return header + self._cipher.encrypt(b"\0\0\0\0" + counter, payload, header)


@dataclass(slots=True)
class _ReplayWindow:
    """Highest counter accepted for one sender incarnation, and a bitmap of the ones behind it."""

    highest: int = 0
    bitmap: int = 0  # bit i set = counter (highest - i) was accepted
    accepted_at: float | None = None  # when it last accepted a datagram (None: no clock given)

    def check(self, counter: int, now: float | None) -> None:
        if counter > self.highest or self.admits(counter, now):
            return
        raise DecodeError("replayed", f"counter {counter}, highest {self.highest}")

    def admits(self, counter: int, now: float | None) -> bool:
        """A counter at or behind the highest: not seen within the window, or far behind a
        stale window (re-anchored by mark() once it authenticates)."""
        behind = self.highest - counter
        if behind < REPLAY_WINDOW:
            return not self.bitmap >> behind & 1
        return self.stale(now)

    def stale(self, now: float | None) -> bool:
        """Accepted nothing for RESYNC_AFTER seconds (never, without a clock)."""
        return now is not None and (
            self.accepted_at is None or now - self.accepted_at >= RESYNC_AFTER
        )

    def mark(self, counter: int, now: float | None) -> None:
        if counter > self.highest:
            shift = counter - self.highest
            # A jump past the window leaves nothing of the old bitmap: never shift by 2**64.
            kept = self.bitmap << shift if shift < REPLAY_WINDOW else 0
            self.bitmap = (kept | 1) & _WINDOW_MASK
            self.highest = counter
        elif self.highest - counter >= REPLAY_WINDOW:  # re-anchor after a jump (check allowed it)
            self.highest, self.bitmap = counter, 1
        else:
            self.bitmap |= 1 << (self.highest - counter)
        if now is not None:
            self.accepted_at = now


_Slot = tuple[int, int, ChaCha20Poly1305, _ReplayWindow, dict[int, _ReplayWindow]]
"""(sender, incarnation, its AEAD, its replay window, the sender's windows by incarnation)."""


class Opener:
    """Checks and opens datagrams from the cluster's nodes; keeps replay windows per sender.

    `admit(sender)` says which node ids may hold state here (the configured and discovered
    nodes): any other sender is `unknown_peer` before the AEAD, so 20,000 forged ids cost no
    memory. Per sender it keeps one replay window for each of its INCARNATIONS_KEPT most
    recently accepted incarnations; which incarnation is the sender's current life is the
    agent's decision (design §3.3, "One node id, two lives"), not the opener's."""

    def __init__(
        self,
        cluster_name: str,
        keys: list[ClusterKey],
        admit: Callable[[int], bool] | None = None,
    ) -> None:
        if not 0 < len(keys) <= MAX_KEYRING:
            raise LocalProtocolError(f"keyring needs 1 to {MAX_KEYRING} keys, got {len(keys)}")
        self._cid = cluster_id(cluster_name)
        self._keys = {k.key_id: k for k in keys}
        self._admit = admit
        self._windows: dict[int, dict[int, _ReplayWindow]] = {}
        self._ciphers: dict[tuple[bytes, int, int], ChaCha20Poly1305] = {}
        self._slots: dict[bytes, _Slot] = {}
        """Header bytes 4-28 (cluster id, key id, node id, incarnation) of a sender life that
        authenticated -> what `open_fields` needs to open its next datagram with no parsing
        (its `_ciphers` entry among them): dropped with a sender's or incarnation's ciphers
        (`forget`, eviction) and all at once by `set_keys`."""

    def open_fields(self, datagram: bytes, now: float | None = None) -> tuple[int, int, int, bytes]:
        """(kind, sender, incarnation, payload) of an authentic, fresh datagram, as `open`.

        The fast path, for a sender life that authenticated before (its header bytes name a
        cached slot): the checks `_parse_header` would repeat on those bytes held then and
        still hold (`set_keys` and `forget` drop slots); magic, version, a non-zero counter,
        `admit`, the replay window and the AEAD are checked again here. A datagram failing the
        AEAD is `forged` at once (what `open` would say after the same checks); anything else,
        or any other check failing, goes through `open`, which accepts or refuses it with its
        reason (nothing here changes state before the datagram authenticated)."""
        slot = self._slots.get(datagram[_SLOT])
        if slot is not None and len(datagram) >= OVERHEAD and datagram[:3] == _PREFIX:
            sender, incarnation, cipher, window, lives = slot
            counter_bytes = datagram[28:36]
            counter = int.from_bytes(counter_bytes, "big")
            admit = self._admit
            if (
                counter
                and (admit is None or admit(sender))
                and (counter > window.highest or window.admits(counter, now))
            ):
                try:
                    payload: bytes = cipher.decrypt(
                        _NONCE_PAD + counter_bytes, datagram[HEADER_SIZE:], datagram[:HEADER_SIZE]
                    )
                except InvalidTag:
                    # `open` would pass the same checks and try the same cipher again: its
                    # verdict, without a second AEAD (a forged copy of a live header is cheap)
                    raise DecodeError("forged", f"node {sender}") from None
                else:
                    lives[incarnation] = lives.pop(incarnation)  # most recently used last
                    window.mark(counter, now)
                    return datagram[3], sender, incarnation, payload
        header, payload = self.open(datagram, now)
        return header.kind, header.sender, header.incarnation, payload

    def open(self, datagram: bytes, now: float | None = None) -> tuple[EnvelopeHeader, bytes]:
        """(header, payload) of an authentic, fresh datagram; DecodeError with a reason if not.

        `now` (monotonic seconds, optional) lets a window that accepted nothing for
        RESYNC_AFTER re-anchor on an authentic datagram far behind it."""
        header = self._parse_header(datagram)
        lives = self._windows.get(header.sender)
        window = None if lives is None else lives.get(header.incarnation)
        if window is not None:
            window.check(header.counter, now)
        payload = self._decrypt(header, datagram)
        if window is None:
            window = _ReplayWindow()
            lives = self._windows.setdefault(header.sender, {})
            lives[header.incarnation] = window
            self._evict(header.sender, lives)
        else:
            lives = self._windows[header.sender]
            lives[header.incarnation] = lives.pop(header.incarnation)  # most recently used last
        window.mark(header.counter, now)
        self._slots[datagram[_SLOT]] = (
            header.sender,
            header.incarnation,
            self._ciphers[(header.key_id, header.sender, header.incarnation)],
            window,
            lives,
        )
        return header, payload

    def _evict(self, sender: int, lives: dict[int, _ReplayWindow]) -> None:
        while len(lives) > INCARNATIONS_KEPT:
            oldest = next(iter(lives))
            del lives[oldest]
            for slot in [s for s in self._ciphers if s[1] == sender and s[2] == oldest]:
                del self._ciphers[slot]
            self._drop_slots(sender, oldest)

    def _drop_slots(self, sender: int, incarnation: int | None = None) -> None:
        """Forget the fast-path slots of a sender (of one of its incarnations)."""
        for key, slot in list(self._slots.items()):
            if slot[0] == sender and incarnation in (None, slot[1]):
                del self._slots[key]

    def _parse_header(self, datagram: bytes) -> EnvelopeHeader:
        if len(datagram) < OVERHEAD:
            raise DecodeError("truncated", f"{len(datagram)} bytes")
        magic, version, kind, cid, key_id, sender, incarnation, counter = HEADER.unpack_from(
            datagram
        )
        if magic != MAGIC:
            raise DecodeError("bad_magic")
        if version != ENVELOPE_VERSION:
            raise DecodeError("bad_version", f"envelope version {version}")
        if cid != self._cid:
            raise DecodeError("foreign_cluster", cid.hex())
        if key_id not in self._keys:
            raise DecodeError("unknown_key", key_id.hex())
        if not (sender and incarnation and counter):
            raise DecodeError("bad_header", "zero sender, incarnation or counter")
        if incarnation > INCARNATION_MAX:
            raise DecodeError("bad_header", f"node {sender}: incarnation {incarnation} > 2**62")
        if self._admit is not None and not self._admit(sender):
            raise DecodeError("unknown_peer", f"node {sender}")
        return EnvelopeHeader(kind, cid, key_id, sender, incarnation, counter)

    def _decrypt(self, header: EnvelopeHeader, datagram: bytes) -> bytes:
        slot = (header.key_id, header.sender, header.incarnation)
        cipher = self._ciphers.get(slot)
        if cipher is None:
            key = self._keys[header.key_id]
            cipher = key.sender_cipher(self._cid, header.sender, header.incarnation)
        try:
            payload = cipher.decrypt(
                _nonce(header.counter), datagram[HEADER_SIZE:], datagram[:HEADER_SIZE]
            )
        except InvalidTag:
            raise DecodeError("forged", f"node {header.sender}") from None
        self._ciphers[slot] = cipher  # cached only once it proved itself
        return payload

    def set_keys(self, keys: list[ClusterKey]) -> None:
        """Open with these keys from now on (a key rotation, design §3.12); replay windows are
        kept (they are per sender and incarnation, not per key)."""
        if not 0 < len(keys) <= MAX_KEYRING:
            raise LocalProtocolError(f"keyring needs 1 to {MAX_KEYRING} keys, got {len(keys)}")
        self._keys = {k.key_id: k for k in keys}
        for slot in [s for s in self._ciphers if s[0] not in self._keys]:
            del self._ciphers[slot]
        self._slots.clear()  # refilled by the next datagram of each sender through `open`

    def key_ids(self) -> list[bytes]:
        """The ids of the keys it opens with."""
        return list(self._keys)

    def forget(self, sender: int) -> None:
        """Drop a removed node's replay state (a node deleted from the cluster)."""
        self._windows.pop(sender, None)
        for slot in [s for s in self._ciphers if s[1] == sender]:
            del self._ciphers[slot]
        self._drop_slots(sender)

    def senders(self) -> int:
        """Senders with replay state (bounded by `admit`)."""
        return len(self._windows)
