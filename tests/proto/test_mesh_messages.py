"""Mesh message kinds: round trips through sealing, forward compatibility, bad payloads."""

from __future__ import annotations

import contextlib
import dataclasses

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proto import tagged_map
from proto.datagram_seal import ClusterKey, Opener, Sealer
from proto.errors import DecodeError
from proto.mesh_messages import (
    MESH_KINDS,
    Echo,
    Heartbeat,
    MeshKind,
    View,
    decode,
    encode,
    heartbeat_per_peer,
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


# ---- the C-level checks (design §3.14): every item still checked, no Python step per item ----

BASE = {1: 0, 2: 5, 3: 6}
IDS = list(range(1, 21))


def _reason(plain: object) -> str:
    with pytest.raises(DecodeError) as err:
        decode(MeshKind.HEARTBEAT, msgpack.packb(plain))
    return err.value.reason


@pytest.mark.parametrize("where", [0, 10, 19])
@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (True, "bad_payload"),  # bool is not int
        (-1, "bad_payload"),
        (1.0, "bad_payload"),
        ("1", "bad_payload"),
        (None, "bad_payload"),
        (0, "bad_value"),  # node ids start at 1
        (2**32, "bad_value"),  # above MAX_NODE_ID
        (2**64 - 1, "bad_value"),
    ],
)
def test_every_item_of_an_id_list_is_checked(where: int, bad: object, reason: str) -> None:
    """A bad id first, in the middle or last of `heard` or a view is refused with its reason."""
    ids: list[object] = list(IDS)
    ids[where] = bad
    assert _reason({**BASE, 4: ids}) == reason
    if reason == "bad_payload" or where:  # a bad first member is also "not the lowest"
        view = {1: 1, 2: 3, 3: ids}
        assert _reason({**BASE, 5: view}) == reason


def test_a_list_equal_to_the_last_good_one_is_still_type_checked() -> None:
    """The decoder reuses the tuple of a list equal to the last one that passed; True == 1 and
    1.0 == 1, so an equal list with a bool or a float in it must still be refused."""
    good = decode(MeshKind.HEARTBEAT, msgpack.packb({**BASE, 4: [1, 2, 3]}))
    assert isinstance(good, Heartbeat)
    assert good.heard == (1, 2, 3)
    assert _reason({**BASE, 4: [True, 2, 3]}) == "bad_payload"
    assert _reason({**BASE, 4: [1, 2.0, 3]}) == "bad_payload"
    view = {1: 1, 2: 3, 3: [1, 2, 3]}
    assert decode(MeshKind.HEARTBEAT, msgpack.packb({**BASE, 5: view})) is not None
    assert _reason({**BASE, 5: {**view, 3: [1, True, 3]}}) == "bad_payload"


@pytest.mark.parametrize(
    "members", [[1, 3, 2], [1, 2, 2, 3], [1, *range(3, 40), 2], [1, *range(2, 40), 39]]
)
def test_view_members_must_be_sorted_and_distinct(members: list[int]) -> None:
    """An unsorted view, or one with a repeat (also at its end), is bad_value, for the view and
    the proposal alike."""
    view = {1: 1, 2: 3, 3: members}
    assert _reason({**BASE, 5: view}) == "bad_value"
    assert _reason({**BASE, 6: view}) == "bad_value"


def test_huge_lists_are_refused_and_the_largest_allowed_one_decodes() -> None:
    """1024 ids decode; 1025 are refused (bad_payload: the msgpack array limit)."""
    hb = decode(MeshKind.HEARTBEAT, msgpack.packb({**BASE, 4: list(range(1, 1025))}))
    assert isinstance(hb, Heartbeat)
    assert len(hb.heard) == 1024
    assert _reason({**BASE, 4: list(range(1, 1026))}) == "bad_payload"


def _echoes(count: int) -> list[dict[int, object]]:
    return [{1: i, 2: 1000 + i, 3: 7} for i in range(1, count + 1)]


@pytest.mark.parametrize("count", [1, 5, 30])  # map by map below 8 items, column by column above
@pytest.mark.parametrize(
    ("field", "bad", "reason"),
    [
        (1, True, "bad_payload"),
        (2, -5, "bad_payload"),
        (3, 1.5, "bad_payload"),
        (1, 0, "bad_value"),
        (2, 2**62 + 1, "bad_value"),
        (3, 2**32 + 1, "bad_value"),
    ],
)
def test_every_echo_value_is_checked(count: int, field: int, bad: object, reason: str) -> None:
    """A bad value in any echo (first, middle or last) is refused with its reason."""
    for where in {0, count // 2, count - 1}:
        echoes = _echoes(count)
        echoes[where] = {**echoes[where], field: bad}
        assert _reason({**BASE, 7: echoes}) == reason


@pytest.mark.parametrize("count", [1, 30])
def test_malformed_echoes_are_bad_payload(count: int) -> None:
    """An echo without its node id or stamp, or one that is not a map, is bad_payload; one
    without held_us takes the default 0."""
    missing = _echoes(count)
    del missing[-1][2]
    assert _reason({**BASE, 7: missing}) == "bad_payload"
    assert _reason({**BASE, 7: [*_echoes(count)[:-1], [1, 2]]}) == "bad_payload"
    no_held = _echoes(count)
    del no_held[0][3]
    hb = decode(MeshKind.HEARTBEAT, msgpack.packb({**BASE, 7: no_held}))
    assert isinstance(hb, Heartbeat)
    assert hb.echoes[0] == Echo(1, 1001, 0)
    assert hb.echoes[1:] == tuple(Echo(i, 1000 + i, 7) for i in range(2, count + 1))


@settings(max_examples=150, deadline=None)  # drawing 1024-item heartbeats is slow on a busy host
@given(data=st.data())
def test_each_peer_payload_is_the_heartbeat_with_its_own_echo(data: st.DataObject) -> None:
    """heartbeat_per_peer(hb)(peer) decodes as hb with only that peer's echo (none if it has
    none), for any heartbeat."""
    hb = data.draw(tagged_dataclass(Heartbeat))
    assert isinstance(hb, Heartbeat)
    payload = heartbeat_per_peer(hb)
    peers = {e.node_id for e in hb.echoes} | {data.draw(st.integers(1, 2**32 - 1))}
    for peer in peers:
        own = tuple(e for e in hb.echoes if e.node_id == peer)[-1:]
        assert decode(MeshKind.HEARTBEAT, payload(peer)) == dataclasses.replace(hb, echoes=own)
