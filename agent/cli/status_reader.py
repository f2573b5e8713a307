"""The CLI's reader of the status document (schema 1): `agent.status.from_json`'s checks,
without `dataclasses`.

`agent.status.from_json` builds the core's frozen dataclasses. Importing `dataclasses` (and the
`inspect` it pulls in) and creating those classes costs ~12 ms, a quarter of a `votemesh status`
poll. This module reads the same document with the same checks and the same one-line
`StatusError`s into light records: one per object, holding exactly the fields of the matching
`agent.status` class (defaults filled in, lists as tuples), and `ring` / `peer()` on the top
record. The renderer (`agent/cli/render.py`) only reads attributes, so it prints a record and a
`NodeStatus` alike.

FIELDS and DEFAULTS are the schema as a table. tests/agent/test_cli_fast.py checks them against
`dataclasses.fields` of every status class (names, types, defaults) and checks that both readers
accept, refuse and render the same documents, so the two cannot drift.

Adapter ring; standard library only, and no module of it (see agent/cli/__init__.py).
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~10 ms per CLI call
if TYPE_CHECKING:
    from typing import Any

    from agent.status import NodeStatus

SCHEMA = 1
"""agent.status.SCHEMA (pinned by a test)."""

FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    "LinkInfo": (
        ("link", "int"),
        ("up", "bool"),
        ("active", "bool"),
        ("rtt_ms", "float | None"),
        ("loss", "float"),
        ("last_heard_s", "float | None"),
    ),
    "PeerInfo": (
        ("node_id", "int"),
        ("name", "str"),
        ("votes", "int"),
        ("member", "bool"),
        ("addresses", "tuple[str, ...]"),
        ("incarnation", "int"),
        ("clock_skew_ms", "int | None"),
        ("last_heartbeat_s", "float | None"),
        ("missing_since_s", "float | None"),
        ("failure_timeout_s", "float"),
        ("active_link", "int | None"),
        ("links", "tuple[LinkInfo, ...]"),
    ),
    "QdeviceInfo": (
        ("configured", "bool"),
        ("connected", "bool"),
        ("vote", "bool"),
        ("votes", "int"),
        ("algorithm", "str"),
        ("server", "str"),
        ("state", "str"),
        ("tls", "str | None"),
        ("connects", "int"),
        ("last_close", "str | None"),
    ),
    "Transition": (
        ("at_s", "float"),
        ("kind", "str"),
        ("reason", "str"),
        ("ring", "str"),
        ("quorate", "bool"),
    ),
    "RuntimeInfo": (
        ("uptime_s", "float"),
        ("local_links", "dict[str, str]"),
        ("datagrams", "dict[str, Any]"),
        ("timers", "dict[str, Any]"),
    ),
    "NodeStatus": (
        ("cluster", "str"),
        ("node_id", "int"),
        ("node_name", "str"),
        ("config_version", "int | None"),
        ("transport", "str"),
        ("secure_auth", "bool"),
        ("addresses", "tuple[str, ...]"),
        ("incarnation", "int"),
        ("ring_id", "tuple[int, int]"),
        ("members", "tuple[int, ...]"),
        ("proposal", "tuple[int, ...]"),
        ("counted", "tuple[int, ...]"),
        ("basis", "str"),
        ("basis_why", "str"),
        ("quorate", "bool"),
        ("expected_votes", "int"),
        ("highest_expected", "int"),
        ("total_votes", "int"),
        ("quorum", "int"),
        ("votes", "int"),
        ("flags", "tuple[str, ...]"),
        ("why", "str"),
        ("views", "str"),
        ("durable_max_seq", "int"),
        ("qdevice", "QdeviceInfo"),
        ("peers", "tuple[PeerInfo, ...]"),
        ("transitions", "tuple[Transition, ...]"),
        ("runtime", "RuntimeInfo | None"),
        ("heartbeat_interval_s", "float | None"),
        ("schema", "int"),
    ),
}
"""Every status class's fields in declaration order: (name, type as written in agent/status.py)."""

DEFAULTS: dict[str, dict[str, object]] = {
    "QdeviceInfo": {
        "connected": False,
        "vote": False,
        "votes": 0,
        "algorithm": "",
        "server": "",
        "state": "",
        "tls": None,
        "connects": 0,
        "last_close": None,
    },
    "NodeStatus": {"runtime": None, "heartbeat_interval_s": None, "schema": SCHEMA},
}
"""The fields that may be absent, and the value the dataclass gives them then."""

_NONE = type(None)
_ACCEPTS: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "bool": (bool,),
    "str": (str,),
    "float": (int, float),
    "int | None": (int, _NONE),
    "str | None": (str, _NONE),
    "float | None": (int, float, _NONE),
    "dict[str, str]": (dict,),
    "dict[str, Any]": (dict,),
}


class StatusError(ValueError):
    """A status document that is not schema 1 (agent.status.StatusError's twin: same text)."""


class Record:
    """One object of the status document: its fields as attributes."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)


class StatusRecord(Record):
    """The top object, with NodeStatus's two helpers the renderer uses."""

    ring_id: tuple[int, int]
    peers: tuple[Any, ...]

    @property
    def ring(self) -> str:
        """The ring id as corosync prints it (agent.status.ring_text)."""
        representative, seq = self.ring_id
        return f"{representative:x}.{seq:x}"

    def peer(self, node_id: int) -> Any:
        """The peer with this id, if known."""
        return next((p for p in self.peers if p.node_id == node_id), None)


def _record(name: str, doc: Any, where: str) -> Any:
    if not isinstance(doc, dict):
        raise StatusError(f"{where}: expected an object, got {type(doc).__name__}")
    values: dict[str, Any] = {}
    optional = DEFAULTS.get(name, {})
    for field, kind in FIELDS[name]:
        if field in doc:
            values[field] = _checked(kind, doc[field], f"{where}.{field}")
        elif field in optional:
            values[field] = optional[field]
        else:
            raise StatusError(f"{where}.{field}: missing")
    return StatusRecord(values) if name == "NodeStatus" else Record(values)


def _checked(kind: str, raw: Any, where: str) -> Any:
    accepts = _ACCEPTS.get(kind)
    if accepts is not None:
        if not isinstance(raw, accepts) or (isinstance(raw, bool) and bool not in accepts):
            raise StatusError(f"{where}: expected {kind}, got {raw!r:.40}")
        return raw
    if kind.startswith("tuple["):
        if not isinstance(raw, list):
            raise StatusError(f"{where}: expected a list, got {raw!r:.40}")
        if kind == "tuple[int, int]":
            if len(raw) != 2:
                raise StatusError(f"{where}: expected two numbers")
            inner = "int"
        else:
            inner = kind[6:-6]
        return tuple(_checked(inner, v, f"{where}[{i}]") for i, v in enumerate(raw))
    if raw is None and kind.endswith(" | None"):
        return None
    return _record(kind.removesuffix(" | None"), raw, where)


def read_status(doc: Any) -> NodeStatus:
    """The status record from its JSON document; StatusError when it is not schema 1.

    Typed as NodeStatus for the renderer: the record has exactly its fields (pinned by tests)."""
    if not isinstance(doc, dict):
        raise StatusError("not a status document")
    if doc.get("schema") != SCHEMA:
        raise StatusError(
            f"status schema {doc.get('schema')!r} from the agent; this votemesh reads schema "
            f"{SCHEMA}: run the same votemesh version as the agent"
        )
    status: NodeStatus = _record("NodeStatus", doc, "status")
    return status
