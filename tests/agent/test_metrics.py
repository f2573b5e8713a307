"""The metrics sink without agents: the exposition of a status document (names, labels, values,
parsed back with prometheus_client's own parser), `/healthz` answers, and the HTTP server's
limits (404, 405, an oversized request, a slow client, the connection cap) on 127.0.0.1."""

from __future__ import annotations

import asyncio
import errno
import json
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from agent.outputs import MetricsConfig, Outputs
from agent.runtime.fanout import FanOut, Published, SinkContext
from agent.runtime.metrics import MetricsSink, health, listen_refused
from agent.runtime.metrics_http import HttpLimits
from agent.runtime.sinks import make_sinks
from agent.status import LinkInfo, NodeStatus, PeerInfo, QdeviceInfo, RuntimeInfo, to_json

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def status_doc(**changes: Any) -> dict[str, Any]:
    """A schema-1 status of node 1 in view {1, 2} of 3 nodes, with a voting qdevice."""
    link = LinkInfo(link=0, up=True, active=True, rtt_ms=0.25, loss=0.0, last_heard_s=0.1)
    peers = (
        PeerInfo(2, "n2", 1, True, ("127.0.0.2:5405",), 7, 0, 0.1, None, 1.8, 0,
                 (link, replace(link, link=1, active=False, up=False, rtt_ms=None, loss=0.5))),
        PeerInfo(3, "n3", 1, False, ("127.0.0.3:5405",), 3, None, None, 12.0, 1.8, None,
                 (replace(link, up=False, active=False, rtt_ms=None, loss=1.0),)),
    )  # fmt: skip
    status = NodeStatus(
        cluster="prod", node_id=1, node_name="n1", config_version=4, transport="udpu",
        secure_auth=True, addresses=("127.0.0.1:5405",), incarnation=9, ring_id=(1, 38),
        members=(1, 2), proposal=(1, 2), counted=(1, 2), basis="settled", basis_why="",
        quorate=True, expected_votes=4, highest_expected=4, total_votes=3, quorum=3, votes=1,
        flags=("Quorate", "Qdevice"), why="3 of 4 votes", views="forming", durable_max_seq=40,
        qdevice=QdeviceInfo(configured=True, connected=True, vote=True, votes=1,
                            algorithm="ffsplit", server="127.0.0.9:5403", state="connected",
                            connects=2),
        peers=peers, transitions=(),
        runtime=RuntimeInfo(uptime_s=12.5, local_links={"0": "127.0.0.1:5405"},
                            datagrams={"received": 100, "accepted": 90, "sent": 80,
                                       "send_errors": 1, "dropped": {"forged": 7, "replayed": 3}},
                            timers={}),
    )  # fmt: skip
    doc: dict[str, Any] = to_json(replace(status, **changes))
    return doc


STATS = {
    "log": {},
    "recent": {"kept": 5},
    "mqtt": {"queued": 4, "offered": 10, "delivered": 5, "dropped": 1, "failed": 2, "connected": 1},
    "hook:0": {
        "queued": 0,
        "offered": 3,
        "delivered": 3,
        "dropped": 0,
        "failed": 1,
        "runs": 3,
        "failures": 1,
        "timeouts": 1,
    },
}


def context(doc: Callable[[], dict[str, Any]], stats: dict[str, dict[str, int]]) -> SinkContext:
    return SinkContext("prod", 1, "n1", doc, lambda: stats)


def scrape(sink: MetricsSink) -> Samples:
    """Every sample of one /metrics answer, parsed by prometheus_client's parser."""
    answer = sink.metrics("")
    assert answer.code == 200
    assert answer.content_type.startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(answer.body.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def sink_for(doc: dict[str, Any], stats: dict[str, dict[str, int]] | None = None) -> MetricsSink:
    return MetricsSink(MetricsConfig(port=0), context(lambda: doc, stats or STATS))


def test_exposition_of_a_status_document() -> None:
    """Quorum, votes by type (ha_cluster_exporter's four plus ours), members and member votes,
    per peer and link up/active/RTT/loss, the qdevice, dropped datagrams by reason, and the
    build and cluster info come out under their documented names, labels and base units."""
    got = scrape(sink_for(status_doc()))
    want = {
        ("votemesh_quorate", ()): 1.0,
        ("votemesh_quorum_votes", (("type", "expected_votes"),)): 4.0,
        ("votemesh_quorum_votes", (("type", "highest_expected"),)): 4.0,
        ("votemesh_quorum_votes", (("type", "total_votes"),)): 3.0,
        ("votemesh_quorum_votes", (("type", "quorum"),)): 3.0,
        ("votemesh_quorum_votes", (("type", "node_votes"),)): 1.0,
        ("votemesh_quorum_votes", (("type", "qdevice_votes"),)): 1.0,
        ("votemesh_members", ()): 2.0,
        ("votemesh_member_votes", (("local", "true"), ("node", "n1"), ("node_id", "1"))): 1.0,
        ("votemesh_member_votes", (("local", "false"), ("node", "n2"), ("node_id", "2"))): 1.0,
        ("votemesh_member_up", (("node", "n1"), ("node_id", "1"))): 1.0,
        ("votemesh_member_up", (("node", "n2"), ("node_id", "2"))): 1.0,
        ("votemesh_member_up", (("node", "n3"), ("node_id", "3"))): 0.0,
        ("votemesh_link_up", (("link", "0"), ("node", "n2"), ("node_id", "2"))): 1.0,
        ("votemesh_link_up", (("link", "1"), ("node", "n2"), ("node_id", "2"))): 0.0,
        ("votemesh_link_active", (("link", "0"), ("node", "n2"), ("node_id", "2"))): 1.0,
        ("votemesh_link_active", (("link", "1"), ("node", "n2"), ("node_id", "2"))): 0.0,
        ("votemesh_link_rtt_seconds", (("link", "0"), ("node", "n2"), ("node_id", "2"))): 0.00025,
        ("votemesh_link_loss_ratio", (("link", "1"), ("node", "n2"), ("node_id", "2"))): 0.5,
        ("votemesh_link_loss_ratio", (("link", "0"), ("node", "n3"), ("node_id", "3"))): 1.0,
        ("votemesh_qdevice_configured", ()): 1.0,
        ("votemesh_qdevice_connected", ()): 1.0,
        ("votemesh_qdevice_casting_vote", ()): 1.0,
        ("votemesh_qdevice_connects_total", ()): 2.0,
        ("votemesh_qdevice_info", (("algorithm", "ffsplit"), ("server", "127.0.0.9:5403"))): 1.0,
        ("votemesh_datagrams_dropped_total", (("reason", "forged"),)): 7.0,
        ("votemesh_datagrams_dropped_total", (("reason", "replayed"),)): 3.0,
        ("votemesh_datagrams_received_total", ()): 100.0,
        ("votemesh_datagrams_sent_total", ()): 80.0,
        ("votemesh_datagrams_send_errors_total", ()): 1.0,
        ("votemesh_config_version", ()): 4.0,
        ("votemesh_views_halted", ()): 0.0,
        ("votemesh_uptime_seconds", ()): 12.5,
        ("votemesh_cluster_info", (("cluster", "prod"), ("node", "n1"), ("node_id", "1"))): 1.0,
    }
    assert {k: got.get(k) for k in want} == want
    # a link without an RTT has no rtt sample (absent, not 0)
    assert (
        "votemesh_link_rtt_seconds",
        (("link", "1"), ("node", "n2"), ("node_id", "2")),
    ) not in got
    # only members have member_votes
    assert not [k for k in got if k[0] == "votemesh_member_votes" and ("node", "n3") in k[1]]
    assert [k for k in got if k[0] == "votemesh_build_info"]


def test_no_qdevice_means_no_qdevice_series() -> None:
    """Without a configured device only `votemesh_qdevice_configured 0` appears (an alert on
    `votemesh_qdevice_connected == 0` never fires for a cluster without one); qdevice_votes
    is 0 when the device does not vote; a halted view and an unknown config version show."""
    doc = status_doc(qdevice=QdeviceInfo(configured=False), views="halted: disk full",
                     config_version=None)  # fmt: skip
    got = scrape(sink_for(doc))
    assert got[("votemesh_qdevice_configured", ())] == 0.0
    assert not [k for k in got if k[0].startswith("votemesh_qdevice_") and "configured" not in k[0]]
    assert got[("votemesh_quorum_votes", (("type", "qdevice_votes"),))] == 0.0
    assert got[("votemesh_views_halted", ())] == 1.0
    assert ("votemesh_config_version", ()) not in got


def test_events_and_sink_counters() -> None:
    """Events offered are counted by kind (every kind present from the start, at 0), view
    changes are the `view_installed` events, and each sink's queue, drops, failures,
    deliveries, MQTT's connection and a hook's runs come from `stats()`."""
    sink = sink_for(status_doc())
    for i, kind in enumerate(["view_installed", "quorum_lost", "view_installed"], 1):
        sink.offer(Published(i, 0, kind, {"event": kind}))
    got = scrape(sink)
    assert got[("votemesh_view_changes_total", ())] == 2.0
    assert got[("votemesh_events_total", (("kind", "view_installed"),))] == 2.0
    assert got[("votemesh_events_total", (("kind", "quorum_lost"),))] == 1.0
    assert got[("votemesh_events_total", (("kind", "peer_lost"),))] == 0.0
    assert got[("votemesh_sink_queue_depth", (("sink", "mqtt"),))] == 4.0
    assert got[("votemesh_sink_dropped_total", (("sink", "mqtt"),))] == 1.0
    assert got[("votemesh_sink_failures_total", (("sink", "mqtt"),))] == 2.0
    assert got[("votemesh_sink_failures_total", (("sink", "hook:0"),))] == 1.0
    assert got[("votemesh_sink_delivered_total", (("sink", "mqtt"),))] == 5.0
    assert got[("votemesh_hook_runs_total", (("sink", "hook:0"),))] == 3.0
    assert got[("votemesh_hook_timeouts_total", (("sink", "hook:0"),))] == 1.0
    assert got[("votemesh_mqtt_connected", ())] == 1.0
    assert ("votemesh_sink_queue_depth", (("sink", "log"),)) not in got  # no queue, no series


def test_no_mqtt_no_mqtt_series() -> None:
    """Without an MQTT sink there is no `votemesh_mqtt_connected` (absent, not 0)."""
    got = scrape(sink_for(status_doc(), {"log": {}}))
    assert not [k for k in got if k[0] == "votemesh_mqtt_connected"]


@pytest.mark.parametrize(
    ("changes", "removed", "want"),
    [
        ({}, False, (True, "ok")),
        ({"quorate": False}, False, (False, "inquorate")),
        ({"views": "halted: disk full"}, False, (False, "views halted: disk full")),
        ({}, True, (False, "removed from the cluster")),
    ],
)
def test_health(changes: dict[str, Any], removed: bool, want: tuple[bool, str]) -> None:
    """Healthy is quorate, views forming, not removed; otherwise the one-line reason."""
    assert health(status_doc(**changes), removed) == want


def test_healthz_answers() -> None:
    """/healthz: 200 `ok` when quorate, 503 `inquorate` when not, a removed node is 503 after
    its removed_from_cluster event; `?format=json` gives the same verdict as JSON."""
    doc = status_doc()
    sink = sink_for(doc)
    assert (sink.healthz("").code, sink.healthz("").body) == (200, b"ok\n")
    as_json = sink.healthz("format=json")
    assert as_json.content_type == "application/json"
    assert json.loads(as_json.body) == {
        "healthy": True, "reason": "ok", "quorate": True, "members": [1, 2], "ring": "1.26",
        "config_version": 4, "qdevice_connected": True,
    }  # fmt: skip
    doc["quorate"] = False
    assert (sink.healthz("").code, sink.healthz("").body) == (503, b"inquorate\n")
    assert json.loads(sink.healthz("x=1&format=json").body)["reason"] == "inquorate"
    doc["quorate"] = True
    sink.offer(Published(1, 0, "removed_from_cluster", {"event": "removed_from_cluster"}))
    assert (sink.healthz("").code, sink.healthz("").body) == (503, b"removed from the cluster\n")


def test_listen_refused_lines() -> None:
    """A port in use names the address and what to change; any other error says so too."""
    in_use = OSError(errno.EADDRINUSE, "Address already in use")
    assert listen_refused("127.0.0.1", 9466, in_use) == (
        "metrics off: 127.0.0.1:9466 in use; pick another [metrics] port"
    )
    other = OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")
    assert listen_refused("10.9.9.9", 9466, other) == (
        "metrics off: cannot listen on 10.9.9.9:9466 (Cannot assign requested address); "
        "fix [metrics] host and port"
    )


def test_make_sinks_registers_metrics_only_when_configured() -> None:
    """`[metrics]` absent: no metrics sink (off by default); present: one named `metrics`."""
    ctx = context(status_doc, {})
    assert [s.name for s in make_sinks(Outputs(), ctx)] == []
    assert [s.name for s in make_sinks(Outputs(metrics=MetricsConfig()), ctx)] == ["metrics"]


# ---------------------------------------------------------------- HTTP on 127.0.0.1
LIMITS = HttpLimits(max_request=1024, timeout=0.5, max_connections=3)


@pytest_asyncio.fixture
async def served() -> AsyncIterator[tuple[MetricsSink, dict[str, Any], int]]:
    """A metrics sink serving a mutable status document on 127.0.0.1, an OS-chosen port."""
    doc = status_doc()
    sink = MetricsSink(MetricsConfig(port=0), context(lambda: doc, STATS), LIMITS)
    fanout = FanOut()
    fanout.start(sink)
    for _ in range(200):
        if sink.address is not None:
            break
        await asyncio.sleep(0.01)
    assert sink.address is not None
    yield sink, doc, sink.address[1]
    await fanout.close()


async def exchange(port: int, request: bytes, timeout: float = 5.0) -> bytes:
    """Send `request`, read until the server closes; the whole answer (b"" when the server
    closed or reset the connection without one)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(timeout):
            return await reader.read()
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


def get(path: str, method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\nUser-Agent: test\r\n\r\n".encode()


@pytest.mark.asyncio
async def test_http_routes(served: tuple[MetricsSink, dict[str, Any], int]) -> None:
    """GET /metrics: 200 with the exposition; /healthz 200 then 503 when the document turns
    inquorate; HEAD has no body; other paths 404, other methods 405, garbage 400."""
    sink, doc, port = served
    answer = await exchange(port, get("/metrics"))
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nvotemesh_quorate 1.0\n" in answer or b"\nvotemesh_quorate 1.0\n" in answer
    assert (await exchange(port, get("/healthz"))).endswith(b"\r\n\r\nok\n")
    doc["quorate"] = False
    inquorate = await exchange(port, get("/healthz"))
    assert inquorate.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert inquorate.endswith(b"\r\n\r\ninquorate\n")
    head = await exchange(port, get("/metrics", "HEAD"))
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert head.endswith(b"\r\n\r\n")
    assert (await exchange(port, get("/nope"))).startswith(b"HTTP/1.1 404 ")
    assert (await exchange(port, get("/metrics", "POST"))).startswith(b"HTTP/1.1 405 ")
    assert (await exchange(port, b"hello\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
    assert sink.stats()["scrapes"] == 2
    assert sink.stats()["bad_requests"] == 2
    own = scrape(sink)  # a third scrape counts itself and reports the refusals
    assert own[("votemesh_metrics_scrapes_total", ())] == 3
    assert own[("votemesh_metrics_refused_total", (("reason", "bad_request"),))] == 2


@pytest.mark.asyncio
async def test_oversized_request_is_refused(
    served: tuple[MetricsSink, dict[str, Any], int],
) -> None:
    """A request head over the limit gets 431 and the connection is closed; the server keeps
    answering the next client."""
    sink, _doc, port = served
    huge = b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * 5000 + b"\r\n\r\n"
    assert (await exchange(port, huge)).startswith(b"HTTP/1.1 431 ")
    assert (await exchange(port, get("/healthz"))).startswith(b"HTTP/1.1 200 ")
    assert sink.stats()["bad_requests"] == 1


@pytest.mark.asyncio
async def test_slow_client_is_cut_off(served: tuple[MetricsSink, dict[str, Any], int]) -> None:
    """A client that sends half a request and waits is disconnected after the timeout
    (counted) with no answer; a client that connects and sends nothing likewise."""
    sink, _doc, port = served
    started = asyncio.get_running_loop().time()
    assert await exchange(port, b"GET /metrics HTTP/1.1\r\nHost:", timeout=3.0) == b""
    assert await exchange(port, b"", timeout=3.0) == b""
    took = asyncio.get_running_loop().time() - started
    assert 2 * LIMITS.timeout - 0.1 <= took < 2 * LIMITS.timeout + 1.5
    assert sink.stats()["timeouts"] == 2


@pytest.mark.asyncio
async def test_slow_client_does_not_hold_up_a_scrape(
    served: tuple[MetricsSink, dict[str, Any], int],
) -> None:
    """While one client sits on half a request, another client's scrape is answered at once
    (well before the slow one's timeout)."""
    _sink, _doc, port = served
    slow = asyncio.create_task(exchange(port, b"GET /metrics HTTP/1.1\r\n", timeout=3.0))
    await asyncio.sleep(0.05)
    assert (await exchange(port, get("/metrics"))).startswith(b"HTTP/1.1 200 ")
    assert not slow.done()  # answered while the slow client still waits for its timeout
    assert await slow == b""


@pytest.mark.asyncio
async def test_connection_cap(served: tuple[MetricsSink, dict[str, Any], int]) -> None:
    """With the cap's worth of idle connections open, one more is closed unanswered
    (counted); once they time out a scrape works again."""
    sink, _doc, port = served
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(LIMITS.max_connections)]
    await asyncio.sleep(0.05)
    assert await exchange(port, get("/metrics"), timeout=3.0) == b""
    assert sink.stats()["refused"] == 1
    await asyncio.sleep(LIMITS.timeout + 0.2)
    assert (await exchange(port, get("/healthz"))).startswith(b"HTTP/1.1 200 ")
    for _reader, writer in idle:
        writer.close()


@pytest.mark.asyncio
async def test_port_in_use_one_line_and_stays_off() -> None:
    """A port someone else holds: exactly one error line naming it and what to do; the
    sink's task ends (no retry), its counting still works, nothing raises."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        sink = MetricsSink(MetricsConfig(port=port), context(status_doc, {}))
        with capture_logs() as logs:
            await asyncio.wait_for(sink.run(), 5)
    assert [(r["log_level"], r["event"]) for r in logs] == [
        ("error", f"metrics off: 127.0.0.1:{port} in use; pick another [metrics] port")
    ]
    assert sink.stats()["listening"] == 0
    sink.offer(Published(1, 0, "quorum_lost", {"event": "quorum_lost"}))
    assert sink.events["quorum_lost"] == 1
