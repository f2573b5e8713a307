"""The scaling table's arithmetic (`tests/bench/scale_table.py`): fits, exponents, layout."""

from __future__ import annotations

import pytest

from tests.bench.scale_table import (
    cell,
    curve_line,
    fit_line,
    loglog_exponent,
    markdown_table,
    percentile,
    points,
)


def test_fit_line_recovers_an_exact_line() -> None:
    slope, intercept = fit_line([5, 16, 32], [0.5 + 0.2 * n for n in (5, 16, 32)]) or (0, 0)
    assert slope == pytest.approx(0.2)
    assert intercept == pytest.approx(0.5)


def test_fit_line_least_squares_of_noisy_points() -> None:
    # (0,0) (1,1) (2,1): mean x 1, mean y 2/3, sxy = 1, sxx = 2 -> slope 0.5, intercept 1/6
    slope, intercept = fit_line([0, 1, 2], [0, 1, 1]) or (0, 0)
    assert slope == pytest.approx(0.5)
    assert intercept == pytest.approx(1 / 6)


def test_fit_line_needs_two_distinct_x() -> None:
    assert fit_line([5], [1.0]) is None
    assert fit_line([5, 5], [1.0, 2.0]) is None
    with pytest.raises(ValueError, match="2 x values for 3 y values"):
        fit_line([1, 2], [1, 2, 3])


def test_loglog_exponent_of_power_laws() -> None:
    sizes = [5, 16, 32, 64]
    assert loglog_exponent(sizes, [3.0] * 4) == pytest.approx(0.0, abs=1e-12)
    assert loglog_exponent(sizes, [0.1 * n for n in sizes]) == pytest.approx(1.0)
    assert loglog_exponent(sizes, [0.01 * n * n for n in sizes]) == pytest.approx(2.0)


def test_loglog_exponent_refuses_non_positive_values() -> None:
    assert loglog_exponent([5, 16], [0.0, 1.0]) is None
    assert loglog_exponent([5], [1.0]) is None


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 11)]  # 1..10
    assert percentile(values, 50) == 5.0
    assert percentile(values, 99) == 10.0
    assert percentile(values, 100) == 10.0
    assert percentile(values, 0) == 1.0
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


def test_points_skip_unmeasured() -> None:
    assert points([5, 16, 32], [1.0, None, 3.0]) == ([5, 32], [1.0, 3.0])


def test_curve_line_states_slope_exponent_and_extrapolation() -> None:
    line = curve_line("CPU per agent", [5, 16, 32], [0.5, 1.6, 3.2], "%")
    assert line.startswith("CPU per agent vs N (5/16/32): +0.1 % per added node")
    assert "exponent 1.00 (log-log)" in line
    assert "at N=100 extrapolated: 10 % (line), 10 % (power law from N=32)" in line


def test_curve_line_with_too_few_points() -> None:
    assert curve_line("RSS", [5, 16], [40.0, None], "MiB") == "RSS vs N: not enough points (1)"


def test_cell_formats() -> None:
    assert cell(None) == "-"
    assert cell(3) == "3"
    assert cell(2.345, 2) == "2.35"
    assert cell("never") == "never"
    assert cell(True) == "True"


def test_markdown_table_pads_and_aligns() -> None:
    lines = markdown_table(["src", "N", "CPU %"], [["agents", "5", "0.9"], ["sim", "256", "-"]])
    assert lines == [
        "| src    |   N | CPU % |",
        "|--------|----:|------:|",
        "| agents |   5 |   0.9 |",
        "| sim    | 256 |     - |",
    ]


def test_markdown_table_rejects_a_short_row() -> None:
    with pytest.raises(ValueError, match="row of 1 cells for 2 columns"):
        markdown_table(["a", "b"], [["x"]])
