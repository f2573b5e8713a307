"""The node interface the simulator drives: `agent.node` (design §3.3), in one place."""

from agent.node import (
    AgentNode,
    Broadcast,
    Emit,
    MaxSeqStored,
    MessageIn,
    PeerAddresses,
    PersistMaxSeq,
    QdeviceUpdate,
    QdeviceVote,
    SendTo,
    SetExpected,
    Start,
    Stop,
    Tick,
)

__all__ = [
    "AgentNode",
    "Broadcast",
    "Emit",
    "MaxSeqStored",
    "MessageIn",
    "PeerAddresses",
    "PersistMaxSeq",
    "QdeviceUpdate",
    "QdeviceVote",
    "SendTo",
    "SetExpected",
    "Start",
    "Stop",
    "Tick",
]
