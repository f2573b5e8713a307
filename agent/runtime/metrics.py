"""Prometheus metrics and a health check on a node-local address (`[metrics]`, docs/metrics.md).

Adapter ring, one sink of the fan-out (design §3.13). `offer` only counts events by kind; the
numbers are read at scrape time: `StatusCollector.collect` turns the status document
(`votemesh status --json`, the same call the control socket makes) and every sink's counters
into metric families. The HTTP server (`metrics_http`) runs on the event loop, so a scrape reads
the agent's state on the loop thread, between two core callbacks, with no lock and no race (this
is why prometheus_client's own thread server is not used). A scrape costs one status document.

Names follow the Prometheus conventions (`votemesh_` prefix, base units, counters `_total`,
labels bounded by the cluster's size or an enum) and map onto ClusterLabs' ha_cluster_exporter
and prometheus-pve-exporter (the table in docs/metrics.md).

A port in use (or any address the agent cannot listen on) is one error line: the sink stays off
and the agent keeps running and deciding; there is no retry (a SIGHUP with a new `[metrics]`
starts it again).
"""

from __future__ import annotations

import errno
import json
from collections import Counter
from collections.abc import Iterator, Mapping
from importlib import metadata
from typing import Any

import structlog
from prometheus_client import ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

from agent.events import EventKind
from agent.outputs import MetricsConfig
from agent.runtime.fanout import Published, SinkContext
from agent.runtime.metrics_http import Answer, HttpLimits, TinyHttpServer

log = structlog.get_logger("votemesh.agent")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The classic text format: every Prometheus version reads it (generate_latest writes it)."""
QUORUM_VOTE_TYPES = {
    "expected_votes": "expected_votes",
    "highest_expected": "highest_expected",
    "total_votes": "total_votes",
    "quorum": "quorum",
    "node_votes": "votes",
}
"""`votemesh_quorum_votes{type}` -> status field. The first four are ha_cluster_exporter's
`ha_cluster_corosync_quorum_votes` types, spelled the same; `qdevice_votes` is added apart."""
SINK_COUNTERS = {
    "dropped": ("votemesh_sink_dropped_total", "Events a sink's full queue dropped (oldest)."),
    "failed": ("votemesh_sink_failures_total", "Deliveries a sink failed (logged)."),
    "delivered": ("votemesh_sink_delivered_total", "Events a sink delivered."),
    "runs": ("votemesh_hook_runs_total", "Hook command runs started."),
    "timeouts": ("votemesh_hook_timeouts_total", "Hook runs killed at their timeout."),
}
"""Keys of a sink's `stats()` exposed as counters labelled by sink (when the sink has them)."""


def _version() -> str:
    try:
        return metadata.version("votemesh")
    except metadata.PackageNotFoundError:  # running from a source tree without metadata
        return "unknown"


def _flag(value: object) -> float:
    return 1.0 if value else 0.0


def health(doc: Mapping[str, Any], removed: bool) -> tuple[bool, str]:
    """(healthy, one-line reason): healthy means running, quorate, and views not halted."""
    if removed:
        return False, "removed from the cluster"
    views = str(doc.get("views", ""))
    if views.startswith("halted"):
        return False, f"views {views}"
    if not doc.get("quorate"):
        return False, "inquorate"
    return True, "ok"


def listen_refused(host: str, port: int, exc: OSError) -> str:
    """The one line saying why the metrics are off, and what to change."""
    if exc.errno == errno.EADDRINUSE:
        return f"metrics off: {host}:{port} in use; pick another [metrics] port"
    return (
        f"metrics off: cannot listen on {host}:{port} ({exc.strerror or exc}); "
        "fix [metrics] host and port"
    )


# ---------------------------------------------------------------- status -> families
def quorum_families(doc: Mapping[str, Any]) -> Iterator[Metric]:
    """Quorum, votes, members, config version."""
    yield GaugeMetricFamily(
        "votemesh_quorate", "1 when this node's partition is quorate.", _flag(doc["quorate"])
    )
    votes = GaugeMetricFamily(
        "votemesh_quorum_votes", "Votes by type, as this node counts them.", labels=["type"]
    )
    for kind, key in QUORUM_VOTE_TYPES.items():
        votes.add_metric([kind], float(doc[key]))
    qdevice = doc["qdevice"]
    votes.add_metric(["qdevice_votes"], float(qdevice["votes"] if qdevice["vote"] else 0))
    yield votes
    yield GaugeMetricFamily(
        "votemesh_members", "Nodes in this node's current view.", float(len(doc["members"]))
    )
    yield GaugeMetricFamily(
        "votemesh_views_halted",
        "1 while no new ring id can leave the node (max_seq not durable).",
        _flag(str(doc["views"]).startswith("halted")),
    )
    if doc.get("config_version") is not None:
        yield GaugeMetricFamily(
            "votemesh_config_version",
            "Version of the applied cluster configuration.",
            float(doc["config_version"]),
        )


def node_families(doc: Mapping[str, Any]) -> Iterator[Metric]:
    """Per node: member, votes; per peer and link: up, active, RTT, loss."""
    member_votes = GaugeMetricFamily(
        "votemesh_member_votes",
        "Votes of each member of the current view.",
        labels=["node_id", "node", "local"],
    )
    member_up = GaugeMetricFamily(
        "votemesh_member_up",
        "1 when the node is in this node's current view, per known node.",
        labels=["node_id", "node"],
    )
    member_votes.add_metric([str(doc["node_id"]), doc["node_name"], "true"], float(doc["votes"]))
    member_up.add_metric([str(doc["node_id"]), doc["node_name"]], 1.0)
    link_labels = ["node_id", "node", "link"]
    up = GaugeMetricFamily(
        "votemesh_link_up", "1 when the link to the peer is up.", None, link_labels
    )
    active = GaugeMetricFamily(
        "votemesh_link_active", "1 on the link the peer's traffic uses now.", None, link_labels
    )
    rtt = GaugeMetricFamily(
        "votemesh_link_rtt_seconds", "Round-trip time to the peer on the link.", None, link_labels
    )
    loss = GaugeMetricFamily(
        "votemesh_link_loss_ratio",
        "Datagrams lost from the peer on the link, 0-1.",
        None,
        link_labels,
    )
    for peer in doc["peers"]:
        node = [str(peer["node_id"]), peer["name"]]
        member_up.add_metric(node, _flag(peer["member"]))
        if peer["member"]:
            member_votes.add_metric([*node, "false"], float(peer["votes"]))
        for link in peer["links"]:
            labels = [*node, str(link["link"])]
            up.add_metric(labels, _flag(link["up"]))
            active.add_metric(labels, _flag(link["active"]))
            loss.add_metric(labels, float(link["loss"]))
            if link["rtt_ms"] is not None:
                rtt.add_metric(labels, link["rtt_ms"] / 1000.0)
    yield from (member_votes, member_up, up, active, rtt, loss)


def qdevice_families(doc: Mapping[str, Any]) -> Iterator[Metric]:
    """The quorum device (only when one is configured: no series to alert on otherwise)."""
    qdevice = doc["qdevice"]
    yield GaugeMetricFamily(
        "votemesh_qdevice_configured",
        "1 when a quorum device is configured.",
        _flag(qdevice["configured"]),
    )
    if not qdevice["configured"]:
        return
    info = GaugeMetricFamily(
        "votemesh_qdevice_info",
        "The configured quorum device (always 1).",
        labels=["algorithm", "server"],
    )
    info.add_metric([str(qdevice["algorithm"]), str(qdevice["server"])], 1.0)
    yield info
    yield GaugeMetricFamily(
        "votemesh_qdevice_connected",
        "1 while connected to the qnetd server.",
        _flag(qdevice["connected"]),
    )
    yield GaugeMetricFamily(
        "votemesh_qdevice_casting_vote",
        "1 while the qnetd gives this node the device's votes.",
        _flag(qdevice["vote"]),
    )
    yield CounterMetricFamily(
        "votemesh_qdevice_connects",
        "Connections made to the qnetd server.",
        float(qdevice.get("connects", 0)),
    )


def datagram_families(doc: Mapping[str, Any]) -> Iterator[Metric]:
    """The mesh sockets' counters (runtime part of the status)."""
    runtime = doc.get("runtime")
    if not runtime:
        return
    datagrams = runtime["datagrams"]
    for key, help_text in (
        ("received", "Datagrams received on the mesh links."),
        ("sent", "Datagrams sent on the mesh links."),
        ("send_errors", "Datagram sends that failed."),
    ):
        yield CounterMetricFamily(f"votemesh_datagrams_{key}", help_text, float(datagrams[key]))
    dropped = CounterMetricFamily(
        "votemesh_datagrams_dropped", "Datagrams dropped, by reason.", labels=["reason"]
    )
    for reason, count in sorted(datagrams["dropped"].items()):
        dropped.add_metric([reason], float(count))
    yield dropped
    yield GaugeMetricFamily(
        "votemesh_uptime_seconds", "Seconds since the agent started.", float(runtime["uptime_s"])
    )


def sink_families(stats: Mapping[str, Mapping[str, int]]) -> Iterator[Metric]:
    """Each event sink's queue and counters; MQTT's connection."""
    depth = GaugeMetricFamily(
        "votemesh_sink_queue_depth", "Events waiting in a sink's queue.", labels=["sink"]
    )
    counters = {
        key: CounterMetricFamily(name.removesuffix("_total"), text, labels=["sink"])
        for key, (name, text) in SINK_COUNTERS.items()
    }
    for sink, values in sorted(stats.items()):
        if "queued" in values:
            depth.add_metric([sink], float(values["queued"]))
        for key, family in counters.items():
            if key in values:
                family.add_metric([sink], float(values[key]))
    yield depth
    yield from counters.values()
    mqtt = stats.get("mqtt")
    if mqtt is not None and "connected" in mqtt:
        yield GaugeMetricFamily(
            "votemesh_mqtt_connected",
            "1 while connected to the MQTT broker.",
            _flag(mqtt["connected"]),
        )


# ---------------------------------------------------------------- the sink
class StatusCollector:
    """A prometheus_client collector reading the agent at scrape time (on the loop thread)."""

    def __init__(self, sink: MetricsSink) -> None:
        self.sink = sink

    def collect(self) -> Iterator[Metric]:
        ctx, sink = self.sink.ctx, self.sink
        doc = ctx.status()
        info = GaugeMetricFamily(
            "votemesh_build_info", "The running votemesh version (always 1).", labels=["version"]
        )
        info.add_metric([sink.version], 1.0)
        yield info
        cluster = GaugeMetricFamily(
            "votemesh_cluster_info",
            "This node's cluster and identity (always 1).",
            labels=["cluster", "node_id", "node"],
        )
        cluster.add_metric([ctx.cluster, str(ctx.node_id), ctx.node_name], 1.0)
        yield cluster
        yield from quorum_families(doc)
        yield CounterMetricFamily(
            "votemesh_view_changes",
            "Views installed since the metrics started.",
            float(sink.events[str(EventKind.VIEW_INSTALLED)]),
        )
        events = CounterMetricFamily(
            "votemesh_events", "Events emitted since the metrics started, by kind.", labels=["kind"]
        )
        for kind in EventKind:
            events.add_metric([str(kind)], float(sink.events[str(kind)]))
        yield events
        yield from node_families(doc)
        yield from qdevice_families(doc)
        yield from datagram_families(doc)
        yield from sink_families(ctx.stats())
        yield from sink.http_families()


class MetricsSink:
    """`/metrics` and `/healthz` on the `[metrics]` address; counts events as they pass."""

    name = "metrics"

    def __init__(
        self, config: MetricsConfig, ctx: SinkContext, limits: HttpLimits | None = None
    ) -> None:
        self.config = config
        self.ctx = ctx
        self.version = _version()
        self.events: Counter[str] = Counter()
        self.removed = False
        self.listening = False
        self.address: tuple[str, int] | None = None
        """Where it listens once `run` bound (port 0 in the config: the one the OS chose)."""
        self.scrapes = 0
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StatusCollector(self))
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, memory, fds
        self.http = TinyHttpServer(
            {"/metrics": self.metrics, "/healthz": self.healthz}, limits or HttpLimits()
        )

    # ------------------------------------------------------------ from the core's callback
    def offer(self, item: Published) -> None:
        self.events[item.kind] += 1
        if item.kind == EventKind.REMOVED_FROM_CLUSTER:
            self.removed = True

    def status_changed(self) -> None:
        pass  # read at scrape time

    # ------------------------------------------------------------ HTTP
    def metrics(self, _query: str) -> Answer:
        self.scrapes += 1
        return Answer(200, generate_latest(self.registry), CONTENT_TYPE)

    def healthz(self, query: str) -> Answer:
        """200 `ok` when running and quorate; 503 and why otherwise (`?format=json`: JSON)."""
        doc = self.ctx.status()
        healthy, reason = health(doc, self.removed)
        code = 200 if healthy else 503
        if "format=json" not in query.split("&"):
            return Answer(code, f"{reason}\n".encode())
        body = {
            "healthy": healthy,
            "reason": reason,
            "quorate": doc["quorate"],
            "members": doc["members"],
            "ring": doc["ring"],
            "config_version": doc.get("config_version"),
            "qdevice_connected": doc["qdevice"]["connected"]
            if doc["qdevice"]["configured"]
            else None,
        }
        return Answer(code, json.dumps(body).encode() + b"\n", "application/json")

    def http_families(self) -> Iterator[Metric]:
        """This endpoint's own scrapes and refusals."""
        yield CounterMetricFamily(
            "votemesh_metrics_scrapes", "Answers to GET /metrics.", float(self.scrapes)
        )
        refused = CounterMetricFamily(
            "votemesh_metrics_refused",
            "HTTP requests to the metrics endpoint not answered normally, by reason.",
            labels=["reason"],
        )
        counters = self.http.counters
        for reason, count in (
            ("bad_request", counters.bad_requests),
            ("timeout", counters.timeouts),
            ("connection_cap", counters.refused),
            ("error", counters.errors),
        ):
            refused.add_metric([reason], float(count))
        yield refused

    # ------------------------------------------------------------ lifetime
    async def run(self) -> None:
        """Listen and serve until cancelled; an address we cannot use: one line, stay off."""
        host, port = self.config.host, self.config.port
        try:
            server = await self.http.start(host, port)
        except OSError as exc:
            refused: str | None = listen_refused(host, port, exc)
        else:
            refused = None
        if refused is not None:
            log.error(refused)
            return
        self.listening = True
        self.address = server.sockets[0].getsockname()[:2]
        log.info("metrics listening", address="{}:{}".format(*self.address))
        try:
            await server.serve_forever()
        finally:  # no `async with server`: from Python 3.12 its exit waits for every client
            self.listening = False
            server.close()
            self.http.close_clients()

    async def close(self) -> None:
        self.http.close_clients()

    def stats(self) -> dict[str, int]:
        counters = self.http.counters
        return {
            "listening": int(self.listening),
            "scrapes": self.scrapes,
            "requests": counters.requests,
            "bad_requests": counters.bad_requests,
            "timeouts": counters.timeouts,
            "refused": counters.refused,
            "errors": counters.errors,
        }
