"""[[expect]] over a timeline (design §4.5): pictures after a point, windows between faults; each
failure names the nodes and the time."""

from __future__ import annotations

from typing import Any

from votemesh_lab import expect, scenario

HEAD = """
name = "t"
purpose = "a test"
duration = "30s"
[topology]
nodes = 3
[[nemesis]]
id = "split"
at = "2s"
f = "partition"
groups = [[1, 2], [3]]
duration = "10s"
"""


def expects(text: str) -> tuple[scenario.Expect, ...]:
    return scenario.parse(HEAD + text).expects


def state(t: float, node: int, members: list[int], quorate: bool, **more: Any) -> dict[str, Any]:
    ring = f"{members[0]}.{len(members)}" if members else None
    return {"t": t, "node": node, "kind": "state", "src": "log", "ring": ring,
            "members": members, "quorate": quorate, **more}  # fmt: skip


def fault(t: float, ident: str) -> dict[str, Any]:
    return {"t": t, "node": "lab", "kind": "fault", "src": "lab", "id": ident, "f": "partition",
            "phase": "start", "applied_t": t - 0.5, "verified_t": t}  # fmt: skip


def formed() -> list[dict[str, Any]]:
    return [state(1.0, n, [1, 2, 3], True) for n in (1, 2, 3)]


def split_ok() -> list[dict[str, Any]]:
    """Split verified at 5.0; {1,2} re-form at 6.0, 3 goes inquorate at 6.5; healed at 15."""
    return [
        *formed(),
        fault(5.0, "split"),
        state(6.0, 1, [1, 2], True), state(6.0, 2, [1, 2], True),
        state(6.5, 3, [3], False),
        fault(15.0, "split.undo"),
        *[state(16.0, n, [1, 2, 3], True) for n in (1, 2, 3)],
    ]  # fmt: skip


PICTURE = """
[[expect]]
after = "split"
within = "3s"
hold = "4s"
quorate = [1, 2]
inquorate = [3]
one_view = [1, 2]
"""


def test_a_picture_reached_in_time_and_held_is_met_at_the_moment_it_was_reached() -> None:
    """Reached at 6.5 s (n3 inquorate last), within 3 s of the verified split, held 4 s."""
    (got,) = expect.evaluate(split_ok(), expects(PICTURE), t0=1.0, end=30.0, nodes=[1, 2, 3])
    assert (got.status, got.at) == ("met", 6.5)


def test_a_minority_that_stayed_quorate_misses_naming_the_node_and_the_deadline() -> None:
    """n3 never goes inquorate: missed at 5 + 3 = 8 s, naming n3 and what it showed."""
    records = [r for r in split_ok() if not (r.get("node") == 3 and r["t"] == 6.5)]
    (got,) = expect.evaluate(records, expects(PICTURE), t0=1.0, end=30.0, nodes=[1, 2, 3])
    assert (got.status, got.at, got.nodes) == ("missed", 8.0, (3,))
    assert "n3 quorate" in got.seen


def test_a_picture_that_flickers_during_the_hold_is_missed() -> None:
    """n1 drops out of the view for a moment after the deadline, inside the hold: reached but
    not held (a drop inside `within` would only move the moment it was reached)."""
    records = [*split_ok(), state(9.0, 1, [1], False), state(9.4, 1, [1, 2], True)]
    (got,) = expect.evaluate(records, expects(PICTURE), t0=1.0, end=30.0, nodes=[1, 2, 3])
    assert got.status == "missed"
    assert "not held" in got.detail
    assert 1 in got.nodes


def test_a_run_that_ends_before_the_hold_is_unknown_not_met() -> None:
    """The hold reaches past the run's end: unknown, never silently met."""
    (got,) = expect.evaluate(split_ok(), expects(PICTURE), t0=1.0, end=9.0, nodes=[1, 2, 3])
    assert got.status == "unknown"


def test_a_killed_node_counts_as_inquorate_and_breaks_quorate() -> None:
    """A `proc killed` record makes the node down: inquorate holds, quorate fails for it."""
    records = [*formed(), fault(5.0, "split"),
               {"t": 5.5, "node": 3, "kind": "proc", "src": "lab", "state": "killed"},
               state(6.0, 1, [1, 2], True), state(6.0, 2, [1, 2], True)]  # fmt: skip
    (got,) = expect.evaluate(records, expects(PICTURE), t0=1.0, end=30.0, nodes=[1, 2, 3])
    assert got.status == "met"


WINDOW = """
[[expect]]
during = ["split", "split.undo"]
never_lost = [1, 2]
nodes = [1, 2]
max_view_changes = 1
max_inquorate_s = 0.5
"""


def event(t: float, node: int, kind: str) -> dict[str, Any]:
    return {"t": t, "node": node, "kind": kind, "src": "log", "seq": 1}


def test_a_window_without_loss_or_extra_views_is_met() -> None:
    """One view change each for n1 and n2, never inquorate, no quorum_lost: met."""
    records = [*split_ok(), event(6.0, 1, "view_installed"), event(6.0, 2, "view_installed")]
    (got,) = expect.evaluate(records, expects(WINDOW), t0=1.0, end=30.0, nodes=[1, 2, 3])
    assert got.status == "met"


def test_a_flapping_view_in_the_window_names_the_node_and_the_extra_view() -> None:
    """n2 installs three views in the window: missed at the second extra view's time."""
    records = [*split_ok(), *(event(t, 2, "view_installed") for t in (6.0, 7.0, 8.0))]
    (got,) = expect.evaluate(records, expects(WINDOW), t0=1.0, end=30.0, nodes=[1, 2, 3])
    assert (got.status, got.at, got.nodes) == ("missed", 7.0, (2,))
    assert "n2 installed 3 views" in got.detail


def test_quorum_lost_on_the_keeping_side_is_a_miss_naming_node_and_time() -> None:
    """F1 made explicit: n1 emits quorum_lost at 9 s and is inquorate for 1 s."""
    records = [*split_ok(), event(9.0, 1, "quorum_lost"), state(9.0, 1, [1, 2], False),
               state(10.0, 1, [1, 2], True)]  # fmt: skip
    (got,) = expect.evaluate(records, expects(WINDOW), t0=1.0, end=30.0, nodes=[1, 2, 3])
    assert (got.status, got.at, got.nodes) == ("missed", 9.0, (1,))
    assert "n1 lost quorum at 9.00 s" in got.detail
    assert "inquorate 1.00 s" in got.detail


def test_a_nemesis_that_never_ran_makes_its_expectations_unknown() -> None:
    """No fault record for the window's end: unknown with the reason."""
    records = [r for r in split_ok() if r.get("id") != "split.undo"]
    (got,) = expect.evaluate(records, expects(WINDOW), t0=1.0, end=30.0, nodes=[1, 2, 3])
    assert got.status == "unknown"
    assert "split.undo never ran" in got.detail


def test_qdevice_vote_holds_only_when_exactly_those_nodes_count_the_vote() -> None:
    """qdevice_vote = [1, 2]: n3 counting the vote too breaks it."""
    text = '[[expect]]\nafter = "split"\nwithin = "2s"\nqdevice_vote = [1, 2]\n'
    good = [*formed(), fault(5.0, "split"),
            state(6.0, 1, [1, 2], True, qdevice_vote=True),
            state(6.0, 2, [1, 2], True, qdevice_vote=True)]  # fmt: skip
    (got,) = expect.evaluate(good, expects(text), t0=1.0, end=30.0, nodes=[1, 2, 3])
    assert got.status == "met"
    bad = [*good, state(5.5, 3, [3], True, qdevice_vote=True)]
    (got,) = expect.evaluate(bad, expects(text), t0=1.0, end=30.0, nodes=[1, 2, 3])
    assert (got.status, got.nodes) == ("missed", (3,))


def test_after_a_time_counts_from_t0() -> None:
    """`after = "4s"` with t0 = 1: the picture is judged from 5 s on."""
    text = '[[expect]]\nafter = "4s"\nwithin = "0s"\nquorate = [1, 2, 3]\n'
    (got,) = expect.evaluate(formed(), expects(text), t0=1.0, end=30.0, nodes=[1, 2, 3])
    assert (got.status, got.at) == ("met", 5.0)


def test_one_quorate_of_wants_exactly_one_whole_group_quorate() -> None:
    """`one_quorate_of = [[1, 2], [3]]`: {1, 2} quorate and 3 not is met; nobody quorate, or
    both sides quorate (a split brain), is missed naming the nodes."""
    text = '[[expect]]\nafter = "split"\nwithin = "2s"\none_quorate_of = [[1, 2], [3]]\n'
    (got,) = expect.evaluate(split_ok(), expects(text), t0=1.0, end=30.0, nodes=[1, 2, 3])
    assert got.status == "met"
    nobody = [*formed(), fault(5.0, "split"), *(state(6.0, n, [n], False) for n in (1, 2, 3))]
    (got,) = expect.evaluate(nobody, expects(text), t0=1.0, end=30.0, nodes=[1, 2, 3])
    assert (got.status, got.nodes) == ("missed", (1, 2, 3))
    both = [r for r in split_ok() if not (r.get("node") == 3 and r["t"] == 6.5)]
    (got,) = expect.evaluate(both, expects(text), t0=1.0, end=30.0, nodes=[1, 2, 3])
    assert (got.status, got.nodes) == ("missed", (3,))
