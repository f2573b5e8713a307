"""Cluster key rotation: the record in the cluster configuration, its phases, and the key wrap.

Core ring (design §3.12): pure. Owns `KeyRotation` (phase, new and old key ids, the wrapped new
key, who confirmed), the configuration edits a rotation is made of (`started`, `confirmed`)
and the wrap of the new key under the old key and the cluster CA's private key. It does not
read files, draw random bytes (the new key and the nonce come from the adapter) or decide when
a node confirms (agent/runtime/key_rotation.py).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, replace

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from agent.config import ConfigError
from proto.datagram_seal import MIN_KEY_BYTES, ClusterKey, cluster_id

KEY_ID_BYTES = 4  # proto/datagram_seal.py ClusterKey.key_id
NONCE_BYTES = 12  # ChaCha20-Poly1305
TAG_BYTES = 16
MAX_WRAPPED = NONCE_BYTES + 4096 + TAG_BYTES  # agent/runtime/keys.py MAX_KEY_BYTES
WRAP_INFO = b"votemesh key wrap v1"


class Phase(enum.IntEnum):
    """Where a rotation is (append-only values: they are in the canonical encoding)."""

    DISTRIBUTE = 1
    """Every member stores the new key and opens with both; seals with the old one."""
    SWITCH = 2
    """Every member seals with the new key; still opens both."""
    DONE = 3
    """The new key is the only key; the record names the current key id."""


@dataclass(frozen=True, slots=True)
class KeyRotation:
    """The cluster configuration's key record (design §3.12)."""

    phase: Phase
    key_id: bytes
    """The new key's id (4 bytes); in `DONE`, the current key's."""
    old_key_id: bytes
    """The key it replaces; the wrap is under it."""
    wrapped: bytes = b""
    """Nonce + ChaCha20-Poly1305 of the new key; empty in `DONE`."""
    confirmed: tuple[int, ...] = ()
    """Node ids that confirmed the current phase, sorted."""

    @property
    def in_progress(self) -> bool:
        """Distribute or switch: another rotation must wait."""
        return self.phase is not Phase.DONE

    def fields(self) -> list[object]:
        """The canonical encoding's items."""
        return [
            int(self.phase), self.key_id, self.old_key_id, self.wrapped, list(self.confirmed)
        ]  # fmt: skip

    @classmethod
    def from_fields(cls, items: list[object]) -> KeyRotation:
        """From `fields()`; ValueError/TypeError on anything else (the decoder's errors)."""
        phase, key_id, old_key_id, wrapped, confirmed = items
        if not isinstance(key_id, bytes) or not isinstance(old_key_id, bytes):
            raise TypeError("key ids")
        if not isinstance(wrapped, bytes) or not isinstance(confirmed, list):
            raise TypeError("wrapped key or confirmed list")
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in confirmed):
            raise TypeError("confirmed ids")
        return cls(Phase(phase), key_id, old_key_id, wrapped, tuple(confirmed))  # type: ignore[arg-type]

    def validate(self) -> None:
        """ConfigError (one line) for a record no member could act on."""
        if len(self.key_id) != KEY_ID_BYTES or len(self.old_key_id) != KEY_ID_BYTES:
            raise ConfigError("key_rotation: key ids have 4 bytes")
        if self.key_id == self.old_key_id:
            raise ConfigError("key_rotation: the new key is the old key")
        wrap_ok = not self.wrapped if self.phase is Phase.DONE else self._wrap_size_ok()
        if not wrap_ok:
            raise ConfigError("key_rotation: wrapped key of the wrong size for its phase")
        if list(self.confirmed) != sorted(set(self.confirmed)) or any(
            not 0 < i < 2**32 for i in self.confirmed
        ):
            raise ConfigError("key_rotation: confirmed node ids must be sorted, distinct, u32")

    def _wrap_size_ok(self) -> bool:
        return NONCE_BYTES + MIN_KEY_BYTES + TAG_BYTES <= len(self.wrapped) <= MAX_WRAPPED


def _wrap_cipher(
    old: ClusterKey, ca_secret: bytes, cluster: str, new_key_id: bytes
) -> ChaCha20Poly1305:
    info = WRAP_INFO + cluster_id(cluster) + old.key_id + new_key_id
    ikm = struct.pack(">I", len(old.secret)) + old.secret + ca_secret
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info)
    return ChaCha20Poly1305(hkdf.derive(ikm))


def wrap(old: ClusterKey, ca_secret: bytes, cluster: str, new: ClusterKey, nonce: bytes) -> bytes:
    """The new key sealed under (old key, CA key); `nonce`: 12 random bytes from the caller."""
    if len(nonce) != NONCE_BYTES:
        raise ValueError("nonce has 12 bytes")
    cipher = _wrap_cipher(old, ca_secret, cluster, new.key_id)
    return nonce + cipher.encrypt(nonce, new.secret, new.key_id)


def unwrap(old: ClusterKey, ca_secret: bytes, cluster: str, record: KeyRotation) -> ClusterKey:
    """The new key of `record`; ConfigError if it does not open or is not the key named."""
    cipher = _wrap_cipher(old, ca_secret, cluster, record.key_id)
    nonce, sealed = record.wrapped[:NONCE_BYTES], record.wrapped[NONCE_BYTES:]
    try:
        secret = cipher.decrypt(nonce, sealed, record.key_id)
    except InvalidTag:
        raise ConfigError(
            "the new cluster key does not open with this node's key and cluster CA key"
        ) from None
    key = ClusterKey(secret)
    if key.key_id != record.key_id:
        raise ConfigError("the new cluster key is not the key the configuration names")
    return key


def check_idle(record: KeyRotation | None) -> None:
    """ConfigError (one line) while a rotation is under way."""
    if record is not None and record.in_progress:
        raise ConfigError(
            f"a key rotation is in progress ({record.phase.name.lower()}, confirmed by nodes "
            f"{list(record.confirmed)}); wait for it to finish (votemesh config show)"
        )


def started(record: KeyRotation | None, new: KeyRotation) -> KeyRotation:
    """The record after `rotate-key`; ConfigError while another rotation is under way."""
    check_idle(record)
    return new


def confirmed(record: KeyRotation | None, members: set[int], node_id: int) -> KeyRotation:
    """The record after `node_id` confirmed the current phase (and the advance if every member
    has); ConfigError when there is nothing to confirm (a stale or finished rotation)."""
    if record is None or not record.in_progress:
        raise ConfigError("no key rotation in progress")
    done = set(record.confirmed) | ({node_id} if node_id in members else set())
    if members <= done:
        if record.phase is Phase.DISTRIBUTE:
            return replace(record, phase=Phase.SWITCH, confirmed=())
        return replace(record, phase=Phase.DONE, wrapped=b"", confirmed=())
    if node_id in record.confirmed:
        raise ConfigError("already confirmed")
    return replace(record, confirmed=tuple(sorted(done)))


def waiting_for(record: KeyRotation | None, members: set[int]) -> list[int]:
    """Members that have not confirmed the current phase (empty when none is under way)."""
    if record is None or not record.in_progress:
        return []
    return sorted(members - set(record.confirmed))
