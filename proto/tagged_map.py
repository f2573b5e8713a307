"""Compact, versionable payloads: frozen dataclasses as msgpack maps keyed by small integer tags.

A field declares its tag with `tagged(n)`. Encoding writes `{tag: value}` and leaves out fields
equal to their default; decoding ignores unknown tags (a newer sender's additions), fills missing
ones with their default, and checks every value's type and range against the annotation, so a
well-authenticated but malformed payload still raises `DecodeError("bad_payload")`.

Supported annotations: int (unsigned, < 2**64), bool, str (<= 255 chars), bytes (<= 4096),
nested tagged dataclasses, `tuple[X, ...]` of those (<= 1024 items) and `X | None`. A field may
narrow an int (or each int of a tuple) to `bounds=(low, high)`, a bytes field's length the same
way, and a tuple to `max_items`; a value
outside raises `DecodeError("bad_value")` at decode, so a peer holding the key cannot smuggle a
value the rest of the code was not written for (docs/design.md §1.4, the bounds table).
No clock, sockets or logging.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import msgpack

from proto.errors import DecodeError, LocalProtocolError

MAX_ITEMS = 1024
MAX_STR = 255
MAX_BYTES = 4096
MAX_UINT = 2**64
T = TypeVar("T")
Check = Callable[[Any], Any]


def tagged(
    tag: int,
    default: Any = dataclasses.MISSING,
    *,
    bounds: tuple[int, int] | None = None,
    max_items: int = MAX_ITEMS,
) -> Any:
    """A dataclass field carried under integer `tag` (tags are append-only, never reused).

    `bounds=(low, high)`: an int field (or every int of a tuple field) must lie in [low, high],
    a bytes field's length too;
    `max_items`: a tuple field holds at most that many items. Both are checked at decode."""
    if isinstance(default, list | dict | set):
        raise LocalProtocolError("use tuples (immutable) for defaults")
    if bounds is not None and not 0 <= bounds[0] <= bounds[1] < MAX_UINT:
        raise LocalProtocolError(f"bounds {bounds} do not fit an unsigned 64-bit int")
    metadata = {"tag": tag, "bounds": bounds, "max_items": min(max_items, MAX_ITEMS)}
    return dataclasses.field(default=default, metadata=metadata)


def field_limits(cls: type, name: str) -> tuple[tuple[int, int] | None, int]:
    """(bounds, max_items) declared for one field (property-test strategies read them)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.metadata.get("bounds"), f.metadata.get("max_items", MAX_ITEMS)
    raise LocalProtocolError(f"{cls.__name__} has no field {name}")


def _bounded(check: Check, what: str, low: int, high: int) -> Check:
    def bounded(value: Any) -> Any:
        result = check(value)
        if result is not None and not low <= result <= high:
            raise DecodeError("bad_value", f"{what} = {result} outside [{low}, {high}]")
        return result

    return bounded


def _bounded_tuple(check: Check, what: str, low: int, high: int, items: int) -> Check:
    def bounded(value: Any) -> Any:
        result = check(value)
        if len(result) > items:
            raise DecodeError("bad_value", f"{what}: {len(result)} items, at most {items}")
        if result and type(result[0]) is int and not (low <= min(result) and max(result) <= high):
            raise DecodeError("bad_value", f"{what}: an item outside [{low}, {high}]")
        return result

    return bounded


def _bounded_len(check: Check, what: str, low: int, high: int) -> Check:
    def bounded(value: Any) -> Any:
        result = check(value)
        if not low <= len(result) <= high:
            raise DecodeError("bad_value", f"{what}: {len(result)} bytes, not {low}..{high}")
        return result

    return bounded


def _bad(what: str, value: Any) -> DecodeError:
    return DecodeError("bad_payload", f"{what}: unexpected {type(value).__name__}")


def _check_int(value: Any) -> int:
    if type(value) is not int or not 0 <= value < MAX_UINT:  # bool is not int here
        raise _bad("int", value)
    return value


def _check_int_tuple(value: Any) -> tuple[int, ...]:
    """Fast path for node sets, the bulk of a heartbeat: one pass in C builtins."""
    if type(value) is not list or len(value) > MAX_ITEMS:
        raise _bad("list", value)
    if value and not (
        all(type(x) is int for x in value) and min(value) >= 0 and max(value) < MAX_UINT
    ):
        raise _bad("list of int", value)
    return tuple(value)


def _check_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _bad("bool", value)
    return value


def _check_str(value: Any) -> str:
    if not isinstance(value, str) or len(value) > MAX_STR:
        raise _bad("str", value)
    return value


def _check_bytes(value: Any) -> bytes:
    if not isinstance(value, bytes) or len(value) > MAX_BYTES:
        raise _bad("bytes", value)
    return value


_SCALARS: dict[Any, Check] = {
    int: _check_int,
    bool: _check_bool,
    str: _check_str,
    bytes: _check_bytes,
}


def _checker(annotation: Any) -> Check:
    """A function validating (and converting) one decoded value against its annotation."""
    if annotation in _SCALARS:
        return _SCALARS[annotation]
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (types.UnionType, typing.Union) and len(args) == 2 and type(None) in args:
        inner = _checker(next(a for a in args if a is not type(None)))
        return lambda v: None if v is None else inner(v)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        if args[0] is int:
            return _check_int_tuple
        item = _checker(args[0])

        def check_tuple(v: Any) -> tuple[Any, ...]:
            if not isinstance(v, list | tuple) or len(v) > MAX_ITEMS:
                raise _bad("list", v)
            return tuple(item(x) for x in v)

        return check_tuple
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        cls: type[Any] = annotation
        return lambda v: _from_map(cls, v)
    raise LocalProtocolError(f"tagged_map cannot carry {annotation!r}")


_SCHEMAS: dict[type, tuple[tuple[int, str, Check, Any], ...]] = {}


def _schema(cls: type) -> tuple[tuple[int, str, Check, Any], ...]:
    """(tag, name, checker, default) per field; built once per class."""
    schema = _SCHEMAS.get(cls)
    if schema is None:
        hints = typing.get_type_hints(cls)
        rows = []
        for f in dataclasses.fields(cls):
            if "tag" not in f.metadata:
                raise LocalProtocolError(f"{cls.__name__}.{f.name} has no tag")
            check = _checker(hints[f.name])
            low, high = f.metadata.get("bounds") or (0, MAX_UINT - 1)
            items = f.metadata.get("max_items", MAX_ITEMS)
            what = f"{cls.__name__}.{f.name}"
            if typing.get_origin(hints[f.name]) is tuple:
                check = _bounded_tuple(check, what, low, high, items)
            elif hints[f.name] is bytes and f.metadata.get("bounds") is not None:
                check = _bounded_len(check, what, low, high)
            elif f.metadata.get("bounds") is not None:
                check = _bounded(check, what, low, high)
            rows.append((f.metadata["tag"], f.name, check, f.default))
        tags = [r[0] for r in rows]
        if len(set(tags)) != len(tags):
            raise LocalProtocolError(f"{cls.__name__} reuses a tag")
        schema = _SCHEMAS[cls] = tuple(rows)
    return schema


def _to_map(obj: Any) -> dict[int, Any]:
    out: dict[int, Any] = {}
    for tag, name, _check, default in _schema(type(obj)):
        value = getattr(obj, name)
        if value is None or value == default:
            continue
        out[tag] = _to_plain(value)
    return out


def _to_plain(value: Any) -> Any:
    kind = type(value)
    if kind is tuple:
        if value and type(value[0]) in _SCALARS:
            return value  # msgpack packs a tuple of scalars as an array as it is
        return [_to_plain(v) for v in value]
    if kind in _SCALARS:
        return value
    return _to_map(value)


def _from_map(cls: type[T], data: Any) -> T:
    if not isinstance(data, dict):
        raise _bad(cls.__name__, data)
    values: dict[str, Any] = {}
    for tag, name, check, default in _schema(cls):
        if tag in data:
            values[name] = check(data[tag])
        elif default is dataclasses.MISSING:
            raise DecodeError("bad_payload", f"{cls.__name__}: field {name} missing")
    return cls(**values)


def pack(obj: Any) -> bytes:
    """msgpack bytes of a tagged dataclass."""
    try:
        return msgpack.packb(_to_map(obj), use_bin_type=True)  # type: ignore[no-any-return]
    except (TypeError, OverflowError, ValueError) as exc:
        raise LocalProtocolError(f"cannot pack {obj!r}: {exc}") from exc


def unpack(cls: type[T], data: bytes) -> T:
    """A tagged dataclass from msgpack bytes; DecodeError('bad_payload') for anything else."""
    try:
        plain = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=False,
            max_str_len=MAX_STR * 4,
            max_bin_len=MAX_BYTES,
            max_array_len=MAX_ITEMS,
            max_map_len=MAX_ITEMS,
            max_ext_len=0,
        )
    except (ValueError, TypeError, OverflowError, msgpack.UnpackException) as exc:
        raise DecodeError("bad_payload", f"not msgpack: {exc}") from None
    return _from_map(cls, plain)
