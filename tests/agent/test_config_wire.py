"""The runtime adapter of the configuration replica: CONFIG_* codec by content hash, chunked
fetch, hostile values dropped and counted, Persist before any later Send, one change at a time."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from agent import cluster_config
from agent import config_replication as cr
from agent.cluster_config import ClusterConfig
from agent.runtime import cluster_store
from agent.runtime.config_wire import FETCH_PATIENCE, ConfigWire, WireConfigMessage
from agent.runtime.replication import BUSY, Replication
from proto.config_transfer import chunks
from proto.datagram_seal import ClusterKey, Sealer
from proto.mesh_messages import (
    CHUNK_BYTES,
    ConfigChunk,
    ConfigCommit,
    ConfigFetch,
    ConfigPropose,
    ConfigRef,
    ConfigResult,
    MeshMessage,
    seal_message,
)
from tests.agent.cluster_fixtures import cluster, node

RING = cr.Ring(7, 1)


def _big(version: int = 3) -> ClusterConfig:
    """A 250-node configuration with two links (~15 kB): more than one window of chunks."""
    return ClusterConfig("prod", version, tuple(node(i, links=2) for i in range(1, 251)))


def _relay(a: ConfigWire, b: ConfigWire, msg: cr.Message) -> list[cr.Received]:
    """Send `msg` from node 1 (codec a) to node 2 (codec b), running every fetch and chunk
    between them until nothing is left; what b hands to its replica."""
    got, pending = b.incoming(1, a.outgoing(msg))  # type: ignore[arg-type]
    for _ in range(1000):
        if not pending:
            break
        answers: list[tuple[int, MeshMessage]] = []
        for to, wire in pending:
            if to == 1:
                _, out = a.incoming(2, wire)  # type: ignore[arg-type]
                answers += [(2, m) for _, m in out]
            else:
                ready, out = b.incoming(1, wire)  # type: ignore[arg-type]
                got += ready
                answers += out
        pending = answers
    return got


def test_every_replica_message_round_trips_through_fetched_chunks() -> None:
    """State (with a staged value), Propose, Ack, Commit, Forward and Result arrive as the same
    replica message; a 250-node configuration is fetched in chunks and checked."""
    big, small = _big(), cluster([1, 2, 3], 2)
    staged = cr.Staged(RING, big)
    messages: list[cr.Message] = [
        cr.State(RING, small, staged),
        cr.Propose(RING, big),
        cr.Ack(RING, 3, cluster_config.digest(big)),
        cr.Commit(small),
        cr.Forward(RING, 17, 2, big),
        cr.Result(17, False, "not quorate: 1 of 3 votes"),
    ]
    a, b = ConfigWire(), ConfigWire()
    for msg in messages:
        assert _relay(a, b, msg) == [cr.Received(1, msg)]
    assert b.counters["fetched"] == 2  # each configuration's bytes crossed once
    assert len(cluster_config.encode(big)) > 8 * CHUNK_BYTES


def test_a_sealed_chunk_stays_below_the_ipv6_minimum_mtu() -> None:
    """No datagram of a transfer depends on IP fragmentation: a full chunk sealed < 1,280 B."""
    sealer = Sealer("prod", ClusterKey(b"k" * 32), 1, 1)
    chunk = chunks(cluster_config.encode(_big()))[0]
    assert len(chunk.data) == CHUNK_BYTES
    assert len(seal_message(sealer, chunk)) + 48 < 1280  # + IPv6 and UDP headers


def test_a_commit_whose_content_is_held_is_handed_on_at_once() -> None:
    """A configuration already held (sent or fetched before) needs no fetch."""
    a = ConfigWire()
    config = cluster([1, 2], 4)
    wire = a.outgoing(cr.Commit(config))
    assert a.incoming(2, wire) == ([cr.Received(2, cr.Commit(config))], [])  # type: ignore[arg-type]


def _ref_for(blob: bytes, version: int) -> ConfigRef:
    return ConfigRef(version, chunks(blob)[0].digest, len(blob))


def test_chunks_that_do_not_hash_to_the_digest_are_dropped_and_counted() -> None:
    """A member sends wrong bytes for a digest: the assembly is dropped, nothing is handed on."""
    b = ConfigWire()
    blob = cluster_config.encode(cluster([1, 2], 2))
    ref = _ref_for(blob, 2)
    assert b.incoming(1, ConfigCommit(ref))[0] == []
    wrong = bytes([blob[0] ^ 1]) + blob[1:]
    assert b.incoming(1, ConfigChunk(ref.digest, len(blob), 0, wrong)) == ([], [])
    assert b.counters["bad_value"] == 1
    assert b.last_drop is not None
    assert b.fetches == {}


def test_a_config_with_the_right_hash_but_invalid_content_is_dropped() -> None:
    """Bytes that hash right but do not decode to a valid configuration: `bad_config`."""
    b = ConfigWire()
    blob = b"\x93\x01\x02\x03"  # msgpack, not a configuration
    ref = _ref_for(blob, 2)
    b.incoming(1, ConfigCommit(ref))
    assert b.incoming(1, chunks(blob)[0]) == ([], [])
    assert b.counters["bad_config"] == 1


def test_a_reference_whose_version_does_not_match_its_content_is_dropped() -> None:
    """(version 9, digest of a version-2 configuration): `bad_value`, never handed on."""
    a, b = ConfigWire(), ConfigWire()
    config = cluster([1, 2], 2)
    ref = a.ref(config)
    b.incoming(1, ConfigCommit(ref))
    for chunk in chunks(cluster_config.encode(config)):
        b.incoming(1, chunk)
    assert b.incoming(1, ConfigCommit(replace(ref, version=9))) == ([], [])
    assert b.counters["bad_value"] == 1


def test_unsolicited_chunks_and_fetches_of_unknown_content_are_counted() -> None:
    """Nothing asked for / nothing held: dropped under their reasons."""
    b = ConfigWire()
    blob = cluster_config.encode(cluster([1, 2], 2))
    assert b.incoming(1, chunks(blob)[0]) == ([], [])
    assert b.incoming(1, ConfigFetch(b"\x01" * 32, 0)) == ([], [])
    a = ConfigWire()
    ref = a.ref(cluster([1, 2], 2))
    assert a.incoming(2, ConfigFetch(ref.digest, 5)) == ([], [])  # beyond its size
    assert (b.counters["chunk_unsolicited"], b.counters["fetch_unknown"]) == (1, 1)
    assert a.counters["bad_value"] == 1


def test_a_result_text_with_control_characters_is_dropped() -> None:
    """A member's answer is printed to the user as one line: newlines or escapes drop it."""
    b = ConfigWire()
    assert b.incoming(1, ConfigResult(5, True, "ok\n\x1b[2Jfake")) == ([], [])
    assert b.counters["bad_value"] == 1
    assert b.incoming(1, ConfigResult(5, True, "applied as config_version 3"))[0]


def test_fetches_are_resent_on_tick_and_given_up_after_the_patience() -> None:
    """A lost chunk is asked again on every tick; after FETCH_PATIENCE idle ticks the fetch is
    dropped (its message is resent by its sender anyway)."""
    b = ConfigWire()
    blob = cluster_config.encode(_big())
    _, first = b.incoming(1, ConfigCommit(_ref_for(blob, 3)))
    assert len(first) == 8
    assert b.tick() == first
    for _ in range(FETCH_PATIENCE):
        b.tick()
    assert b.fetches == {}
    assert b.counters["fetch_timeout"] == 1


_DIGESTS = st.binary(min_size=32, max_size=32)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.builds(
                ConfigChunk,
                _DIGESTS,
                st.integers(1, 4096),
                st.integers(0, 3),
                st.binary(min_size=1, max_size=64),
            ),
            st.builds(ConfigFetch, _DIGESTS, st.integers(0, 1023)),
            st.builds(
                ConfigCommit,
                st.builds(ConfigRef, st.integers(0, 9), _DIGESTS, st.integers(1, 4096)),
            ),
        ),
        max_size=30,
    )
)
def test_hostile_message_sequences_never_raise(wires: list[WireConfigMessage]) -> None:
    """Any sequence of well-formed but hostile messages: dropped or held, never an exception,
    never more than the bounded number of fetches."""
    b = ConfigWire()
    for wire in wires:
        b.incoming(2, wire)
        b.tick()
    assert len(b.fetches) <= 4


# ---------------------------------------------------------------- the adapter


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[int, MeshMessage]] = []
        self.applied: list[ClusterConfig] = []


def _replication(state_dir: Path, me: int = 2) -> tuple[Replication, Recorder]:
    rec = Recorder()
    replica = cr.ConfigReplica(me, cluster([1, 2, 3], 1))
    repl = Replication(replica, state_dir, lambda p, m: rec.sent.append((p, m)), rec.applied.append)
    return repl, rec


def test_sends_wait_while_the_store_refuses_a_write(tmp_path: Path) -> None:
    """The promised ring cannot be written (state dir is a file): the State report is held back
    and counted; once the disk takes it (on a tick), the messages flow again."""
    blocked = tmp_path / "state"
    blocked.write_text("not a directory")
    repl, rec = _replication(blocked)
    repl.observe(RING, frozenset({1, 2, 3}), cr.QuorumInput(True, 3, 3))
    assert rec.sent == []
    assert repl.counters["persist_errors"] == 1
    assert repl.counters["held_unpersisted"] == 1
    blocked.unlink()
    blocked.mkdir()
    repl.tick()
    assert rec.sent
    stored = cluster_store.load(blocked)
    assert stored is not None
    assert stored.promised == RING


def test_a_second_change_on_one_node_is_told_to_retry(tmp_path: Path) -> None:
    """While one change waits for the cluster, another on the same node is refused at once."""
    repl, _ = _replication(tmp_path)
    repl.observe(RING, frozenset({1, 2, 3}), cr.QuorumInput(True, 3, 3))

    async def race() -> tuple[str, bool]:
        first = asyncio.create_task(repl.change(lambda c: replace(c, cluster_name="other")))
        await asyncio.sleep(0.01)
        second = await repl.change(lambda c: replace(c, cluster_name="third"))
        first.cancel()
        return second.text, second.ok

    assert asyncio.run(race()) == (BUSY, False)


def test_a_change_on_a_node_that_is_not_quorate_is_refused_with_the_reason(
    tmp_path: Path,
) -> None:
    """The core's refusal comes back as the outcome's one line; nothing is sent."""
    repl, rec = _replication(tmp_path)
    repl.observe(RING, frozenset({2}), cr.QuorumInput(False, 1, 3))
    sent = len(rec.sent)
    outcome = asyncio.run(repl.change(lambda c: replace(c, cluster_name="other")))
    assert not outcome.ok
    assert outcome.text == "not quorate: 1 of 3 votes; use `votemesh expected 1` to force"
    assert outcome.version == 1
    assert len(rec.sent) == sent


def test_a_change_asked_while_the_view_settles_is_asked_again_and_applied(tmp_path: Path) -> None:
    """Node 1 is the representative of a new view {1, 2} but has no State from node 2 yet:
    the core refuses "not synchronised yet"; the adapter asks again, node 2's State arrives,
    the change is proposed, acknowledged and applied (the user never sees the transient)."""
    rec = Recorder()
    base = cluster([1, 2], 1)
    repl = Replication(
        cr.ConfigReplica(1, base),
        tmp_path,
        lambda p, m: rec.sent.append((p, m)),
        rec.applied.append,
    )
    ring = cr.Ring(3, 1)
    repl.observe(ring, frozenset({1, 2}), cr.QuorumInput(True, 2, 2))
    peer = ConfigWire()  # node 2's codec
    repl.wire.ref(base)  # node 1 holds the bytes of its own committed configuration
    window = replace(base.quorum, last_man_standing_window=30.0)

    async def scenario() -> cr.ChangeDone | object:
        task = asyncio.create_task(repl.change(lambda c: replace(c, quorum=window)))
        await asyncio.sleep(0.15)  # at least one refusal and one retry
        repl.receive(2, peer.outgoing(cr.State(ring, base, None)))  # type: ignore[arg-type]
        for _ in range(100):
            await asyncio.sleep(0.02)
            proposals = [m for p, m in rec.sent if p == 2 and isinstance(m, ConfigPropose)]
            if proposals:
                break
        proposal = proposals[-1]
        config = repl.wire.configs[proposal.config.digest]
        ack = cr.Ack(ring, config.version, cluster_config.digest(config))
        repl.receive(2, peer.outgoing(ack))  # type: ignore[arg-type]
        return await task

    outcome = asyncio.run(scenario())
    assert outcome.ok, outcome  # type: ignore[attr-defined]
    assert outcome.version == 2  # type: ignore[attr-defined]
    assert rec.applied[-1].quorum.last_man_standing_window == 30.0
