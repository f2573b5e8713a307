"""MQTT with a real mosquitto on 127.0.0.1 and real agents (docs/events.md, design §3.13):
retained state, birth and will, the event stream's order, the cluster summary, Home Assistant
re-announcement, a 30 s broker outage, refused credentials, a silent or absent broker, TLS."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agent.live_agents import AgentCluster, control_request
from tests.agent.mosquitto import MOSQUITTO, MOSQUITTO_PASSWD, Broker, Subscriber, free_tcp_port

pytestmark = pytest.mark.skipif(not MOSQUITTO.exists(), reason="mosquitto is not installed")

KEEPALIVE = 2
STATE_FIELDS = {
    "cluster", "node_id", "node_name", "config_version", "ring_id", "ring", "members",
    "quorate", "expected_votes", "total_votes", "quorum", "qdevice", "peers", "schema",
    "timestamp", "wall_ms",
}  # fmt: skip
SUMMARY_FIELDS = {
    "schema", "cluster", "quorate", "members", "votes", "qdevice", "config_version", "ring",
    "ring_id", "published_by", "timestamp", "wall_ms",
}  # fmt: skip


def mqtt_extra(port: int, more: str = "") -> str:
    return f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nkeepalive = {KEEPALIVE}\n{more}'


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path / "broker")
    b.start()
    try:
        yield b
    finally:
        b.stop()


def wait(check: Any, timeout: float, what: str) -> None:
    AgentCluster.wait_for(check, timeout, what, 0.05)


def states_current(cluster: AgentCluster, sub: Subscriber, ids: list[int]) -> bool:
    """Every node's last retained state matches its live status (ring, members, version)."""
    for i in ids:
        got = sub.last(f"votemesh/live/node{i}/state")
        live = cluster.agents[i].status()
        if got is None or live is None:
            return False
        doc = got.json()
        if (doc["ring_id"], doc["members"], doc["config_version"], doc["quorate"]) != (
            live["ring_id"],
            live["members"],
            live["config_version"],
            live["quorate"],
        ):
            return False
    return True


def mqtt_log(cluster: AgentCluster, node_id: int, event: str) -> list[dict[str, Any]]:
    return [r for r in cluster.agents[node_id].log_records() if r.get("event") == event]


def kill_2_until_1_is_inquorate(cluster: AgentCluster) -> None:
    cluster.kill(2)
    cluster.wait_for(
        lambda: (s := cluster.agents[1].status()) is not None and not s["quorate"],
        30,
        "node 1 inquorate without node 2",
    )


def wait_for_quorum_lost(sub: Subscriber) -> None:
    wait(
        lambda: any(
            b'"quorum_lost"' in m.payload for m in sub.received("votemesh/live/node1/events")
        ),
        10,
        "quorum_lost of node 1 on the event stream",
    )


SPLIT = (["view_installed", "quorum_lost"], ["quorum_lost", "view_installed"])


def split_kinds(sub: Subscriber) -> list[str]:
    """view_installed and quorum_lost of node 1, in stream order."""
    kinds = [json.loads(m.payload)["event"] for m in sub.received("votemesh/live/node1/events")]
    return [k for k in kinds if k in ("view_installed", "quorum_lost")]


def test_retained_state_will_events_in_order_and_summary(tmp_path: Path, broker: Broker) -> None:
    cluster = AgentCluster(tmp_path, 3, extra=mqtt_extra(broker.port, "home_assistant = true\n"))
    live: Subscriber | None = None
    try:
        cluster.start_all()
        cluster.wait_for(lambda: cluster.one_view([1, 2, 3]), 30, "a view of 3")
        # The first full view commits the bootstrap as version 1 a moment later: wait for it,
        # else the states may be current at version 0 (failed once in CI under load).
        cluster.wait_for(
            lambda: all(
                (cluster.agents[i].status() or {}).get("config_version") == 1 for i in (1, 2, 3)
            ),
            30,
            "configuration version 1 everywhere",
        )
        live = Subscriber(broker.port, ["votemesh/#", "homeassistant/#"])
        wait(lambda: states_current(cluster, live, [1, 2, 3]), 10, "three current states")

        # A new subscriber gets every node's state, availability and the summary at once.
        late = Subscriber(broker.port, ["votemesh/live/+/state", "votemesh/live/+/availability"])
        late_summary = Subscriber(broker.port, ["votemesh/live/state"])
        wait(lambda: len({m.topic for m in late.received()}) == 6, 5, "6 retained messages")
        wait(lambda: late_summary.first("votemesh/live/state") is not None, 5, "the summary")
        late.close()
        late_summary.close()
        for i in (1, 2, 3):
            state = late.first(f"votemesh/live/node{i}/state")
            assert state is not None
            assert state.retain
            doc = state.json()
            assert set(doc) >= STATE_FIELDS
            assert (doc["node_id"], doc["members"], doc["quorate"]) == (i, [1, 2, 3], True)
            assert doc["config_version"] == 1
            availability = late.first(f"votemesh/live/node{i}/availability")
            assert availability is not None
            assert availability.payload == b"online"
        summary = late_summary.first("votemesh/live/state")
        assert summary is not None
        assert summary.retain
        assert set(summary.json()) == SUMMARY_FIELDS
        assert summary.json()["published_by"] == {"node_id": 1, "node": "node1"}
        assert (summary.json()["quorate"], summary.json()["members"]) == (True, [1, 2, 3])

        # Home Assistant announces itself: discovery is sent again.
        configs = len([m for m in live.received() if m.topic.endswith("/config")])
        live.client.publish("homeassistant/status", "online", qos=1)
        wait(
            lambda: len([m for m in live.received() if m.topic.endswith("/config")]) >= configs + 6,
            10,
            "discovery re-sent by the three agents",
        )

        # kill -9: the broker sends node3's will within about 1.5 keepalives.
        killed_at = time.time()
        cluster.kill(3)
        wait(
            lambda: (
                (m := live.last("votemesh/live/node3/availability")) is not None
                and m.payload == b"offline"
            ),
            1.5 * KEEPALIVE + 3,
            "node3 offline by its will",
        )
        offline = live.last("votemesh/live/node3/availability")
        assert offline is not None
        assert offline.at - killed_at <= 1.5 * KEEPALIVE + 2.5  # the broker checks every second

        # Kill node 2 as well: node 1 loses quorum; its stream has the core's order, no gap.
        cluster.wait_for(lambda: cluster.one_view([1, 2]), 30, "a view of 1, 2")
        kill_2_until_1_is_inquorate(cluster)
        wait_for_quorum_lost(live)
        wait(lambda: split_kinds(live)[-2:] in SPLIT, 10, "node 1's view without node 2")
        # Every event on the stream is the core's event with that seq (`votemesh events`),
        # with no gap: the same order as decided.
        stream = [m.json() for m in live.received("votemesh/live/node1/events")]
        seqs = [e["seq"] for e in stream]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        ok, body = control_request(cluster.agents[1].control_socket, "events")
        assert ok
        decided = {e["seq"]: e["event"] for e in json.loads(body)}
        assert all(decided.get(e["seq"], e["event"]) == e["event"] for e in stream)
        kinds = split_kinds(live)
        assert kinds[-2:] in SPLIT
        assert [k for s, k in sorted(decided.items()) if s in seqs and k in kinds] == kinds
        assert stream[-1]["wall_ms"] >= stream[0]["wall_ms"]
        event = live.received("votemesh/live/node1/events")[-1]
        assert not event.retain
        assert event.properties["MessageExpiryInterval"] == 3600
        assert ("schema", "votemesh/1") in event.properties["UserProperty"]

        # The survivor is its own view's representative: the summary says inquorate, by node 1.
        wait(
            lambda: (
                (m := live.last("votemesh/live/state")) is not None
                and m.json()["members"] == [1]
                and not m.json()["quorate"]
            ),
            10,
            "an inquorate summary",
        )
        assert live.last("votemesh/live/state").json()["published_by"]["node_id"] == 1  # type: ignore[union-attr]

        # A clean stop says offline itself, at once (a clean disconnect has no will).
        stopped_at = time.time()
        cluster.stop(1)
        wait(
            lambda: (
                (m := live.last("votemesh/live/node1/availability")) is not None
                and m.payload == b"offline"
            ),
            KEEPALIVE,
            "node1 offline after a clean stop",
        )
        offline = live.last("votemesh/live/node1/availability")
        assert offline is not None
        assert offline.payload == b"offline"
        assert offline.at - stopped_at < KEEPALIVE
    finally:
        if live is not None:
            live.close()
        cluster.close()


@pytest.mark.parametrize("how", ["terminate", "sigstop"])
def test_broker_outage_of_30_s_changes_nothing_and_states_are_current_after(
    tmp_path: Path, broker: Broker, how: str
) -> None:
    """terminate: the broker is gone and comes back empty (no persistence), on the same port.
    sigstop: it hangs (TCP still accepted, nothing answered); when it resumes it fires the old
    connections' wills, which must not leave anyone `offline`."""
    cluster = AgentCluster(tmp_path, 3, extra=mqtt_extra(broker.port))
    try:
        cluster.start_all()
        cluster.wait_for(lambda: cluster.one_view([1, 2, 3]), 30, "a view of 3")
        first = Subscriber(broker.port, ["votemesh/#"])
        wait(lambda: states_current(cluster, first, [1, 2, 3]), 10, "three current states")
        first.close()
        ring = cluster.agents[1].status()["ring_id"]  # type: ignore[index]

        broker.stop() if how == "terminate" else broker.pause()
        stopped = time.monotonic()
        while time.monotonic() - stopped < 30:
            assert cluster.one_view([1, 2, 3]), "membership or quorum changed during the outage"
            assert cluster.agents[1].status()["ring_id"] == ring  # type: ignore[index]
            time.sleep(1)
        broker.start() if how == "terminate" else broker.resume()
        back = time.time()

        # Everything comes back by itself (backoff capped at 30 s); a new subscriber sees
        # every node's current state, availability and the summary, published after the return.
        after = Subscriber(broker.port, ["votemesh/#"])

        def current() -> bool:
            if not states_current(cluster, after, [1, 2, 3]):
                return False
            for i in (1, 2, 3):
                state = after.last(f"votemesh/live/node{i}/state")
                avail = after.last(f"votemesh/live/node{i}/availability")
                if state is None or state.json()["wall_ms"] / 1000 < back:
                    return False
                if avail is None or avail.payload != b"online":
                    return False
            return after.last("votemesh/live/state") is not None

        try:
            wait(current, 45, "states, availability and summary after the outage")
            time.sleep(2 * KEEPALIVE)  # late wills, if any, have been answered by now
            assert current()
            summary = after.last("votemesh/live/state")
            assert summary is not None
            assert (summary.json()["members"], summary.json()["ring_id"]) == ([1, 2, 3], ring)
        finally:
            after.close()
        assert cluster.one_view([1, 2, 3])
        for i in (1, 2, 3):
            assert mqtt_log(cluster, i, "mqtt connected")[-1]["reconnects"] == 1
            assert len(mqtt_log(cluster, i, "mqtt connection lost; reconnecting")) == 1
            assert len(mqtt_log(cluster, i, "mqtt broker unavailable; retrying with backoff")) <= 1
    finally:
        cluster.close()


@pytest.mark.skipif(MOSQUITTO_PASSWD is None, reason="mosquitto_passwd is not installed")
def test_refused_credentials_log_one_line_and_keep_retrying(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker", users={"node1": "right"})
    broker.start()
    password = tmp_path / "mqtt.pass"
    password.write_text("wrong\n")
    extra = mqtt_extra(broker.port, f'username = "node1"\npassword_file = "{password}"\n')
    cluster = AgentCluster(tmp_path / "c", 1, extra=extra)
    try:
        cluster.start_all()
        wait(
            lambda: (
                sum(
                    line.endswith("Sending CONNACK to 127.0.0.1 (0, 135)")
                    for line in broker.log_lines()
                )
                >= 4
            ),
            30,
            "four refused connect attempts",
        )
        lines = mqtt_log(cluster, 1, "mqtt broker unavailable; retrying with backoff")
        assert len(lines) == 1, lines
        assert "refused the credentials" in lines[0]["reason"]
        assert "password_file" in lines[0]["reason"]
        assert cluster.agents[1].running
        assert cluster.agents[1].status()["quorate"]  # type: ignore[index]

        password.write_text("right\n")  # read again at the next attempt
        wait(lambda: bool(mqtt_log(cluster, 1, "mqtt connected")), 30, "connected")
    finally:
        cluster.close()
        broker.stop()


def test_absent_or_silent_broker_one_line_each_and_the_agent_keeps_deciding(
    tmp_path: Path, broker: Broker
) -> None:
    """Agents whose broker never answers (SIGSTOP: TCP accepted, no CONNACK) or is absent
    (refused) log one line each, keep deciding (node 2 killed: node 1 loses quorum), and the
    events decided meanwhile reach the broker, in order, once it answers."""
    sub = Subscriber(broker.port, ["votemesh/#"])  # subscribed before the broker hangs
    broker.pause()  # accepts TCP (the kernel does), never answers
    silent = AgentCluster(tmp_path / "silent", 2, extra=mqtt_extra(broker.port))
    nothing = AgentCluster(tmp_path / "absent", 1, extra=mqtt_extra(free_tcp_port()))  # refused
    try:
        silent.start_all()
        nothing.start_all()
        silent.wait_for(lambda: silent.one_view([1, 2]), 30, "a view of 2")
        kill_2_until_1_is_inquorate(silent)
        time.sleep(12)  # several attempts each (5 s CONNACK timeout; backoff)
        for cluster, reason in ((silent, "no answer from the broker"), (nothing, "refused")):
            lines = mqtt_log(cluster, 1, "mqtt broker unavailable; retrying with backoff")
            assert len(lines) == 1, lines
            assert reason in lines[0]["reason"].lower()
            assert cluster.agents[1].running
        assert nothing.agents[1].status()["quorate"]  # type: ignore[index]
        resumed = time.time()
        broker.resume()
        wait(lambda: states_current(silent, sub, [1]), 40, "state after the broker answers")
        wait_for_quorum_lost(sub)
        events = [m.json() for m in sub.received("votemesh/live/node1/events")]
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))  # none lost
        lost = next(
            m for m in sub.received("votemesh/live/node1/events") if b"quorum_lost" in m.payload
        )
        assert lost.json()["wall_ms"] / 1000 < resumed < lost.at  # decided while away, queued
    finally:
        sub.close()
        silent.close()
        nothing.close()


def test_tls_to_the_broker_with_a_test_ca(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker", tls=True)
    broker.start()
    good = AgentCluster(
        tmp_path / "good",
        1,
        extra=f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.tls_port}\ntls = true\n'
        f'ca_file = "{broker.ca_path}"\n',
    )
    untrusted = AgentCluster(
        tmp_path / "untrusted",
        1,
        extra=f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.tls_port}\ntls = true\n',
    )
    sub = Subscriber(broker.port, ["votemesh/#"])
    try:
        good.start_all()
        untrusted.start_all()
        wait(lambda: states_current(good, sub, [1]), 20, "state over TLS")
        wait(
            lambda: bool(mqtt_log(untrusted, 1, "mqtt broker unavailable; retrying with backoff")),
            20,
            "the untrusted agent's line",
        )
        line = mqtt_log(untrusted, 1, "mqtt broker unavailable; retrying with backoff")
        assert "certificate verify failed" in line[0]["reason"]
        assert not mqtt_log(untrusted, 1, "mqtt connected")
    finally:
        sub.close()
        good.close()
        untrusted.close()
        broker.stop()


def test_metrics_show_the_broker_connection(tmp_path: Path, broker: Broker) -> None:
    """`votemesh_mqtt_connected` follows the real connection (the metrics sink reads the MQTT
    sink's `stats()`)."""
    cluster = AgentCluster(tmp_path, 1, extra=mqtt_extra(broker.port))
    port = free_tcp_port()
    with cluster.agents[1].config_path.open("a") as config:
        config.write(f'\n[metrics]\nhost = "127.0.0.1"\nport = {port}\n')

    def connected() -> float | None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            for line in answer.read().decode().splitlines():
                if line.startswith("votemesh_mqtt_connected "):
                    return float(line.split()[1])
        return None

    try:
        cluster.start_all()
        wait(lambda: connected() == 1.0, 20, "votemesh_mqtt_connected 1")
        broker.stop()
        wait(lambda: connected() == 0.0, 20, "votemesh_mqtt_connected 0")
    finally:
        cluster.close()
