"""MQTT sink: retained node and cluster state, availability, events, Home Assistant discovery
(design §3.13, docs/events.md).

Adapter ring. One broker connection per agent (its will marks this node offline). aiomqtt 2.x
does not reconnect by itself: `MqttSink.run` is the reconnect loop (exponential backoff with
jitter, capped). While the broker is away, events wait in the sink's bounded queue (the oldest
dropped, counted); after each connect it publishes, in order: birth `online`, Home Assistant
discovery, the current state (and the cluster summary when this node should), then the queued
events. Nothing here can block or fail the core: the core only appends to the queue.

Topics (`<node>` is the node name when it is a valid topic level, else the node id):

    <prefix>/<cluster>/<node>/availability   "online" / "offline" (retained; will = offline)
    <prefix>/<cluster>/<node>/state          status --json + timestamp (retained, QoS 1)
    <prefix>/<cluster>/<node>/events         one event per message (QoS 1, not retained)
    <prefix>/<cluster>/state                 cluster summary (retained, see `summary_wanted`)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import aiomqtt
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.outputs import MqttConfig
from agent.runtime.fanout import Published, QueuedSink, SinkContext

log = structlog.get_logger("votemesh.agent")

SCHEMA = "votemesh/1"
"""User property `schema` on every MQTT 5 message, and `schema` in the summary."""
EVENT_EXPIRY_S = 3600
"""MQTT 5 message expiry of events: a subscriber away for longer does not get them."""
CONNECT_TIMEOUT_S = 5.0
"""From TCP connect to CONNACK (a broker that accepts and never answers)."""
OP_TIMEOUT_S = 5.0
"""A publish or subscribe not acknowledged in this time: the connection is treated as broken."""
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
RELOG_S = 300.0
"""The same connect failure is logged again at most this often (with the attempt count)."""
MAX_LEVELS = 1024
"""Nodes' availability kept (a cluster has at most `proto.mesh_messages.MAX_NODES`): anyone who
may publish under `<prefix>/<cluster>/+/availability` could otherwise grow the table forever."""
_LEVEL = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_ID_UNSAFE = re.compile(r"[^a-zA-Z0-9_-]")
_VOLATILE = ("timestamp", "wall_ms")


def node_level(name: str, node_id: int) -> str:
    """This node's topic level: its name if it is a plain word (`[A-Za-z0-9_.-]`, at most 64),
    else its node id in decimal (a name with `/`, `+`, `#`, spaces ... is not a topic level)."""
    return name if _LEVEL.fullmatch(name) else str(node_id)


def ha_id(*parts: str) -> str:
    """A Home Assistant id (`[a-zA-Z0-9_-]`): the parts joined by `_`, other characters `_`."""
    return _ID_UNSAFE.sub("_", "_".join(parts))


@dataclass(frozen=True, slots=True)
class Topics:
    prefix: str
    cluster: str
    node: str

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.cluster}"

    def of(self, node: str, leaf: str) -> str:
        return f"{self.base}/{node}/{leaf}"

    @property
    def availability(self) -> str:
        return self.of(self.node, "availability")

    @property
    def state(self) -> str:
        return self.of(self.node, "state")

    @property
    def events(self) -> str:
        return self.of(self.node, "events")

    @property
    def cluster_state(self) -> str:
        return f"{self.base}/state"

    @property
    def every_availability(self) -> str:
        return f"{self.base}/+/availability"


def software_version() -> str:
    try:
        return metadata.version("votemesh")
    except metadata.PackageNotFoundError:
        return "unknown"


def node_state(status: Mapping[str, Any], wall_ms: int) -> dict[str, Any]:
    """The retained per-node state: `status --json` plus when it was taken."""
    return {**status, "timestamp": iso(wall_ms), "wall_ms": wall_ms}


def iso(wall_ms: int) -> str:
    return datetime.fromtimestamp(wall_ms / 1000, UTC).isoformat(timespec="milliseconds")


def cluster_summary(status: Mapping[str, Any], topics: Topics, wall_ms: int) -> dict[str, Any]:
    """The retained cluster summary as this node's view sees it."""
    qdevice = status.get("qdevice") or {}
    return {
        "schema": SCHEMA,
        "cluster": status["cluster"],
        "quorate": bool(status["quorate"]),
        "members": list(status["members"]),
        "votes": {
            "total": status["total_votes"],
            "quorum": status["quorum"],
            "expected": status["expected_votes"],
            "highest_expected": status["highest_expected"],
        },
        "qdevice": {
            "configured": bool(qdevice.get("configured", False)),
            "connected": bool(qdevice.get("connected", False)),
            "vote": bool(qdevice.get("vote", False)),
            "votes": qdevice.get("votes", 0),
        },
        "config_version": status.get("config_version"),
        "ring": status["ring"],
        "ring_id": list(status["ring_id"]),
        "published_by": {"node_id": status["node_id"], "node": topics.node},
        "timestamp": iso(wall_ms),
        "wall_ms": wall_ms,
    }


def _rank(summary: Mapping[str, Any]) -> tuple[bool, int, int]:
    """Claims order: quorate first, then the newer ring (sequence, then representative)."""
    rep, seq = summary.get("ring_id") or (0, 0)
    return bool(summary.get("quorate")), int(seq), int(rep)


def summary_wanted(
    status: Mapping[str, Any], retained: Mapping[str, Any] | None, online: Mapping[str, str]
) -> bool:
    """Whether this node should (re)publish the cluster summary (docs/events.md, "Who
    publishes the cluster summary"). Only the representative of its view ever does; it does
    unless the retained summary is another live claim that outranks its own:

    * no summary retained, or it is this node's own, or its publisher is in this node's view
      (that claim is older than this view) or offline (its will): publish;
    * else publish only if this view ranks higher: quorate beats inquorate, then the newer ring
      id (sequence, then representative id). Quorate partitions cannot coexist, so the quorate
      one wins; with none quorate the inquorate view with the newest ring id stands.

    Every rule is a total order on live claims, so two publishers never overwrite each other in
    a loop: the lower one stops when it sees the higher one."""
    me = status["node_id"]
    rep = status["ring_id"][0]
    if rep != me or me not in status["members"]:
        return False
    if not retained:
        return True
    by = retained.get("published_by") or {}
    if by.get("node_id") == me or by.get("node_id") in status["members"]:
        return True
    if online.get(str(by.get("node"))) != "online":
        return True
    mine = (bool(status["quorate"]), int(status["ring_id"][1]), int(rep))
    return mine > _rank(retained)


def same_claim(a: Mapping[str, Any] | None, b: Mapping[str, Any]) -> bool:
    """Equal apart from when they were taken."""
    if a is None:
        return False
    return {k: v for k, v in a.items() if k not in _VOLATILE} == {
        k: v for k, v in b.items() if k not in _VOLATILE
    }


def ha_discovery(
    status: Mapping[str, Any], topics: Topics, discovery_prefix: str, version: str
) -> list[tuple[str, dict[str, Any]]]:
    """Home Assistant per-entity discovery: (topic, retained config) for this node's `quorate`
    binary_sensor and the cluster's (every node sends the same cluster entity; identical
    retained payloads). docs/events.md documents the schema; tests check it on golden files."""
    cluster = str(status["cluster"])
    origin = {"name": "votemesh", "sw": version}
    levels = {int(status["node_id"]): topics.node}
    for peer in status.get("peers", ()):
        levels.setdefault(int(peer["node_id"]), node_level(str(peer["name"]), int(peer["node_id"])))
    on_off = {
        "value_template": "{{ 'ON' if value_json.quorate else 'OFF' }}",
        "payload_on": "ON",
        "payload_off": "OFF",
        "qos": 1,
        "origin": origin,
    }
    node_uid = ha_id("votemesh", cluster, topics.node, "quorate")
    node = {
        "name": "Quorate",
        "unique_id": node_uid,
        "state_topic": topics.state,
        "availability_topic": topics.availability,
        "payload_available": "online",
        "payload_not_available": "offline",
        **on_off,
        "device": {
            "identifiers": [ha_id("votemesh", cluster, topics.node)],
            "name": f"votemesh {cluster} {status['node_name'] or topics.node}",
            "manufacturer": "votemesh",
            "model": "votemesh-agent",
            "sw_version": version,
        },
    }
    cluster_uid = ha_id("votemesh", cluster, "quorate")
    whole = {
        "name": "Quorate",
        "unique_id": cluster_uid,
        "state_topic": topics.cluster_state,
        "availability": [{"topic": topics.of(levels[i], "availability")} for i in sorted(levels)],
        "availability_mode": "any",
        "payload_available": "online",
        "payload_not_available": "offline",
        **on_off,
        "device": {
            "identifiers": [ha_id("votemesh", cluster)],
            "name": f"votemesh cluster {cluster}",
            "manufacturer": "votemesh",
            "model": "votemesh cluster",
            "sw_version": version,
        },
    }
    return [
        (f"{discovery_prefix}/binary_sensor/{node_uid}/config", node),
        (f"{discovery_prefix}/binary_sensor/{cluster_uid}/config", whole),
    ]


def _dumps(doc: Any) -> str:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True)


class LocalFileError(Exception):
    """A file of this node's `[mqtt]` settings cannot be used (one line, says what to fix)."""


_TLS_HINT = "TLS failed ({text}); check mqtt.ca_file / cert_file and the broker's certificate"
_HINTS = (
    ("refused", "{text}: is the broker running and listening there?"),
    ("certificate", _TLS_HINT),
    ("ssl", _TLS_HINT),
    ("timed out", "no answer from the broker within " + f"{CONNECT_TIMEOUT_S:g}" + " s ({text})"),
)


def describe(exc: BaseException) -> str:
    """One line an operator can act on, for a failed connect."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, LocalFileError):
        return text
    rc = getattr(exc, "rc", None)
    value = rc.value if isinstance(rc, ReasonCode) else rc
    if value in (4, 5, 134, 135):
        return f"the broker refused the credentials ({exc}); check mqtt.username / password_file"
    if value in (1, 132):
        return f"the broker refused the protocol version ({exc})"
    return next((hint.format(text=text) for word, hint in _HINTS if word in text.lower()), text)


class MqttSink(QueuedSink):
    """Events and state to one MQTT broker (see the module text)."""

    name = "mqtt"

    def __init__(self, config: MqttConfig, ctx: SinkContext) -> None:
        super().__init__(config.queue)
        self.config = config
        self.ctx = ctx
        self.topics = Topics(
            config.topic_prefix, ctx.cluster, node_level(ctx.node_name, ctx.node_id)
        )
        self.client_id = config.client_id or f"votemesh-{ctx.cluster}-{ctx.node_id}"
        self.version = software_version()
        self.protocol = aiomqtt.ProtocolVersion.V5
        self.connected = 0
        self.reconnects = 0
        self.connect_failures = 0
        self._client: aiomqtt.Client | None = None
        self._ever_connected = False
        self._connecting = False
        self._attempt = 0
        self._last_reason = ""
        self._last_logged = 0.0
        self._retained_summary: dict[str, Any] | None = None
        self._published_summary: dict[str, Any] | None = None
        self._online: dict[str, str] = {}
        self._discovery_due = False

    # ------------------------------------------------------------ connection
    def _tls_context(self) -> ssl.SSLContext | None:
        if not self.config.tls:
            return None
        try:
            context = ssl.create_default_context(cafile=self.config.ca_file or None)
            if self.config.cert_file:
                context.load_cert_chain(self.config.cert_file, self.config.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise LocalFileError(
                f"cannot load mqtt.ca_file / cert_file / key_file ({exc}); fix the file"
            ) from None
        return context

    def _password(self) -> str | None:
        """The first line of `password_file`, read at every connect (rotation needs no
        restart)."""
        if not self.config.password_file:
            return None
        path = self.config.password_file
        try:
            lines = Path(path).read_text().splitlines()
        except OSError as exc:
            raise LocalFileError(f"cannot read mqtt.password_file {path}: {exc.strerror}") from None
        if not lines or not lines[0].strip():
            raise LocalFileError(f"mqtt.password_file {path} is empty; write the password in it")
        return lines[0].strip()

    def _make_client(self) -> aiomqtt.Client:
        password = self._password()
        return aiomqtt.Client(
            self.config.host,
            self.config.port,
            username=self.config.username or None,
            password=password,
            identifier=self.client_id,
            protocol=self.protocol,
            will=aiomqtt.Will(self.topics.availability, "offline", qos=1, retain=True),
            keepalive=self.config.keepalive,
            timeout=CONNECT_TIMEOUT_S,
            tls_context=self._tls_context(),
            logger=_QUIET,
        )

    async def run(self) -> None:
        """Connect, publish, reconnect with backoff, until cancelled."""
        while True:
            self._connecting = True  # a bad password file fails here: a connect failure
            try:
                await self._session(self._make_client())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 (any failure: log once, retry)
                self._failed_connection(exc)
            self.connected = 0
            delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** min(self._attempt, 16))
            self._attempt += 1
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # jitter

    def _failed_connection(self, exc: BaseException) -> None:
        if not self._connecting:
            reason = str(exc) or type(exc).__name__
            if exc.__cause__ is not None:
                reason += f" ({exc.__cause__})"
            log.warning("mqtt connection lost; reconnecting", reason=reason)
            return
        self.connect_failures += 1
        reason = describe(exc)
        rc = getattr(exc, "rc", None)
        value = rc.value if isinstance(rc, ReasonCode) else rc
        if value in (1, 132) and self.protocol == aiomqtt.ProtocolVersion.V5:
            self.protocol = aiomqtt.ProtocolVersion.V311
            log.warning("mqtt broker refuses MQTT 5; using 3.1.1 (no message expiry)")
            self._attempt = 0
            return
        now = time.monotonic()
        if reason != self._last_reason or now - self._last_logged >= RELOG_S:
            log.warning(
                "mqtt broker unavailable; retrying with backoff",
                broker=f"{self.config.host}:{self.config.port}",
                reason=reason,
                failures=self.connect_failures,
            )
            self._last_reason, self._last_logged = reason, now

    async def _session(self, client: aiomqtt.Client) -> None:
        """One connection: publish everything due, then deliver and listen until it breaks."""
        self._connecting = True
        try:
            await client.__aenter__()
        except BaseException:
            _abandon(client)
            raise
        self._connecting = False
        self._client = client
        try:
            self.connected = 1
            if self._ever_connected:
                self.reconnects += 1
            self._ever_connected, self._attempt = True, 0
            log.info(
                "mqtt connected",
                broker=f"{self.config.host}:{self.config.port}",
                client_id=self.client_id,
                protocol="5" if self.protocol == aiomqtt.ProtocolVersion.V5 else "3.1.1",
                reconnects=self.reconnects,
            )
            self._last_reason = ""
            await self._on_connected(client)
            await self._serve(client)
        except asyncio.CancelledError:
            # stopping: say so (a clean DISCONNECT discards the will)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._birth(client, "offline"), 1.0)
            raise
        finally:
            self._client = None
            self.connected = 0
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.__aexit__(None, None, None), 1.0)
            _abandon(client)

    async def _on_connected(self, client: aiomqtt.Client) -> None:
        t = self.topics
        await client.subscribe(t.cluster_state, qos=1, timeout=OP_TIMEOUT_S)
        await client.subscribe(t.every_availability, qos=1, timeout=OP_TIMEOUT_S)
        if self.config.home_assistant:
            await client.subscribe(
                f"{self.config.discovery_prefix}/status", qos=1, timeout=OP_TIMEOUT_S
            )
        # What the broker holds now comes again after subscribing (it may have lost all).
        self._retained_summary = self._published_summary = None
        self._online = {}
        await self._birth(client, "online")
        await self._discovery(client)
        await self._publish_status(client)  # the current state, then the queued events

    async def _birth(self, client: aiomqtt.Client, payload: str) -> None:
        await client.publish(
            self.topics.availability, payload, qos=1, retain=True, timeout=OP_TIMEOUT_S
        )

    async def _discovery(self, client: aiomqtt.Client) -> None:
        if not self.config.home_assistant:
            return
        entries = ha_discovery(
            self.ctx.status(), self.topics, self.config.discovery_prefix, self.version
        )
        for topic, payload in entries:
            await client.publish(topic, _dumps(payload), qos=1, retain=True, timeout=OP_TIMEOUT_S)
        await self._birth(client, "online")  # availability right after discovery (HA)

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Deliver and listen until either fails (MqttError: the connection broke)."""
        tasks = [
            asyncio.create_task(self._deliver_loop(), name="mqtt:deliver"),
            asyncio.create_task(self._listen(client), name="mqtt:listen"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
            raise aiomqtt.MqttError("connection task ended")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _deliver_loop(self) -> None:
        while True:
            self._wake.clear()
            await self.drain()
            await self._wake.wait()

    async def _listen(self, client: aiomqtt.Client) -> None:
        t = self.topics
        async for message in client.messages:
            topic = str(message.topic)
            payload = message.payload
            text = (
                payload.decode("utf-8", "replace") if isinstance(payload, bytes) else str(payload)
            )
            if topic == t.cluster_state:
                self._retained_summary = _parse_summary(text)
                self._status_stale = True  # re-decide the summary (another claim arrived)
                self._wake.set()
            elif message.topic.matches(t.every_availability):
                level = topic.split("/")[-2]
                if level in self._online or len(self._online) < MAX_LEVELS:
                    self._online[level] = text[:16]
                if level == t.node and text != "online":
                    await self._birth(client, "online")  # a stale will of ours, after a takeover
                self._status_stale = True
                self._wake.set()
            elif self.config.home_assistant and text == "online":
                self._discovery_due = True  # Home Assistant (re)started: sent by the drain,
                self._status_stale = True  # once however many announcements came meanwhile
                self._wake.set()

    # ------------------------------------------------------------ deliveries
    async def _drain(self) -> None:
        """Events in order, then the status. Not connected: everything stays queued; a broken
        connection leaves the event being sent at the head of the queue (sent again later)."""
        client = self._client
        if client is None:
            return
        while self.queue:
            await self._publish_event(client, self.queue[0])
            self.queue.popleft()
            self.delivered += 1
        if self._discovery_due:
            self._discovery_due = False
            try:
                await self._discovery(client)
            except BaseException:
                self._discovery_due = True
                raise
        if self._status_stale:
            self._status_stale = False
            try:
                await self._publish_status(client)
            except BaseException:
                self._status_stale = True
                raise

    async def _publish_event(self, client: aiomqtt.Client, item: Published) -> None:
        properties = None
        if self.protocol == aiomqtt.ProtocolVersion.V5:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.MessageExpiryInterval = EVENT_EXPIRY_S
            properties.ContentType = "application/json"
            properties.UserProperty = [
                ("schema", SCHEMA),
                ("cluster", self.ctx.cluster),
                ("kind", item.kind),
            ]
        await client.publish(
            self.topics.events,
            _dumps(item.as_dict()),
            qos=1,
            retain=False,
            properties=properties,
            timeout=OP_TIMEOUT_S,
        )

    async def _publish_status(self, client: aiomqtt.Client) -> None:
        status = self.ctx.status()
        wall_ms = time.time_ns() // 1_000_000
        await client.publish(
            self.topics.state,
            _dumps(node_state(status, wall_ms)),
            qos=1,
            retain=True,
            timeout=OP_TIMEOUT_S,
        )
        if not summary_wanted(status, self._retained_summary, self._online):
            return
        summary = cluster_summary(status, self.topics, wall_ms)
        if same_claim(self._retained_summary, summary):
            return  # already said
        by = (self._retained_summary or {}).get("published_by") or {}
        if by.get("node_id") in (None, status["node_id"]) and same_claim(
            self._published_summary, summary
        ):
            return  # said, and on its way back to us
        await client.publish(
            self.topics.cluster_state, _dumps(summary), qos=1, retain=True, timeout=OP_TIMEOUT_S
        )
        self._published_summary = summary

    async def deliver(self, item: Published) -> None:  # pragma: no cover (own _drain)
        raise NotImplementedError

    def stats(self) -> dict[str, int]:
        return {
            **super().stats(),
            "connected": self.connected,
            "reconnects": self.reconnects,
            "connect_failures": self.connect_failures,
        }


def _parse_summary(text: str) -> dict[str, Any] | None:
    """A retained summary from the broker (anyone may write it: checked, else ignored)."""
    if not text:
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    ring = doc.get("ring_id")
    by = doc.get("published_by")
    if not (
        isinstance(ring, list)
        and len(ring) == 2
        and all(isinstance(v, int) and 0 <= v < 2**64 for v in ring)
        and isinstance(by, dict)
        and isinstance(by.get("node_id"), int)
    ):
        return None
    return doc


def _abandon(client: aiomqtt.Client) -> None:
    """Close a connection attempt's socket for good (aiomqtt leaves it open after a CONNACK
    timeout; a stale CONNECT read later by a resumed broker would take over our session)."""
    with contextlib.suppress(Exception):
        client._client._sock_close()  # no public way in aiomqtt 2.x


_QUIET = logging.getLogger("votemesh.mqtt.paho")
_QUIET.setLevel(logging.ERROR)  # paho's own lines (every retry) stay out of the agent's log
