"""Mesh message kinds: round trips through sealing, forward compatibility, bad payloads."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proto import tagged_map
from proto.datagram_seal import ClusterKey, Opener, Sealer
from proto.errors import DecodeError
from proto.mesh_messages import (
    MESH_KINDS,
    Heartbeat,
    MeshKind,
    View,
    decode,
    encode,
    kind_of,
    open_message,
    seal_message,
)
from tests.proto.strategies import tagged_dataclass

KEY = ClusterKey(b"k" * 32)


@pytest.mark.parametrize("kind", list(MeshKind), ids=lambda k: k.name)
@settings(max_examples=150)
@given(data=st.data())
def test_every_kind_round_trips_through_a_sealed_datagram(
    kind: MeshKind, data: st.DataObject
) -> None:
    """seal -> open -> decode gives back the same message, for every kind."""
    msg = data.draw(tagged_dataclass(MESH_KINDS[kind]))
    sealer, opener = Sealer("c", KEY, 3, 9), Opener("c", [KEY])
    header, back = open_message(opener, seal_message(sealer, msg))
    assert back == msg
    assert header.kind == kind == kind_of(msg)


def test_every_kind_is_registered_once() -> None:
    """MESH_KINDS covers every MeshKind with a distinct class."""
    assert set(MESH_KINDS) == set(MeshKind)
    assert len(set(MESH_KINDS.values())) == len(MeshKind)


def test_unknown_tags_are_ignored_and_missing_optional_take_defaults() -> None:
    """A newer sender's extra field is ignored; an older sender's missing field defaults."""
    raw = msgpack.packb({1: 0, 2: 5, 3: 6, 99: "from the future"})
    assert decode(MeshKind.HEARTBEAT, raw) == Heartbeat(link=0, stamp_us=5, wall_ms=6)


def test_defaults_are_left_out_on_the_wire() -> None:
    """A heartbeat with default fields encodes only its required ones (compactness)."""
    assert msgpack.unpackb(
        encode(Heartbeat(link=0, stamp_us=5, wall_ms=6)), strict_map_key=False
    ) == {
        1: 0,
        2: 5,
        3: 6,
    }


@pytest.mark.parametrize(
    "plain",
    [
        {1: 0, 2: 5},  # required wall_ms missing
        {1: -1, 2: 5, 3: 6},  # negative int
        {1: True, 2: 5, 3: 6},  # bool where int expected
        {1: 0, 2: 5, 3: 6, 4: [1, "x"]},  # wrong item type
        {1: 0, 2: 5, 3: 6, 5: {1: 1, 2: 1}},  # nested view without members
        {1: 0, 2: 5, 3: 6, 4: list(range(2000))},  # too many items
        [1, 2, 3],  # not a map
        {1: 0, 2: 1.5, 3: 6},  # float where int expected
    ],
)
def test_malformed_payload_is_bad_payload(plain: object) -> None:
    """Type or range violations inside an authentic payload raise DecodeError('bad_payload')."""
    with pytest.raises(DecodeError) as err:
        decode(MeshKind.HEARTBEAT, msgpack.packb(plain))
    assert err.value.reason == "bad_payload"


def test_unknown_kind_is_counted_separately() -> None:
    """A kind this version does not know raises DecodeError('unknown_kind')."""
    with pytest.raises(DecodeError) as err:
        decode(200, b"\x80")
    assert err.value.reason == "unknown_kind"


@settings(max_examples=500)
@given(st.sampled_from(list(MeshKind)), st.binary(max_size=300))
def test_garbage_payload_only_raises_decode_error(kind: MeshKind, data: bytes) -> None:
    """Random payload bytes decode or raise DecodeError, nothing else."""
    with contextlib.suppress(DecodeError):
        decode(kind, data)


def test_heartbeat_for_100_nodes_fits_one_datagram() -> None:
    """A 100-node heartbeat with view, proposal and echoes stays far below a 1400-byte MTU."""
    nodes = tuple(range(1, 101))
    hb = Heartbeat(
        link=0,
        stamp_us=2**40,
        wall_ms=2**41,
        heard=nodes,
        view=View(1, 2**33, nodes),
        proposal=View(1, 2**33 + 1, nodes),
        node_name="node-001",
    )
    sealed = seal_message(Sealer("c", KEY, 1, 1), hb)
    assert len(sealed) < 1400
    assert tagged_map.unpack(Heartbeat, encode(hb)) == hb
