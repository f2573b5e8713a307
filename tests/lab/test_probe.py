"""votemesh_lab.probe's pure parts: how many probes, what to expect, how a mismatch reads."""

from __future__ import annotations

import pytest
from votemesh_lab.grudge import Matrix, Rule
from votemesh_lab.netem import Impairment
from votemesh_lab.probe import Mismatch, PairPlan, compare, judge, plan, probe_count


@pytest.mark.parametrize(
    ("loss", "k"), [(0.0, 3), (0.01, 4), (0.1, 7), (0.5, 20), (0.8, 60), (0.95, 60), (1.0, 60)]
)
def test_probe_count_is_the_smallest_k_with_loss_to_the_k_under_one_in_a_million(
    loss: float, k: int
) -> None:
    """K >= 3, loss^K < 1e-6, capped at 60."""
    assert probe_count(loss) == k


def test_plan_expects_cut_for_blocks_and_marks_heavy_loss_unverified() -> None:
    """A blocked pair is expected cut; a pair at 90 % loss is unverified; the wait covers the
    largest delay + 4 jitter + 0.5 s."""
    m = Matrix(("n1", "n2", "n3")).with_blocks({("n1", "n2")})
    m = m.shape(Rule(frozenset({"n3"}), frozenset({"n1"}), True, Impairment.parse({"loss": "90%"})))
    m = m.shape(Rule(None, None, False, Impairment.parse({"delay": "100ms", "jitter": "10ms"})))
    plans, wait = plan(m)
    by_pair = {(p.src, p.dst): p for p in plans}
    assert by_pair["n1", "n2"].expected == "cut"
    assert by_pair["n2", "n1"].expected == "open"
    assert by_pair["n3", "n1"].unverified
    assert by_pair["n3", "n1"].probes == 60
    assert wait == pytest.approx(0.1 + 0.04 + 0.5)


def test_judge_reports_a_cut_that_became_two_way_in_one_line() -> None:
    """Expected open, nothing arrived: 'n2->n1 expected open, seen cut (0/3 probes)'; an
    unverified pair that saw nothing is listed, not failed; a blocked pair that leaked fails."""
    plans = [
        PairPlan("n1", "n2", "cut", 3, unverified=False),
        PairPlan("n2", "n1", "open", 3, unverified=False),
        PairPlan("n3", "n1", "open", 60, unverified=True),
        PairPlan("n3", "n2", "cut", 3, unverified=False),
    ]
    mismatches, unverified = judge(plans, {("n3", "n2"): 2})
    assert [str(m) for m in mismatches] == [
        "n2->n1 expected open, seen cut (0/3 probes)",
        "n3->n2 expected cut, seen open (2/3 probes)",
    ]
    assert mismatches[0] == Mismatch("n2", "n1", "open", "cut", 3, 0)
    assert unverified == ("n3->n1",)


def test_compare_names_each_control_plane_difference() -> None:
    """Readback vs request: an extra block, a missing block, a different pair and generation."""
    asked = {
        "generation": 2,
        "blocks": [["n1", "n2"]],
        "pairs": {"n1>n3": {"loss": "5%"}},
        "default": {},
    }
    held = {
        "generation": 2,
        "blocks": [["n2", "n1"]],
        "pairs": {"n1>n3": {"loss": "6%"}},
        "default": {},
    }
    assert compare(asked, asked) == ()
    assert compare(asked, held) == (
        "switch blocks n2->n1, not asked",
        "switch lacks block n1->n2",
        "switch pair n1>n3 {'loss': '6%'} != asked {'loss': '5%'}",
    )
    assert compare(asked, {**asked, "generation": 1})[0] == "switch holds generation 1, asked 2"
