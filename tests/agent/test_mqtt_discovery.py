"""Home Assistant MQTT discovery payloads (docs/events.md, "Home Assistant"): golden files, each
checked against the documented schema. `VOTEMESH_WRITE_GOLDEN=1` rewrites the golden files
(then review the diff)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from agent.runtime.mqtt import Topics, ha_discovery, node_level

GOLDEN = Path(__file__).parent / "golden"
HA_ID = re.compile(r"[a-zA-Z0-9_-]+")
AVAILABILITY = re.compile(r"votemesh/live/[A-Za-z0-9_.-]+/availability")
STATUS = {
    "cluster": "live",
    "node_id": 1,
    "node_name": "node1",
    "peers": [
        {"node_id": 2, "name": "node2"},
        {"node_id": 3, "name": "db 3"},  # not a topic level: its id stands in
    ],
}
COMMON = {
    "name": str,
    "unique_id": str,
    "state_topic": str,
    "value_template": str,
    "payload_on": str,
    "payload_off": str,
    "payload_available": str,
    "payload_not_available": str,
    "qos": int,
    "device": dict,
    "origin": dict,
}


def check_schema(topic: str, payload: dict[str, Any], state_topic: str) -> None:
    """The documented schema of a votemesh discovery message (docs/events.md)."""
    for key, kind in COMMON.items():
        assert isinstance(payload.get(key), kind), f"{key} missing or not {kind.__name__}"
    uid = payload["unique_id"]
    assert HA_ID.fullmatch(uid)
    assert topic == f"homeassistant/binary_sensor/{uid}/config"
    assert payload["state_topic"] == state_topic
    assert (payload["payload_on"], payload["payload_off"]) == ("ON", "OFF")
    assert (payload["payload_available"], payload["payload_not_available"]) == (
        "online",
        "offline",
    )
    assert payload["value_template"] == "{{ 'ON' if value_json.quorate else 'OFF' }}"
    assert payload["qos"] in (0, 1)
    device = payload["device"]
    assert device["identifiers"]
    assert all(HA_ID.fullmatch(i) for i in device["identifiers"])
    assert isinstance(device["name"], str)
    assert payload["origin"]["name"] == "votemesh"
    topics = [payload["availability_topic"]] if "availability_topic" in payload else []
    topics += [entry["topic"] for entry in payload.get("availability", [])]
    assert topics, "no availability"
    assert all(AVAILABILITY.fullmatch(t) for t in topics)
    allowed = set(COMMON) | {"availability_topic", "availability", "availability_mode"}
    assert set(payload) <= allowed, set(payload) - allowed


def entries() -> list[tuple[str, dict[str, Any]]]:
    return ha_discovery(STATUS, Topics("votemesh", "live", "node1"), "homeassistant", "1.2.3")


@pytest.mark.parametrize(("index", "name"), [(0, "ha_node_quorate"), (1, "ha_cluster_quorate")])
def test_discovery_matches_golden_and_schema(index: int, name: str) -> None:
    topic, payload = entries()[index]
    text = json.dumps({"topic": topic, "payload": payload}, indent=2, sort_keys=True) + "\n"
    path = GOLDEN / f"{name}.json"
    if os.environ.get("VOTEMESH_WRITE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs from its golden file"
    golden = json.loads(path.read_text())
    state = "votemesh/live/node1/state" if index == 0 else "votemesh/live/state"
    check_schema(golden["topic"], golden["payload"], state)


def test_node_entity_is_available_by_its_own_will() -> None:
    _topic, node = entries()[0]
    assert node["availability_topic"] == "votemesh/live/node1/availability"


def test_cluster_entity_is_available_while_any_node_is() -> None:
    _topic, whole = entries()[1]
    assert whole["availability_mode"] == "any"
    assert [a["topic"] for a in whole["availability"]] == [
        "votemesh/live/node1/availability",
        "votemesh/live/node2/availability",
        "votemesh/live/3/availability",
    ]


def test_every_node_sends_the_same_cluster_entity() -> None:
    """Retained and identical from every agent: nodes never overwrite each other's entity."""
    two = {**STATUS, "node_id": 2, "node_name": "node2",
           "peers": [{"node_id": 1, "name": "node1"}, {"node_id": 3, "name": "db 3"}]}  # fmt: skip
    other = ha_discovery(two, Topics("votemesh", "live", "node2"), "homeassistant", "1.2.3")
    assert other[1] == entries()[1]
    assert other[0][0] != entries()[0][0]


def test_schema_check_rejects_a_bad_id() -> None:
    topic, payload = entries()[0]
    bad = {**payload, "unique_id": "votemesh live/1"}
    with pytest.raises(AssertionError):
        check_schema(topic, bad, "votemesh/live/node1/state")


@pytest.mark.parametrize(
    ("name", "node_id", "level"),
    [("node1", 1, "node1"), ("db-2.a_b", 2, "db-2.a_b"), ("db 3", 3, "3"), ("a/b", 4, "4"),
     ("x+", 5, "5"), ("", 6, "6"), ("#", 7, "7"), ("n" * 65, 8, "8")],
)  # fmt: skip
def test_node_level_is_the_name_when_it_is_a_plain_word(
    name: str, node_id: int, level: str
) -> None:
    assert node_level(name, node_id) == level
