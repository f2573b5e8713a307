"""Typed agent events: every state change of a node, with its reason.

They fan out (runtime) to structlog, MQTT, hook commands, the control socket and metrics. Core
ring: plain data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class EventKind(StrEnum):
    """What changed. Values are stable: they are MQTT topics, hook arguments and metric labels."""

    VIEW_INSTALLED = "view_installed"
    QUORUM_GAINED = "quorum_gained"
    QUORUM_LOST = "quorum_lost"
    EXPECTED_VOTES_CHANGED = "expected_votes_changed"
    EXPECTED_VOTES_REFUSED = "expected_votes_refused"
    QUORUM_COUNTS_CHANGED = "quorum_counts_changed"
    """What quorum counts changed (design §3.4): a held view, or members no longer heard."""
    LINK_UP = "link_up"
    LINK_DOWN = "link_down"
    PEER_SUSPECTED = "peer_suspected"
    PEER_LOST = "peer_lost"
    PEER_LEFT = "peer_left"
    PEER_REACHABLE = "peer_reachable"
    QDEVICE_CONNECTED = "qdevice_connected"
    QDEVICE_DISCONNECTED = "qdevice_disconnected"
    QDEVICE_VOTE_CHANGED = "qdevice_vote_changed"
    CLOCK_SKEW = "clock_skew"
    STALLED = "stalled"
    CONFIG_CHANGED = "config_changed"
    """A new cluster configuration was applied at run time (design §3.9)."""
    CONFIG_REFUSED = "config_refused"
    """A configuration handed to the core could not be applied (an error): nothing changed."""
    REMOVED_FROM_CLUSTER = "removed_from_cluster"
    """This node is not in the applied configuration: it stops taking part (an error)."""
    DUPLICATE_NODE = "duplicate_node"
    """Two live processes send with one node id (a copied config, a cloned VM): an error."""
    VIEWS_HALTED = "views_halted"
    """max_seq could not be made durable: no new ring id leaves the node (an error)."""
    VIEWS_RESUMED = "views_resumed"


@dataclass(frozen=True, slots=True)
class AgentEvent:
    """One state change: its kind, a one-sentence reason, and kind-specific details."""

    kind: EventKind
    reason: str
    details: Mapping[str, Any] = field(default_factory=dict)
    at: float = 0.0
    """Monotonic time of the change (seconds), as passed to the core."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (MQTT payload, control socket, logs)."""
        return {"event": str(self.kind), "reason": self.reason, **dict(self.details)}
