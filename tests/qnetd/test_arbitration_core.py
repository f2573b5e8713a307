"""QnetdCore mechanics, with a recording fake algorithm (the algorithms have their own tests).

Pins the reference's server behaviour: check order and error codes (sections 3-4), storage after
the algorithm ran (4.6), VOTE_INFO queued before the triggering reply, seq counters, TLS policy,
dead-peer detection (4.7), disconnect handling (4.8) and algorithm timers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from proto.errors import DecodeError
from proto.qnetd_enums import (
    DecisionAlgorithm,
    Heuristics,
    NodeListType,
    ReplyErrorCode,
    TieBreakerMode,
    TlsSupported,
    Vote,
)
from proto.qnetd_messages import (
    EchoRequest,
    HeuristicsChange,
    HeuristicsChangeReply,
    InitReply,
    NodeList,
    NodeListReply,
    Preinit,
    PreinitReply,
    ServerError,
    SetOption,
    SetOptionReply,
    StartTls,
    VoteInfo,
    VoteInfoReply,
    decode,
    encode,
)
from proto.qnetd_options import NodeInfo, RingId, TieBreaker
from qnetd.core_events import ConnectionClosed, Disconnect, Send, Shutdown, Tick, Undecodable
from qnetd.core_events import StartTls as StartTlsEffect
from qnetd.model import (
    AlgoResult,
    ArmTimer,
    ClientState,
    Cluster,
    TimerResult,
    VoteSend,
)
from qnetd.settings import QnetdSettings
from tests.qnetd.core_helpers import Driver, config, init_msg, membership

E = ReplyErrorCode
R1, R2 = RingId(1, 1), RingId(1, 2)


@dataclass
class Fake:
    """Records calls; answers with a programmable result."""

    code: DecisionAlgorithm = DecisionAlgorithm.FFSPLIT
    calls: list[tuple[str, Any]] = field(default_factory=list)
    result: AlgoResult = field(default_factory=AlgoResult)
    ack_self_on_membership: bool = False
    init_error: E | None = None

    def client_init(self, cluster: Cluster, client: ClientState) -> E | None:
        self.calls.append(("init", client.node_id))
        return self.init_error

    def config_node_list(
        self, cluster: Cluster, client: ClientState, nodes: Any, version: Any, initial: bool
    ) -> AlgoResult:
        self.calls.append(("config", client.config_nodes))
        return self.result

    def membership_node_list(
        self, cluster: Cluster, client: ClientState, ring: RingId, nodes: Any, heur: Any
    ) -> AlgoResult:
        self.calls.append(
            ("membership", (client.ring_id, client.membership_nodes, ring, nodes, heur))
        )
        if self.ack_self_on_membership:
            return AlgoResult(
                Vote.NO_CHANGE, (VoteSend(client, Vote.ACK, ring),), decision="ack self"
            )
        return self.result

    def quorum_node_list(
        self, cluster: Cluster, client: ClientState, quorate: bool, nodes: Any
    ) -> AlgoResult:
        self.calls.append(("quorum", quorate))
        return self.result

    def heuristics_change(
        self, cluster: Cluster, client: ClientState, heuristics: Heuristics
    ) -> AlgoResult:
        self.calls.append(("heuristics", (client.last_heuristics, heuristics)))
        return self.result

    def ask_for_vote(self, cluster: Cluster, client: ClientState) -> AlgoResult:
        return self.result

    def vote_info_reply(
        self, cluster: Cluster, client: ClientState, seq: int
    ) -> tuple[VoteSend, ...]:
        self.calls.append(("vote_info_reply", seq))
        return ()

    def disconnect(
        self, cluster: Cluster, client: ClientState, going_down: bool
    ) -> tuple[VoteSend, ...]:
        listed = client in cluster.clients
        self.calls.append(("disconnect", (client.node_id, listed, going_down)))
        others = [c for c in cluster.clients if c is not client]
        return tuple(VoteSend(c, Vote.NACK, c.ring_id) for c in others)

    def timer(self, cluster: Cluster, client: ClientState) -> TimerResult:
        self.calls.append(("timer", client.node_id))
        return TimerResult((VoteSend(client, Vote.ACK, client.ring_id),), decision="timer")


def driver(settings: QnetdSettings | None = None, **fake: Any) -> tuple[Driver, Fake]:
    algo = Fake(**fake)
    algos: Any = dict.fromkeys(DecisionAlgorithm, algo)
    return (Driver.make(algos, settings) if settings else Driver.make(algos)), algo


def test_preinit_reply_echoes_seq_and_announces_tls_mode() -> None:
    """PREINIT -> PREINIT_REPLY with the request's seq, the TLS mode and the cert flag."""
    d, _ = driver(QnetdSettings(tls=TlsSupported.REQUIRED, client_cert_required=True))
    d.connect(1)
    assert d.replies(1, Preinit(seq=7, cluster_name=b"x")) == [
        PreinitReply(seq=7, tls_supported=TlsSupported.REQUIRED, tls_client_cert_required=True)
    ]
    d.connect(2)
    assert d.replies(2, Preinit(seq=8)) == [
        ServerError(seq=8, reply_error_code=E.DOESNT_CONTAIN_REQUIRED_OPTION)
    ]


def test_starttls_before_preinit_is_error_6_and_after_it_switches_silently() -> None:
    """STARTTLS needs PREINIT (6); then the core asks for TLS and sends nothing."""
    d, _ = driver()
    d.connect(1)
    assert d.replies(1, StartTls(seq=1)) == [
        ServerError(seq=1, reply_error_code=E.PREINIT_REQUIRED)
    ]
    d.send(1, Preinit(seq=1, cluster_name=b"c"))
    assert d.send(1, StartTls(seq=2)) == []
    assert any(isinstance(e, StartTlsEffect) for e in d.effects)


def test_starttls_with_tls_off_drops_the_client() -> None:
    """A server with TLS off that receives STARTTLS drops the client (reference 4.4)."""
    d, _ = driver(QnetdSettings(tls=TlsSupported.UNSUPPORTED, client_cert_required=False))
    d.connect(1)
    d.send(1, Preinit(seq=1, cluster_name=b"c"))
    d.send(1, StartTls(seq=2))
    assert d.disconnected() == [1]


@pytest.mark.parametrize(
    ("preinit", "changes", "code"),
    [
        (True, {}, E.NO_ERROR),
        (False, {}, E.PREINIT_REQUIRED),
        (True, {"node_id": None}, E.DOESNT_CONTAIN_REQUIRED_OPTION),
        (True, {"ring_id": None}, E.DOESNT_CONTAIN_REQUIRED_OPTION),
        (True, {"heartbeat_interval": None}, E.DOESNT_CONTAIN_REQUIRED_OPTION),
        (True, {"heartbeat_interval": 999}, E.INVALID_HEARTBEAT_INTERVAL),
        (True, {"heartbeat_interval": 120001}, E.INVALID_HEARTBEAT_INTERVAL),
        (True, {"tie_breaker": None}, E.DOESNT_CONTAIN_REQUIRED_OPTION),
        (True, {"decision_algorithm": None}, E.DOESNT_CONTAIN_REQUIRED_OPTION),
        (True, {"decision_algorithm": 4}, E.UNSUPPORTED_DECISION_ALGORITHM),
        # quirks: 13 and 12 overwrite an earlier error (reference 4.5, gotcha 22)
        (False, {"heartbeat_interval": None}, E.INVALID_HEARTBEAT_INTERVAL),
        (False, {"decision_algorithm": 9}, E.UNSUPPORTED_DECISION_ALGORITHM),
        (True, {"node_id": None, "decision_algorithm": 9}, E.UNSUPPORTED_DECISION_ALGORITHM),
    ],
)
def test_init_error_codes_and_precedence(preinit: bool, changes: dict[str, Any], code: E) -> None:
    """INIT_REPLY carries the reference's error code, including the overwrite quirks."""
    d, _ = driver()
    d.connect(1)
    if preinit:
        d.send(1, Preinit(seq=1, cluster_name=b"c"))
    changes = dict(changes)
    node = changes.pop("node_id", 1)
    (reply,) = d.replies(1, init_msg(node, **changes))
    assert isinstance(reply, InitReply)
    assert reply.reply_error_code == code
    assert reply.server_maximum_request_size == 32768
    assert reply.supported_decision_algorithms == (0, 1, 2, 3)
    assert (d.core.client_count() == 1) == (code == E.NO_ERROR)


def test_init_reply_lists_only_what_client_listed() -> None:
    """The server includes its message/option lists only if the INIT had them (gotcha 12)."""
    d, _ = driver()
    d.connect(1)
    d.send(1, Preinit(seq=1, cluster_name=b"c"))
    (reply,) = d.replies(1, init_msg(1, supported_messages=None))
    assert isinstance(reply, InitReply)
    assert reply.supported_messages is None
    assert reply.supported_options is not None


@pytest.mark.parametrize(
    ("second", "code"),
    [
        (
            {"tie_breaker": TieBreaker(TieBreakerMode.HIGHEST)},
            E.TIE_BREAKER_DIFFERS_FROM_OTHER_NODES,
        ),
        ({"decision_algorithm": DecisionAlgorithm.LMS}, E.ALGORITHM_DIFFERS_FROM_OTHER_NODES),
        ({"node_id": 1}, E.DUPLICATE_NODE_ID),
        ({"node_id": 2}, E.NO_ERROR),
    ],
)
def test_init_must_agree_with_cluster(second: dict[str, Any], code: E) -> None:
    """A second node's INIT is checked against the cluster: 15, 16, 17 (reference 4.5 step 9)."""
    d, _ = driver()
    d.join(1, 1)
    d.connect(2)
    d.send(2, Preinit(seq=1, cluster_name=b"c1"))
    node = second.pop("node_id", 2)
    (reply,) = d.replies(2, init_msg(node, **second))
    assert isinstance(reply, InitReply)
    assert reply.reply_error_code == code


def test_second_init_on_same_connection_collides_with_itself() -> None:
    """A repeated INIT gets 17, as verified against 3.0.3."""
    d, _ = driver()
    d.join(1, 1)
    (reply,) = d.replies(1, init_msg(1))
    assert isinstance(reply, InitReply)
    assert reply.reply_error_code == E.DUPLICATE_NODE_ID


def test_clients_are_kept_in_node_id_order() -> None:
    """Cluster clients are sorted by node id whatever the join order (reference 6)."""
    d, _ = driver()
    for conn, node in ((1, 5), (2, 2), (3, 9), (4, 1)):
        d.join(conn, node)
    assert [c.node_id for c in d.core.clusters[b"c1"].clients] == [1, 2, 5, 9]


def test_same_cluster_name_with_other_bytes_is_another_cluster() -> None:
    """Cluster identity is the exact byte string (gotcha 15)."""
    d, _ = driver()
    d.join(1, 1, cluster=b"alpha")
    d.join(2, 1, cluster=b"ALPHA")
    assert set(d.core.clusters) == {b"alpha", b"ALPHA"}


def test_messages_before_init_get_error_11_with_seq() -> None:
    """SET_OPTION, ECHO, NODE_LIST ... before INIT: SERVER_ERROR 11 echoing the seq."""
    d, _ = driver()
    d.connect(1)
    d.send(1, Preinit(seq=1, cluster_name=b"c"))
    for msg in (SetOption(seq=3), EchoRequest(seq=4), config(5, 1), VoteInfoReply(seq=6)):
        assert d.replies(1, msg) == [ServerError(seq=msg.seq, reply_error_code=E.INIT_REQUIRED)]


def test_server_to_client_type_is_error_8() -> None:
    """A client sending a server's message type gets SERVER_ERROR 8 with its seq."""
    d, _ = driver()
    d.connect(1)
    assert d.replies(1, VoteInfo(seq=3, vote=Vote.ACK, ring_id=R1)) == [
        ServerError(seq=3, reply_error_code=E.UNEXPECTED_MESSAGE)
    ]


def test_tls_required_without_tls_is_error_3_and_connection_kept() -> None:
    """Mode 'required': a post-PREINIT message in plain text gets 3; nothing is closed."""
    d, _ = driver(QnetdSettings(tls=TlsSupported.REQUIRED, client_cert_required=False))
    d.connect(1)
    d.send(1, Preinit(seq=1, cluster_name=b"c"))
    assert d.replies(1, init_msg(1)) == [ServerError(seq=2, reply_error_code=E.TLS_REQUIRED)]
    assert d.disconnected() == []


def test_tls_optional_accepts_plain_client() -> None:
    """Mode 'on' with client certs required still accepts a client that never starts TLS."""
    d, _ = driver(QnetdSettings(tls=TlsSupported.SUPPORTED, client_cert_required=True))
    (reply,) = d.join(1, 1)
    assert isinstance(reply, InitReply)
    assert reply.reply_error_code == E.NO_ERROR


@pytest.mark.parametrize(
    ("cn", "accepted"), [("c1", True), ("C1", True), ("other", False), (None, False)]
)
def test_client_certificate_must_name_the_cluster(cn: str | None, accepted: bool) -> None:
    """After STARTTLS, the first checked message verifies the cert name (case-insensitive);
    a mismatch or no certificate closes the connection silently (no SERVER_ERROR)."""
    d, _ = driver(QnetdSettings(tls=TlsSupported.SUPPORTED, client_cert_required=True))
    d.connect(1)
    d.send(1, Preinit(seq=1, cluster_name=b"c1"))
    d.send(1, StartTls(seq=2))
    d.tls_up(1, cn)
    out = d.replies(1, init_msg(1))
    if accepted:
        assert isinstance(out[0], InitReply)
        assert d.core.connections[1].cert_verified
    else:
        assert out == []
        assert d.disconnected() == [1]
        assert d.core.stats.tls_failures


def test_echo_reply_is_a_byte_copy() -> None:
    """ECHO_REPLY = the request's bytes with the type changed (extra TLVs included)."""
    d, _ = driver()
    d.join(1, 1)
    from qnetd.core_events import Received

    raw = encode(EchoRequest(seq=9))
    raw = raw[:5] + bytes([raw[5] + 8]) + raw[6:] + b"\x03\xe7\x00\x04abcd"  # + unknown option
    effects = d.feed(Received(1, EchoRequest(seq=9), raw))
    (send,) = effects
    assert send.data[:2] == b"\x00\x09"  # type: ignore[union-attr]
    assert send.data[2:] == raw[2:]  # type: ignore[union-attr]


def test_set_option_validates_and_echoes_present_fields() -> None:
    """SET_OPTION: bad heartbeat -> 13 and nothing changes; the reply echoes only sent fields."""
    d, _ = driver()
    d.join(1, 1)
    assert d.replies(1, SetOption(seq=3, heartbeat_interval=10)) == [
        ServerError(seq=3, reply_error_code=E.INVALID_HEARTBEAT_INTERVAL)
    ]
    assert d.replies(1, SetOption(seq=4, keep_active_partition_tie_breaker=True)) == [
        SetOptionReply(seq=4, keep_active_partition_tie_breaker=True)
    ]
    assert d.replies(1, SetOption(seq=5, heartbeat_interval=2000)) == [
        SetOptionReply(seq=5, heartbeat_interval=2000)
    ]
    client = d.core.connections[1].client
    assert client is not None
    assert (client.heartbeat_interval_ms, client.keep_active_partition) == (2000, True)


@pytest.mark.parametrize(
    "msg",
    [
        NodeList(seq=3, nodes=(NodeInfo(1),)),
        NodeList(node_list_type=NodeListType.INITIAL_CONFIG, nodes=(NodeInfo(1),)),
        NodeList(seq=3, node_list_type=NodeListType.MEMBERSHIP, nodes=(NodeInfo(1),)),
        NodeList(seq=3, node_list_type=NodeListType.QUORUM, nodes=(NodeInfo(1),)),
        HeuristicsChange(seq=3),
    ],
)
def test_missing_required_tlv_is_error_7(msg: Any) -> None:
    """Node lists need type and seq, membership a ring id, quorum the quorate flag (7)."""
    d, _ = driver()
    d.join(1, 1)
    (reply,) = d.replies(1, msg)
    assert reply == ServerError(seq=msg.seq, reply_error_code=E.DOESNT_CONTAIN_REQUIRED_OPTION)


def test_algorithm_sees_previous_values_and_storage_follows() -> None:
    """The algorithm runs before storage (reference 4.6): it sees the old ring/membership;
    afterwards the stored ring id is the message's and the reply carries it."""
    d, algo = driver()
    d.join(1, 1, ring=R1)
    (reply,) = d.replies(1, membership(3, R2, 1, 2, heuristics=Heuristics.PASS))
    assert algo.calls[-1] == ("membership", (R1, (), R2, (1, 2), Heuristics.PASS))
    assert reply == NodeListReply(
        seq=3, node_list_type=NodeListType.MEMBERSHIP, ring_id=R2, vote=Vote.NO_CHANGE
    )
    client = d.core.connections[1].client
    assert client is not None
    assert (client.membership_nodes, client.last_heuristics) == ((1, 2), Heuristics.PASS)


def test_algorithm_error_stores_nothing_and_answers_server_error() -> None:
    """An algorithm error becomes SERVER_ERROR with the seq; the lists stay as they were."""
    d, _algo = driver(result=AlgoResult(error=E.INVALID_CONFIG_NODE_LIST))
    d.join(1, 1)
    assert d.replies(1, config(3, 2)) == [
        ServerError(seq=3, reply_error_code=E.INVALID_CONFIG_NODE_LIST)
    ]
    client = d.core.connections[1].client
    assert client is not None
    assert client.config_nodes == ()


def test_vote_info_precedes_reply_and_seq_counts_from_one() -> None:
    """VOTE_INFOs produced for a message are queued before its reply; seqs are 1, 2, ..."""
    d, _ = driver(ack_self_on_membership=True)
    d.join(1, 1)
    out = d.replies(1, membership(3, R2, 1))
    assert out == [
        VoteInfo(seq=1, vote=Vote.ACK, ring_id=R2),
        NodeListReply(
            seq=3, node_list_type=NodeListType.MEMBERSHIP, ring_id=R2, vote=Vote.NO_CHANGE
        ),
    ]
    assert d.replies(1, membership(4, R2, 1))[0] == VoteInfo(seq=2, vote=Vote.ACK, ring_id=R2)
    client = d.core.connections[1].client
    assert client is not None
    assert (client.last_vote, client.last_ack_nack) == (Vote.NO_CHANGE, Vote.ACK)


def test_heuristics_change_stores_regular_heuristics_after_algorithm() -> None:
    """HEURISTICS_CHANGE: the algorithm sees the old value; the reply echoes the new one."""
    d, algo = driver()
    d.join(1, 1)
    (reply,) = d.replies(1, HeuristicsChange(seq=3, heuristics=Heuristics.FAIL))
    assert algo.calls[-1] == ("heuristics", (None, Heuristics.FAIL))
    assert reply == HeuristicsChangeReply(
        seq=3, vote=Vote.NO_CHANGE, ring_id=R1, heuristics=Heuristics.FAIL
    )


def test_disconnect_hook_runs_while_listed_and_empty_cluster_is_deleted() -> None:
    """On disconnect the algorithm runs with the client still listed; others get its votes."""
    d, algo = driver()
    d.join(1, 1)
    d.join(2, 2)
    sent = d.feed(ConnectionClosed(1, "peer_closed"))
    assert algo.calls[-1] == ("disconnect", (1, True, False))
    assert [e.conn_id for e in sent if isinstance(e, Send)] == [2]
    d.feed(ConnectionClosed(2, "peer_closed"))
    assert d.core.clusters == {}


def test_dead_peer_timeout_is_one_and_a_half_heartbeats_after_last_message() -> None:
    """DPD: 180 s before INIT; 1.5 x heartbeat after it; every message restarts it."""
    d, _ = driver()
    d.connect(1)
    assert d.core.next_deadline() == pytest.approx(d.now + 180)
    d.send(1, Preinit(seq=1, cluster_name=b"c"))
    d.replies(1, init_msg(1, heartbeat_interval=1000))
    d.now += 1.4
    d.feed(Tick())
    d.replies(1, EchoRequest(seq=1))
    d.now += 1.4
    d.feed(Tick())
    assert d.disconnected() == []
    d.now += 0.11
    d.feed(Tick())
    assert d.disconnected() == [1]
    assert d.core.stats.closed["dead_peer"] == 1


def test_undecodable_message_restarts_dpd_but_oversize_does_not() -> None:
    """A complete undecodable message counts as liveness; a skipped oversize one does not."""
    d, _ = driver()
    d.connect(1)
    d.now += 100
    d.feed(Undecodable(1, DecodeError("bad_message")))
    assert d.core.next_deadline() == pytest.approx(d.now + 180)
    d.now += 100
    d.feed(Undecodable(1, DecodeError("too_long", code=E.MESSAGE_TOO_LONG)))
    assert d.core.next_deadline() == pytest.approx(d.now + 80)


def test_undecodable_message_error_echoes_the_seq_read() -> None:
    """SERVER_ERROR 9 carries the seq the decoder read before the fault, as 3.0.3's does."""
    d, _ = driver()
    d.connect(1)
    effects = d.feed(Undecodable(1, DecodeError("bad_message", seq=7)))
    sent = [decode(e.data) for e in effects if isinstance(e, Send)]
    assert sent == [ServerError(seq=7, reply_error_code=E.ERROR_DECODING_MSG)]


def test_algorithm_timer_fires_at_its_deadline() -> None:
    """ArmTimer from an algorithm result makes Tick call timer() and send its votes."""
    d, algo = driver(result=AlgoResult(Vote.WAIT_FOR_REPLY, timer=ArmTimer(2000)))
    d.join(1, 1)
    d.send(1, config(3, 1))
    d.now += 1.9
    d.feed(Tick())
    assert ("timer", 1) not in algo.calls
    d.now += 0.2
    effects = d.feed(Tick())
    assert ("timer", 1) in algo.calls
    assert len([e for e in effects if hasattr(e, "data")]) == 1


def test_max_clients_closes_extra_connections() -> None:
    """With --max-clients N the N+1th connection is accepted and closed at once."""
    d, _ = driver(
        QnetdSettings(tls=TlsSupported.SUPPORTED, client_cert_required=False, max_clients=1)
    )
    d.connect(1)
    d.connect(2)
    assert d.disconnected() == [2]
    assert set(d.core.connections) == {1}


def test_shutdown_drops_all_without_recomputation() -> None:
    """Shutdown drops every client; the disconnect hook is told the server is going down."""
    d, algo = driver()
    d.join(1, 1)
    d.join(2, 2)
    effects = d.feed(Shutdown())
    assert sorted(e.conn_id for e in effects if isinstance(e, Disconnect)) == [1, 2]
    assert ("disconnect", (1, True, True)) in algo.calls
    assert d.core.connections == {}
