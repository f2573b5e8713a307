"""Events the adapter feeds the arbitration core, and effects the core asks it to carry out.

Plain frozen dataclasses; the vocabulary between `qnetd.arbitration.QnetdCore` and the asyncio
adapter in `qnetd/runtime/`. No clock, sockets or logging.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from proto.errors import DecodeError
from proto.qnetd_messages import QnetdMessage
from qnetd.peer_names import PeerNames


# ---------------------------------------------------------------- events (adapter -> core)
@dataclass(frozen=True, slots=True)
class Accepted:
    """A TCP connection was accepted."""

    conn_id: int
    address: str


@dataclass(frozen=True, slots=True)
class Received:
    """A whole message arrived and decoded; `raw` is its bytes (for the echo copy)."""

    conn_id: int
    message: QnetdMessage
    raw: bytes


@dataclass(frozen=True, slots=True)
class Undecodable:
    """A message could not be decoded (or was skipped as oversize / unknown type)."""

    conn_id: int
    error: DecodeError


@dataclass(frozen=True, slots=True)
class TlsEstablished:
    """The TLS handshake after STARTTLS completed; `peer` is None without a client cert."""

    conn_id: int
    peer: PeerNames | None


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed, the socket failed, or the adapter closed it after `Disconnect`."""

    conn_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed; fire due timers (the adapter sends it at `next_deadline()`)."""


@dataclass(frozen=True, slots=True)
class Shutdown:
    """Server stops: drop every client without recomputing votes (reference 9)."""


Event = Accepted | Received | Undecodable | TlsEstablished | ConnectionClosed | Tick | Shutdown


# ---------------------------------------------------------------- effects (core -> adapter)
@dataclass(frozen=True, slots=True)
class Send:
    """Write these bytes (one whole message) to the connection."""

    conn_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class StartTls:
    """Switch the connection to TLS server mode now; send nothing in clear text before."""

    conn_id: int


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Close the connection (discarding anything queued)."""

    conn_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class Log:
    """One structured log line: `event` name, level and fields."""

    event: str
    level: str = "info"
    fields: Mapping[str, Any] = field(default_factory=dict)


Effect = Send | StartTls | Disconnect | Log
