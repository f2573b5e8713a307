"""The scaling table's arithmetic and layout (`tests/bench/bench_scale.py`): pure functions.

* `fit_line`: least squares y = slope * x + intercept (the cost added per node).
* `loglog_exponent`: the slope of log y against log x (1: linear in N, 0: flat, 2: quadratic).
* `curve_line`: one printed line per curve: the slope, the exponent, a value at N extrapolated.
* `markdown_table`: rows of cells as a Markdown pipe table, columns padded (readable in a
  terminal, pasted as is into docs/benchmarks.md).
* `cell`: a number (or None) as a table cell, `-` for a figure not measured for that row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

MISSING = "-"


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (`q` in 0..100) of a non-empty sequence."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float] | None:
    """(slope, intercept) of the least-squares line; None for < 2 points or all x equal."""
    if len(xs) != len(ys):
        raise ValueError(f"{len(xs)} x values for {len(ys)} y values")
    n = len(xs)
    if n < 2:
        return None
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    if sxx == 0:
        return None
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sxx
    return slope, mean_y - slope * mean_x


def loglog_exponent(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """k in y ~ x**k by least squares on the logs; None unless >= 2 points, all positive."""
    if any(x <= 0 for x in xs) or any(y <= 0 for y in ys):
        return None
    fit = fit_line([math.log(x) for x in xs], [math.log(y) for y in ys])
    return None if fit is None else fit[0]


def points(xs: Sequence[float], ys: Sequence[float | None]) -> tuple[list[float], list[float]]:
    """The (x, y) pairs whose y was measured (not None)."""
    pairs = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
    return [x for x, _ in pairs], [y for _, y in pairs]


def curve_line(
    label: str, xs: Sequence[float], ys: Sequence[float | None], unit: str, at: float = 100
) -> str:
    """`label vs N: +S unit per added node (least squares), exponent K (log-log); at N: V`."""
    px, py = points(xs, ys)
    fit = fit_line(px, py)
    if fit is None:
        return f"{label} vs N: not enough points ({len(px)})"
    slope, intercept = fit
    exponent = loglog_exponent(px, py)
    power = "-" if exponent is None else f"{exponent:.2f}"
    sizes = "/".join(f"{x:g}" for x in px)
    line = f"{label} vs N ({sizes}): {slope:+.4g} {unit} per added node (least squares), "
    line += f"exponent {power} (log-log)"
    linear = slope * at + intercept
    line += f"; at N={at:g} extrapolated: {linear:.4g} {unit} (line)"
    if exponent is not None:
        scale = py[-1] * (at / px[-1]) ** exponent
        line += f", {scale:.4g} {unit} (power law from N={px[-1]:g})"
    return line


def cell(value: float | int | str | None, digits: int = 1) -> str:
    """A table cell: `-` for None, an int as is, a float with `digits` decimals."""
    if value is None:
        return MISSING
    if isinstance(value, bool | str):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown pipe table, each column padded to its widest cell; all but the first
    right-aligned (numbers)."""
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row of {len(row)} cells for {len(headers)} columns")
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        padded = [cells[0].ljust(widths[0])]
        padded += [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "| " + " | ".join(padded) + " |"

    dashes = ["-" * (widths[0] + 2)] + ["-" * (w + 1) + ":" for w in widths[1:]]
    return [line(headers), "|" + "|".join(dashes) + "|", *(line(row) for row in rows)]
