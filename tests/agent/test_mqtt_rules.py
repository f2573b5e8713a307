"""Who publishes the cluster summary (docs/events.md), the summary's fields, hostile retained
summaries, and the one-line connect failures. Pure functions: no broker."""

from __future__ import annotations

import asyncio
import json
from functools import partial
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from agent.outputs import MqttConfig
from agent.runtime.fanout import Published, SinkContext
from agent.runtime.mqtt import (
    MAX_LEVELS,
    LocalFileError,
    MqttSink,
    Topics,
    _parse_summary,
    cluster_summary,
    describe,
    same_claim,
    summary_wanted,
)

ONLINE = {"node1": "online", "node2": "online", "node3": "online"}


def status(node: int, ring: tuple[int, int], members: list[int], quorate: bool) -> dict[str, Any]:
    return {
        "cluster": "live",
        "node_id": node,
        "node_name": f"node{node}",
        "ring_id": list(ring),
        "ring": f"{ring[0]:x}.{ring[1]:x}",
        "members": members,
        "quorate": quorate,
        "total_votes": len(members),
        "quorum": 2,
        "expected_votes": 3,
        "highest_expected": 3,
        "config_version": 4,
        "qdevice": {"configured": False},
    }


def claim(node: int, ring: tuple[int, int], members: list[int], quorate: bool) -> dict[str, Any]:
    return cluster_summary(
        status(node, ring, members, quorate), Topics("votemesh", "live", f"node{node}"), 1000
    )


def test_summary_fields() -> None:
    doc = claim(1, (1, 8), [1, 2], True)
    assert doc["published_by"] == {"node_id": 1, "node": "node1"}
    assert (doc["quorate"], doc["members"], doc["ring"], doc["ring_id"]) == (
        True,
        [1, 2],
        "1.8",
        [1, 8],
    )
    assert doc["votes"] == {"total": 2, "quorum": 2, "expected": 3, "highest_expected": 3}
    assert doc["config_version"] == 4
    assert doc["qdevice"] == {"configured": False, "connected": False, "vote": False, "votes": 0}


def test_only_the_representative_publishes() -> None:
    assert not summary_wanted(status(2, (1, 8), [1, 2, 3], True), None, ONLINE)
    assert summary_wanted(status(1, (1, 8), [1, 2, 3], True), None, ONLINE)


def test_a_quorate_representative_replaces_an_inquorate_claim() -> None:
    retained = claim(3, (3, 9), [3], False)
    assert summary_wanted(status(1, (1, 8), [1, 2], True), retained, ONLINE)


def test_an_inquorate_representative_defers_to_a_live_quorate_partition() -> None:
    retained = claim(1, (1, 8), [1, 2], True)
    assert not summary_wanted(status(3, (3, 9), [3], False), retained, ONLINE)


def test_but_not_when_that_publisher_is_offline_or_in_its_own_view() -> None:
    retained = claim(1, (1, 8), [1, 2, 3], True)
    offline = {**ONLINE, "node1": "offline"}
    assert summary_wanted(status(3, (3, 9), [3], False), retained, offline)
    assert summary_wanted(status(3, (3, 9), [1, 3], False), retained, ONLINE)
    assert summary_wanted(status(3, (3, 9), [3], False), retained, {})  # never heard: not live


def test_its_own_claim_is_always_updated() -> None:
    retained = claim(1, (1, 8), [1, 2, 3], True)
    assert summary_wanted(status(1, (1, 9), [1], False), retained, ONLINE)


def test_between_two_live_claims_the_newer_ring_wins_and_they_never_alternate() -> None:
    """Whatever is retained, exactly one of two live representatives wants to publish over
    the other's claim: no loop of overwrites."""
    cases = [
        (status(1, (1, 8), [1], False), status(3, (3, 9), [3], False)),
        (status(1, (1, 9), [1], False), status(3, (3, 9), [3], False)),
        (status(1, (1, 12), [1, 2], True), status(3, (3, 9), [3], True)),
    ]
    for a, b in cases:
        a_claim = cluster_summary(a, Topics("votemesh", "live", "node1"), 1)
        b_claim = cluster_summary(b, Topics("votemesh", "live", "node3"), 1)
        a_over_b = summary_wanted(a, b_claim, ONLINE)
        b_over_a = summary_wanted(b, a_claim, ONLINE)
        assert a_over_b != b_over_a, (a, b)


def test_same_claim_ignores_the_time() -> None:
    one = claim(1, (1, 8), [1, 2], True)
    assert same_claim(one, {**one, "timestamp": "later", "wall_ms": 2})
    assert not same_claim(one, {**one, "members": [1]})
    assert not same_claim(None, one)


BY = '"published_by": {"node_id": 1}'
HOSTILE = [
    "",
    "not json",
    "[]",
    '{"ring_id": [1]}',
    '{"ring_id": [1, -2], ' + BY + "}",
    '{"ring_id": [1, 2], "published_by": "x"}',
    '{"ring_id": ["1", 2], ' + BY + "}",
    '{"ring_id": [1, 2], "published_by": {"node_id": "1"}}',
]


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_retained_summaries_are_ignored(text: str) -> None:
    assert _parse_summary(text) is None


def test_a_well_formed_retained_summary_is_kept() -> None:
    assert _parse_summary('{"ring_id": [1, 2], "published_by": {"node_id": 1}}') is not None


@pytest.mark.parametrize(
    ("exc", "words"),
    [
        (aiomqtt.MqttCodeError(ReasonCode(PacketTypes.CONNACK, identifier=135)), "credentials"),
        (aiomqtt.MqttCodeError(5), "credentials"),
        (aiomqtt.MqttError("Operation timed out"), "no answer"),
        (aiomqtt.MqttError("[Errno 111] Connection refused"), "is the broker running"),
        (aiomqtt.MqttError("[SSL: CERTIFICATE_VERIFY_FAILED] x"), "mqtt.ca_file"),
    ],
)
def test_connect_failures_say_what_to_check(exc: Exception, words: str) -> None:
    assert words in describe(exc)


class RecordingClient:
    """Stands in for the broker connection (the sink's publishing decisions are under test)."""

    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, Any]]] = []

    async def publish(self, topic: str, payload: str, **_kwargs: Any) -> None:
        doc = json.loads(payload) if payload.startswith("{") else {"text": payload}
        self.published.append((topic, doc))

    async def subscribe(self, topic: str, **_kwargs: Any) -> None:
        pass


def test_a_deferring_representative_publishes_again_when_the_winner_goes_offline() -> None:
    """Regression: its own earlier claim was remembered as "already said", so after deferring
    to a live quorate claim it never published again once that claim's publisher went away."""
    doc = status(3, (3, 9), [3], False)
    ctx = SinkContext("live", 3, "node3", status=lambda: doc, stats=dict)
    sink = MqttSink(MqttConfig(host="127.0.0.1"), ctx)
    client = RecordingClient()
    publish = partial(sink._publish_status, client)  # type: ignore[arg-type]

    def summaries() -> int:
        return sum(topic == "votemesh/live/state" for topic, _ in client.published)

    asyncio.run(publish())
    assert summaries() == 1
    sink._retained_summary = claim(1, (1, 8), [1, 2], True)
    sink._online = dict(ONLINE)
    asyncio.run(publish())
    assert summaries() == 1  # deferred to the live quorate partition
    sink._online["node1"] = "offline"
    asyncio.run(publish())
    assert summaries() == 2
    assert client.published[-1][1]["published_by"]["node_id"] == 3


def test_after_a_connect_state_comes_before_the_events_queued_while_away() -> None:
    """Events wait (bounded, oldest dropped) while disconnected; after the connect: birth,
    state and summary first, then the queued events in their order."""
    doc = status(1, (1, 8), [1, 2, 3], True)
    ctx = SinkContext("live", 1, "node1", status=lambda: doc, stats=dict)
    sink = MqttSink(MqttConfig(host="127.0.0.1", queue=3), ctx)
    client = RecordingClient()
    for seq in range(1, 6):
        sink.offer(Published(seq, 1000 + seq, "view_installed", {"event": "view_installed"}))
    asyncio.run(sink.drain())  # not connected: nothing sent, nothing failed
    assert (len(sink.queue), sink.dropped, sink.failed, client.published) == (3, 2, 0, [])

    async def connect_and_drain() -> None:
        await sink._on_connected(client)  # type: ignore[arg-type]
        sink._client = client  # type: ignore[assignment]
        await sink.drain()

    asyncio.run(connect_and_drain())
    topics = [topic for topic, _ in client.published]
    assert topics[:3] == [
        "votemesh/live/node1/availability",
        "votemesh/live/node1/state",
        "votemesh/live/state",
    ]
    assert topics[3:] == ["votemesh/live/node1/events"] * 3
    assert [doc["seq"] for _, doc in client.published[3:]] == [3, 4, 5]
    assert sink.stats()["delivered"] == 3


def test_a_broker_refusing_mqtt_5_is_used_with_3_1_1() -> None:
    ctx = SinkContext("live", 1, "node1", status=dict, stats=dict)
    sink = MqttSink(MqttConfig(host="127.0.0.1"), ctx)
    sink._connecting = True
    sink._failed_connection(aiomqtt.MqttCodeError(ReasonCode(PacketTypes.CONNACK, identifier=132)))
    assert sink.protocol == aiomqtt.ProtocolVersion.V311
    assert sink.stats()["connect_failures"] == 1


@pytest.mark.parametrize(
    ("content", "words"), [(None, "cannot read mqtt.password_file"), ("\n", "is empty")]
)
def test_an_unusable_password_file_is_one_clear_line(
    tmp_path: Path, content: str | None, words: str
) -> None:
    path = tmp_path / "mqtt.pass"
    if content is not None:
        path.write_text(content)
    config = MqttConfig(host="127.0.0.1", username="n", password_file=str(path))
    sink = MqttSink(config, SinkContext("live", 1, "node1", status=dict, stats=dict))
    with pytest.raises(LocalFileError) as caught:
        sink._make_client()
    assert words in describe(caught.value)


def test_an_unreadable_ca_file_is_one_clear_line(tmp_path: Path) -> None:
    config = MqttConfig(host="127.0.0.1", tls=True, ca_file=str(tmp_path / "missing.pem"))
    sink = MqttSink(config, SinkContext("live", 1, "node1", status=dict, stats=dict))
    with pytest.raises(LocalFileError, match=r"cannot load mqtt\.ca_file"):
        sink._make_client()


class FloodingClient(RecordingClient):
    """A broker connection whose subscription delivers `messages` (then ends)."""

    def __init__(self, messages: list[aiomqtt.Message]) -> None:
        super().__init__()
        self._queued = messages

    @property
    def messages(self) -> Any:
        async def each() -> Any:
            for message in self._queued:
                yield message

        return each()


def test_a_flood_of_availability_topics_is_bounded() -> None:
    """Anyone allowed to publish under votemesh/<cluster>/+/availability cannot grow the sink's
    table of nodes' availability without bound (at most MAX_LEVELS levels, short values); a
    known node's availability is still followed. Fails before: 5,000 junk levels were kept."""
    doc = status(1, (1, 8), [1, 2, 3], True)
    ctx = SinkContext("live", 1, "node1", status=lambda: doc, stats=dict)
    sink = MqttSink(MqttConfig(host="127.0.0.1"), ctx)
    topic = "votemesh/live/{}/availability"
    flood = [
        aiomqtt.Message(topic.format(name), payload, 1, True, 0, None)
        for name, payload in [("node2", b"online")]
        + [(f"junk{i}", b"x" * 1000) for i in range(5000)]
        + [("node2", b"offline")]
    ]
    asyncio.run(sink._listen(FloodingClient(flood)))  # type: ignore[arg-type]
    assert len(sink._online) == MAX_LEVELS
    assert max(len(v) for v in sink._online.values()) <= 16
    assert sink._online["node2"] == "offline"


def test_home_assistant_announcements_are_answered_once_per_drain() -> None:
    """Each `online` on homeassistant/status used to re-send discovery at once (a status
    document on the agent's loop and three publishes per message): a flood of announcements
    cost the loop that much per message. Now they are coalesced: the deliverer sends discovery
    once, then the state. Fails before: 500 announcements, 500 discovery rounds."""
    doc = status(1, (1, 8), [1, 2, 3], True)
    reads = 0

    def read() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        return doc

    ctx = SinkContext("live", 1, "node1", status=read, stats=dict)
    sink = MqttSink(MqttConfig(host="127.0.0.1", home_assistant=True), ctx)
    flood = [aiomqtt.Message("homeassistant/status", b"online", 1, False, 0, None)] * 500
    client = FloodingClient(flood)

    async def listen_then_drain() -> None:
        await sink._listen(client)  # type: ignore[arg-type]
        sink._client = client  # type: ignore[assignment]
        await sink.drain()

    asyncio.run(listen_then_drain())
    configs = [t for t, _ in client.published if t.startswith("homeassistant/binary_sensor/")]
    assert len(configs) == 2  # the node's and the cluster's sensor, once
    assert reads == 2  # one status document for the discovery, one for the state
