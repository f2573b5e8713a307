"""Compact, versionable payloads: frozen dataclasses as msgpack maps keyed by small integer tags.

A field declares its tag with `tagged(n)`. Encoding writes `{tag: value}` and leaves out fields
equal to their default; decoding ignores unknown tags (a newer sender's additions), fills missing
ones with their default, and checks every value's type and range against the annotation, so a
well-authenticated but malformed payload still raises `DecodeError("bad_payload")`. Each class
gets a decoder generated once (ints and bools checked inline); lists of ints are checked with C
builtins (the set of item types, min, max, len), so a heartbeat's decode takes no Python step
per node id (docs/design.md §1.4, §3.14).

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
from collections.abc import Callable, Mapping
from itertools import repeat
from typing import Any, TypeVar

import msgpack

from proto.errors import DecodeError, LocalProtocolError

MAX_ITEMS = 1024
MAX_STR = 255
MAX_BYTES = 4096
MAX_UINT = 2**64
COLUMNS_FROM = 8
"""Items from which a list of int-only maps is checked column by column (fewer: map by map,
which costs less for the one echo a heartbeat carries on the wire)."""
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


class _Absent:
    """Marks a tag missing from a decoded map (None is a value: an optional field's)."""


_ABSENT: Any = _Absent()
_INT = frozenset({int})
_DICT = frozenset({dict})


def _bad(what: str, value: Any) -> DecodeError:
    return DecodeError("bad_payload", f"{what}: unexpected {type(value).__name__}")


def _outside(what: str, value: int, low: int, high: int) -> DecodeError:
    return DecodeError("bad_value", f"{what} = {value} outside [{low}, {high}]")


def _ints(values: list[Any], what: str, low: int, high: int) -> None:
    """Every item an int (bool is not) in [low, high]: C builtins only (set, map, min, max), no
    Python step per item. bad_payload for a wrong type or a negative int, bad_value for one
    outside the field's bounds."""
    if not values:
        return
    if not _INT.issuperset(map(type, values)):
        raise _bad(f"{what} item", next(v for v in values if type(v) is not int))
    smallest, largest = min(values), max(values)
    if smallest < 0 or largest >= MAX_UINT:
        raise DecodeError("bad_payload", f"{what}: an item is not an unsigned 64-bit int")
    if smallest < low or largest > high:
        raise DecodeError("bad_value", f"{what}: an item outside [{low}, {high}]")


def _check_int(what: str, low: int, high: int) -> Check:
    def check(value: Any) -> int:
        if type(value) is not int or not 0 <= value < MAX_UINT:  # bool is not int here
            raise _bad(what, value)
        if not low <= value <= high:
            raise _outside(what, value, low, high)
        return value

    return check


def _check_bool(what: str) -> Check:
    def check(value: Any) -> bool:
        if type(value) is not bool:
            raise _bad(what, value)
        return value

    return check


def _check_str(what: str) -> Check:
    def check(value: Any) -> str:
        if type(value) is not str or len(value) > MAX_STR:
            raise _bad(what, value)
        return value

    return check


def _check_bytes(what: str, bounds: tuple[int, int] | None) -> Check:
    low, high = bounds or (0, MAX_BYTES)

    def check(value: Any) -> bytes:
        if type(value) is not bytes or len(value) > MAX_BYTES:
            raise _bad(what, value)
        if not low <= len(value) <= high:
            raise DecodeError("bad_value", f"{what}: {len(value)} bytes, not {low}..{high}")
        return value

    return check


def _list_of(what: str, items: int, value: Any) -> list[Any]:
    """A decoded array of at most MAX_ITEMS (bad_payload) and `items` (bad_value) entries."""
    if type(value) is not list or len(value) > MAX_ITEMS:
        raise _bad(what, value)
    if len(value) > items:
        raise DecodeError("bad_value", f"{what}: {len(value)} items, at most {items}")
    return value


def _check_int_tuple(what: str, low: int, high: int, items: int) -> Check:
    """Node sets, the bulk of a heartbeat: checked in C builtins, O(1) Python steps."""

    last: list[Any] = [_ABSENT, ()]  # the last list that passed, and its tuple

    def check(value: Any) -> tuple[int, ...]:
        # Every node sends the same view: a list equal to the last one that passed, and of
        # ints only (True == 1, so the types are checked), is that one again.
        if value == last[0] and _INT.issuperset(map(type, value)):
            same: tuple[int, ...] = last[1]
            return same
        _ints(_list_of(what, items, value), what, low, high)
        last[0], last[1] = value, tuple(value)
        return last[1]  # type: ignore[no-any-return]

    return check


def _columns(cls: type) -> tuple[tuple[int, Any, str, int, int], ...] | None:
    """(tag, default, name, low, high) per field when every field of `cls` is a plain int (Echo):
    a list of them is then checked column by column in C; None otherwise."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if hints[f.name] is not int:
            return None
        low, high = f.metadata.get("bounds") or (0, MAX_UINT - 1)
        default = _ABSENT if f.default is dataclasses.MISSING else f.default
        rows.append((f.metadata["tag"], default, f"{cls.__name__}.{f.name}", low, high))
    return tuple(rows)


def _check_object_tuple(what: str, item: type, items: int) -> Check:
    """A list of nested maps. Maps of ints only (echoes) go column by column: each field's
    values fetched with `map(dict.get, ...)` and checked by `_ints`, the objects built by one
    `map(cls, *columns)`; short lists and any other item type map by map."""
    columns = _columns(item)
    decode_item: Check = _decoder(item)
    make: Callable[..., Any] = frozen_constructor(item)

    def check(value: Any) -> tuple[Any, ...]:
        value = _list_of(what, items, value)
        if columns is None or len(value) < COLUMNS_FROM:
            return tuple(map(decode_item, value))
        if not _DICT.issuperset(map(type, value)):
            raise _bad(item.__name__, next(v for v in value if type(v) is not dict))
        cols = []
        for tag, default, name, low, high in columns:
            col = list(map(dict.get, value, repeat(tag, len(value)), repeat(default)))
            if default is _ABSENT and _ABSENT in col:
                raise DecodeError("bad_payload", f"{name} missing")
            _ints(col, name, low, high)
            cols.append(col)
        return tuple(map(make, *cols))

    return check


def _int_fields_only(cls: type) -> bool:
    """Every field an int or a tuple of ints (View, ExpectedSetWire)."""
    hints = typing.get_type_hints(cls)
    return all(hints[f.name] in (int, tuple[int, ...]) for f in dataclasses.fields(cls))


def _ints_only(data: Any) -> bool:
    """A map whose values are all ints or lists of ints (bool and float are neither)."""
    for value in data.values():
        kind = type(value)
        if kind is list:
            if not _INT.issuperset(map(type, value)):
                return False
        elif kind is not int:
            return False
    return True


def _last_equal(decode: Check) -> Check:
    """`decode` for a map of ints and int lists, which gives the object it gave last time for a
    map equal to that one and of ints only (every node sends the same view): equal ints of the
    same type decode alike, so the checks that passed then pass again."""
    last: list[Any] = [_ABSENT, None]  # the last map decoded, and its object

    def check(value: Any) -> Any:
        if value == last[0] and _ints_only(value):
            return last[1]
        obj = decode(value)
        last[0], last[1] = value, obj
        return obj

    return check


def _optional(check: Check) -> Check:
    return lambda value: None if value is None else check(value)


def _checker(annotation: Any, what: str, meta: Mapping[str, Any]) -> Check:
    """A function validating (and converting) one decoded value against its annotation and
    the field's declared bounds and max_items."""
    bounds = meta.get("bounds")
    low, high = bounds or (0, MAX_UINT - 1)
    items = meta.get("max_items", MAX_ITEMS)
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    scalar = {
        int: lambda: _check_int(what, low, high),
        bool: lambda: _check_bool(what),
        str: lambda: _check_str(what),
        bytes: lambda: _check_bytes(what, bounds),
    }.get(annotation)
    if scalar is not None:
        return scalar()
    if origin in (types.UnionType, typing.Union) and len(args) == 2 and type(None) in args:
        inner = next(a for a in args if a is not type(None))
        return _optional(_checker(inner, what, meta))
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        if args[0] is int:
            return _check_int_tuple(what, low, high, items)
        if isinstance(args[0], type) and dataclasses.is_dataclass(args[0]):
            return _check_object_tuple(what, args[0], items)
        item = _checker(args[0], f"{what} item", {})
        return lambda value: tuple(map(item, _list_of(what, items, value)))
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        decode = _decoder(annotation)
        return _last_equal(decode) if _int_fields_only(annotation) else decode
    raise LocalProtocolError(f"tagged_map cannot carry {annotation!r}")


_SCHEMAS: dict[type, tuple[tuple[int, str, Check, Any], ...]] = {}
_DECODERS: dict[type, Callable[[Any], Any]] = {}


def _slot_setters(cls: type) -> list[Callable[[Any, Any], None]] | None:
    """Each field's slot setter, in field order, when `cls` is a frozen slotted dataclass built
    by its generated `__init__` alone (no `__post_init__`, every field an init field): an
    object made by `object.__new__` and these setters equals `cls(*values)` (design §3.14, the
    frozen `__init__` costs a `object.__setattr__` per field: 2.6 us for a Heartbeat). None for
    any other class: it is built by calling it."""
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or not params.init or hasattr(cls, "__post_init__"):
        return None  # not a frozen dataclass built by its generated __init__ alone
    if len(cls.__dataclass_fields__) != len(dataclasses.fields(cls)):  # type: ignore[attr-defined]
        return None  # an InitVar or ClassVar pseudo-field: __init__ does more than set fields
    init = cls.__dict__.get("__init__")
    if getattr(getattr(init, "__code__", None), "co_filename", None) != "<string>":
        return None  # an __init__ of its own (dataclass keeps it): it must run
    setters = []
    for f in dataclasses.fields(cls):
        slot = cls.__dict__.get(f.name)
        if not f.init or type(slot) is not types.MemberDescriptorType:
            return None
        setters.append(slot.__set__)
    return setters


def _build_lines(
    setters: list[Callable[[Any, Any], None]] | None, names: list[str], env: dict[str, Any]
) -> list[str]:
    """Source lines (one indent) returning `env["cls"]` built from the variables `names`, in
    field order: by `setters` (`_slot_setters` of it, put in `env`), else (None) by calling it."""
    if setters is None:
        return [f"    return cls({', '.join(names)})"]
    env["new"] = object.__new__
    lines = ["    o = new(cls)"]
    for i, (setter, var) in enumerate(zip(setters, names, strict=True)):
        env[f"s{i}"] = setter
        lines.append(f"    s{i}(o, {var})")
    return [*lines, "    return o"]


def frozen_constructor(cls: type[T]) -> Callable[..., T]:
    """A function taking `cls`'s fields positionally (all of them) and returning what
    `cls(*values)` returns, without the frozen `__init__`'s `object.__setattr__` per field where
    `_slot_setters` allows; `cls` itself otherwise. For hot paths (a datagram's `MessageIn`)."""
    setters = _slot_setters(cls)
    if setters is None:
        return cls
    env: dict[str, Any] = {"cls": cls}
    names = [f"v{i}" for i in range(len(setters))]
    lines = [f"def make({', '.join(names)}):", *_build_lines(setters, names, env)]
    exec("\n".join(lines), env)  # noqa: S102 (source built here from the class's fields)
    make: Callable[..., T] = env["make"]
    return make


def _schema(cls: type) -> tuple[tuple[int, str, Check, Any], ...]:
    """(tag, name, checker, default) per field; built once per class."""
    schema = _SCHEMAS.get(cls)
    if schema is None:
        hints = typing.get_type_hints(cls)
        rows = []
        for f in dataclasses.fields(cls):
            if "tag" not in f.metadata:
                raise LocalProtocolError(f"{cls.__name__}.{f.name} has no tag")
            check = _checker(hints[f.name], f"{cls.__name__}.{f.name}", f.metadata)
            rows.append((f.metadata["tag"], f.name, check, f.default))
        tags = [r[0] for r in rows]
        if len(set(tags)) != len(tags):
            raise LocalProtocolError(f"{cls.__name__} reuses a tag")
        schema = _SCHEMAS[cls] = tuple(rows)
    return schema


def _decoder(cls: type[T]) -> Callable[[Any], T]:
    """The decoder of one class, generated once: a map's fields in declaration order, ints and
    bools checked inline (a function call per field was most of a heartbeat's decode), other
    fields by their checker, a missing field given its default, the object built with
    positional arguments or, for a frozen slotted class, by its slot setters (`_slot_setters`)."""
    decode = _DECODERS.get(cls)
    if decode is None:
        hints = typing.get_type_hints(cls)
        env: dict[str, Any] = {"cls": cls, "A": _ABSENT, "bad": _bad, "oob": _outside}
        env["DecodeError"] = DecodeError
        lines = [
            "def decode(data):",
            "    if type(data) is not dict:",
            "        raise bad(cls.__name__, data)",
            "    get = data.get",
        ]
        names = []
        for i, (f, (tag, name, check, default)) in enumerate(
            zip(dataclasses.fields(cls), _schema(cls), strict=True)  # type: ignore[arg-type]
        ):
            var, what = f"v{i}", f"{cls.__name__}.{name}"
            env[f"c{i}"], env[f"d{i}"], env[f"w{i}"] = check, default, what
            lines.append(f"    {var} = get({tag}, A)")
            lines.append(f"    if {var} is A:")
            if default is dataclasses.MISSING:
                lines.append(f"        raise DecodeError('bad_payload', w{i} + ' missing')")
            else:
                lines.append(f"        {var} = d{i}")
            lines.extend(_inline_check(var, i, hints[name], f.metadata))
            names.append(var)
        lines.extend(_build_lines(_slot_setters(cls), names, env))
        exec("\n".join(lines), env)  # noqa: S102 (source built here from the class's schema)
        decode = _DECODERS[cls] = env["decode"]
    return decode


def _inline_check(var: str, i: int, annotation: Any, meta: Mapping[str, Any]) -> list[str]:
    """Source lines checking a present value `var` (field i): ints and bools inline, anything
    else through its checker `c{i}`; the same errors as the checkers raise."""
    if annotation is int:
        low, high = meta.get("bounds") or (0, MAX_UINT - 1)
        return [
            f"    elif type({var}) is not int or {var} < 0 or {var} >= {MAX_UINT}:",
            f"        raise bad(w{i}, {var})",
            f"    elif {var} < {low} or {var} > {high}:",
            f"        raise oob(w{i}, {var}, {low}, {high})",
        ]
    if annotation is bool:
        return [f"    elif type({var}) is not bool:", f"        raise bad(w{i}, {var})"]
    return ["    else:", f"        {var} = c{i}({var})"]


def _to_map(obj: Any, skip: int | None = None) -> dict[int, Any]:
    out: dict[int, Any] = {}
    for tag, name, _check, default in _schema(type(obj)):
        if tag == skip:
            continue
        value = getattr(obj, name)
        if value is None or value == default:
            continue
        out[tag] = _to_plain(value)
    return out


def _to_plain(value: Any) -> Any:
    kind = type(value)
    if kind is tuple:
        if value and type(value[0]) in _PLAIN:
            return value  # msgpack packs a tuple of scalars as an array as it is
        return [_to_plain(v) for v in value]
    if kind in _PLAIN:
        return value
    return _to_map(value)


_PLAIN = frozenset({int, bool, str, bytes})


def pack(obj: Any) -> bytes:
    """msgpack bytes of a tagged dataclass."""
    return _pack_plain(_to_map(obj))


class PackedApart:
    """A tagged object packed once but for one field, which `with_value` fills in per copy:
    the common part is packed once (a round's heartbeat), each copy costs a few bytes
    (the one echo of the peer it goes to). Decodes as the object with that field replaced."""

    def __init__(self, obj: Any, name: str) -> None:
        rows = [row for row in _schema(type(obj)) if row[1] == name]
        if not rows:
            raise LocalProtocolError(f"{type(obj).__name__} has no field {name}")
        self._tag, self._default = rows[0][0], rows[0][3]
        plain = _to_map(obj, skip=self._tag)  # that field is not converted only to be dropped
        count = len(plain)
        packed = _pack_plain(plain)
        self._without = packed
        self._with = _map_header(count + 1) + packed[len(_map_header(count)) :]
        self._with += _pack_plain(self._tag)

    def with_value(self, value: Any) -> bytes:
        """msgpack bytes of the object with the field set to `value`."""
        if value is None or value == self._default:
            return self._without
        return self._with + _pack_plain(_to_plain(value))

    def with_packed(self, packed: bytes) -> bytes:
        """The same with the field's value given as msgpack bytes (the caller packed it)."""
        return self._with + packed


def _map_header(count: int) -> bytes:
    return b"%c" % (0x80 | count) if count < 16 else b"\xde" + count.to_bytes(2, "big")


def _pack_plain(plain: Any) -> bytes:
    """msgpack bytes of plain values (what `_to_map` makes)."""
    try:
        return msgpack.packb(plain, use_bin_type=True)  # type: ignore[no-any-return]
    except (TypeError, OverflowError, ValueError) as exc:
        raise LocalProtocolError(f"cannot pack {plain!r}: {exc}") from exc


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
    return _decoder(cls)(plain)
