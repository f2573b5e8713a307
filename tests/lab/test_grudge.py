"""votemesh_lab.grudge: every partition shape of design §4.4, and the Matrix's rule overlay."""

from __future__ import annotations

import random
from collections.abc import Iterable

import pytest
from votemesh_lab.grudge import GrudgeError, Matrix, Rule, blocks_for, ring_views
from votemesh_lab.netem import Impairment

NODES = [f"n{i}" for i in range(1, 6)]


def hears(blocks: Iterable[tuple[str, str]], node: str, nodes: list[str]) -> set[str]:
    """The nodes whose frames `node` receives (itself included)."""
    cut = set(blocks)
    return {s for s in nodes if (s, node) not in cut}


def both_ways(a: Iterable[str], b: Iterable[str]) -> set[tuple[str, str]]:
    """Every directed pair between two groups, both ways."""
    return {p for x in a for y in b for p in ((x, y), (y, x))}


def test_groups_cut_both_ways_between_groups_only() -> None:
    """groups [[1,2],[3,4,5]]: every pair across, both ways; none inside a group; the qnetd
    (in no group) keeps every path."""
    blocks = blocks_for("groups", NODES, random.Random(1), groups=[[1, 2], [3, 4, 5]])
    assert blocks == both_ways(["n1", "n2"], ["n3", "n4", "n5"])
    assert not any("qnetd" in pair for pair in blocks)


def test_one_isolates_the_given_or_a_drawn_node() -> None:
    """one: the named node loses every path both ways; without a name, the run's rng draws it
    (same seed, same node)."""
    assert blocks_for("one", NODES, random.Random(1), node=3) == both_ways(
        ["n3"], set(NODES) - {"n3"}
    )
    drawn = blocks_for("one", NODES, random.Random(9))
    assert drawn == blocks_for("one", NODES, random.Random(9))
    isolated = [n for n in NODES if hears(drawn, n, NODES) == {n}]
    assert len(isolated) == 1


@pytest.mark.parametrize(("shape", "size"), [("majority", 3), ("minority-third", 1), ("halves", 2)])
def test_drawn_splits_have_their_sizes(shape: str, size: int) -> None:
    """majority: 3 of 5 vs 2; minority-third: 1 vs 4; halves: 2 vs 3; both ways between."""
    blocks = blocks_for(shape, NODES, random.Random(4))
    sides = {frozenset(hears(blocks, n, NODES)) for n in NODES}
    assert sorted(len(s) for s in sides) == sorted([size, 5 - size])
    a, b = sides
    assert blocks == both_ways(a, b)


def test_halves_of_four_is_the_tie() -> None:
    """halves over 4 nodes: 2 | 2."""
    nodes = NODES[:4]
    blocks = blocks_for("halves", nodes, random.Random(2))
    assert sorted(len(hears(blocks, n, nodes)) for n in nodes) == [2, 2, 2, 2]


@pytest.mark.parametrize("n", range(3, 10))
@pytest.mark.parametrize("seed", [1, 2])
def test_majorities_ring_every_node_sees_a_majority_none_shared(n: int, seed: int) -> None:
    """majorities-ring: every node hears a majority (itself included), no two nodes the same
    one, and no node is heard by all (no majority shared by everyone)."""
    nodes = [f"n{i}" for i in range(1, n + 1)]
    blocks = blocks_for("majorities-ring", nodes, random.Random(seed))
    views = [frozenset(hears(blocks, node, nodes)) for node in nodes]
    assert all(len(v) >= n // 2 + 1 for v in views)
    assert len(set(views)) == n
    assert frozenset.intersection(*views) == frozenset()
    assert ring_views(nodes, random.Random(seed)) == dict(zip(nodes, views, strict=True))


@pytest.mark.parametrize("n", [3, 5, 6])
def test_bridge_one_node_hears_both_halves_that_do_not_hear_each_other(n: int) -> None:
    """bridge: one node keeps every path; the others form two halves cut both ways."""
    nodes = [f"n{i}" for i in range(1, n + 1)]
    blocks = blocks_for("bridge", nodes, random.Random(3))
    bridges = [x for x in nodes if not any(x in pair for pair in blocks)]
    assert len(bridges) == 1
    rest = [x for x in nodes if x not in bridges]
    sides = {frozenset(hears(blocks, x, rest)) for x in rest}
    assert len(sides) == 2
    a, b = sides
    assert blocks == both_ways(a, b)
    assert abs(len(a) - len(b)) <= 1


def test_cut_is_one_way() -> None:
    """cut from 1 to 2: 2 drops what 1 sends, 1 still hears 2."""
    assert blocks_for("cut", NODES, random.Random(1), **{"from": [1], "to": [2]}) == {("n1", "n2")}


def test_grudge_is_explicit_dst_to_sources() -> None:
    """grudge {2 = [1], 3 = [1, 2]}: exactly (1, 2), (1, 3), (2, 3)."""
    blocks = blocks_for("grudge", NODES, random.Random(1), grudge={"2": [1], "3": [1, 2]})
    assert blocks == {("n1", "n2"), ("n1", "n3"), ("n2", "n3")}


@pytest.mark.parametrize(
    ("shape", "params", "words"),
    [
        ("ring", {}, "unknown partition shape"),
        ("groups", {"groups": [[1, 2]]}, "at least two groups"),
        ("groups", {"groups": [[1, 2], [2, 3]]}, "two groups"),
        ("cut", {"from": 1, "to": [2]}, "cut.from"),
        ("grudge", {"grudge": [1]}, "grudge"),
    ],
)
def test_shape_mistakes_are_one_line(shape: str, params: dict[str, object], words: str) -> None:
    """Unknown shapes and malformed parameters: GrudgeError naming the problem."""
    with pytest.raises(GrudgeError, match=words):
        blocks_for(shape, NODES, random.Random(1), **params)


def rule(src: list[str] | None, dst: list[str] | None, one_way: bool = False, **words: str) -> Rule:
    """A rule from host lists and netem words."""
    return Rule(
        frozenset(src) if src else None,
        frozenset(dst) if dst else None,
        one_way,
        Impairment.parse(words),
    )


def test_rules_overlay_in_order_field_by_field() -> None:
    """all: delay 10ms; then n1->n2: loss 5%; then all: delay 30ms. n1->n2 gets delay 30ms and
    loss 5%; n2->n3 delay 30ms only; in the other order the pair rule's loss still stays."""
    m = Matrix(tuple(NODES))
    m = m.shape(rule(None, None, delay="10ms")).shape(rule(["n1"], ["n2"], True, loss="5%"))
    m = m.shape(rule(None, None, delay="30ms"))
    assert m.effective("n1", "n2").to_dict() == {"delay": "30ms", "loss": "5%"}
    assert m.effective("n2", "n1").to_dict() == {"delay": "30ms"}
    assert m.effective("n2", "n3").to_dict() == {"delay": "30ms"}
    first = Matrix(tuple(NODES)).shape(rule(["n1"], ["n2"], True, delay="5ms"))
    first = first.shape(rule(None, None, delay="30ms"))
    last = Matrix(tuple(NODES)).shape(rule(None, None, delay="30ms"))
    last = last.shape(rule(["n1"], ["n2"], True, delay="5ms"))
    assert first.effective("n1", "n2").delay == 0.03
    assert last.effective("n1", "n2").delay == 0.005


def test_two_way_rule_applies_in_both_directions() -> None:
    """A rule n1 <-> n2 (not one-way) shapes n1->n2 and n2->n1, nothing else."""
    m = Matrix(tuple(NODES)).shape(rule(["n1"], ["n2"], delay="7ms"))
    assert m.effective("n1", "n2").delay == m.effective("n2", "n1").delay == 0.007
    assert m.effective("n1", "n3").is_none()


def test_heal_lifts_blocks_and_keeps_shaping_unshape_removes_the_scoped_rule() -> None:
    """heal(): no blocks, rules kept; unshape(n1, n2) removes that rule only; unshape() all;
    every change is a new generation."""
    m = (
        Matrix(tuple(NODES))
        .shape(rule(None, None, loss="1%"))
        .shape(rule(["n1"], ["n2"], delay="7ms"))
    )
    m = m.with_blocks({("n1", "n3")})
    healed = m.heal()
    assert healed.blocks == frozenset()
    assert healed.rules == m.rules
    assert healed.generation == m.generation + 1
    scoped = healed.unshape(frozenset({"n2"}), frozenset({"n1"}))
    assert [r.impairment.to_dict() for r in scoped.rules] == [{"loss": "1%"}]
    assert scoped.unshape().rules == ()


def test_to_request_carries_the_whole_matrix() -> None:
    """to_request: the op, generation, sorted blocks, the all-hosts default, and only the pairs
    that differ from it (with their full effective impairment)."""
    m = Matrix(("n1", "n2", "n3")).shape(rule(None, None, loss="1%"))
    m = m.shape(rule(["n1"], ["n2"], True, delay="5ms")).with_blocks({("n3", "n1"), ("n2", "n1")})
    assert m.to_request() == {
        "op": "apply",
        "generation": 3,
        "blocks": [["n2", "n1"], ["n3", "n1"]],
        "pairs": {"n1>n2": {"delay": "5ms", "loss": "1%"}},
        "default": {"loss": "1%"},
    }


def test_matrix_refuses_unknown_hosts() -> None:
    """Blocks or rules naming a host the lab does not have: GrudgeError naming it."""
    m = Matrix(("n1", "n2"))
    with pytest.raises(GrudgeError, match="n7"):
        m.with_blocks({("n1", "n7")})
    with pytest.raises(GrudgeError, match="n9"):
        m.shape(rule(["n9"], None, loss="1%"))
    with pytest.raises(GrudgeError, match="itself"):
        m.with_blocks({("n1", "n1")})
