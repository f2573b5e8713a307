"""Deterministic maximum cliques of the mutual-hearing graph.

Owns the graph search behind membership: which fully connected group of nodes is "best". Pure
functions over node ids; no clock, I/O or logging, no randomness, no state.

Ranking: a clique outranks another when it is larger, or equally large with a smaller sorted id
tuple. `rank_key` is that order; every choice here is the first clique in it, so two callers with
the same graph always get the same answer.

The search is a branch and bound over bitsets (Carraghan-Pardalos order with a greedy-colouring
bound, as in Tomita's MCQ). It enumerates cliques as increasing id sequences depth first, which
visits them in lexicographic order, and only prunes branches that cannot beat the size of the best
clique found so far: the first maximum-size clique it meets is therefore the one with the smallest
sorted id tuple. Near-complete graphs of 100+ nodes take milliseconds; the colouring bound keeps
graphs with many symmetric cuts (each node cut from one other: 2**50 maximal cliques) fast.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet

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


def maximum_clique(graph: Graph, candidates: AbstractSet[int]) -> frozenset[int]:
    """The best clique (by `rank_key`) among `candidates`; empty when there are none."""
    order = sorted(candidates)
    bit = {node: 1 << index for index, node in enumerate(order)}
    adjacency = [
        sum(bit[other] for other in graph.get(node, ()) if other in bit and other != node)
        for node in order
    ]
    best = _Search(adjacency).run((1 << len(order)) - 1)
    return frozenset(order[index] for index in best)


def best_clique_containing(node: int, graph: Graph, candidates: AbstractSet[int]) -> frozenset[int]:
    """The best clique that contains `node`, using only `node`'s neighbours among `candidates`."""
    neighbours = set(graph.get(node, ())) & set(candidates)
    neighbours.discard(node)
    return maximum_clique(graph, neighbours) | {node}


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
    """One branch-and-bound run over a bitset graph (bit i = the i-th smallest id)."""

    def __init__(self, adjacency: list[int]) -> None:
        self._adjacency = adjacency
        self._best: list[int] = []

    def run(self, candidates: int) -> list[int]:
        """Indices of the first maximum clique in lexicographic order."""
        self._expand([], candidates)
        return self._best

    def _expand(self, chosen: list[int], candidates: int) -> None:
        if len(chosen) > len(self._best):
            self._best = list(chosen)
        while candidates:
            if len(chosen) + self._bound(candidates) <= len(self._best):
                return
            low = candidates & -candidates
            index = low.bit_length() - 1
            candidates ^= low
            chosen.append(index)
            self._expand(chosen, candidates & self._adjacency[index])
            chosen.pop()

    def _bound(self, candidates: int) -> int:
        """Colours of a greedy colouring of `candidates`: no clique in them is larger."""
        if candidates.bit_count() <= 2:
            return candidates.bit_count()
        colours = 0
        uncoloured = candidates
        while uncoloured:
            colours += 1
            available = uncoloured
            while available:
                low = available & -available
                uncoloured ^= low
                available &= ~low & ~self._adjacency[low.bit_length() - 1]
        return colours
