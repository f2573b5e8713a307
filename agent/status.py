"""The node's status: one typed, versioned structure (`votemesh status --json`, schema 1).

The core builds a `NodeStatus` (`AgentNode.snapshot`), the runtime extends it with what only it
knows (`RuntimeInfo`, the qdevice session's connection details) by `dataclasses.replace`, the
control socket sends `to_json(...)`, and the CLI reads it back with `from_json`, which checks the
schema version and every field's type (a wrong document is a `StatusError`, never a guess).

Core ring: pure data, and kept cheap to import (the CLI imports it on every call): standard
library `dataclasses` only, nothing from the rest of the agent.

Ring ids print one way everywhere: `ring_text` (hex `rep.seq`, like corosync's
`"%" PRIx32 ".%" PRIx64`). In JSON a ring id is `[representative, seq]` (numbers) plus
`ring` (that text).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~10 ms per CLI call
if TYPE_CHECKING:
    from typing import Any

SCHEMA = 1
"""Bumped when a field is removed or changes meaning; new fields may appear within a version."""
TRANSITIONS_KEPT = 16
"""How many quorum/view transitions the core keeps for `votemesh explain`."""


class StatusError(ValueError):
    """A status document that is not schema 1 (or not a status document)."""


def ring_text(representative: int, seq: int) -> str:
    """A ring id as corosync prints it: hex representative node id, dot, hex sequence."""
    return f"{representative:x}.{seq:x}"


@dataclass(frozen=True)
class LinkInfo:
    """One link to one peer."""

    link: int
    up: bool
    active: bool
    rtt_ms: float | None
    loss: float
    last_heard_s: float | None


@dataclass(frozen=True)
class PeerInfo:
    """One configured or discovered peer, as this node last heard it."""

    node_id: int
    name: str
    votes: int
    member: bool
    """In this node's current view."""
    addresses: tuple[str, ...]
    """`host:port` per configured link, lowest link first (may be empty for discovered peers)."""
    incarnation: int
    clock_skew_ms: int | None
    last_heartbeat_s: float | None
    """Seconds since its last heartbeat (None: never heard in this life)."""
    missing_since_s: float | None
    """Seconds since it left this node's view (None: a member, or never in a view since start)."""
    failure_timeout_s: float
    active_link: int | None
    links: tuple[LinkInfo, ...]


@dataclass(frozen=True)
class QdeviceInfo:
    """This node's quorum device (configured is False: the rest is empty)."""

    configured: bool
    connected: bool = False
    vote: bool = False
    """The qnetd currently gives this node the device's votes."""
    votes: int = 0
    """The device's votes when it votes (what the pseudo-row shows)."""
    algorithm: str = ""
    server: str = ""
    state: str = ""
    """Session state (runtime)."""
    tls: str | None = None
    connects: int = 0
    last_close: str | None = None


@dataclass(frozen=True)
class Transition:
    """One recorded change: a view installed, quorum gained or lost, expected votes changed."""

    at_s: float
    """Seconds ago (relative to the snapshot)."""
    kind: str
    reason: str
    ring: str
    quorate: bool


@dataclass(frozen=True)
class RuntimeInfo:
    """What only the running agent knows (absent from a core-only snapshot)."""

    uptime_s: float
    local_links: dict[str, str]
    datagrams: dict[str, Any]
    timers: dict[str, Any]


@dataclass(frozen=True)
class NodeStatus:
    """Everything `status`, `nodes` and `explain` print."""

    cluster: str
    node_id: int
    node_name: str
    config_version: int | None
    """The cluster configuration's version (None: not known, printed as pvecm's -1)."""
    transport: str
    secure_auth: bool
    addresses: tuple[str, ...]
    """This node's own link addresses, lowest link first."""
    incarnation: int
    ring_id: tuple[int, int]
    members: tuple[int, ...]
    proposal: tuple[int, ...]
    counted: tuple[int, ...]
    """The members whose votes quorum counts (design §3.4): the view, a held view, or the view's
    heard members."""
    basis: str
    """Why those: `settled`, `held` or `heard` (design §3.4)."""
    basis_why: str
    """Why, in one sentence (e.g. `device ACK for ring (1, 26)`, or who is not heard)."""
    quorate: bool
    expected_votes: int
    highest_expected: int
    total_votes: int
    quorum: int
    votes: int
    """This node's own votes."""
    flags: tuple[str, ...]
    why: str
    """The rule that decided, in one sentence."""
    views: str
    """`forming`, or `halted: <reason>` while the ring sequence cannot be stored."""
    durable_max_seq: int
    qdevice: QdeviceInfo
    peers: tuple[PeerInfo, ...]
    transitions: tuple[Transition, ...]
    """Oldest first, at most TRANSITIONS_KEPT."""
    runtime: RuntimeInfo | None = None
    heartbeat_interval_s: float | None = None
    """The heartbeat interval this node runs with: the configured one sized to the cluster
    (design §3.14); None in a document from an agent before it."""
    schema: int = field(default=SCHEMA)

    @property
    def ring(self) -> str:
        """The ring id as corosync prints it."""
        return ring_text(*self.ring_id)

    def peer(self, node_id: int) -> PeerInfo | None:
        """The peer with this id, if known."""
        return next((p for p in self.peers if p.node_id == node_id), None)


# ---------------------------------------------------------------- JSON


def to_json(value: Any) -> Any:
    """A status (or any part of it) as JSON-ready values."""
    if isinstance(value, NodeStatus):
        doc = {f.name: to_json(getattr(value, f.name)) for f in fields(value)}
        doc["ring"] = value.ring
        return doc
    if hasattr(value, "__dataclass_fields__"):
        return {f.name: to_json(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, tuple | list):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    return value


_SCALARS: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "bool": (bool,),
    "str": (str,),
    "float": (int, float),
    "int | None": (int, type(None)),
    "str | None": (str, type(None)),
    "float | None": (int, float, type(None)),
    "dict[str, str]": (dict,),
    "dict[str, Any]": (dict,),
}


def _build(cls: Any, doc: Any, where: str) -> Any:
    if not isinstance(doc, dict):
        raise StatusError(f"{where}: expected an object, got {type(doc).__name__}")
    values: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in doc:
            if f.default is not f.default_factory:  # has a default (dataclasses.MISSING check)
                continue
            raise StatusError(f"{where}.{f.name}: missing")
        values[f.name] = _value(str(f.type), doc[f.name], f"{where}.{f.name}")
    return cls(**values)


_NESTED = {
    "LinkInfo": LinkInfo,
    "PeerInfo": PeerInfo,
    "QdeviceInfo": QdeviceInfo,
    "Transition": Transition,
    "RuntimeInfo": RuntimeInfo,
}


def _value(kind: str, raw: Any, where: str) -> Any:
    if kind in _SCALARS:
        ok = isinstance(raw, _SCALARS[kind]) and not (
            isinstance(raw, bool) and bool not in _SCALARS[kind]
        )
        if not ok:
            raise StatusError(f"{where}: expected {kind}, got {raw!r:.40}")
        return raw
    if kind == "tuple[int, int]" or (kind.startswith("tuple[") and kind.endswith(", ...]")):
        if not isinstance(raw, list):
            raise StatusError(f"{where}: expected a list, got {raw!r:.40}")
        inner = "int" if kind == "tuple[int, int]" else kind[6:-6]
        if kind == "tuple[int, int]" and len(raw) != 2:
            raise StatusError(f"{where}: expected two numbers")
        return tuple(_value(inner, v, f"{where}[{i}]") for i, v in enumerate(raw))
    nested = kind.removesuffix(" | None")
    if nested in _NESTED:
        if raw is None and kind.endswith(" | None"):
            return None
        return _build(_NESTED[nested], raw, where)
    raise StatusError(f"{where}: unknown field type {kind}")  # pragma: no cover - a coding slip


def from_json(doc: Any) -> NodeStatus:
    """The typed status from its JSON document; StatusError when it is not schema 1."""
    if not isinstance(doc, dict):
        raise StatusError("not a status document")
    if doc.get("schema") != SCHEMA:
        raise StatusError(
            f"status schema {doc.get('schema')!r} from the agent; this votemesh reads schema "
            f"{SCHEMA}: run the same votemesh version as the agent"
        )
    status: NodeStatus = _build(NodeStatus, doc, "status")
    return status
