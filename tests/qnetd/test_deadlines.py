"""qnetd/deadlines.py: keyed deadlines for the core's timers; stale heap rows stay bounded."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from qnetd.deadlines import SLACK, Deadlines


def test_cancelled_rows_do_not_outlive_a_flood() -> None:
    """1,000 connections get a dead-peer deadline, 990 close: the heap keeps at most twice the
    live keys + SLACK rows. Was: all 1,000 rows stayed until their 180 s deadline came up, and
    with them the allocator arenas a connection flood had filled (RSS +7 MB after the flood)."""
    deadlines: Deadlines[tuple[str, int]] = Deadlines()
    for conn in range(1000):
        deadlines.set(("dpd", conn), 180.0 + conn / 1000)
    for conn in range(10, 1000):
        deadlines.cancel(("dpd", conn))
    assert len(deadlines) <= 2 * 10 + SLACK
    assert deadlines.pop_due(1000.0) == [("dpd", conn) for conn in range(10)]
    assert len(deadlines) == 0


ops = st.lists(
    st.tuples(st.sampled_from(["set", "cancel", "pop"]), st.integers(0, 20), st.integers(0, 50)),
    max_size=300,
)


@given(ops)
def test_behaves_like_a_dict_of_deadlines(steps: list[tuple[str, int, int]]) -> None:
    """Any sequence of set / cancel / pop_due answers as a plain dict of key -> deadline would,
    and the heap never holds more than twice the live keys + SLACK rows."""
    deadlines: Deadlines[int] = Deadlines()
    model: dict[int, float] = {}
    for op, key, at in steps:
        if op == "set":
            deadlines.set(key, float(at))
            model[key] = float(at)
        elif op == "cancel":
            deadlines.cancel(key)
            model.pop(key, None)
        else:
            due = deadlines.pop_due(float(at))
            expected = sorted((k for k, v in model.items() if v <= at), key=lambda k: model[k])
            assert sorted(due) == sorted(expected)
            assert [model[k] for k in due] == sorted(model[k] for k in due)
            for k in due:
                del model[k]
        assert deadlines.earliest() == (min(model.values()) if model else None)
        assert len(deadlines) <= 2 * len(model) + SLACK + 1
