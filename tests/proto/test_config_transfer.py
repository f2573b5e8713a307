"""Chunked configuration transfer: any order, duplicates, the digest check, datagram size."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.cluster_config import ClusterConfig, ClusterNode, NodeLink, encode
from proto.config_transfer import Assembly, chunks
from proto.datagram_seal import ClusterKey, Sealer
from proto.errors import DecodeError
from proto.mesh_messages import CHUNK_BYTES, ConfigChunk, seal_message


@given(st.binary(min_size=1, max_size=20_000), st.randoms(use_true_random=False))
def test_chunks_in_any_order_with_duplicates_give_back_the_blob(
    blob: bytes, rng: random.Random
) -> None:
    """Chunks delivered shuffled and some twice reassemble to the same bytes; until then
    `wanted` names only missing chunks."""
    parts = chunks(blob)
    delivery = parts + rng.sample(parts, len(parts) // 2)
    rng.shuffle(delivery)
    assembly = Assembly(parts[0].digest, len(blob))
    for chunk in delivery:
        assert all(f.index not in assembly.parts for f in assembly.wanted())
        assembly.add(chunk)
    assert assembly.complete
    assert assembly.wanted() == []
    assert assembly.result() == blob


def test_a_wrong_chunk_is_refused_and_wrong_bytes_fail_the_digest() -> None:
    """A chunk of the right shape but wrong bytes fails at the end; a chunk of another digest,
    size or length is refused when it arrives."""
    blob = bytes(range(256)) * 10
    parts = chunks(blob)
    assembly = Assembly(parts[0].digest, len(blob))
    bad = ConfigChunk(parts[0].digest, len(blob), 0, b"x" * CHUNK_BYTES)
    for chunk in [bad, *parts[1:]]:
        assembly.add(chunk)
    with pytest.raises(DecodeError, match="do not match their digest"):
        assembly.result()
    for wrong in (
        ConfigChunk(b"\0" * 32, len(blob), 0, parts[0].data),
        ConfigChunk(parts[0].digest, len(blob) + 1, 0, parts[0].data),
        ConfigChunk(parts[0].digest, len(blob), 1, b"short"),
        ConfigChunk(parts[0].digest, len(blob), 9, parts[0].data),
    ):
        with pytest.raises(DecodeError):
            Assembly(parts[0].digest, len(blob)).add(wrong)


def test_a_100_node_configuration_moves_in_datagrams_below_the_ipv6_minimum_mtu() -> None:
    """A 100-node, 2-link configuration is several chunks, each sealed below 1,280 bytes."""
    nodes = tuple(
        ClusterNode(i, f"node-{i:03d}", 1, (NodeLink(0, f"10.0.0.{i}"), NodeLink(1, f"fd00::{i}")))
        for i in range(1, 101)
    )
    blob = encode(ClusterConfig("prod", 7, nodes))
    parts = chunks(blob)
    assert len(parts) >= 4
    sealer = Sealer("prod", ClusterKey(b"k" * 32), 1, 1)
    assert max(len(seal_message(sealer, c)) for c in parts) < 1280


def test_a_digest_of_the_wrong_length_is_bad_value() -> None:
    """`bounds` on a bytes field bound its length: a 31-byte digest from a peer holding the key
    is refused at decode as bad_value."""
    from proto import tagged_map
    from proto.mesh_messages import ConfigAck, MeshKind, decode

    payload = tagged_map.pack(ConfigAck(1, 1, 2, b"d" * 32)).replace(b"d" * 32, b"d" * 31)
    payload = payload.replace(b"\xc4\x20", b"\xc4\x1f")
    with pytest.raises(DecodeError) as err:
        decode(MeshKind.CONFIG_ACK, payload)
    assert err.value.reason == "bad_value"
