"""Deterministic maximum cliques of the mutual-hearing graph.

Owns the graph search behind membership: which fully connected group of nodes is "best". Pure
functions over node ids; no clock, I/O or logging, no randomness, no state.

Ranking: a clique outranks another when it is larger, or equally large with a smaller sorted id
tuple. `rank_key` is that order; every choice here is the first clique in it, so two callers with
the same graph always get the same answer.

The search runs in two steps over bitsets. First the size of the largest clique, by branch and
bound with the greedy-colouring bound and vertices numbered by degree (Tomita's MCQ, San
Segundo's BBMC). Then the clique of that size with the smallest sorted ids, built id by id: take
the smallest id that still leaves room for a clique of that size among larger ids (each check is
the same bounded search, which a greedy clique usually answers at once). Near-complete graphs of
100+ nodes take a few milliseconds; graphs with many random pair cuts are capped by
`SEARCH_STEPS`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet

SEARCH_STEPS = 5000
"""Colourings one search may do (~15-30 us each: at most ~0.15 s). Near-complete graphs of 100+
nodes and partitions need a few hundred; only graphs with thousands of random pair cuts (128
nodes, 10 % of pairs cut: ~10**5) reach it. Past it the answer is still a clique, deterministic
for a given graph, but maybe not the largest (see `maximum_clique`)."""

Graph = Mapping[int, AbstractSet[int]]
"""node id -> the ids it shares an edge with (symmetric, no self loops)."""


def rank_key(members: Iterable[int]) -> tuple[int, tuple[int, ...]]:
    """Sort key of a clique: larger first, then the smaller sorted id tuple."""
    ids = tuple(sorted(members))
    return (-len(ids), ids)


def outranks(a: Iterable[int], b: Iterable[int]) -> bool:
    """True when clique `a` is strictly better than clique `b`."""
    return rank_key(a) < rank_key(b)


def mutual_graph(heard: Mapping[int, AbstractSet[int]]) -> dict[int, frozenset[int]]:
    """Edges i-j where i reports hearing j and j reports hearing i (one-way links do not count).

    `heard` maps each node whose report we have to the nodes it hears; nodes without a row get no
    edges at all, whatever others say about them.
    """
    return {
        i: frozenset(j for j in row if j != i and j in heard and i in heard[j])
        for i, row in heard.items()
    }


class MutualGraph:
    """`mutual_graph` kept between calls (membership evaluates it on every change): a row that
    did not change (the same set object, or an equal set) is not read again, and only the edges
    to changed, added or removed rows are checked again, O(N x changed rows) instead of
    O(N^2) Python steps (65,000 at 256 nodes, design §3.14). Falls back to the full build when
    more than an eighth of the rows changed. The result is always `mutual_graph(heard)`."""

    __slots__ = ("_graph", "_heard")

    def __init__(self) -> None:
        self._heard: Mapping[int, AbstractSet[int]] = {}
        self._graph: dict[int, frozenset[int]] = {}

    def update(self, heard: Mapping[int, AbstractSet[int]]) -> dict[int, frozenset[int]]:
        """`mutual_graph(heard)` (the caller must not change the rows it passed in later:
        they are kept to compare with)."""
        old_heard, old_graph = self._heard, self._graph
        touched = {i for i, row in heard.items() if _changed(old_heard.get(i), row)}
        touched.update(i for i in old_heard if i not in heard)
        if len(touched) > len(heard) // 8:
            graph = mutual_graph(heard)
        else:
            graph = {}
            for i, row in heard.items():
                if i in touched:
                    graph[i] = frozenset(j for j in row if j != i and j in heard and i in heard[j])
                    continue
                edges = old_graph[i]
                for c in touched:  # only edges to changed rows can differ from last time
                    edge = c != i and c in row and c in heard and i in heard[c]
                    if edge != (c in edges):
                        edges = edges | {c} if edge else edges - {c}
                graph[i] = edges
        self._heard, self._graph = heard, graph
        return graph


def _changed(old: AbstractSet[int] | None, new: AbstractSet[int]) -> bool:
    return old is not new and (old is None or old != new)


def maximum_clique(graph: Graph, candidates: AbstractSet[int]) -> frozenset[int]:
    """The best clique (by `rank_key`) among `candidates`; empty when there are none.

    On a pathological graph that exhausts `SEARCH_STEPS` it returns the best clique it could
    prove exists instead: still deterministic, so nodes with the same matrix still agree.
    """
    search = _Search(graph, candidates)
    size = search.maximum_size(search.everyone)
    return frozenset(search.smallest_ids_clique(size))


def best_clique_containing(node: int, graph: Graph, candidates: AbstractSet[int]) -> frozenset[int]:
    """The best clique that contains `node`, using only `node`'s neighbours among `candidates`."""
    neighbours = set(graph.get(node, ())) & set(candidates)
    neighbours.discard(node)
    return maximum_clique(graph, neighbours) | {node}


def _mask(bit: dict[int, int], nodes: set[int], row: set[int]) -> int:
    """The bits of `row` (a subset of `nodes`): their sum (distinct powers of two), or, for a
    row of more than half the nodes (near-complete graphs, the common case), all bits less the
    sum of the few missing ones. `map` and `sum` run in C; summing few big ints keeps it
    O(N) word operations per row instead of O(N^2)."""
    if 2 * len(row) > len(nodes):
        return (1 << len(nodes)) - 1 - sum(map(bit.__getitem__, nodes.difference(row)))
    return sum(map(bit.__getitem__, row))


def greedy_partition(graph: Graph) -> list[frozenset[int]]:
    """Cover every node of `graph` with cliques: take the best, remove it, repeat.

    This is the partition membership converges to on a stable matrix; tests use it as the oracle
    and `explain` can show it.
    """
    remaining = set(graph)
    parts: list[frozenset[int]] = []
    while remaining:
        part = maximum_clique(graph, remaining)
        parts.append(part)
        remaining -= part
    return parts


class _Search:
    """Clique searches over one graph as bitsets.

    Vertices are renumbered by degree, highest first, which is the order the colouring bound
    works best in (Tomita's MCQ, San Segundo's BBMC); `_ids` maps bit positions back to node ids.
    """

    def __init__(self, graph: Graph, candidates: AbstractSet[int]) -> None:
        nodes = set(candidates)
        rows = {n: nodes.intersection(graph.get(n, ())) for n in nodes}
        self._ids = sorted(nodes, key=lambda n: (-len(rows[n]), n))
        bit = {node: 1 << index for index, node in enumerate(self._ids)}
        self.everyone = (1 << len(self._ids)) - 1
        self._adjacency = [_mask(bit, nodes, rows[node]) & ~bit[node] for node in self._ids]
        self._bit = bit
        self._best = 0
        self.steps = 0

    def maximum_size(self, candidates: int) -> int:
        """The size of the largest clique among `candidates` (branch and bound, MCQ)."""
        self.steps = 0
        self._best = self._greedy(candidates)
        if self._best < candidates.bit_count():  # else they are all one clique: no search
            self._grow(0, candidates)
        return self._best

    def has_clique(self, candidates: int, size: int) -> bool:
        """Whether `candidates` hold a clique of `size` nodes (stops at the first one)."""
        if candidates.bit_count() < size:
            return False
        return self._greedy(candidates) >= size or self._reach(0, candidates, size)

    def smallest_ids_clique(self, size: int) -> list[int]:
        """The clique of `size` nodes with the smallest sorted id tuple: take the smallest id
        that still leaves room for a clique of `size` among larger ids, repeat."""
        self.steps = 0
        if size == self.everyone.bit_count():  # every candidate: the only clique that large
            return sorted(self._ids)
        chosen: list[int] = []
        allowed = self.everyone
        for node in sorted(self._ids):
            if len(chosen) == size:
                break
            node_bit = self._bit[node]
            if not allowed & node_bit:
                continue
            allowed &= ~node_bit
            rest = allowed & self._adjacency[node_bit.bit_length() - 1]
            if self.has_clique(rest, size - len(chosen) - 1):
                chosen.append(node)
                allowed = rest
        return chosen

    def _greedy(self, candidates: int) -> int:
        """The size of a clique found by always taking the highest-degree vertex: a lower bound
        that answers most questions on near-complete graphs at once."""
        size = 0
        while candidates:
            low = candidates & -candidates
            candidates &= self._adjacency[low.bit_length() - 1]
            size += 1
        return size

    def _grow(self, depth: int, candidates: int) -> None:
        order, colours = self._colour_sort(candidates)
        for index in range(len(order) - 1, -1, -1):
            if depth + colours[index] <= self._best:
                return
            vertex = order[index]
            narrowed = candidates & self._adjacency[vertex]
            if narrowed:
                self._grow(depth + 1, narrowed)
            elif depth + 1 > self._best:
                self._best = depth + 1
            candidates &= ~(1 << vertex)

    def _reach(self, depth: int, candidates: int, size: int) -> bool:
        order, colours = self._colour_sort(candidates)
        for index in range(len(order) - 1, -1, -1):
            if depth + colours[index] < size:
                return False
            if depth + 1 >= size:
                return True
            vertex = order[index]
            if self._reach(depth + 1, candidates & self._adjacency[vertex], size):
                return True
            candidates &= ~(1 << vertex)
        return False

    def _colour_sort(self, candidates: int) -> tuple[list[int], list[int]]:
        """Greedy colouring of `candidates`: vertices in colour order and each one's colour, an
        upper bound on the clique size among it and the vertices before it."""
        self.steps += 1
        if self.steps > SEARCH_STEPS:
            return [], []
        order: list[int] = []
        colours: list[int] = []
        colour = 0
        uncoloured = candidates
        while uncoloured:
            colour += 1
            available = uncoloured
            while available:
                low = available & -available
                vertex = low.bit_length() - 1
                uncoloured &= ~low
                available &= ~low & ~self._adjacency[vertex]
                order.append(vertex)
                colours.append(colour)
        return order, colours
