"""Partitions (grudges) and the requested network: shapes -> directed cuts, rules -> a Matrix.

Owns the lab's idea of the network it asked for (design §4.3, §4.4): `Rule` (from, to,
direction, impairment), `Matrix` (hosts, blocks, rules, generation) with the field-by-field
overlay of rules in the order given, and `blocks_for`, which turns a partition shape into the set
of directed pairs (s, d) where d drops what s sends. Pure: the run's `random.Random` is passed
in; nothing here touches the switch (the switch receives `Matrix.to_request()`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from votemesh_lab.netem import NO_IMPAIRMENT, Impairment

Pair = tuple[str, str]
Shape = Callable[[list[str], random.Random, Mapping[str, Any]], frozenset[Pair]]


class GrudgeError(ValueError):
    """A shape or rule that names something the lab does not have; one line."""


@dataclass(frozen=True)
class Rule:
    """Impair frames from `src` to `dst` (None = every host); both ways unless `one_way`."""

    src: frozenset[str] | None
    dst: frozenset[str] | None
    one_way: bool
    impairment: Impairment

    def matches(self, src: str, dst: str) -> bool:
        """Does this rule apply to frames src -> dst?"""
        forward = _member(src, self.src) and _member(dst, self.dst)
        backward = not self.one_way and _member(dst, self.src) and _member(src, self.dst)
        return forward or backward

    def scoped_to(self, src: frozenset[str] | None, dst: frozenset[str] | None) -> bool:
        """Was this rule given for exactly these host sets (either order when two-way)?"""
        return (self.src, self.dst) == (src, dst) or (
            not self.one_way and (self.src, self.dst) == (dst, src)
        )


def _member(host: str, hosts: frozenset[str] | None) -> bool:
    return hosts is None or host in hosts


@dataclass(frozen=True)
class Matrix:
    """The whole network the lab asks for; every change makes a new one, generation + 1."""

    hosts: tuple[str, ...]
    blocks: frozenset[Pair] = frozenset()
    rules: tuple[Rule, ...] = ()
    generation: int = 0

    def effective(self, src: str, dst: str) -> Impairment:
        """The overlay, in order, of every rule matching src -> dst."""
        result = NO_IMPAIRMENT
        for rule in self.rules:
            if rule.matches(src, dst):
                result = result.overlay(rule.impairment)
        return result

    def default(self) -> Impairment:
        """The overlay of the all-hosts rules: what a pair no narrower rule names gets."""
        result = NO_IMPAIRMENT
        for rule in self.rules:
            if rule.src is None and rule.dst is None:
                result = result.overlay(rule.impairment)
        return result

    def pairs(self) -> list[Pair]:
        """Every ordered pair of distinct hosts."""
        return [(s, d) for s in self.hosts for d in self.hosts if s != d]

    def _next(self, **changes: Any) -> Matrix:
        return replace(self, generation=self.generation + 1, **changes)

    def with_blocks(self, blocks: Iterable[Pair]) -> Matrix:
        """These blocks instead of the current ones; shaping kept."""
        chosen = frozenset(blocks)
        unknown = {h for pair in chosen for h in pair} - set(self.hosts)
        if unknown:
            raise GrudgeError(
                f"no such host(s) {', '.join(sorted(unknown))}: have {', '.join(self.hosts)}"
            )
        if any(s == d for s, d in chosen):
            raise GrudgeError("a host cannot block itself")
        return self._next(blocks=chosen)

    def heal(self) -> Matrix:
        """No block; shaping kept."""
        return self._next(blocks=frozenset())

    def shape(self, rule: Rule) -> Matrix:
        """One more rule, applied after the earlier ones."""
        named = (rule.src or frozenset()) | (rule.dst or frozenset())
        unknown = named - set(self.hosts)
        if unknown:
            raise GrudgeError(
                f"no such host(s) {', '.join(sorted(unknown))}: have {', '.join(self.hosts)}"
            )
        return self._next(rules=(*self.rules, rule))

    def unshape(
        self, src: frozenset[str] | None = None, dst: frozenset[str] | None = None
    ) -> Matrix:
        """Remove the rules given for exactly these hosts; with neither, every rule."""
        if src is None and dst is None:
            return self._next(rules=())
        return self._next(rules=tuple(r for r in self.rules if not r.scoped_to(src, dst)))

    def to_request(self) -> dict[str, Any]:
        """The switch's one control request carrying this whole matrix (design §4.3)."""
        default = self.default()
        pairs = {}
        for s, d in self.pairs():
            effective = self.effective(s, d)
            if effective != default:
                pairs[f"{s}>{d}"] = effective.to_dict()
        return {
            "op": "apply",
            "generation": self.generation,
            "blocks": sorted([s, d] for s, d in self.blocks),
            "pairs": pairs,
            "default": default.to_dict(),
        }


# -- partition shapes (design §4.4) -----------------------------------------------------------


def node_name(value: object) -> str:
    """1 -> "n1"; names stay names."""
    if isinstance(value, int) and not isinstance(value, bool):
        return f"n{value}"
    if isinstance(value, str) and value:
        return f"n{value}" if value.isdigit() else value
    raise GrudgeError(f"{value!r} is not a node number or host name")


def between(groups: Sequence[Iterable[str]]) -> frozenset[Pair]:
    """Both ways between every two groups; hosts in no group are untouched."""
    sets = [list(g) for g in groups]
    return frozenset(
        pair
        for i, a in enumerate(sets)
        for b in sets[i + 1 :]
        for x in a
        for y in b
        for pair in ((x, y), (y, x))
    )


def _names(values: object, what: str) -> list[str]:
    if not isinstance(values, list | tuple | set | frozenset):
        raise GrudgeError(f"{what}: give a list of nodes, e.g. [1, 2]")
    return [node_name(v) for v in values]


def _groups(_nodes: list[str], _rng: random.Random, params: Mapping[str, Any]) -> frozenset[Pair]:
    groups = params.get("groups")
    if not isinstance(groups, list | tuple) or len(groups) < 2:
        raise GrudgeError("groups: give at least two groups, e.g. groups = [[1, 2], [3, 4, 5]]")
    named = [_names(g, "groups") for g in groups]
    flat = [h for g in named for h in g]
    if len(flat) != len(set(flat)):
        raise GrudgeError("groups: a node is in two groups")
    return between(named)


def _one(nodes: list[str], rng: random.Random, params: Mapping[str, Any]) -> frozenset[Pair]:
    node = node_name(params["node"]) if params.get("node") is not None else rng.choice(nodes)
    return between([[node], [n for n in nodes if n != node]])


def _split(size: Callable[[int], int]) -> Shape:
    def shape(nodes: list[str], rng: random.Random, _params: Mapping[str, Any]) -> frozenset[Pair]:
        drawn = rng.sample(nodes, len(nodes))
        k = size(len(nodes))
        return between([drawn[:k], drawn[k:]])

    return shape


def ring_views(nodes: Sequence[str], rng: random.Random) -> dict[str, frozenset[str]]:
    """Each node's majority in a drawn ring: itself and its nearest neighbours (Jepsen)."""
    ring = rng.sample(list(nodes), len(nodes))
    n, majority = len(ring), len(ring) // 2 + 1
    low = (majority - 1) // 2
    return {
        ring[i]: frozenset(ring[(i + k) % n] for k in range(-low, majority - low)) for i in range(n)
    }


def _majorities_ring(
    nodes: list[str], rng: random.Random, _params: Mapping[str, Any]
) -> frozenset[Pair]:
    views = ring_views(nodes, rng)
    return frozenset((s, d) for d, view in views.items() for s in nodes if s not in view)


def _bridge(nodes: list[str], rng: random.Random, _params: Mapping[str, Any]) -> frozenset[Pair]:
    drawn = rng.sample(nodes, len(nodes))
    half = (len(drawn) - 1) // 2
    return between([drawn[:half], drawn[half + 1 :]])  # drawn[half] is the bridge


def _cut(_nodes: list[str], _rng: random.Random, params: Mapping[str, Any]) -> frozenset[Pair]:
    sources = _names(params.get("from", params.get("src")), "cut.from")
    targets = _names(params.get("to", params.get("dst")), "cut.to")
    return frozenset((s, d) for s in sources for d in targets if s != d)


def _explicit(_nodes: list[str], _rng: random.Random, params: Mapping[str, Any]) -> frozenset[Pair]:
    grudge = params.get("grudge")
    if not isinstance(grudge, Mapping):
        raise GrudgeError("grudge: give {dst = [src, ...]}, e.g. grudge = {2 = [1], 3 = [1, 2]}")
    return frozenset(
        (s, node_name(d)) for d, srcs in grudge.items() for s in _names(srcs, f"grudge.{d}")
    )


SHAPES: dict[str, Shape] = {
    "groups": _groups,
    "one": _one,
    "majority": _split(lambda n: n // 2 + 1),
    "minority-third": _split(lambda n: max(1, n // 3)),
    "halves": _split(lambda n: n // 2),
    "majorities-ring": _majorities_ring,
    "bridge": _bridge,
    "cut": _cut,
    "grudge": _explicit,
}


def blocks_for(
    shape: str, nodes: Sequence[str], rng: random.Random, **params: Any
) -> frozenset[Pair]:
    """The directed blocks (s, d: d drops what s sends) of a partition shape over `nodes`."""
    maker = SHAPES.get(shape)
    if maker is None:
        raise GrudgeError(f"unknown partition shape {shape!r}: use one of {', '.join(SHAPES)}")
    if len(nodes) < 2:
        raise GrudgeError(f"{shape}: needs at least two nodes")
    return maker(list(nodes), rng, params)
