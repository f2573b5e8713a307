"""How a qdevice-net client consumes the votes qnetd hands out (reference section 7.1).

Owns the "cast vote" state: the last ACK/NACK, whether polling is stopped (WAIT_FOR_REPLY /
ASK_LATER), the ring id we last told qnetd about, and the pause during a membership change. It
validates the vote-bearing server messages (required TLVs, section 3.2). It does not know about
connections, timers or votequorum weights. No clock, sockets or logging.
"""

from __future__ import annotations

from enum import Enum
from typing import TypeAlias

from proto.qnetd_enums import Vote
from proto.qnetd_messages import (
    AskForVoteReply,
    HeuristicsChangeReply,
    NodeListReply,
    VoteInfo,
)
from proto.qnetd_options import RingId

VoteMessage: TypeAlias = NodeListReply | AskForVoteReply | VoteInfo | HeuristicsChangeReply


class Cast(Enum):
    """What qdevice tells votequorum every cast_vote_interval (7.1)."""

    STOPPED = "stopped"
    """Timer stopped (WAIT_FOR_REPLY, ASK_LATER, or not yet decided): no polls, no votes."""
    ACK = "ack"
    """Polls with cast_vote = 1: the device votes count."""
    NACK = "nack"
    """Polls with cast_vote = 0: the device votes are withheld."""


_CAST_OF_VOTE = {
    Vote.ACK: Cast.ACK,
    Vote.NACK: Cast.NACK,
    Vote.WAIT_FOR_REPLY: Cast.STOPPED,
    Vote.ASK_LATER: Cast.STOPPED,
}


def vote_fields(msg: VoteMessage) -> tuple[int, RingId] | str:
    """(vote, ring id) of a vote-bearing message, or the name of a required TLV it lacks."""
    if msg.seq is None:
        return "seq"
    if isinstance(msg, NodeListReply) and msg.node_list_type is None:
        return "node_list_type"
    if isinstance(msg, HeuristicsChangeReply) and msg.heuristics is None:
        return "heuristics"
    if msg.vote is None:
        return "vote"
    if msg.ring_id is None:
        return "ring_id"
    return msg.vote, msg.ring_id


class VoteTracker:
    """The client's cast-vote state; `counted` says whether votequorum may count the device."""

    def __init__(self) -> None:
        self.cast = Cast.STOPPED
        self.sent_ring: RingId | None = None
        """The ring id in our INIT or latest membership list; votes for another ring are stale."""
        self.paused = False
        """A membership change is being reported: no votes until the new list is out."""
        self.acked: RingId | None = None
        """The ring of the last ACK that no NACK, disconnect or new connection has revoked yet;
        it outlives a membership change (the node may hold it for a short while, design §3.4)."""

    @property
    def counted(self) -> bool:
        """Last vote was ACK for our ring and no membership change is pending."""
        return self.cast is Cast.ACK and not self.paused

    def init_sent(self, ring: RingId) -> None:
        """INIT went out with `ring`; nothing is decided yet."""
        self.sent_ring = ring
        self.cast = Cast.STOPPED
        self.paused = False
        self.acked = None  # a new connection: qnetd has forgotten what it granted us

    def pause(self) -> None:
        """votequorum reported a new membership; hold the vote until the list is sent."""
        self.paused = True

    def membership_sent(self, ring: RingId) -> None:
        """A membership list with `ring` went out: the vote becomes WAIT_FOR_REPLY."""
        self.sent_ring = ring
        self.paused = False
        self.cast = Cast.STOPPED

    def lost(self) -> None:
        """Connection gone: a pending ACK turns into NACK (ffsplit's disconnect rule)."""
        self.cast = Cast.NACK
        self.paused = False
        self.acked = None

    def apply(self, vote: int, ring: RingId) -> str:
        """Consume one VOTE; returns what happened, for the VoteChanged reason and logs."""
        if vote == Vote.NACK:
            self.acked = None  # any NACK revokes what we hold, also one for another ring
            if ring != self.sent_ring and self.cast is Cast.ACK:
                self.cast = Cast.NACK  # counted implies an ACK we still hold: stop counting too
                return f"NACK for ring {ring} (ours {self.sent_ring}) revokes the ACK"
        if ring != self.sent_ring:
            return f"ignored {_name(vote)} for stale ring {ring} (ours {self.sent_ring})"
        cast = _CAST_OF_VOTE.get(Vote(vote))
        if cast is None:
            return f"{_name(vote)} for ring {ring}"
        self.cast = cast
        if cast is Cast.ACK:
            self.acked = ring
        return f"{_name(vote)} from qnetd for ring {ring}"


def _name(vote: int) -> str:
    return Vote(vote).name
