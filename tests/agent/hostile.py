"""Keyed garbage: payloads a member holding the cluster key could seal, with hostile values.

Shared by the core-level and the live (real UDP) hostile-input tests. A payload is a msgpack map
from the real field tags of a mesh message kind to values drawn around every boundary that
matters (0, 2**32, 2**62, 2**64 - 1, negatives, wrong types, long lists, nested junk), so some
decode into valid but extreme messages and the rest exercise every decode check.
"""

from __future__ import annotations

from typing import Any

import msgpack
from hypothesis import strategies as st

from proto.mesh_messages import MeshKind

EDGES: tuple[int, ...] = (0, 1, 2, 7, 8, 1000, 1001, 2**20, 2**31, 2**32 - 1, 2**32, 2**48)
EDGES += (2**62 - 1, 2**62, 2**62 + 1, 2**63, 2**64 - 2, 2**64 - 1, -1, -(2**63))

ints = st.sampled_from(EDGES) | st.integers(-(2**63), 2**64 - 1)
scalars = ints | st.booleans() | st.none() | st.text(max_size=300) | st.binary(max_size=64)
id_lists = st.lists(ints, max_size=40) | st.builds(
    lambda n: list(range(1, n + 1)), st.integers(0, 1500)
)


def _view() -> st.SearchStrategy[Any]:
    return st.fixed_dictionaries(
        {},
        optional={1: ints | scalars, 2: ints | scalars, 3: id_lists | scalars},
    )


def _echoes() -> st.SearchStrategy[Any]:
    echo = st.fixed_dictionaries({}, optional={1: ints, 2: ints, 3: ints | scalars})
    return st.lists(echo | scalars, max_size=30)


HEARTBEAT_FIELDS: dict[int, st.SearchStrategy[Any]] = {
    1: ints | scalars,
    2: ints,
    3: ints,
    4: id_lists | scalars,
    5: _view() | scalars,
    6: _view() | scalars,
    7: _echoes() | scalars,
    8: ints | scalars,
    9: ints | scalars,
    10: ints,
    11: st.text(max_size=300) | scalars,
    12: st.booleans() | scalars,
}
SMALL_FIELDS: dict[int, st.SearchStrategy[Any]] = {1: ints | scalars, 2: ints, 3: ints | scalars}


@st.composite
def keyed_garbage(draw: st.DrawFn) -> tuple[int, bytes]:
    """(mesh kind, payload bytes): mostly real kinds with hostile field values."""
    kind = draw(st.sampled_from([*MeshKind, 0, 99]) | st.integers(0, 255))
    fields = HEARTBEAT_FIELDS if kind == MeshKind.HEARTBEAT else SMALL_FIELDS
    plain = draw(st.fixed_dictionaries({}, optional=fields))
    if draw(st.booleans()):
        plain[draw(st.integers(0, 2**16))] = draw(scalars)  # an unknown tag
    payload = msgpack.packb(plain, use_bin_type=True)
    if draw(st.integers(0, 9)) == 0:
        payload = draw(st.binary(max_size=200))  # not msgpack at all
    return int(kind), payload


def heartbeat_map(**fields: Any) -> bytes:
    """A heartbeat payload from tag names, with any values (no bounds applied)."""
    tags = {"link": 1, "stamp_us": 2, "wall_ms": 3, "heard": 4, "view": 5, "proposal": 6}
    tags |= {"echoes": 7, "votes": 8, "expected_votes": 9, "node_name": 11, "quorate": 12}
    packed: bytes = msgpack.packb({tags[k]: v for k, v in fields.items()}, use_bin_type=True)
    return packed
