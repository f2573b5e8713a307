"""The pure parts of `make bench-lab` (tests/bench/lab_compare.py) and its lock.

The live bench itself (both stacks in namespaces, about half an hour in its quickest form) is a
make target, not part of the suite.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.bench.bench_lab_corosync import METRICS, bench_lock
from tests.bench.lab_compare import (
    INQUORATE,
    QUORATE,
    VIEW,
    Metric,
    Record,
    Samples,
    aggregate,
    first_inquorate,
    first_quorate,
    first_view_without,
    in_view_of,
    inquorate_seconds,
    last_change,
    latest,
    parse_agent_log,
    parse_corosync_log,
    per_ten_minutes,
    percentile,
    ratio,
    stack_order,
    table,
    view_changes,
)

# Real corosync 3.1.7 lines (timestamp: hires), trimmed to what matters plus some noise. The
# membership of 13:33:18 never completed its synchronization (no `Members[1]` line): still a view.
COROSYNC_LOG = """\
Dec 07 13:33:03.006 notice  [QUORUM] Sync members[1]: 1
Dec 07 13:33:03.006 notice  [QUORUM] Sync joined[1]: 1
Dec 07 13:33:03.006 notice  [TOTEM ] A new membership (1.5) was formed. Members joined: 1
Dec 07 13:33:03.006 notice  [QUORUM] Members[1]: 1
Dec 07 13:33:05.270 notice  [QUORUM] Sync members[3]: 1 2 3
Dec 07 13:33:05.270 notice  [TOTEM ] A new membership (1.9) was formed. Members joined: 2 3
Dec 07 13:33:05.278 notice  [QUORUM] This node is within the primary component and will provide service.
Dec 07 13:33:05.278 notice  [QUORUM] Members[3]: 1 2 3
Dec 07 13:33:07.302 info    [KNET  ] link: host: 3 link: 0 is down
Dec 07 13:33:14.014 notice  [QUORUM] Sync members[2]: 1 2
Dec 07 13:33:14.014 notice  [QUORUM] Sync left[1]: 3
Dec 07 13:33:14.018 notice  [QUORUM] Members[2]: 1 2
Dec 07 13:33:18.000 notice  [QUORUM] Sync members[1]: 1
Dec 07 13:33:20.500 notice  [QUORUM] This node is within the non-primary component and will NOT provide any services.
garbage line
"""  # noqa: E501

NOW = datetime(2026, 12, 7, 14, 0, tzinfo=UTC).timestamp()


def at(text: str, year: int = 2026) -> float:
    """A UTC wall time from `Mon DD HH:MM:SS.mmm`."""
    return (
        datetime.strptime(f"{year} {text}", "%Y %b %d %H:%M:%S.%f").replace(tzinfo=UTC).timestamp()
    )


def test_corosync_log_gives_views_and_quorum_transitions_in_utc() -> None:
    records = parse_corosync_log(COROSYNC_LOG, 2026, NOW)
    assert [(r.kind, r.members) for r in records] == [
        (VIEW, (1,)),
        (VIEW, (1, 2, 3)),
        (QUORATE, ()),
        (VIEW, (1, 2)),
        (VIEW, (1,)),
        (INQUORATE, ()),
    ]
    assert records[1].t == pytest.approx(at("Dec 07 13:33:05.270"))
    assert records[2].t == pytest.approx(at("Dec 07 13:33:05.278"))


def test_corosync_local_time_is_moved_to_utc_and_a_future_date_to_last_year() -> None:
    east = parse_corosync_log(COROSYNC_LOG, 2026, NOW, utc_offset=3600)
    assert east[0].t == pytest.approx(at("Dec 07 12:33:03.006"))
    january_now = datetime(2027, 1, 1, 0, 5, tzinfo=UTC).timestamp()
    wrapped = parse_corosync_log(COROSYNC_LOG, 2027, january_now)
    assert wrapped[0].t == pytest.approx(at("Dec 07 13:33:03.006", 2026))


def test_agent_log_gives_views_with_members_and_quorum_transitions() -> None:
    lines = [
        {"event": "agent started", "timestamp": "2026-12-07T13:00:00.000000Z"},
        {"event": "view_installed", "members": [1, 2, 3], "timestamp": "2026-12-07T13:00:01.250Z"},
        {"event": "quorum_gained", "timestamp": "2026-12-07T13:00:01.251000+00:00"},
        {"event": "quorum_lost", "timestamp": "not a time"},
        {"event": "quorum_lost"},
    ]
    text = "\n".join(json.dumps(line) for line in lines) + "\nnot json\n[1, 2]\n"
    records = parse_agent_log(text)
    assert [(r.kind, r.members) for r in records] == [(VIEW, (1, 2, 3)), (QUORATE, ())]
    assert records[0].t == pytest.approx(datetime(2026, 12, 7, 13, 0, 1, 250000, UTC).timestamp())


def test_first_records_after_a_fault() -> None:
    records = [
        Record(1.0, VIEW, (1, 2, 3)),
        Record(1.0, QUORATE),
        Record(5.0, INQUORATE),
        Record(6.0, VIEW, (1, 3)),
        Record(7.0, VIEW, (1, 2)),
        Record(8.0, QUORATE),
    ]
    assert first_view_without(records, 2.0, [3]) == 7.0
    assert first_view_without(records, 2.0, [2]) == 6.0
    assert first_view_without(records, 8.0, [2]) is None
    assert first_inquorate(records, 2.0) == 5.0
    assert first_quorate(records, 2.0) == 8.0
    assert first_quorate(records, 9.0) is None


def test_latest_waits_for_every_node() -> None:
    assert latest([1.0, 3.0, 2.0]) == 3.0
    assert latest([1.0, None]) is None
    assert latest([]) is None


def test_in_view_of_needs_the_exact_members_since_then_and_quorate() -> None:
    records = [Record(1.0, VIEW, (2, 1)), Record(1.1, QUORATE)]
    assert in_view_of(records, [1, 2], 0.5)
    assert not in_view_of(records, [1, 2], 2.0)  # the view is older than asked
    assert not in_view_of(records, [1, 2, 3], 0.5)
    assert not in_view_of([*records, Record(1.5, INQUORATE)], [1, 2], 0.5)
    assert not in_view_of([Record(1.0, VIEW, (1, 2))], [1, 2], 0.5)  # never quorate


def test_view_changes_and_inquorate_seconds_in_a_window() -> None:
    records = [
        Record(5.0, VIEW, (1,)),
        Record(10.0, INQUORATE),
        Record(12.5, QUORATE),
        Record(15.0, VIEW, (1, 2)),
        Record(18.0, INQUORATE),
        Record(30.0, VIEW, (1, 2)),  # after the window
    ]
    assert view_changes(records, 6.0, 20.0) == 1
    # 2.5 s inside, plus 18 -> 20 still inquorate at the end of the window.
    assert inquorate_seconds(records, 6.0, 20.0) == pytest.approx(4.5)
    assert inquorate_seconds(records, 0.0, 9.0, quorate_at_start=False) == pytest.approx(9.0)
    assert inquorate_seconds([], 0.0, 9.0) == 0.0
    assert per_ten_minutes(3, 60.0) == pytest.approx(30.0)
    assert math.isnan(per_ten_minutes(3, 0.0))


def test_last_change_over_all_nodes() -> None:
    by_node = {"n1": [Record(1.0, VIEW, (1,)), Record(4.0, QUORATE)], "n2": [Record(3.0, VIEW)]}
    assert last_change(by_node, 2.0) == 4.0
    assert last_change(by_node, 5.0) is None


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([7.0, 1.0], 99) == 7.0
    assert percentile([3.0], 1) == 3.0
    assert math.isnan(percentile([], 50))


def test_aggregate_names() -> None:
    values = [1.0, 2.0, 10.0]
    assert aggregate(values, "p50") == 2.0
    assert aggregate(values, "p99") == 10.0
    assert aggregate(values, "mean") == pytest.approx(13 / 3)
    assert aggregate(values, "max") == 10.0
    assert aggregate(values, "sum") == 13.0
    assert math.isnan(aggregate([], "mean"))
    with pytest.raises(ValueError, match="median"):
        aggregate(values, "median")


def test_ratio_is_corosync_over_votemesh() -> None:
    assert ratio(10_000.0, 500.0) == "20.0x"
    assert ratio(0.5, 1.0) == "0.5x"
    assert ratio(0.0, 0.0) == "="
    assert ratio(3.0, 0.0) == "inf"
    assert ratio(math.nan, 1.0) == "-"


def test_stacks_alternate_a_b_b_a() -> None:
    assert stack_order(1) == ["corosync", "votemesh"]
    assert stack_order(3) == [
        "corosync",
        "votemesh",
        "votemesh",
        "corosync",
        "corosync",
        "votemesh",
    ]
    assert stack_order(2, first="votemesh") == ["votemesh", "corosync", "corosync", "votemesh"]


def test_table_rows_aggregate_samples_and_show_ratio() -> None:
    samples = Samples()
    for value in (7000.0, 8000.0, 9000.0):
        samples.add("corosync", "kill", value)
    samples.add("votemesh", "kill", 700.0)
    samples.add("votemesh", "kill", None)  # a missed wait: not a sample
    samples.add("corosync", "cpu", math.nan)
    metrics = [
        Metric("kill", "kill -9 to new view", "ms", "p50"),
        Metric("cpu", "cpu", "%", "mean", 2),
    ]
    lines = table(metrics, samples)
    assert lines[0] == "| metric | corosync | votemesh | ratio (corosync / votemesh) |"
    assert lines[2] == "| kill -9 to new view (ms, p50) | 8,000 (n=3) | 700 | 11.4x |"
    assert lines[3] == "| cpu (%, mean) | - | - | - |"


def test_every_metric_of_the_bench_has_a_known_aggregate_and_a_unique_key() -> None:
    keys = [m.key for m in METRICS]
    assert len(keys) == len(set(keys))
    for metric in METRICS:
        assert not math.isnan(aggregate([1.0], metric.how))


def test_a_second_bench_is_refused_while_the_first_holds_the_lock(tmp_path: Path) -> None:
    lock = tmp_path / "run" / "bench.lock"
    with bench_lock(lock) as first:
        assert first
        with bench_lock(lock) as second:
            assert not second
    with bench_lock(lock) as again:
        assert again
