"""`status --json` schema 1: the checked-in JSON Schema (docs/status.schema.json) describes
exactly the typed status, real documents validate against it, `from_json` reads them back
typed and refuses anything else, and the core keeps a bounded transition history."""

from __future__ import annotations

import json
import re
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest

from agent.status import (
    SCHEMA,
    TRANSITIONS_KEPT,
    LinkInfo,
    NodeStatus,
    PeerInfo,
    QdeviceInfo,
    RuntimeInfo,
    StatusError,
    Transition,
    from_json,
    ring_text,
    to_json,
)
from tests.agent.test_node import Net

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "docs" / "status.schema.json"
_TYPES = {
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "null": lambda v: v is None,
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}


def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SCHEMA_FILE.read_text())
    return loaded


def validate(  # noqa: PLR0912 - one branch per schema keyword
    doc: Any, node: dict[str, Any] | None = None, where: str = "$"
) -> list[str]:
    """Errors of `doc` against the subset of JSON Schema the status schema uses."""
    root = schema()
    node = root if node is None else node
    if "$ref" in node:
        return validate(doc, root["$defs"][node["$ref"].rsplit("/", 1)[1]], where)
    if "anyOf" in node:
        if any(not validate(doc, option, where) for option in node["anyOf"]):
            return []
        return [f"{where}: matches no alternative"]
    if "const" in node:
        return [] if doc == node["const"] else [f"{where}: must be {node['const']!r}"]
    kinds = node["type"] if isinstance(node["type"], list) else [node["type"]]
    if not any(_TYPES[k](doc) for k in kinds):
        return [f"{where}: {doc!r:.40} is not {kinds}"]
    errors: list[str] = []
    if isinstance(doc, dict):
        errors += [f"{where}.{k}: missing" for k in node.get("required", ()) if k not in doc]
        for key, value in doc.items():
            sub = node.get("properties", {}).get(key, node.get("additionalProperties"))
            if sub is None and "properties" in node:
                errors.append(f"{where}.{key}: not in the schema")
            elif isinstance(sub, dict):
                errors += validate(value, sub, f"{where}.{key}")
    if isinstance(doc, list):
        if not node.get("minItems", 0) <= len(doc) <= node.get("maxItems", len(doc)):
            errors.append(f"{where}: {len(doc)} items")
        for i, v in enumerate(doc):
            errors += validate(v, node["items"], f"{where}[{i}]")
    if isinstance(doc, str) and "pattern" in node and not re.search(node["pattern"], doc):
        errors.append(f"{where}: {doc!r} does not match {node['pattern']}")
    return errors


def split_net() -> Net:
    """Three nodes in one view, then node 3 crashes: node 1 has a view change, quorum events,
    a missing peer."""
    net = Net.make(3)
    net.run(5.0)
    net.alive.discard(3)
    net.run(5.0)
    return net


def test_schema_file_describes_exactly_the_typed_status() -> None:
    """Every dataclass field is documented in docs/status.schema.json and nothing else is."""
    root = schema()
    assert set(root["properties"]) == {f.name for f in fields(NodeStatus)} | {"ring"}
    for cls in (LinkInfo, PeerInfo, QdeviceInfo, Transition, RuntimeInfo):
        assert set(root["$defs"][cls.__name__]["properties"]) == {f.name for f in fields(cls)}
    assert root["properties"]["schema"] == {"const": SCHEMA}


def test_core_status_validates_and_reads_back_typed() -> None:
    """A real core's status (after a crash) validates, and `from_json` gives the same value."""
    net = split_net()
    snap = net.nodes[1].snapshot(net.now)
    doc = json.loads(json.dumps(net.nodes[1].status(net.now)))
    assert validate(doc) == []
    assert doc["schema"] == 1
    assert doc["ring"] == ring_text(*snap.ring_id)
    assert from_json(doc) == snap
    with_runtime = replace(snap, runtime=RuntimeInfo(1.5, {"0": "127.0.0.1:5407"}, {}, {}))
    assert from_json(json.loads(json.dumps(to_json(with_runtime)))) == with_runtime
    assert snap.members == (1, 2)
    three = snap.peer(3)
    assert three is not None
    assert not three.member
    assert three.missing_since_s is not None
    assert 0 < three.missing_since_s < 5.0
    assert three.addresses == ("127.0.0.3:5407",)
    kinds = [t.kind for t in snap.transitions]
    assert kinds.count("view_installed") >= 2
    assert "quorum_gained" in kinds


def test_transition_history_is_bounded() -> None:
    """Crashes and restarts past TRANSITIONS_KEPT transitions keep only the newest ones."""
    net = Net.make(3)
    net.run(5.0)
    for _ in range(TRANSITIONS_KEPT):
        net.alive.discard(3)
        net.run(4.0)
        net.alive.add(3)
        net.run(4.0)
    history = net.nodes[1].snapshot(net.now).transitions
    assert len(history) == TRANSITIONS_KEPT
    assert [t.at_s for t in history] == sorted((t.at_s for t in history), reverse=True)
    assert history[-1].at_s < 8.0


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(schema=2), "status schema 2"),
        (lambda d: d.pop("schema"), "status schema None"),
        (lambda d: d.pop("quorum"), "status.quorum: missing"),
        (lambda d: d.update(quorate="yes"), "status.quorate: expected bool"),
        (lambda d: d.update(quorum=True), "status.quorum: expected int"),
        (lambda d: d.update(ring_id=[1]), "status.ring_id: expected two numbers"),
        (lambda d: d["peers"][0].update(links=None), "status.peers[0].links: expected a list"),
        (lambda d: d.update(qdevice=[]), "status.qdevice: expected an object"),
    ],
)
def test_from_json_refuses_other_documents(mutate: Any, message: str) -> None:
    """A document of another schema or with a wrong field is a StatusError naming the field."""
    net = split_net()
    doc = json.loads(json.dumps(net.nodes[1].status(net.now)))
    mutate(doc)
    with pytest.raises(StatusError, match=re.escape(message)):
        from_json(doc)


def test_ring_ids_print_in_hex_everywhere() -> None:
    """`ring_text` is corosync's `%x.%llx`: 1.f, not 1.15."""
    assert ring_text(1, 15) == "1.f"
    assert ring_text(0x10, 0x1A8) == "10.1a8"


def test_view_installed_events_carry_the_hex_ring_text() -> None:
    """The view_installed event (log line, MQTT, `events`) names the ring as status does, in
    its details and its reason (main said `as ring (1, 5)`)."""
    net = split_net()
    views = [e.event for _, n, e in net.events if n == 1 and str(e.event.kind) == "view_installed"]
    assert views
    for event in views:
        assert event.details["ring"] == ring_text(*event.details["ring_id"])
        assert f"ring {event.details['ring']}" in event.reason, event.reason
    assert net.nodes[1].snapshot(net.now).transitions[-1].ring == views[-1].details["ring"]
