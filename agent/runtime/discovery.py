"""Zeroconf discovery: announce this node's link addresses, learn the other members' addresses.

Adapter ring (docs/design.md §2 "discovery"). The node registers one DNS-SD service
`<cluster>-<node id>._votemesh._udp.local.` on the interface address of every link and browses
the same type. The TXT record carries no secrets, only (RFC 6763 §6 key=value strings):

    v=1  cluster=<name>  node_id=<1..4294967295>  name=<node name>
    links=0=198.18.0.2:5407,1=[fd00::2]:5407      (link index=address:port, comma-separated)

Discovery only *proposes* addresses: a discovered node takes part only if its datagrams open
under the cluster key, and static peers work without any of this. Liveness never comes from
mDNS (a hard-killed peer stays in the caches for the records' TTL); `on_gone` reports only a
peer's goodbye (it unregistered on a clean shutdown).

Every announcement is parsed by `peer_from_txt` (pure, raises only `DecodeError`). Other
clusters' announcements, our own, and malformed ones are dropped and counted in `counters`
(reason -> count) with at most one debug line per reason per minute; nothing a peer announces
can raise into zeroconf's callbacks.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from zeroconf import (
    IPVersion,
    NonUniqueNameException,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
)
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from agent.config import MAX_LINKS, MAX_NODE_ID, AgentConfig, LinkConfig
from proto.errors import DecodeError

log = structlog.get_logger("votemesh.agent.discovery")

SERVICE_TYPE = "_votemesh._udp.local."
TXT_VERSION = "1"
MAX_TXT_STRING = 255  # bytes per TXT string (RFC 6763 §6.1: one length octet)
MAX_CLUSTER_NAME = 64  # characters, as AgentConfig.validate() allows
MAX_NODE_NAME = 64  # bytes of UTF-8 we announce and accept
MAX_INSTANCE_LABEL = 63  # bytes of a DNS label (RFC 6763 §4.1.1)
RESOLVE_TIMEOUT_MS = 3000  # a peer that announced a PTR but not its TXT within 3 s is dropped
LOG_EVERY = 60.0  # seconds: at most one debug line per drop reason
MAX_RESOLVING = 64  # TXT look-ups in flight; more unresolved names at once are dropped (a flood)
MAX_PEERS = 1024  # instances of our cluster remembered: 10x the largest cluster we design for
NODE_ID = re.compile(r"[1-9][0-9]{0,9}")
LINK_INDEX = re.compile(r"[0-7]")
PORT = re.compile(r"[1-9][0-9]{0,4}")
REQUIRED_KEYS = ("v", "cluster", "node_id", "name", "links")

Address = tuple[int, str, int]


class DiscoveryError(RuntimeError):
    """Discovery cannot announce this node; the message says what to change."""


@dataclass(frozen=True, slots=True)
class DiscoveredPeer:
    """A member of our cluster as it announces itself (addresses are proposals only)."""

    cluster: str
    node_id: int
    node_name: str
    addresses: tuple[Address, ...]
    """(link index, address, port), sorted by link index: the shape of PeerConfig.addresses."""


# ---------------------------------------------------------------- TXT encoding (pure)
def _format_address(address: str, port: int) -> str:
    host = str(ipaddress.ip_address(address))
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def announceable(link: LinkConfig) -> bool:
    """A link whose address a peer can use: a concrete, unscoped address and a real port."""
    try:
        ip = ipaddress.ip_address(link.address)
    except ValueError:
        return False
    return not (ip.is_unspecified or ip.is_multicast or "%" in link.address) and link.port > 0


def encode_txt(cluster: str, node_id: int, node_name: str, links: tuple[LinkConfig, ...]) -> bytes:
    """The TXT rdata announcing this node; DiscoveryError if it cannot fit (255 bytes a string).

    The node name is only shown to people: unprintable characters become "?" and a name longer
    than MAX_NODE_NAME bytes is cut at a character boundary. Links that `announceable` rejects
    are left out.
    """
    printable = "".join(c if c.isprintable() else "?" for c in node_name)
    name = printable.encode()[:MAX_NODE_NAME].decode(errors="ignore")
    entries = ",".join(
        f"{link.index}={_format_address(link.address, link.port)}"
        for link in sorted(links, key=lambda link: link.index)
        if announceable(link)
    )
    fields = {"v": TXT_VERSION, "cluster": cluster, "node_id": str(node_id), "name": name}
    fields["links"] = entries
    out = bytearray()
    for key, value in fields.items():
        item = f"{key}={value}".encode()
        if len(item) > MAX_TXT_STRING:
            raise DiscoveryError(
                f"discovery: TXT '{key}' is {len(item)} bytes (max {MAX_TXT_STRING}); "
                "shorten it or set discovery = false and list peers statically"
            )
        out += bytes([len(item)]) + item
    return bytes(out)


def parse_txt(raw: bytes) -> dict[str, str | None]:
    """RFC 6763 §6: length-prefixed strings; keys case-insensitive, the first one wins.

    Values that are not UTF-8 or keys that are not printable ASCII raise DecodeError("bad_txt").
    """
    fields: dict[str, str | None] = {}
    pos = 0
    while pos < len(raw):
        end = pos + 1 + raw[pos]
        if end > len(raw):
            raise DecodeError("bad_txt", "truncated TXT string")
        key_bytes, sep, value = raw[pos + 1 : end].partition(b"=")
        pos = end
        if not key_bytes or not all(0x20 <= b <= 0x7E for b in key_bytes):
            continue  # RFC 6763 §6.4: strings with an empty or unprintable key are ignored
        key = key_bytes.decode("ascii").lower()
        if key in fields:
            continue
        try:
            fields[key] = value.decode() if sep else None
        except UnicodeDecodeError:
            raise DecodeError("bad_txt", f"{key}: not UTF-8") from None
    return fields


def _parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or PORT.fullmatch(port) is None or int(port) > 0xFFFF:
        raise DecodeError("bad_txt", f"links: bad port in {text[:60]!r}")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise DecodeError("bad_txt", f"links: bad address {text[:60]!r}") from None
    if bracketed != (ip.version == 6) or ip.is_unspecified or ip.is_multicast or "%" in host:
        raise DecodeError("bad_txt", f"links: unusable address {text[:60]!r}")
    return str(ip), int(port)


def parse_links(text: str) -> tuple[Address, ...]:
    """`0=10.0.0.1:5407,1=[fd00::1]:5407` -> ((0, "10.0.0.1", 5407), (1, "fd00::1", 5407))."""
    entries = text.split(",")
    if not text or len(entries) > MAX_LINKS:
        raise DecodeError("bad_txt", f"links: 1 to {MAX_LINKS} entries expected")
    links: dict[int, tuple[str, int]] = {}
    for entry in entries:
        index, sep, address = entry.partition("=")
        if not sep or LINK_INDEX.fullmatch(index) is None or int(index) in links:
            raise DecodeError("bad_txt", f"links: bad or repeated link index in {entry[:60]!r}")
        links[int(index)] = _parse_address(address)
    return tuple((index, *links[index]) for index in sorted(links))


def peer_from_txt(raw: bytes) -> DiscoveredPeer:
    """Validate every field of an announcement; DecodeError (reason "bad_txt") otherwise."""
    fields = parse_txt(raw)
    missing = [key for key in REQUIRED_KEYS if fields.get(key) is None]
    if missing:
        raise DecodeError("bad_txt", f"missing {', '.join(missing)}")
    values = {key: str(fields[key]) for key in REQUIRED_KEYS}
    if values["v"] != TXT_VERSION:
        raise DecodeError("bad_version", f"v={values['v'][:20]!r}")
    cluster, name = values["cluster"], values["name"]
    if not 0 < len(cluster) <= MAX_CLUSTER_NAME:  # any name AgentConfig accepts; == decides
        raise DecodeError("bad_txt", "cluster: 1-64 characters expected")
    if len(name.encode()) > MAX_NODE_NAME or not name.isprintable():
        raise DecodeError("bad_txt", f"name: at most {MAX_NODE_NAME} printable bytes expected")
    node_id = values["node_id"]
    if NODE_ID.fullmatch(node_id) is None or int(node_id) > MAX_NODE_ID:
        raise DecodeError("bad_txt", f"node_id: {node_id[:20]!r} is not 1..{MAX_NODE_ID}")
    return DiscoveredPeer(cluster, int(node_id), name, parse_links(values["links"]))


def instance_name(cluster: str, node_id: int) -> str:
    """`<cluster>-<node id>._votemesh._udp.local.`; an awkward cluster name becomes a short
    readable prefix plus a digest, so the label stays a valid, per-node unique DNS label."""
    label = f"{cluster}-{node_id}"
    if re.fullmatch(r"[A-Za-z0-9_-]+", cluster) is None or len(label) > MAX_INSTANCE_LABEL:
        readable = re.sub(r"[^A-Za-z0-9_-]", "_", cluster)[:32]
        label = f"{readable}~{_digest(cluster)}-{node_id}"
    return f"{label}.{SERVICE_TYPE}"


def _digest(cluster: str) -> str:
    return hashlib.sha256(cluster.encode()).hexdigest()[:8]


def ip_version_for(addresses: list[str]) -> IPVersion:
    """V4Only, V6Only or All, from the families of the links' addresses."""
    versions = {ipaddress.ip_address(a).version for a in addresses}
    if versions == {4}:
        return IPVersion.V4Only
    return IPVersion.V6Only if versions == {6} else IPVersion.All


# ---------------------------------------------------------------- the adapter
class Discovery:
    """Announces this node on its links' interfaces and reports the members it hears of.

    `on_peer(peer)` runs (in the event loop) when a member of our cluster is first seen and
    whenever its announced name or addresses change; `on_gone(node_id)` when it unregistered.
    Callbacks must not block; an exception from them is counted ("callback_error") and logged.
    """

    def __init__(
        self,
        config: AgentConfig,
        on_peer: Callable[[DiscoveredPeer], None],
        on_gone: Callable[[int], None] | None = None,
    ) -> None:
        self.config = config
        self.on_peer = on_peer
        self.on_gone = on_gone
        self.counters: Counter[str] = Counter()
        """Dropped or failed announcements by reason: bad_txt, bad_version, foreign_cluster,
        self, duplicate_node_id, too_many_peers, resolve_failed, resolve_busy, callback_error."""
        self.instance = instance_name(config.cluster_name, config.node_id)
        self.peers: dict[str, DiscoveredPeer] = {}
        """What each peer's service instance last announced (validated, our cluster)."""
        self._zc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: ServiceInfo | None = None
        self._resolving: dict[str, asyncio.Task[None]] = {}
        self._last_log: dict[str, float] = {}
        self.clock: Callable[[], float] = time.monotonic
        """Seconds, monotonic: only paces the debug lines (tests replace it)."""

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Browse, then register (≈ 1 s of probing). DiscoveryError if nothing can be announced
        or another live node already announces our cluster name and node id."""
        links = tuple(link for link in self.config.links if announceable(link))
        if not links:
            raise DiscoveryError(
                "discovery: no link has a concrete address and port to announce; "
                "bind links to interface addresses or set discovery = false"
            )
        txt = encode_txt(
            self.config.cluster_name, self.config.node_id, self.config.node_name, links
        )
        addresses = list(dict.fromkeys(str(ipaddress.ip_address(x.address)) for x in links))
        info = ServiceInfo(
            SERVICE_TYPE,
            self.instance,
            port=min(links, key=lambda link: link.index).port,
            properties=txt,
            server=f"votemesh-{self.config.node_id}-{_digest(self.config.cluster_name)}.local.",
            parsed_addresses=addresses,
        )
        self._zc = AsyncZeroconf(interfaces=addresses, ip_version=ip_version_for(addresses))
        try:
            self._browser = AsyncServiceBrowser(
                self._zc.zeroconf, SERVICE_TYPE, handlers=[self._on_service_state_change]
            )
            await self._zc.async_register_service(info)
            self._info = info
        except NonUniqueNameException:
            await self.close()
            raise DiscoveryError(
                f"discovery: another node already announces cluster {self.config.cluster_name!r} "
                f"node id {self.config.node_id}; give every node its own node_id"
            ) from None
        except BaseException:
            await self.close()
            raise
        log.info("discovery started", instance=self.instance, addresses=addresses)

    async def close(self) -> None:
        """Stop browsing, say goodbye (peers hear it within milliseconds), close the sockets.

        Idempotent; safe after a failed or no `start()`."""
        if self._browser is not None:  # first: no callback may start a look-up after this
            await self._browser.async_cancel()
            self._browser = None
        for task in self._resolving.values():
            task.cancel()
        if self._resolving:
            await asyncio.gather(*self._resolving.values(), return_exceptions=True)
        self._resolving.clear()
        if self._zc is not None:
            zc, self._zc = self._zc, None
            if self._info is not None:
                await (await zc.async_unregister_service(self._info))
                self._info = None
            await zc.async_close()

    # ------------------------------------------------------------ zeroconf callback
    def _on_service_state_change(
        self,
        zeroconf: Zeroconf,
        service_type: str,  # noqa: ARG002 (zeroconf passes it by keyword)
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        """Called by zeroconf in the event loop: never raises."""
        try:
            if state_change is ServiceStateChange.Removed:
                self.handle_goodbye(name)
            else:
                self._resolve(zeroconf, name)
        except Exception as exc:  # noqa: BLE001 (a bug must not stop zeroconf's record handling)
            self._drop("callback_error", f"{type(exc).__name__}: {exc}", name)

    def _resolve(self, zeroconf: Zeroconf, name: str) -> None:
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        if info.load_from_cache(zeroconf):
            self.handle_announcement(name, info.text)
        elif name in self._resolving:
            return
        elif len(self._resolving) >= MAX_RESOLVING:
            self._drop("resolve_busy", f"{MAX_RESOLVING} look-ups in flight", name)
        else:
            task = asyncio.create_task(self._request(zeroconf, info), name=f"resolve {name}")
            self._resolving[name] = task

    async def _request(self, zeroconf: Zeroconf, info: AsyncServiceInfo) -> None:
        try:
            found = await info.async_request(zeroconf, RESOLVE_TIMEOUT_MS)
        except Exception as exc:  # noqa: BLE001 (zeroconf closing under us, a malformed reply)
            self._drop("resolve_failed", f"{type(exc).__name__}: {exc}", info.name)
            return
        finally:
            self._resolving.pop(info.name, None)
        if found:
            self.handle_announcement(info.name, info.text)
        else:
            self._drop("resolve_failed", "no TXT and address within the timeout", info.name)

    # ------------------------------------------------------------ decisions
    def handle_announcement(self, instance: str, txt: bytes) -> None:
        """One service's TXT: report a new or changed member of our cluster, drop the rest.

        Never raises: bad announcements are counted and debug-logged.
        """
        try:
            peer = peer_from_txt(txt)
        except DecodeError as exc:
            self._drop(exc.reason, exc.detail, instance)
            return
        if peer.cluster != self.config.cluster_name:
            self._drop("foreign_cluster", f"cluster {peer.cluster!r}", instance)
            return
        if peer.node_id == self.config.node_id:
            reason = "self" if instance.lower() == self.instance.lower() else "duplicate_node_id"
            self._drop(reason, f"node id {peer.node_id}", instance)
            return
        if self.peers.get(instance) == peer:
            return
        if instance not in self.peers and len(self.peers) >= MAX_PEERS:
            self._drop("too_many_peers", f"node id {peer.node_id}", instance)
            return
        self.peers[instance] = peer
        log.info(
            "peer discovered",
            node_id=peer.node_id,
            node_name=peer.node_name,
            addresses=[f"{i}={_format_address(a, p)}" for i, a, p in peer.addresses],
            instance=instance,
        )
        try:
            self.on_peer(peer)
        except Exception:  # noqa: BLE001 (the caller's bug must not stop discovery)
            self._callback_failed("on_peer")

    def handle_goodbye(self, instance: str) -> None:
        """A service unregistered: `on_gone` unless another instance still announces that id."""
        peer = self.peers.pop(instance, None)
        if peer is None:
            return
        if any(other.node_id == peer.node_id for other in self.peers.values()):
            return
        log.info("peer said goodbye", node_id=peer.node_id, instance=instance)
        if self.on_gone is None:
            return
        try:
            self.on_gone(peer.node_id)
        except Exception:  # noqa: BLE001 (the caller's bug must not stop discovery)
            self._callback_failed("on_gone")

    def _callback_failed(self, which: str) -> None:
        self.counters["callback_error"] += 1
        log.exception("discovery callback failed", callback=which)

    def _drop(self, reason: str, detail: str, instance: str) -> None:
        """Count a dropped announcement; debug-log it unless this reason was logged < 1 min ago."""
        self.counters[reason] += 1
        now = self.clock()
        if now - self._last_log.get(reason, -LOG_EVERY) >= LOG_EVERY:
            self._last_log[reason] = now
            log.debug(
                "announcement dropped",
                reason=reason,
                detail=detail,
                instance=instance[:200],
                total=self.counters[reason],
            )
