"""Hypothesis over (session state, message): the core, with the real algorithms, never raises.

Random interleavings of connects, closes, clock ticks, TLS completions and messages (well-formed
protocol flows mixed with arbitrary messages) across several connections and clusters. After
every step: each output decodes and is a legal answer to its input, and the core's invariants
(docs/design.md 2.3) hold.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proto.qnetd_enums import (
    DecisionAlgorithm,
    Heuristics,
    MessageType,
    NodeListType,
    TieBreakerMode,
    TlsSupported,
)
from proto.qnetd_messages import (
    AskForVote,
    EchoRequest,
    HeuristicsChange,
    NodeList,
    Preinit,
    QnetdMessage,
    SetOption,
    StartTls,
    VoteInfoReply,
    decode,
)
from proto.qnetd_options import NodeInfo, RingId, TieBreaker
from qnetd.algorithms.registry import ALGORITHMS
from qnetd.arbitration import QnetdCore
from qnetd.core_events import (
    Accepted,
    ConnectionClosed,
    Disconnect,
    Effect,
    Received,
    Send,
    Tick,
    TlsEstablished,
)
from qnetd.peer_names import PeerNames, matches_cluster
from qnetd.settings import QnetdSettings
from tests.proto.strategies import qnetd_messages
from tests.qnetd.core_helpers import init_msg

CONNS = st.integers(1, 5)
NODES = st.integers(1, 4)
node_sets = st.lists(NODES, min_size=0, max_size=4, unique=True).map(
    lambda ids: tuple(NodeInfo(n) for n in ids)
)
rings = st.builds(RingId, st.integers(1, 4), st.integers(0, 3))
heuristics = st.none() | st.sampled_from(Heuristics)
seqs = st.integers(0, 20)

protocol_messages: st.SearchStrategy[QnetdMessage] = st.one_of(
    st.builds(Preinit, seq=seqs, cluster_name=st.sampled_from([b"a", b"b"])),
    st.builds(StartTls, seq=seqs),
    st.builds(
        lambda n, alg, tb, hb, ring: init_msg(
            n,
            alg,
            ring,
            tie_breaker=TieBreaker(tb, 2 if tb is TieBreakerMode.NODE_ID else 0),
            heartbeat_interval=hb,
        ),
        NODES,
        st.sampled_from(DecisionAlgorithm),
        st.sampled_from(TieBreakerMode),
        st.sampled_from([500, 1000, 8000]),
        rings,
    ),
    st.builds(
        SetOption,
        seq=seqs,
        heartbeat_interval=st.none() | st.sampled_from([5, 2000]),
        keep_active_partition_tie_breaker=st.none() | st.booleans(),
    ),
    st.builds(EchoRequest, seq=seqs),
    st.builds(
        NodeList,
        seq=seqs,
        node_list_type=st.sampled_from(NodeListType),
        ring_id=rings,
        quorate=st.booleans(),
        nodes=node_sets,
        heuristics=heuristics,
    ),
    st.builds(AskForVote, seq=seqs),
    st.builds(VoteInfoReply, seq=seqs),
    st.builds(HeuristicsChange, seq=seqs, heuristics=st.sampled_from(Heuristics)),
)

actions = st.one_of(
    st.tuples(st.just("connect"), CONNS),
    st.tuples(st.just("close"), CONNS),
    st.tuples(st.just("tick"), st.floats(0.0, 5.0)),
    st.tuples(st.just("tls"), CONNS, st.sampled_from([None, "a", "b", "x"])),
    st.tuples(st.just("msg"), CONNS, protocol_messages),
    st.tuples(st.just("msg"), CONNS, protocol_messages),
    st.tuples(st.just("msg"), CONNS, protocol_messages),
    st.tuples(st.just("msg"), CONNS, qnetd_messages),
)

# What a server may write back to the sender of each message type (besides SERVER_ERROR and
# VOTE_INFOs, which any message that runs an algorithm may produce).
REPLIES = {
    MessageType.PREINIT: {MessageType.PREINIT_REPLY},
    MessageType.STARTTLS: set(),
    MessageType.INIT: {MessageType.INIT_REPLY},
    MessageType.SET_OPTION: {MessageType.SET_OPTION_REPLY},
    MessageType.ECHO_REQUEST: {MessageType.ECHO_REPLY},
    MessageType.NODE_LIST: {MessageType.NODE_LIST_REPLY},
    MessageType.ASK_FOR_VOTE: {MessageType.ASK_FOR_VOTE_REPLY},
    MessageType.VOTE_INFO_REPLY: set(),
    MessageType.HEURISTICS_CHANGE: {MessageType.HEURISTICS_CHANGE_REPLY},
}
ALWAYS = {MessageType.SERVER_ERROR, MessageType.VOTE_INFO}


def check_invariants(core: QnetdCore) -> None:
    s = core.settings
    bound = s.tls is TlsSupported.REQUIRED and s.client_cert_required
    listed = set()
    for name, cluster in core.clusters.items():
        assert cluster.clients, f"empty cluster {name!r} kept"
        ids = [c.node_id for c in cluster.clients]
        assert ids == sorted(ids)
        assert len(set(ids)) == len(ids)
        for client in cluster.clients:
            assert client.cluster_name == name
            conn = core.connections[client.conn_id]
            assert conn.client is client
            assert conn.cluster_name == name, "a client is listed in the cluster it PREINITed"
            if bound:  # the secure setting: only a certificate naming the cluster gets in
                assert conn.peer is not None
                assert matches_cluster(conn.peer, name)
            listed.add(client.conn_id)
    assert listed == {c.conn_id for c in core.connections.values() if c.client is not None}


def check_outputs(conn_id: int, msg: QnetdMessage, effects: list[Effect]) -> None:
    for effect in effects:
        if isinstance(effect, Send):
            reply = decode(effect.data)
            if effect.conn_id == conn_id:
                allowed = REPLIES.get(msg.TYPE, set()) | ALWAYS
                assert reply.TYPE in allowed, (msg, reply)
            else:
                assert reply.TYPE is MessageType.VOTE_INFO, (msg, reply)


def run(steps: list[tuple[Any, ...]], settings_: QnetdSettings) -> QnetdCore:
    core = QnetdCore(settings_, ALGORITHMS)
    now = 100.0
    for step in steps:
        kind = step[0]
        if kind == "connect":
            if step[1] not in core.connections:
                core.handle(Accepted(step[1], "127.0.0.1:1"), now)
        elif kind == "close":
            core.handle(ConnectionClosed(step[1], "peer_closed"), now)
        elif kind == "tick":
            now += step[1]
            core.handle(Tick(), now)
        elif kind == "tls":
            names = PeerNames((step[2],)) if step[2] else None
            core.handle(TlsEstablished(step[1], names), now)
        else:
            _, conn_id, msg = step
            from proto.qnetd_messages import encode

            effects = core.handle(Received(conn_id, msg, encode(msg)), now)
            check_outputs(conn_id, msg, effects)
            dropped = {e.conn_id for e in effects if isinstance(e, Disconnect)}
            assert dropped <= {conn_id}, "handling a message may only drop its sender"
        check_invariants(core)
    return core


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(actions, max_size=60), st.sampled_from(list(TlsSupported)), st.booleans())
def test_any_interleaving_gives_legal_outputs_and_keeps_invariants(
    steps: list[tuple[Any, ...]], tls: TlsSupported, certs: bool
) -> None:
    """Never an exception; every output decodes and answers its input legally; invariants hold."""
    run(steps, QnetdSettings(tls=tls, client_cert_required=certs))


@settings(max_examples=150, deadline=None)
@given(st.lists(actions, max_size=60))
def test_shutdown_after_anything_leaves_nothing(steps: list[tuple[Any, ...]]) -> None:
    """After any history, Shutdown drops every connection and every cluster."""
    from qnetd.core_events import Shutdown

    core = run(steps, QnetdSettings(tls=TlsSupported.SUPPORTED, client_cert_required=False))
    core.handle(Shutdown(), 1e9)
    assert core.connections == {}
    assert core.clusters == {}
