"""agent/qdevice_session.py against scripted qnetd messages: states, seqs, TLS, votes, timers.

Pure: no sockets, no clock. Each test drives the session with explicit `now` values and checks
the effects it returns (reference sections 4.1-4.8 and 7.1).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace
from typing import cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import QdeviceConfig
from agent.qdevice_protocol import Timers, reconnect_delay
from agent.qdevice_session import (
    ASK_AGAIN,
    Close,
    Connect,
    PlainText,
    QdEffect,
    QdeviceSession,
    RunHeuristics,
    SendMsg,
    SessionEvent,
    StartTls,
    VoteChanged,
)
from proto.errors import LocalProtocolError
from proto.qnetd_enums import (
    DecisionAlgorithm,
    Heuristics,
    NodeListType,
    NodeState,
    OptionType,
    TieBreakerMode,
    Vote,
)
from proto.qnetd_messages import (
    ALL_MESSAGE_TYPES,
    ALL_OPTION_TYPES,
    AskForVote,
    AskForVoteReply,
    EchoReply,
    EchoRequest,
    HeuristicsChange,
    HeuristicsChangeReply,
    Init,
    InitReply,
    NodeList,
    NodeListReply,
    Preinit,
    PreinitReply,
    QnetdMessage,
    ServerError,
    SetOption,
    SetOptionReply,
    VoteInfo,
    VoteInfoReply,
    decode,
)
from proto.qnetd_messages import StartTls as StartTlsMsg
from proto.qnetd_options import NodeInfo, RingId

RING = (1, 0x10)
RING_ID = RingId(1, 0x10)
NEW_RING_ID = RingId(1, 0x14)
HB = 8.0  # default heartbeat: echo period, connect timeout


def config(**changes: object) -> QdeviceConfig:
    """A TLS-on ffsplit configuration (the session never reads the PEM files)."""
    base = QdeviceConfig(host="127.0.0.1", ca_pem="ca", cert_pem="c", key_pem="k")
    return replace(base, **changes)  # type: ignore[arg-type]


def messages(effects: list[QdEffect]) -> list[QnetdMessage]:
    """The decoded messages among the effects, in order."""
    return [decode(e.data) for e in effects if isinstance(e, SendMsg)]


def one(effects: list[QdEffect], kind: type[QdEffect]) -> QdEffect:
    """The single effect of `kind`."""
    found = [e for e in effects if isinstance(e, kind)]
    assert len(found) == 1, effects
    return found[0]


def closes(effects: list[QdEffect]) -> Close:
    """The Close effect (there must be exactly one)."""
    close = one(effects, Close)
    assert isinstance(close, Close)
    return close


def init_reply(seq: int | None, **changes: object) -> InitReply:
    """A good INIT_REPLY as qnetd 3.0.3 sends it (reference TV5), with `changes`."""
    good = InitReply(
        reply_error_code=0,
        supported_messages=ALL_MESSAGE_TYPES,
        supported_options=ALL_OPTION_TYPES,
        seq=seq,
        server_maximum_request_size=32768,
        server_maximum_reply_size=32768,
        supported_decision_algorithms=(0, 1, 2, 3),
    )
    return replace(good, **changes)  # type: ignore[arg-type]


def ready(session: QdeviceSession, now: float = 0.0) -> list[QdEffect]:
    """Tell the session the config, the ring and the quorum of a 2-node cluster."""
    effects = session.set_config((1, 2), 7, now)
    effects += session.set_membership(RING, (1, 2), now)
    return effects + session.set_quorum(True, (1, 2), now)


def to_init_reply(session: QdeviceSession, now: float = 0.0) -> int:
    """Drive a ready session through PREINIT (and TLS) to INIT; returns the INIT seq."""
    assert Connect() in ready(session, now)
    preinit = messages(session.connected(now))[0]
    tls = 0 if session._cfg.tls == "off" else 1
    effects = session.received(PreinitReply(preinit.seq, tls, True), now)
    if StartTls() in effects:
        effects = session.tls_established(now)
    init = messages(effects)[0]
    assert isinstance(init, Init)
    assert init.seq is not None
    return init.seq


def connected(cfg: QdeviceConfig | None = None, now: float = 0.0, **kw: object) -> QdeviceSession:
    """A session in state connected (initial burst sent, no vote yet)."""
    session = QdeviceSession(1, "testcluster", cfg or config(), **kw)  # type: ignore[arg-type]
    seq = to_init_reply(session, now)
    session.received(init_reply(seq), now)
    if session._cfg.heuristics:
        session.heuristics_result(True, now)
    assert session.state == "connected"
    return session


def voting(now: float = 0.0) -> QdeviceSession:
    """A connected session whose device vote counts (VOTE_INFO ACK for its ring)."""
    session = connected(now=now)
    session.received(VoteInfo(seq=1, vote=Vote.ACK, ring_id=RING_ID), now)
    assert session.vote
    return session


def test_a_nack_for_another_ring_stops_the_count_with_the_ack_it_revokes() -> None:
    """Regression (Hypothesis found it, 2026-12-07; fails before the fix): ACK for our ring, then
    a NACK naming another ring revoked the held ACK but left the vote counted, so the node
    counted the device with no held ring (`vote` True, `held_ring` None)."""
    session = voting()
    effects = session.received(
        NodeListReply(seq=2, node_list_type=0, ring_id=NEW_RING_ID, vote=Vote.NACK), 1.0
    )
    assert not session.vote
    assert session.held_ring is None
    (change,) = [e for e in effects if isinstance(e, VoteChanged)]
    assert (change.vote, change.ring) == (False, None)


# ----- connecting ------------------------------------------------------------------------------


def test_connects_only_once_ring_and_config_are_known() -> None:
    """No Connect (and no deadline) until set_config and set_membership were both called."""
    session = QdeviceSession(1, "c", config())
    assert session.state == "disconnected"
    assert session.next_deadline() is None
    assert session.set_config((1, 2), 1, 0.0) == []
    assert session.tick(5.0) == []
    assert session.set_membership(RING, (1, 2), 5.0) == [Connect()]
    assert session.state == "connecting"
    assert session.next_deadline() == 5.0 + HB


def test_seq_numbering_with_tls_matches_the_reference() -> None:
    """Fresh process with TLS: PREINIT=1, STARTTLS=2, INIT=3, SET_OPTION=4, lists 5, 6, 7."""
    session = QdeviceSession(1, "testcluster", config())
    ready(session)
    [preinit] = messages(session.connected(0.0))
    assert preinit == Preinit(seq=1, cluster_name=b"testcluster")
    assert session.state == "waiting_preinit_reply"
    effects = session.received(PreinitReply(1, 1, True), 0.0)
    assert messages(effects) == [StartTlsMsg(seq=2)]
    assert effects[-1] == StartTls()  # after the STARTTLS bytes
    assert session.state == "tls"
    [init] = messages(session.tls_established(0.0))
    assert isinstance(init, Init)
    assert init.seq == 3
    assert session.state == "waiting_init_reply"
    burst = messages(session.received(init_reply(3), 0.0))
    assert [m.seq for m in burst] == [4, 5, 6, 7]


def test_seq_numbering_without_tls() -> None:
    """Plain connection: PREINIT=1, INIT=2 (INIT pre-increments; no STARTTLS)."""
    session = QdeviceSession(1, "c", config(tls="off"))
    ready(session)
    session.connected(0.0)
    effects = session.received(PreinitReply(1, 0, True), 0.0)
    assert StartTls() not in effects
    assert [m.seq for m in messages(effects)] == [2]


def test_seq_is_never_reset_on_reconnect() -> None:
    """After a reconnect PREINIT re-uses the last number; the next INIT pre-increments it."""
    session = connected(rng=random.Random(1))  # last seq used: 7
    close = closes(session.disconnected("peer closed", 1.0))
    assert close.reconnect_at is not None
    assert session.tick(close.reconnect_at) == [Connect()]
    [preinit] = messages(session.connected(close.reconnect_at))
    assert preinit.seq == 7
    effects = session.received(PreinitReply(7, 1, True), close.reconnect_at)
    assert messages(effects)[0].seq == 8


def test_init_carries_node_algorithm_heartbeat_tie_breaker_and_ring() -> None:
    """INIT: all message/option types, node id, algorithm, heartbeat in ms, tie-breaker, ring."""
    session = QdeviceSession(4, "c", config(tls="off", algorithm="lms", tie_breaker="3"))
    ready(session)
    session.connected(0.0)
    [init] = messages(session.received(PreinitReply(1, 1, True), 0.0))
    assert isinstance(init, Init)
    assert init.supported_messages == ALL_MESSAGE_TYPES
    assert init.supported_options == ALL_OPTION_TYPES
    assert init.node_id == 4
    assert init.decision_algorithm == DecisionAlgorithm.LMS
    assert init.heartbeat_interval == 8000
    assert init.tie_breaker is not None
    assert (init.tie_breaker.mode, init.tie_breaker.node_id) == (TieBreakerMode.NODE_ID, 3)
    assert init.ring_id == RING_ID


@pytest.mark.parametrize(
    ("setting", "mode", "node"),
    [("lowest", TieBreakerMode.LOWEST, 0), ("highest", TieBreakerMode.HIGHEST, 0)],
)
def test_tie_breaker_modes_send_node_id_zero(setting: str, mode: TieBreakerMode, node: int) -> None:
    """lowest/highest travel with node id 0 (it is meaningful only in mode 3)."""
    session = QdeviceSession(1, "c", config(tls="off", tie_breaker=setting))
    ready(session)
    session.connected(0.0)
    [init] = messages(session.received(PreinitReply(1, 0, True), 0.0))
    assert isinstance(init, Init)
    assert init.tie_breaker is not None
    assert (init.tie_breaker.mode, init.tie_breaker.node_id) == (mode, node)


@pytest.mark.parametrize(("seconds", "ms"), [(0.2, 1000), (2.5, 2500), (500.0, 120000)])
def test_heartbeat_is_clamped_like_qdevice(seconds: float, ms: int) -> None:
    """The INIT heartbeat is clamped to [1000, 120000] ms (reference 8.1)."""
    assert Timers.of(config(heartbeat_interval=seconds)).heartbeat_ms == ms


@pytest.mark.parametrize(
    ("server", "client", "downgrade", "outcome"),
    [
        (0, "off", False, "plain"),
        (0, "on", False, "refused"),
        (0, "on", True, "plain"),
        (0, "required", False, "incompatible"),
        (1, "off", False, "plain"),
        (1, "on", False, "tls"),
        (1, "on", True, "tls"),
        (1, "required", False, "tls"),
        (2, "off", False, "incompatible"),
        (2, "on", False, "tls"),
        (2, "on", True, "tls"),
        (2, "required", False, "tls"),
    ],
)
def test_tls_decision_table(server: int, client: str, downgrade: bool, outcome: str) -> None:
    """Reference 4.3: server TLS mode x client setting -> STARTTLS, plain INIT, or give up;
    except that `on` refuses a server without TLS unless allow_tls_downgrade (docs/design.md
    3.5), and that every plain-text session comes with a PlainText effect (the runtime warns)."""
    session = QdeviceSession(1, "c", config(tls=client, allow_tls_downgrade=downgrade))
    ready(session)
    session.connected(0.0)
    effects = session.received(PreinitReply(1, server, False), 0.0)
    if outcome in {"incompatible", "refused"}:
        assert closes(effects).reconnect_at is None
        assert session.state == "disconnected"
        assert not session.vote
    elif outcome == "tls":
        assert messages(effects) == [StartTlsMsg(seq=2)]
        assert effects[-1] == StartTls()
        assert not any(isinstance(e, PlainText) for e in effects)
    else:
        assert isinstance(effects[0], PlainText)
        assert isinstance(messages(effects)[0], Init)
        assert session.state == "waiting_init_reply"


def test_tls_on_refuses_a_server_without_tls_and_says_how_to_allow_it() -> None:
    """Issue 7 item 3: the default `tls = "on"` no longer falls back to plain text; the reason
    names the option that would allow it."""
    session = QdeviceSession(1, "c", config())
    ready(session)
    session.connected(0.0)
    close = closes(session.received(PreinitReply(1, 0, False), 0.0))
    assert "offers no TLS" in close.reason
    assert "allow_tls_downgrade" in close.reason
    assert close.reconnect_at is None
    assert session.next_deadline() is None


def test_allowed_downgrade_says_so_on_every_connect() -> None:
    """With allow_tls_downgrade, each plain-text connect (not only the first) emits PlainText."""
    session = QdeviceSession(1, "c", config(allow_tls_downgrade=True), rng=random.Random(1))
    ready(session)
    now = 0.0
    for _ in range(2):
        session.connected(now)
        effects = session.received(PreinitReply(session._expected_seq, 0, False), now)
        assert (
            PlainText("qnetd offers no TLS; downgrade allowed by qdevice.allow_tls_downgrade")
            in effects
        )
        close = closes(session.disconnected("reset", now))
        assert close.reconnect_at is not None
        now = close.reconnect_at
        assert session.tick(now) == [Connect()]


@pytest.mark.parametrize(
    "reply",
    [PreinitReply(2, 1, True), PreinitReply(None, 1, True), PreinitReply(1, None, True)],
    ids=["wrong-seq", "no-seq", "no-tls-option"],
)
def test_bad_preinit_reply_gives_up(reply: PreinitReply) -> None:
    """PREINIT_REPLY must echo our seq and carry both TLS options, else disconnect for good."""
    session = QdeviceSession(1, "c", config())
    ready(session)
    session.connected(0.0)
    assert closes(session.received(reply, 0.0)).reconnect_at is None
    assert session.next_deadline() is None


@pytest.mark.parametrize(
    ("code", "retries"), [(c, c in {15, 16, 17}) for c in (15, 16, 17, 6, 7, 11, 12, 13, 18)]
)
def test_init_reply_error_codes(code: int, retries: bool) -> None:
    """INIT_REPLY codes 15/16/17 reconnect after the backoff; every other code gives up."""
    session = QdeviceSession(1, "c", config(), rng=random.Random(3))
    seq = to_init_reply(session, 1.0)
    close = closes(session.received(init_reply(seq, reply_error_code=code), 2.0))
    assert str(code) in close.reason
    if retries:
        assert close.reconnect_at is not None
        assert 2.0 + 0.1 <= close.reconnect_at <= 2.0 + 0.2
    else:
        assert close.reconnect_at is None


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"seq": 99}, "seq"),
        ({"reply_error_code": None}, "error code"),
        ({"server_maximum_request_size": None}, "sizes"),
        ({"supported_options": None}, "lists"),
        ({"supported_decision_algorithms": None}, "algorithms"),
        ({"server_maximum_request_size": 32767}, "size"),
        ({"server_maximum_reply_size": 16 * 1024 * 1024 + 1}, "size"),
        ({"supported_decision_algorithms": (0, 3)}, "algorithm"),
    ],
)
def test_bad_init_reply_gives_up(changes: dict[str, object], why: str) -> None:
    """Each INIT_REPLY check of reference 4.5 (seq, options, sizes, algorithm) gives up."""
    session = QdeviceSession(1, "c", config())
    seq = to_init_reply(session)
    if "seq" not in changes:
        changes = {"seq": seq, **changes}
    close = closes(session.received(init_reply(**changes), 0.0))  # type: ignore[arg-type]
    assert close.reconnect_at is None
    assert why in close.reason


def test_heuristics_need_the_server_heuristics_option() -> None:
    """With heuristics configured, a server that lacks option 22 is refused for good."""
    session = QdeviceSession(1, "c", config(heuristics=("true",)))
    seq = to_init_reply(session)
    options = tuple(o for o in ALL_OPTION_TYPES if o != OptionType.HEURISTICS)
    close = closes(session.received(init_reply(seq, supported_options=options), 0.0))
    assert close.reconnect_at is None


def test_initial_burst_contents_and_connected_event() -> None:
    """After INIT_REPLY: SET_OPTION KAP on, config list, membership list, quorum list."""
    session = QdeviceSession(1, "c", config())
    seq = to_init_reply(session)
    effects = session.received(init_reply(seq), 0.0)
    kap, config_msg, membership, quorum = messages(effects)
    assert kap == SetOption(seq=4, keep_active_partition_tie_breaker=True)
    assert config_msg == NodeList(
        seq=5,
        node_list_type=NodeListType.INITIAL_CONFIG,
        config_version=7,
        nodes=(NodeInfo(1), NodeInfo(2)),
    )
    assert membership == NodeList(
        seq=6,
        node_list_type=NodeListType.MEMBERSHIP,
        ring_id=RING_ID,
        nodes=(NodeInfo(1), NodeInfo(2)),
    )
    assert isinstance(quorum, NodeList)
    assert quorum.node_list_type == NodeListType.QUORUM
    assert quorum.quorate is True
    assert [n.state for n in quorum.nodes] == [NodeState.MEMBER, NodeState.MEMBER]
    assert one(effects, SessionEvent) == SessionEvent("connected", "qnetd 127.0.0.1:5403")
    assert session.state == "connected"
    assert not session.vote
    assert session.next_deadline() == HB  # echo timer started at INIT_REPLY


def test_no_set_option_when_server_lacks_kap() -> None:
    """SET_OPTION KAP is sent only if the server listed option 23."""
    session = QdeviceSession(1, "c", config())
    seq = to_init_reply(session)
    options = tuple(
        o for o in ALL_OPTION_TYPES if o != OptionType.KEEP_ACTIVE_PARTITION_TIE_BREAKER
    )
    burst = messages(session.received(init_reply(seq, supported_options=options), 0.0))
    assert [type(m) for m in burst] == [NodeList, NodeList, NodeList]


def test_max_receive_size_follows_the_server() -> None:
    """32768 before INIT_REPLY; then SERVER_MAXIMUM_REPLY_SIZE."""
    session = QdeviceSession(1, "c", config())
    seq = to_init_reply(session)
    assert session.max_receive_size == 32768
    session.received(init_reply(seq, server_maximum_reply_size=65536), 0.0)
    assert session.max_receive_size == 65536


# ----- votes -----------------------------------------------------------------------------------


def test_vote_info_ack_counts_and_is_acknowledged_with_its_seq() -> None:
    """VOTE_INFO ACK for our ring: vote True, VoteChanged, VOTE_INFO_REPLY with the same seq."""
    session = connected()
    effects = session.received(VoteInfo(seq=41, vote=Vote.ACK, ring_id=RING_ID), 1.0)
    assert messages(effects) == [VoteInfoReply(seq=41)]
    assert one(effects, VoteChanged) == VoteChanged(
        True, f"ACK from qnetd for ring {RING_ID}", (RING_ID.node_id, RING_ID.seq)
    )
    assert session.vote


def test_vote_for_another_ring_is_ignored_but_acknowledged() -> None:
    """A vote whose ring id is not the one we last sent is NO_CHANGE; it is still replied to."""
    session = connected()
    effects = session.received(VoteInfo(seq=2, vote=Vote.ACK, ring_id=NEW_RING_ID), 1.0)
    assert messages(effects) == [VoteInfoReply(seq=2)]
    assert not session.vote
    assert not any(isinstance(e, VoteChanged) for e in effects)


@pytest.mark.parametrize(
    ("vote", "counted"),
    [
        (Vote.ACK, True),
        (Vote.NACK, False),
        (Vote.WAIT_FOR_REPLY, False),
        (Vote.ASK_LATER, False),
        (Vote.NO_CHANGE, True),
    ],
)
def test_votes_in_replies(vote: Vote, counted: bool) -> None:
    """After an ACK: NACK withholds, WAIT/ASK_LATER stop the vote, NO_CHANGE keeps it."""
    session = voting()
    reply = NodeListReply(seq=8, node_list_type=3, ring_id=RING_ID, vote=vote)
    effects = session.received(reply, 1.0)
    assert messages(effects) == []
    assert session.vote is counted


def test_ask_for_vote_and_heuristics_replies_carry_votes() -> None:
    """ASK_FOR_VOTE_REPLY and HEURISTICS_CHANGE_REPLY are consumed like any other vote."""
    session = connected()
    session.received(AskForVoteReply(seq=9, vote=Vote.ACK, ring_id=RING_ID), 1.0)
    assert session.vote
    reply = HeuristicsChangeReply(seq=10, vote=Vote.NACK, ring_id=RING_ID, heuristics=2)
    session.received(reply, 1.0)
    assert not session.vote


@pytest.mark.parametrize(
    "msg",
    [
        VoteInfo(seq=None, vote=Vote.ACK, ring_id=RING_ID),
        VoteInfo(seq=1, vote=None, ring_id=RING_ID),
        VoteInfo(seq=1, vote=Vote.ACK, ring_id=None),
        NodeListReply(seq=1, node_list_type=None, ring_id=RING_ID, vote=Vote.ACK),
        HeuristicsChangeReply(seq=1, vote=Vote.ACK, ring_id=RING_ID, heuristics=None),
    ],
    ids=["no-seq", "no-vote", "no-ring", "no-list-type", "no-heuristics"],
)
def test_vote_message_without_required_option_gives_up(msg: QnetdMessage) -> None:
    """Reference 3.2: every vote-bearing message needs its TLVs; a missing one = disconnect."""
    session = voting()
    effects = session.received(msg, 1.0)
    assert closes(effects).reconnect_at is None
    assert VoteChanged(False, "qnetd connection lost: " + closes(effects).reason) in effects


def test_membership_change_pauses_the_vote_until_acked_for_the_new_ring() -> None:
    """New ring: vote off at once (the old ring's ACK stays held), membership list with the new
    ring, old-ring ACK ignored; the new ring's ACK replaces the held one."""
    session = voting()
    old = (RING_ID.node_id, RING_ID.seq)
    effects = session.set_membership((1, 0x14), (1,), 2.0)
    assert one(effects, VoteChanged) == VoteChanged(
        False, f"membership change to ring {NEW_RING_ID}", old
    )
    [membership] = messages(effects)
    assert isinstance(membership, NodeList)
    assert (membership.ring_id, membership.nodes) == (NEW_RING_ID, (NodeInfo(1),))
    assert membership.heuristics is None
    session.received(VoteInfo(seq=2, vote=Vote.ACK, ring_id=RING_ID), 2.1)
    assert not session.vote
    assert session.held_ring == old
    session.received(VoteInfo(seq=3, vote=Vote.ACK, ring_id=NEW_RING_ID), 2.2)
    assert (session.vote, session.held_ring) == (True, (NEW_RING_ID.node_id, NEW_RING_ID.seq))


def test_lms_asks_again_while_it_waits_for_the_other_members() -> None:
    """lms answers WAIT_FOR_REPLY while another member of our partition is not on our ring yet
    and otherwise only re-decides on its heartbeat/4 timer (2 s by default): the session sends
    ASK_FOR_VOTE every ASK_AGAIN until it gets ACK or NACK for its ring (issue 12 item 2)."""
    session = connected(config(algorithm="lms"))
    session.received(VoteInfo(seq=1, vote=Vote.ACK, ring_id=RING_ID), 1.0)
    session.set_membership((1, 0x14), (1,), 2.0)
    wait = NodeListReply(
        seq=9, node_list_type=NodeListType.MEMBERSHIP, ring_id=NEW_RING_ID, vote=Vote.WAIT_FOR_REPLY
    )
    session.received(wait, 2.01)
    assert session.next_deadline() == pytest.approx(2.01 + ASK_AGAIN)
    [ask] = messages(session.tick(2.01 + ASK_AGAIN))
    assert isinstance(ask, AskForVote)
    waiting = AskForVoteReply(seq=ask.seq, vote=Vote.WAIT_FOR_REPLY, ring_id=NEW_RING_ID)
    session.received(waiting, 2.07)
    assert session.next_deadline() == pytest.approx(2.07 + ASK_AGAIN)
    session.received(AskForVoteReply(seq=ask.seq, vote=Vote.ACK, ring_id=NEW_RING_ID), 2.1)
    assert session.vote
    deadline = session.next_deadline()
    assert deadline is not None
    assert deadline > 2.5  # only the echo timer is left
    assert messages(session.tick(2.2)) == []


def test_ffsplit_never_asks_for_a_vote() -> None:
    """ffsplit sends VOTE_INFO itself after a WAIT_FOR_REPLY (and refuses ASK_FOR_VOTE)."""
    session = voting()
    session.set_membership((1, 0x14), (1,), 2.0)
    wait = NodeListReply(
        seq=9, node_list_type=NodeListType.MEMBERSHIP, ring_id=NEW_RING_ID, vote=Vote.WAIT_FOR_REPLY
    )
    session.received(wait, 2.01)
    assert not any(isinstance(m, AskForVote) for m in messages(session.tick(2.01 + ASK_AGAIN)))


def test_nack_revokes_the_held_ack_before_the_reply_goes_out() -> None:
    """A NACK during a membership change revokes the old ring's ACK; the VoteChanged saying so
    comes before the VOTE_INFO_REPLY (qnetd ACKs the other side only after that reply)."""
    session = voting()
    session.set_membership((1, 0x14), (1,), 2.0)
    assert session.held_ring == (RING_ID.node_id, RING_ID.seq)
    effects = session.received(VoteInfo(seq=9, vote=Vote.NACK, ring_id=NEW_RING_ID), 2.1)
    change = one(effects, VoteChanged)
    assert isinstance(change, VoteChanged)
    assert (change.vote, change.ring) == (False, None)
    assert effects.index(change) < next(i for i, e in enumerate(effects) if isinstance(e, SendMsg))
    assert messages(effects) == [VoteInfoReply(seq=9)]
    assert session.held_ring is None


def test_repeated_membership_or_quorum_is_a_no_op() -> None:
    """The same ring and members (or the same quorum) again sends nothing and keeps the vote."""
    session = voting()
    assert session.set_membership(RING, (1, 2), 1.0) == []
    assert session.set_quorum(True, (1, 2), 1.0) == []
    assert session.vote


def test_quorum_and_config_changes_are_sent_as_lists() -> None:
    """set_quorum sends a quorum list (dead nodes marked); a changed config a type-1 list."""
    session = connected()
    [quorum] = messages(session.set_quorum(False, (1,), 1.0))
    assert isinstance(quorum, NodeList)
    assert quorum.quorate is False
    assert quorum.nodes == (NodeInfo(1, state=NodeState.MEMBER), NodeInfo(2, state=NodeState.DEAD))
    assert session.set_config((1, 2), 7, 1.0) == []  # unchanged
    [changed] = messages(session.set_config((1, 2, 3), 8, 1.0))
    assert isinstance(changed, NodeList)
    assert (changed.node_list_type, changed.config_version) == (NodeListType.CHANGED_CONFIG, 8)


def test_message_over_the_server_request_limit_gives_up() -> None:
    """A node list larger than SERVER_MAXIMUM_REQUEST_SIZE disconnects without reconnect."""
    session = connected()
    effects = session.set_config(tuple(range(1, 3001)), 8, 1.0)
    assert closes(effects).reconnect_at is None
    assert messages(effects) == []


# ----- heuristics ------------------------------------------------------------------------------


def test_connect_heuristics_run_before_the_initial_burst() -> None:
    """Heuristics on: INIT_REPLY asks for RunHeuristics; the burst follows with the result."""
    session = QdeviceSession(1, "c", config(heuristics=("true",)))
    seq = to_init_reply(session)
    assert session.received(init_reply(seq), 0.0) == [RunHeuristics()]
    assert session.state == "waiting_init_reply"
    burst = messages(session.heuristics_result(True, 0.5))
    membership = burst[2]
    assert isinstance(membership, NodeList)
    assert membership.heuristics == Heuristics.PASS
    assert session.state == "connected"


def test_membership_heuristics_delay_membership_and_quorum_lists() -> None:
    """Heuristics on: a new ring asks for RunHeuristics; its result goes with the new list."""
    session = connected(config(heuristics=("true",)))
    effects = session.set_membership((1, 0x14), (1,), 1.0)
    assert RunHeuristics() in effects
    assert messages(effects) == []
    assert session.set_quorum(False, (1,), 1.1) == []  # waits for the membership list
    assert session.set_membership((1, 0x18), (1,), 1.2) == []  # one run at a time
    membership, quorum = messages(session.heuristics_result(False, 1.5))
    assert isinstance(membership, NodeList)
    assert isinstance(quorum, NodeList)
    assert (membership.ring_id, membership.heuristics) == (RingId(1, 0x18), Heuristics.FAIL)
    assert quorum.quorate is False


def test_changed_regular_heuristics_send_heuristics_change() -> None:
    """An unsolicited heuristics result that differs from the last one sends HEURISTICS_CHANGE."""
    session = connected(config(heuristics=("true",)))  # connect heuristics passed
    assert session.heuristics_result(True, 1.0) == []
    [change] = messages(session.heuristics_result(False, 2.0))
    assert isinstance(change, HeuristicsChange)
    assert change.heuristics == Heuristics.FAIL


# ----- echoes and timers -----------------------------------------------------------------------


def test_echo_every_heartbeat_and_disconnect_when_a_reply_is_missing() -> None:
    """Echo seqs 1, 2, ...; a reply not back by the next tick disconnects with a reconnect."""
    session = QdeviceSession(1, "c", config(), rng=random.Random(5))
    seq = to_init_reply(session)
    session.received(init_reply(seq), 0.0)
    session.received(VoteInfo(seq=1, vote=Vote.ACK, ring_id=RING_ID), 0.0)
    assert session.tick(HB - 0.1) == []
    assert messages(session.tick(HB)) == [EchoRequest(seq=1)]
    assert session.received(EchoReply(seq=1), HB + 0.01) == []
    assert session.next_deadline() == 2 * HB
    assert messages(session.tick(2 * HB)) == [EchoRequest(seq=2)]
    effects = session.tick(3 * HB)
    close = closes(effects)
    assert close.reason == "echo reply missing"
    assert close.reconnect_at is not None
    assert 3 * HB + 0.1 <= close.reconnect_at <= 3 * HB + 0.2
    assert SessionEvent("disconnected", "echo reply missing") in effects
    assert VoteChanged(False, "qnetd connection lost: echo reply missing") in effects


@pytest.mark.parametrize(("seq", "retries"), [(7, True), (None, False)], ids=["wrong", "none"])
def test_echo_reply_with_wrong_or_no_seq_disconnects(seq: int | None, retries: bool) -> None:
    """ECHO_REPLY must carry the last echo's seq (4.7): a wrong one reconnects (qdevice's
    algorithm hook disconnects; the reference leaves the retry open), a missing one gives up."""
    session = connected()
    session.tick(HB)
    close = closes(session.received(EchoReply(seq=seq), HB + 0.1))
    assert (close.reconnect_at is not None) is retries


def test_first_echo_after_a_reconnect_is_seq_1() -> None:
    """After reconnecting, ECHO_REQUEST seqs start at 1 again."""
    session = connected(rng=random.Random(2))
    session.tick(HB)
    session.received(EchoReply(seq=1), HB)
    close = closes(session.disconnected("reset", HB + 1))
    assert close.reconnect_at is not None
    at = close.reconnect_at
    session.tick(at)
    session.connected(at)
    session.received(PreinitReply(7, 2, True), at)
    [init] = messages(session.tls_established(at))
    session.received(init_reply(init.seq), at)
    assert messages(session.tick(at + HB)) == [EchoRequest(seq=1)]


def test_connect_timeout_without_tcp_backs_off() -> None:
    """No TCP within connect_timeout: Close, and a new Connect after the first backoff step."""
    session = QdeviceSession(1, "c", config(), rng=random.Random(4))
    ready(session, 10.0)
    expected = 10.0 + HB + reconnect_delay(0, random.Random(4).random())
    assert session.tick(10.0 + HB) == [Close("connect timeout", expected)]
    assert session.tick(expected) == [Connect()]


def test_connect_timeout_after_tcp_backs_off() -> None:
    """TCP up but no INIT_REPLY within connect_timeout: Close, reconnect after the backoff."""
    session = QdeviceSession(1, "c", config(), rng=random.Random(9))
    to_init_reply(session, 10.0)
    effects = session.tick(10.0 + HB)
    expected = 10.0 + HB + reconnect_delay(0, random.Random(9).random())
    assert effects == [Close("connect timeout", expected)]
    assert session.next_deadline() == expected
    assert session.tick(expected - 0.01) == []
    assert session.tick(expected) == [Connect()]


def test_refused_connect_is_retried_well_under_a_second() -> None:
    """Issue 7 item 7: a refused connect is retried after 0.1-0.2 s, not when the 8 s connect
    timer expires (qdevice's rule, which kept the device vote away for seconds after a qnetd
    restart)."""
    session = QdeviceSession(1, "c", config())
    ready(session, 3.0)
    close = closes(session.disconnected("connection refused", 3.5))
    assert close.reconnect_at is not None
    assert 3.5 + 0.1 <= close.reconnect_at <= 3.5 + 0.2
    assert session.tick(close.reconnect_at) == [Connect()]


def test_reconnect_backoff_grows_to_a_cap_and_resets_after_a_session_that_worked() -> None:
    """Consecutive failures: each delay within [d/2, d], d = min(3, 0.2 x 1.5^n), never over
    3 s; the first retry after a session that reached `connected` is 0.1-0.2 s again."""
    session = QdeviceSession(1, "c", config(), rng=random.Random(11))
    ready(session)
    now, delays = 0.0, []
    for _ in range(25):
        close = closes(session.disconnected("connection refused", now))
        assert close.reconnect_at is not None
        delays.append(close.reconnect_at - now)
        now = close.reconnect_at
        assert session.tick(now) == [Connect()]
    for n, delay in enumerate(delays):
        ceiling = min(3.0, 0.2 * 1.5**n)
        assert ceiling / 2 - 1e-9 <= delay <= ceiling + 1e-9, (n, delay)
    assert max(delays) <= 3.0
    assert delays[-1] >= 1.5
    preinit = messages(session.connected(now))[0]
    session.received(PreinitReply(preinit.seq, 2, True), now)
    [init] = messages(session.tls_established(now))
    session.received(init_reply(init.seq), now)
    assert session.state == "connected"
    close = closes(session.disconnected("qnetd restarted", now + 1))
    assert close.reconnect_at is not None
    assert now + 1.1 <= close.reconnect_at <= now + 1.2


def test_lost_connection_withdraws_the_vote_and_reconnects_with_injected_randomness() -> None:
    """Losing qnetd: VoteChanged(False), 'disconnected', reconnect_at = now + rng draw."""
    session = voting()
    session._rng = random.Random(42)
    effects = session.disconnected("server closed the connection", 4.0)
    delay = reconnect_delay(0, random.Random(42).random())
    assert effects == [
        VoteChanged(False, "qnetd connection lost: server closed the connection"),
        Close("server closed the connection", 4.0 + delay),
        SessionEvent("disconnected", "server closed the connection"),
    ]
    assert not session.vote
    assert session.disconnected("again", 4.1) == []


@pytest.mark.parametrize(("algorithm", "retries"), [("ffsplit", False), ("lms", True)])
def test_server_error_gives_up_except_with_lms(algorithm: str, retries: bool) -> None:
    """SERVER_ERROR disconnects; qdevice exits with ffsplit but always reconnects with lms."""
    session = connected(config(algorithm=algorithm))
    close = closes(session.received(ServerError(seq=5, reply_error_code=11), 1.0))
    assert (close.reconnect_at is not None) is retries
    assert close.refused  # a refusal either way: the runtime warns (lms) or errs (ffsplit)


def test_given_up_session_never_reconnects() -> None:
    """After Close(reconnect_at=None) there is no deadline and tick never connects."""
    session = connected()
    session.received(ServerError(reply_error_code=4), 1.0)
    assert session.next_deadline() is None
    assert session.tick(1e9) == []
    assert session.set_membership((1, 0x20), (1, 2), 1e9) == []


@pytest.mark.parametrize(
    "msg",
    [
        Preinit(seq=1, cluster_name=b"c"),
        EchoRequest(seq=1),
        InitReply(seq=3, reply_error_code=0),
        PreinitReply(1, 1, True),
    ],
    ids=["client-type", "client-echo", "second-init-reply", "late-preinit-reply"],
)
def test_unexpected_message_when_connected_gives_up(msg: QnetdMessage) -> None:
    """Client-to-server types, or a known type in the wrong state, disconnect for good."""
    session = connected()
    close = closes(session.received(msg, 1.0))
    assert close.reconnect_at is None
    assert "unexpected" in close.reason


def test_set_option_reply_before_connected_gives_up() -> None:
    """SET_OPTION_REPLY is accepted only when connected (reference 3.2)."""
    session = QdeviceSession(1, "c", config())
    to_init_reply(session)
    close = closes(session.received(SetOptionReply(seq=4), 0.0))
    assert close == Close("unexpected SetOptionReply while waiting_init_reply", None, refused=True)


def test_vote_before_connected_gives_up() -> None:
    """A VOTE_INFO while waiting for INIT_REPLY is unexpected (reference gotcha 26)."""
    session = QdeviceSession(1, "c", config())
    to_init_reply(session)
    vote = VoteInfo(seq=1, vote=Vote.ACK, ring_id=RING_ID)
    assert closes(session.received(vote, 0.0)).reconnect_at is None


def test_set_option_reply_is_informational() -> None:
    """SET_OPTION_REPLY when connected changes nothing."""
    session = connected()
    assert session.received(SetOptionReply(seq=4, keep_active_partition_tie_breaker=True), 1) == []
    assert session.state == "connected"


def test_messages_after_our_close_are_dropped() -> None:
    """A message the runtime still had buffered after Close is ignored."""
    session = connected()
    session.received(ServerError(reply_error_code=4), 1.0)
    assert session.received(VoteInfo(seq=1, vote=Vote.ACK, ring_id=RING_ID), 1.0) == []


def test_runtime_misuse_raises() -> None:
    """connected()/tls_established() out of order are bugs in the runtime: LocalProtocolError."""
    session = QdeviceSession(1, "c", config())
    with pytest.raises(LocalProtocolError):
        session.connected(0.0)
    ready(session)
    with pytest.raises(LocalProtocolError):
        session.tls_established(0.0)


# ----- properties ------------------------------------------------------------------------------

_SERVER_MESSAGES = st.one_of(
    st.builds(
        VoteInfo, seq=st.integers(0, 9), vote=st.sampled_from(Vote), ring_id=st.just(RING_ID)
    ),
    st.builds(
        NodeListReply,
        seq=st.integers(0, 9),
        node_list_type=st.integers(0, 3),
        ring_id=st.sampled_from([RING_ID, NEW_RING_ID]),
        vote=st.sampled_from(Vote),
    ),
    st.builds(EchoReply, seq=st.integers(0, 3)),
    st.builds(ServerError, reply_error_code=st.integers(0, 19)),
    st.builds(PreinitReply, seq=st.integers(0, 9), tls_supported=st.integers(0, 2)),
    st.just(SetOptionReply(seq=1)),
    st.builds(init_reply, seq=st.integers(0, 12)),
)
_INPUTS = st.one_of(
    st.tuples(st.just("msg"), _SERVER_MESSAGES),
    st.tuples(st.just("tick"), st.floats(0, 20)),
    st.tuples(st.just("membership"), st.integers(0x10, 0x30)),
    st.tuples(st.just("quorum"), st.booleans()),
    st.tuples(st.just("heuristics"), st.sampled_from([True, False, None])),
    st.tuples(st.just("transport"), st.just("reset")),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_INPUTS, max_size=30), st.integers(0, 2**32))
def test_any_input_sequence_keeps_the_invariants(
    inputs: list[tuple[str, object]], seed: int
) -> None:
    """Never raises; vote implies connected and a held ring; VoteChanged tracks `vote` and
    `held_ring`; seqs only go up."""
    session = connected(config(heuristics=("true",)), rng=random.Random(seed))
    reported: tuple[bool, tuple[int, int] | None] = (False, None)
    now, last_seq = 0.0, 7
    for kind, arg in inputs:
        now += arg if isinstance(arg, float) else 0.5
        effects = _apply(session, kind, arg, now)
        for change in (e for e in effects if isinstance(e, VoteChanged)):
            assert (change.vote, change.ring) != reported
            reported = (change.vote, change.ring)
        assert reported == (session.vote, session.held_ring)
        assert not session.vote or session.state == "connected"
        assert not session.vote or session.held_ring is not None
        for msg in messages(effects):
            if not isinstance(msg, EchoRequest | VoteInfoReply | Preinit) and msg.seq is not None:
                assert msg.seq > last_seq
                last_seq = msg.seq


def _apply(session: QdeviceSession, kind: str, arg: object, now: float) -> list[QdEffect]:
    if kind == "transport" and session.state == "connecting":
        return session.connected(now)  # TCP came up
    actions: dict[str, Callable[[], list[QdEffect]]] = {
        "msg": lambda: session.received(cast(QnetdMessage, arg), now),
        "tick": lambda: session.tick(now),
        "membership": lambda: session.set_membership((1, cast(int, arg)), (1, 2), now),
        "quorum": lambda: session.set_quorum(bool(arg), (1, 2), now),
        "heuristics": lambda: session.heuristics_result(cast(bool | None, arg), now),
        "transport": lambda: session.disconnected(str(arg), now),
    }
    return actions[kind]()
