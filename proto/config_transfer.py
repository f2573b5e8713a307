"""Moving a cluster configuration (or any blob named by its SHA-256) in datagram-sized chunks.

Pure: `chunks(blob)` cuts the canonical bytes into `ConfigChunk`s of at most CHUNK_BYTES (a
sealed chunk stays below IPv6's 1,280-byte minimum MTU, so nothing depends on IP fragmentation);
`Assembly` collects a peer's chunks in any order, with duplicates, says which to ask for next
(a window of outstanding `ConfigFetch`es the adapter resends on its tick) and returns the bytes
only when they hash to the digest they were asked for. No clock, sockets or logging.
"""

from __future__ import annotations

import hashlib

from proto.errors import DecodeError, LocalProtocolError
from proto.mesh_messages import CHUNK_BYTES, MAX_CONFIG_BYTES, ConfigChunk, ConfigFetch

WINDOW = 8
"""Chunks asked for at once: 8 KiB in flight, a 100-node configuration in 2 round trips."""


def chunks(blob: bytes) -> list[ConfigChunk]:
    """Every chunk of `blob` (1 .. MAX_CONFIG_BYTES bytes)."""
    if not 1 <= len(blob) <= MAX_CONFIG_BYTES:
        raise LocalProtocolError(f"{len(blob)} bytes cannot be sent as a configuration")
    digest = hashlib.sha256(blob).digest()
    return [
        ConfigChunk(digest, len(blob), i, blob[i * CHUNK_BYTES : (i + 1) * CHUNK_BYTES])
        for i in range((len(blob) + CHUNK_BYTES - 1) // CHUNK_BYTES)
    ]


class Assembly:
    """The chunks received so far of the blob with `digest` and `size` (from a ConfigRef)."""

    def __init__(self, digest: bytes, size: int) -> None:
        if len(digest) != 32 or not 1 <= size <= MAX_CONFIG_BYTES:
            raise LocalProtocolError("an assembly needs a SHA-256 digest and 1 B .. 1 MiB")
        self.digest = digest
        self.size = size
        self.count = (size + CHUNK_BYTES - 1) // CHUNK_BYTES
        self.parts: dict[int, bytes] = {}

    def add(self, chunk: ConfigChunk) -> None:
        """Keep one chunk; DecodeError('bad_value') for one that cannot belong to this blob."""
        if chunk.digest != self.digest:
            raise DecodeError("bad_value", "chunk of another configuration")
        if chunk.size != self.size or chunk.index >= self.count:
            raise DecodeError("bad_value", f"chunk {chunk.index} of {chunk.size} bytes")
        last = chunk.index == self.count - 1
        want = self.size - chunk.index * CHUNK_BYTES if last else CHUNK_BYTES
        if len(chunk.data) != want:
            raise DecodeError("bad_value", f"chunk {chunk.index}: {len(chunk.data)} bytes")
        self.parts.setdefault(chunk.index, chunk.data)

    def wanted(self) -> list[ConfigFetch]:
        """The next fetches to send (at most WINDOW missing chunks, lowest first)."""
        missing = (i for i in range(self.count) if i not in self.parts)
        return [ConfigFetch(self.digest, i) for _, i in zip(range(WINDOW), missing, strict=False)]

    @property
    def complete(self) -> bool:
        return len(self.parts) == self.count

    def result(self) -> bytes:
        """The blob; DecodeError('bad_value') if the chunks do not hash to the digest (a member
        sent wrong bytes: the adapter drops the assembly and asks another member)."""
        if not self.complete:
            raise LocalProtocolError("assembly not complete")
        blob = b"".join(self.parts[i] for i in range(self.count))
        if hashlib.sha256(blob).digest() != self.digest:
            raise DecodeError("bad_value", "configuration chunks do not match their digest")
        return blob
