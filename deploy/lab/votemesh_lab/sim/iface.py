"""The node interface the simulator drives: `agent.node` (design §3.3), in one place."""

from typing import Any

from agent.node import (
    AgentNode,
    Broadcast,
    ConfigApplied,
    Emit,
    MaxSeqStored,
    MessageIn,
    PeerAddresses,
    PersistMaxSeq,
    QdeviceReconfigure,
    QdeviceUpdate,
    QdeviceVote,
    Reconfigure,
    Removed,
    SendTo,
    SetExpected,
    Start,
    Stop,
    Tick,
)

__all__ = [
    "AgentNode",
    "Broadcast",
    "ConfigApplied",
    "Emit",
    "MaxSeqStored",
    "MessageIn",
    "PeerAddresses",
    "PersistMaxSeq",
    "QdeviceReconfigure",
    "QdeviceUpdate",
    "QdeviceVote",
    "Reconfigure",
    "Removed",
    "SendTo",
    "SetExpected",
    "Start",
    "Stop",
    "Tick",
    "reported",
]


def reported(core: Any, now: float) -> dict[str, Any]:
    """The status fields the simulator records (ring_id, members, counted, quorate,
    expected_votes). For an `AgentNode` they are read where `AgentNode.snapshot` reads them,
    without building the whole status document (O(N) peers with their links: at 256 nodes the
    once-a-second audit alone would cost more than the run); any other core: `status(now)`.
    tests/sim/test_sim_network.py pins that both give the same fields."""
    if type(core) is not AgentNode:
        doc: dict[str, Any] = core.status(now)
        return doc
    view, verdict, ring = core.membership.view, core.quorum.status, core.membership.view.ring_id
    return {
        "ring_id": (ring.representative, ring.seq),
        "members": view.members,
        "counted": core.basis.members,
        "quorate": verdict.quorate,
        "expected_votes": verdict.expected_votes,
    }
