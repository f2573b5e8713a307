"""Hypothesis strategies for every qnetd message and every mesh message kind."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from hypothesis import strategies as st

from proto.mesh_messages import NODE_IDS, SEQS, View
from proto.qnetd_enums import (
    Heuristics,
    NodeListType,
    NodeState,
    OptionType,
    TieBreakerMode,
    TlsSupported,
    Vote,
)
from proto.qnetd_messages import MESSAGE_CLASSES, QnetdMessage
from proto.qnetd_options import NodeInfo, RingId, TieBreaker
from proto.tagged_map import field_limits

u16 = st.integers(0, 2**16 - 1)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
node_ids = st.integers(1, 2**32 - 1)

ring_ids = st.builds(RingId, u32, u64)
tie_breakers = st.sampled_from(TieBreakerMode).flatmap(
    lambda m: st.builds(
        TieBreaker, st.just(m), node_ids if m is TieBreakerMode.NODE_ID else st.just(0)
    )
)
node_infos = st.builds(
    NodeInfo, node_ids, st.one_of(st.just(0), node_ids), st.none() | st.sampled_from(NodeState)
)
u16_arrays = st.lists(u16, max_size=40).map(tuple)

OPTION_VALUES: dict[OptionType, st.SearchStrategy[Any]] = {
    OptionType.MSG_SEQ_NUMBER: u32,
    OptionType.CLUSTER_NAME: st.binary(max_size=300),
    OptionType.TLS_SUPPORTED: st.sampled_from(TlsSupported),
    OptionType.TLS_CLIENT_CERT_REQUIRED: st.booleans(),
    OptionType.SUPPORTED_MESSAGES: u16_arrays,
    OptionType.SUPPORTED_OPTIONS: u16_arrays,
    OptionType.REPLY_ERROR_CODE: u16,
    OptionType.SERVER_MAXIMUM_REQUEST_SIZE: u32,
    OptionType.SERVER_MAXIMUM_REPLY_SIZE: u32,
    OptionType.NODE_ID: u32,
    OptionType.SUPPORTED_DECISION_ALGORITHMS: u16_arrays,
    OptionType.DECISION_ALGORITHM: u16,
    OptionType.HEARTBEAT_INTERVAL: u32,
    OptionType.RING_ID: ring_ids,
    OptionType.CONFIG_VERSION: u64,
    OptionType.DATA_CENTER_ID: u32,
    OptionType.NODE_STATE: st.sampled_from(NodeState),
    OptionType.NODE_LIST_TYPE: st.sampled_from(NodeListType),
    OptionType.VOTE: st.sampled_from(Vote),
    OptionType.QUORATE: st.booleans(),
    OptionType.TIE_BREAKER: tie_breakers,
    OptionType.HEURISTICS: st.sampled_from(Heuristics),
    OptionType.KEEP_ACTIVE_PARTITION_TIE_BREAKER: st.booleans(),
}


def qnetd_message_of(cls: type[QnetdMessage]) -> st.SearchStrategy[QnetdMessage]:
    """Any message of one class: every TLV present or absent, node lists of any length."""
    kwargs: dict[str, st.SearchStrategy[Any]] = {}
    for attr, option in cls.FIELDS:
        if option is OptionType.NODE_INFO:
            kwargs[attr] = st.lists(node_infos, max_size=20).map(tuple)
        else:
            kwargs[attr] = st.none() | OPTION_VALUES[option]
    return st.builds(cls, **kwargs)


def _nonempty(msg: QnetdMessage) -> bool:
    return any(getattr(msg, a) not in (None, ()) for a, _ in msg.FIELDS)


qnetd_messages = st.sampled_from(list(MESSAGE_CLASSES.values())).flatmap(qnetd_message_of)
# Messages the real peers can send: at least one TLV (an empty payload is a decode error).
wire_messages = qnetd_messages.filter(_nonempty)


def tagged_value(
    annotation: Any, bounds: tuple[int, int] | None = None, max_items: int = 12
) -> st.SearchStrategy[Any]:
    """Values of a tagged_map annotation within its documented limits (a field's `bounds`)."""
    scalars: dict[Any, st.SearchStrategy[Any]] = {
        int: u64 if bounds is None else st.integers(*bounds),
        bool: st.booleans(),
        str: st.text(max_size=60),
        bytes: st.binary(max_size=100)
        if bounds is None
        else st.binary(min_size=bounds[0], max_size=max(bounds[0], min(bounds[1], 100))),
    }
    if annotation in scalars:
        return scalars[annotation]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (types.UnionType, typing.Union):
        inner = next(a for a in args if a is not type(None))
        return st.none() | tagged_value(inner, bounds, max_items)
    if origin is tuple:
        items = st.lists(tagged_value(args[0], bounds), max_size=min(12, max_items))
        return items.map(tuple)
    return tagged_dataclass(annotation)


def tagged_dataclass(cls: type[Any]) -> st.SearchStrategy[Any]:
    """Any valid instance of a tagged dataclass (every field within its declared bounds; a
    mesh `View` sorted, distinct, with its lowest member as representative)."""
    if cls is View:
        ids = st.lists(st.integers(*NODE_IDS), min_size=1, max_size=12, unique=True)
        return st.builds(lambda m, s: View(min(m), s, tuple(sorted(m))), ids, st.integers(*SEQS))
    hints = typing.get_type_hints(cls)
    fields = {}
    for f in dataclasses.fields(cls):
        bounds, items = field_limits(cls, f.name)
        fields[f.name] = tagged_value(hints[f.name], bounds, items)
    return st.builds(cls, **fields)
