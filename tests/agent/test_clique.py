"""agent/clique.py: mutual edges, the deterministic best clique and the greedy partition."""

from __future__ import annotations

import random
from itertools import combinations, pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import clique
from agent.clique import (
    best_clique_containing,
    greedy_partition,
    maximum_clique,
    mutual_graph,
    outranks,
    rank_key,
)


def complete(ids: range | list[int]) -> dict[int, frozenset[int]]:
    """The complete graph on `ids`."""
    nodes = list(ids)
    return {n: frozenset(m for m in nodes if m != n) for n in nodes}


def is_clique(graph: dict[int, frozenset[int]], nodes: frozenset[int]) -> bool:
    """Every pair of `nodes` shares an edge."""
    return all(b in graph[a] for a, b in combinations(nodes, 2))


@st.composite
def graphs(draw: st.DrawFn, max_nodes: int = 8) -> dict[int, frozenset[int]]:
    """Random undirected graphs on a random subset of small ids."""
    nodes = sorted(draw(st.sets(st.integers(1, 20), min_size=1, max_size=max_nodes)))
    pairs = list(combinations(nodes, 2))
    edges = draw(st.lists(st.booleans(), min_size=len(pairs), max_size=len(pairs)))
    adjacency: dict[int, set[int]] = {n: set() for n in nodes}
    for (a, b), up in zip(pairs, edges, strict=True):
        if up:
            adjacency[a].add(b)
            adjacency[b].add(a)
    return {n: frozenset(adj) for n, adj in adjacency.items()}


def brute_force_best(graph: dict[int, frozenset[int]], within: set[int]) -> frozenset[int]:
    """The first clique by rank among all subsets of `within` (the specification)."""
    cliques = [
        frozenset(c)
        for size in range(len(within) + 1)
        for c in combinations(sorted(within), size)
        if is_clique(graph, frozenset(c))
    ]
    return min(cliques, key=rank_key)


def test_rank_prefers_size_then_smallest_ids() -> None:
    """Larger cliques outrank smaller ones; equal sizes are ordered by the sorted id tuple."""
    assert outranks({5, 6, 7}, {1, 2})
    assert outranks({1, 9}, {2, 3})
    assert not outranks({2, 3}, {1, 9})
    assert not outranks({1, 2}, {1, 2})


def test_one_way_hearing_is_not_an_edge() -> None:
    """An edge needs both reports; a node without a report gets no edge from anyone's claim."""
    graph = mutual_graph({1: {2, 3}, 2: {1}, 3: set(), 4: {1}})
    assert graph == {1: {2}, 2: {1}, 3: frozenset(), 4: frozenset()}
    assert mutual_graph({1: {1, 2}, 2: {2}}) == {1: frozenset(), 2: frozenset()}


def test_full_mesh_is_one_clique() -> None:
    """In a complete graph the best clique is everyone."""
    assert maximum_clique(complete(range(1, 8)), set(range(1, 8))) == frozenset(range(1, 8))


def test_ties_go_to_the_smallest_sorted_ids() -> None:
    """Two triangles sharing nothing: the one with the smaller id tuple wins."""
    graph = complete([4, 5, 6]) | complete([1, 8, 9])
    assert maximum_clique(graph, set(graph)) == {1, 8, 9}


def test_best_clique_containing_uses_only_neighbours_and_candidates() -> None:
    """The clique of a node holds the node and only candidates it shares an edge with."""
    graph = complete([1, 2, 3, 4])
    assert best_clique_containing(3, graph, {1, 2, 4}) == {1, 2, 3, 4}
    assert best_clique_containing(3, graph, {4}) == {3, 4}
    assert best_clique_containing(3, graph, set()) == {3}
    assert best_clique_containing(9, graph, {1, 2}) == {9}


def test_bridge_node_joins_the_lower_half() -> None:
    """A node hearing two halves that do not hear each other: it joins {1,2,3}; {4,5,6} is next."""
    graph = {k: set(v) for k, v in (complete([1, 2, 3, 7]) | complete([4, 5, 6])).items()}
    for n in (4, 5, 6):
        graph[n] |= {7}
        graph[7] |= {n}
    frozen = {k: frozenset(v) for k, v in graph.items()}
    assert greedy_partition(frozen) == [{1, 2, 3, 7}, {4, 5, 6}]


def test_pentagon_partitions_into_pairs_and_a_singleton() -> None:
    """Each of 5 nodes hears only its two ring neighbours: {1,2}, {3,4}, {5}; no majority."""
    ring = {n: frozenset({n % 5 + 1, (n - 2) % 5 + 1}) for n in range(1, 6)}
    assert greedy_partition(ring) == [{1, 2}, {3, 4}, {5}]


def test_many_symmetric_cuts_stay_fast() -> None:
    """100 nodes, each cut from exactly one other (2**50 maximal cliques): the colouring bound
    finds the best clique at once (the per-test timeout fails a search without it)."""
    graph = {n: frozenset(m for m in range(100) if m not in {n, n ^ 1}) for n in range(100)}
    best = maximum_clique(graph, set(graph))
    assert best == frozenset(range(0, 100, 2))
    assert len(greedy_partition(graph)) == 2


@settings(max_examples=300, deadline=None)
@given(graphs(), st.data())
def test_maximum_clique_matches_brute_force(
    graph: dict[int, frozenset[int]], data: st.DataObject
) -> None:
    """The search returns exactly the first clique by rank over any candidate subset."""
    within = data.draw(st.sets(st.sampled_from(sorted(graph))))
    assert maximum_clique(graph, within) == brute_force_best(graph, within)


@settings(max_examples=200, deadline=None)
@given(graphs())
def test_greedy_partition_covers_with_disjoint_cliques(graph: dict[int, frozenset[int]]) -> None:
    """The partition is disjoint, covers every node, and each part is a clique ranked no better
    than the one before it."""
    parts = greedy_partition(graph)
    assert sorted(n for p in parts for n in p) == sorted(graph)
    assert all(is_clique(graph, p) for p in parts)
    assert all(not outranks(b, a) for a, b in pairwise(parts))


def test_exhausted_search_still_returns_a_deterministic_clique(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the step budget cut to almost nothing, the answer on a hard graph is still a clique
    and the same on every call (so nodes with one matrix still agree)."""
    monkeypatch.setattr(clique, "SEARCH_STEPS", 3)
    rng = random.Random(7)
    pairs = [(a, b) for a, b in combinations(range(60), 2) if rng.random() > 0.3]
    graph = {
        n: frozenset({b for a, b in pairs if a == n} | {a for a, b in pairs if b == n})
        for n in range(60)
    }
    first = maximum_clique(graph, set(graph))
    assert is_clique(graph, first)
    assert len(first) >= 2
    assert maximum_clique(graph, set(graph)) == first
