"""Agent configuration: one frozen object, validated at load time, with the timing formulas.

Core ring: pure data. TOML parsing lives in the runtime (`agent/runtime/config_file.py`); this
module only defines and validates. Every field has a docstring; every derived timeout states its
formula next to it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from enum import StrEnum

from proto.mesh_messages import EXPECTED

MAX_LINKS = 8
MAX_NODE_ID = 0xFFFFFFFF
MAX_NODE_VOTES = 255
"""A node's votes: 0..255. votequorum(5) recommends 1 (last_man_standing requires it); a weight
above 255 is never a sensible design and a typo such as 1000 would otherwise dominate
expected votes (which only fall by an operator's `expected N`). Design §3.8."""
MAX_EXPECTED_VOTES = EXPECTED[1]
"""What a heartbeat can carry (1000 votes x 1024 nodes; corosync allows a u32): the control
socket, the CLI and the core refuse more, so an override can never make our own heartbeats
undecodable for the other nodes."""
LOSS_BASELINE = 0.05  # heartbeat loss the plain failure timeout is sized for (DESIGN L2)
LOSS_STRETCH_MAX = 2  # loss stretches the failure timeout to at most 2 x missed_heartbeats
SIZE_FLAT_NODES = 16
"""Up to this many configured nodes the heartbeat interval is the configured one; above, it grows
with the cluster (`Timing.sized_for`, design §3.14 "The interval sized to the cluster")."""
SIZE_STRETCH_MAX = 1.4
"""The most the cluster's size stretches the interval (lan: 0.14 s, failure timeout 0.89 s:
detection stays sub-second at any size)."""


class ConfigError(ValueError):
    """A configuration mistake; the message says what to change."""


@dataclass(frozen=True, slots=True)
class Timing:
    """Failure detection and agreement timing.

    Defaults (`lan()`): 10 heartbeats a second; a peer is lost after 6 missed heartbeats in a
    row. At 5 % random loss the chance of 6 losses in a row is 0.05**6 = 1.6e-8 per window, i.e.
    about one false suspicion per 10 years per pair at 10 Hz, while a dead peer is noticed within
    0.6 s (target: re-formation p50 <= 1.0 s after kill -9).
    """

    heartbeat_interval: float = 0.1
    """Seconds between heartbeats to each peer on its active link."""
    missed_heartbeats: int = 6
    """Consecutive missed heartbeats after which a peer (or a link) is down."""
    jitter_allowance: float = 0.05
    """Extra seconds of silence tolerated on top, for delay jitter and late timers."""
    probe_interval: float = 1.0
    """Seconds between probes on links that do not carry heartbeats (failover candidates)."""
    agreement_rounds: int = 3
    """Heartbeat rounds a proposal may wait for the others' matching proposals before the node
    re-evaluates (it keeps proposing; this only bounds how stale a matching proposal may be)."""

    @property
    def failure_timeout(self) -> float:
        """missed_heartbeats x heartbeat_interval + jitter_allowance (0.65 s by default)."""
        return self.missed_heartbeats * self.heartbeat_interval + self.jitter_allowance

    def failure_timeout_at(self, loss: float) -> float:
        """The failure timeout for a peer whose heartbeats arrive with `loss` (0..1).

        Up to LOSS_BASELINE (5 %) it is `failure_timeout`. Above, the number of missed
        heartbeats grows so that a false suspicion stays as unlikely as `missed_heartbeats`
        losses in a row at 5 % (0.05**6 = 1.6e-8 per window): k = ceil(missed x ln 0.05 /
        ln loss), at most LOSS_STRETCH_MAX x missed. Defaults: 0.65 s up to 5 %, 0.85 s at
        10 %, 1.25 s from 20 % (the cap). A dead peer is noticed later on a lossy link only."""
        k = self.missed_heartbeats
        if loss > LOSS_BASELINE:
            wanted = math.ceil(k * math.log(LOSS_BASELINE) / math.log(min(loss, 0.999)))
            k = min(LOSS_STRETCH_MAX * k, max(k, wanted))
        return k * self.heartbeat_interval + self.jitter_allowance

    @property
    def max_failure_timeout(self) -> float:
        """The longest failure timeout loss can stretch to (1.25 s by default)."""
        return self.failure_timeout_at(1.0)

    @property
    def link_timeout(self) -> float:
        """A probed (inactive) link is down after 3 missed probes: 3 x probe_interval + jitter."""
        return 3 * self.probe_interval + self.jitter_allowance

    @property
    def proposal_ttl(self) -> float:
        """A peer's proposal counts for agreement this long: max_failure_timeout (a peer whose
        proposal is older than that is not heard any more anyway)."""
        return self.max_failure_timeout

    @staticmethod
    def size_stretch(nodes: int) -> float:
        """How much a cluster of `nodes` configured nodes stretches the heartbeat interval:
        nodes / SIZE_FLAT_NODES, at least 1, at most SIZE_STRETCH_MAX."""
        return min(SIZE_STRETCH_MAX, max(1.0, nodes / SIZE_FLAT_NODES))

    def sized_for(self, nodes: int) -> Timing:
        """The timing a node of a cluster of `nodes` configured nodes runs with (design §3.14,
        "The interval sized to the cluster"): the heartbeat interval x `size_stretch(nodes)`,
        everything else as configured. Every derived timeout follows the interval, so a peer
        is still lost after `missed_heartbeats` missed ones (the same odds of a false suspicion
        per window, fewer windows a second) while a node sends and receives (nodes - 1) /
        interval heartbeats a second: lan, 16 nodes and fewer: 0.1 s (0.65 s failure timeout);
        20: 0.125 s; 23 and more: 0.14 s (0.89 s). The result is not held to `validate`'s
        10 s bound (a configured 10 s runs at up to 14 s)."""
        stretch = self.size_stretch(nodes)
        if stretch == 1.0:
            return self
        return replace(self, heartbeat_interval=round(self.heartbeat_interval * stretch, 6))

    @classmethod
    def lan(cls) -> Timing:
        """Default for a LAN: 100 ms heartbeats, lost after 0.65 s."""
        return cls()

    @classmethod
    def lab(cls) -> Timing:
        """For a loaded lab machine or the netem lab (+-20 ms jitter, 5 % loss, CPU contention):
        200 ms heartbeats, lost after 8 misses + 0.2 s = 1.8 s."""
        return cls(heartbeat_interval=0.2, missed_heartbeats=8, jitter_allowance=0.2)

    def validate(self) -> None:
        """Raise ConfigError for impossible timing."""
        if not 0.01 <= self.heartbeat_interval <= 10:
            raise ConfigError("timing.heartbeat_interval must be between 0.01 and 10 seconds")
        if not 2 <= self.missed_heartbeats <= 100:
            raise ConfigError("timing.missed_heartbeats must be between 2 and 100")
        if self.jitter_allowance < 0 or self.probe_interval <= 0 or self.agreement_rounds < 1:
            raise ConfigError("timing: jitter_allowance >= 0, probe_interval > 0, rounds >= 1")


class TieBreaker(StrEnum):
    """auto_tie_breaker_node: which half of an even split keeps quorum."""

    LOWEST = "lowest"
    HIGHEST = "highest"
    LIST = "list"


@dataclass(frozen=True, slots=True)
class QuorumOptions:
    """votequorum options, as corosync's votequorum(5) names them."""

    votes: int = 1
    """This node's votes."""
    expected_votes: int | None = None
    """Expected votes; None = the sum of the configured nodes' votes. The highest value any
    member reports wins; `votemesh expected N` overrides it at run time."""
    two_node: bool = False
    """Two nodes with one vote each: quorum is 1 (needs fencing); implies wait_for_all."""
    wait_for_all: bool | None = None
    """After a cold start, quorate only once all nodes were seen together. None = two_node."""
    last_man_standing: bool = False
    """Lower expected votes to the current total after the view was stable for the window."""
    last_man_standing_window: float = 10.0
    """Seconds a view must stay unchanged before last_man_standing recalculates."""
    auto_tie_breaker: bool = False
    """In an even split, the half containing the tie-breaker node keeps quorum."""
    auto_tie_breaker_node: TieBreaker = TieBreaker.LOWEST
    tie_breaker_nodes: tuple[int, ...] = ()
    """With auto_tie_breaker_node = list: node ids in order of preference."""

    @property
    def effective_wait_for_all(self) -> bool:
        """wait_for_all, defaulting to two_node as votequorum does."""
        return self.two_node if self.wait_for_all is None else self.wait_for_all

    def validate(self) -> None:
        """Raise ConfigError for contradictory options."""
        if not 0 <= self.votes <= MAX_NODE_VOTES:
            raise ConfigError(f"quorum.votes must be between 0 and {MAX_NODE_VOTES}")
        if self.expected_votes is not None and not 1 <= self.expected_votes <= MAX_EXPECTED_VOTES:
            raise ConfigError(f"quorum.expected_votes must be between 1 and {MAX_EXPECTED_VOTES}")
        if self.last_man_standing_window <= 0:
            raise ConfigError("quorum.last_man_standing_window must be positive")
        if self.auto_tie_breaker_node is TieBreaker.LIST and not self.tie_breaker_nodes:
            raise ConfigError("quorum.auto_tie_breaker_node = 'list' needs tie_breaker_nodes")
        if self.two_node and self.auto_tie_breaker:
            raise ConfigError("quorum: two_node and auto_tie_breaker exclude each other")


@dataclass(frozen=True, slots=True)
class LinkConfig:
    """One local link (knet-like): where this node listens for mesh datagrams."""

    index: int
    """0..7: link0 .. link7."""
    address: str
    """Local address to bind (IPv4 or IPv6)."""
    port: int = 5407
    priority: int = 0
    """Higher wins: traffic uses the highest-priority link that is up."""


@dataclass(frozen=True, slots=True)
class PeerConfig:
    """A statically configured cluster member (works without multicast)."""

    node_id: int
    name: str = ""
    addresses: tuple[tuple[int, str, int], ...] = ()
    """(link index, address, port) per link."""
    votes: int = 1


@dataclass(frozen=True, slots=True)
class QdeviceConfig:
    """The qnetd this node's qdevice client talks to (reference section 8.1 names)."""

    host: str
    port: int = 5403
    algorithm: str = "ffsplit"
    """ffsplit (device votes 1, even clusters) or lms (device votes N-1)."""
    tie_breaker: str = "lowest"
    """lowest, highest, or a node id."""
    tls: str = "on"
    """on or required: STARTTLS, verify the server (CA + `Qnetd Server`); off: plain text."""
    allow_tls_downgrade: bool = False
    """With tls = on: accept a qnetd that offers no TLS (plain text, warned on every connect)."""
    ca_pem: str = ""
    cert_pem: str = ""
    key_pem: str = ""
    votes: int | None = None
    """Device votes; None = 1 for ffsplit, (sum of node votes) - 1 for lms."""
    heartbeat_interval: float = 8.0
    """Seconds between ECHO_REQUESTs; also the echo timeout."""
    heuristics: tuple[str, ...] = ()
    """Commands run on membership change; all exit 0 = pass."""
    heuristics_timeout: float = 5.0
    sync_timeout: float = 0.5
    """Seconds a node keeps counting its last settled view and the device vote it held for it
    while the device's answer for a new view is pending (design §3.4; corosync's
    quorum.device.sync_timeout, which defaults to 30 s). Longer: a slow qnetd still causes no
    flicker; shorter: a cut-off minority with a held ACK goes inquorate sooner."""

    def validate(self) -> None:
        """Raise ConfigError for unusable settings."""
        if self.algorithm not in {"ffsplit", "lms"}:
            raise ConfigError("qdevice.algorithm must be ffsplit or lms")
        if self.tls not in {"on", "off", "required"}:
            raise ConfigError("qdevice.tls must be on, off or required")
        if self.tie_breaker not in {"lowest", "highest"} and not self.tie_breaker.isdigit():
            raise ConfigError("qdevice.tie_breaker must be lowest, highest or a node id")
        if self.allow_tls_downgrade and self.tls != "on":
            raise ConfigError(
                f'qdevice.allow_tls_downgrade = true needs tls = "on" (it is "{self.tls}"): '
                "remove one of the two"
            )
        if self.tls != "off" and not (self.ca_pem and self.cert_pem and self.key_pem):
            raise ConfigError("qdevice with TLS needs ca_pem, cert_pem and key_pem")
        if not 0.0 <= self.sync_timeout <= 60.0:
            raise ConfigError("qdevice.sync_timeout must be between 0 and 60 seconds")


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """Everything one agent needs to know."""

    cluster_name: str
    node_id: int
    node_name: str = ""
    links: tuple[LinkConfig, ...] = ()
    peers: tuple[PeerConfig, ...] = ()
    """Static peers; discovery (zeroconf) may add more at run time."""
    timing: Timing = field(default_factory=Timing)
    quorum: QuorumOptions = field(default_factory=QuorumOptions)
    qdevice: QdeviceConfig | None = None
    clock_skew_bound: float = 1.0
    """Seconds of wall-clock difference to a peer that raise a ClockSkew event."""
    key_files: tuple[str, ...] = ()
    """Cluster key files (32+ random bytes each); the first seals, all open (rotation)."""
    state_dir: str = "/var/lib/votemesh"
    control_socket: str = "/run/votemesh/agent.sock"
    discovery: bool = True
    """Announce and browse `_votemesh._udp.local.` on the links' interfaces."""

    @property
    def size(self) -> int:
        """Configured nodes, this one included (peers discovery adds are not counted)."""
        return 1 + len(self.peers)

    @property
    def run_timing(self) -> Timing:
        """The timing the core runs with: `timing.sized_for(size)`."""
        return self.timing.sized_for(self.size)

    def configured_votes(self) -> dict[int, int]:
        """Votes of every configured node, this one included."""
        votes = {p.node_id: p.votes for p in self.peers}
        votes[self.node_id] = self.quorum.votes
        return votes

    def quorum_warnings(self) -> list[str]:
        """Weaker-than-default quorum settings the agent must warn about loudly at start."""
        warnings = []
        configured = sum(self.configured_votes().values())
        q = self.quorum
        if q.auto_tie_breaker and configured % 2 and not q.effective_wait_for_all:
            warnings.append(
                f"auto_tie_breaker with an odd number of configured votes ({configured}) and "
                "no wait_for_all: corosync refuses this combination (it turns auto_tie_breaker "
                "off); set wait_for_all = true"
            )
        return warnings + self._expected_votes_warnings(configured)

    def _expected_votes_warnings(self, configured: int) -> list[str]:
        expected = self.quorum.expected_votes
        if expected is None:
            return []
        if self.qdevice is not None:
            configured += self.qdevice.votes or 1
        quorum = expected // 2 + 1
        if quorum == 1 and not self.quorum.two_node:
            why = "every node that is cut off alone is quorate (split brain)"
            return [f"quorum.expected_votes = {expected}: quorum is 1, {why}; remove it"]
        if 2 * quorum <= configured:
            why = f"is at most half of the {configured} configured votes"
            fix = f"remove it or set at least {configured // 2 + 1}"
            text = f"quorum.expected_votes = {expected} (quorum {quorum}) {why}"
            return [f"{text}: two partitions can both be quorate; {fix}"]
        return []

    def validate(self) -> None:
        """Raise ConfigError (one line: what to change) for a configuration that cannot work."""
        if not self.cluster_name or len(self.cluster_name) > 64:
            raise ConfigError("cluster_name must be 1-64 characters")
        if not 0 < self.node_id <= MAX_NODE_ID:
            raise ConfigError("node_id must be between 1 and 4294967295")
        if not self.links or len(self.links) > MAX_LINKS:
            raise ConfigError(f"configure 1 to {MAX_LINKS} links ([[link]] entries)")
        if len({link.index for link in self.links}) != len(self.links):
            raise ConfigError("link indexes must be unique")
        if any(not 0 <= link.index < MAX_LINKS for link in self.links):
            raise ConfigError("link index must be 0..7")
        if any(not 0 <= p.votes <= MAX_NODE_VOTES for p in self.peers):
            raise ConfigError(f"[[peer]] votes must be between 0 and {MAX_NODE_VOTES}")
        ids = [p.node_id for p in self.peers]
        if len(set(ids)) != len(ids) or self.node_id in ids:
            raise ConfigError("peer node ids must be unique and differ from node_id")
        if not math.isfinite(self.clock_skew_bound) or self.clock_skew_bound <= 0:
            raise ConfigError("clock_skew_bound must be a positive number of seconds")
        if self.discovery and not self.peers and self.quorum.expected_votes is None:
            raise ConfigError(
                "with discovery and no [[peer]] entries, set quorum.expected_votes "
                "(otherwise a node alone would count itself quorate)"
            )
        self.timing.validate()
        self.quorum.validate()
        if self.qdevice is not None:
            self.qdevice.validate()
