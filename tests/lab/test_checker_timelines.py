"""The checker on recorded timelines (tests/lab/timelines/*.jsonl, small and hand-made, in the
lab's record format of design §4.6): each injected fault of the cluster is a violation naming
the nodes and the time; a clean run is valid; a seq gap makes the verdict unknown. Then
report.json, the verdict line, `votemesh-lab check DIR`, the PNG, and reading bad files."""

from __future__ import annotations

import argparse
import json
import shutil
import struct
from pathlib import Path

import pytest
from votemesh_lab import report
from votemesh_lab.checker import Checker, Verdict, minority_bound
from votemesh_lab.picture import DOWN, INQUORATE, QUORATE, node_spans, picture
from votemesh_lab.render import render_png
from votemesh_lab.timeline import (
    Link,
    Timeline,
    TimelineError,
    networks,
    parse_lines,
    read_jsonl,
)

from agent.config import Timing

TIMELINES = Path(__file__).parent / "timelines"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def judge(name: str) -> Verdict:
    return Checker(read_jsonl(TIMELINES / f"{name}.jsonl")).check()


def first(verdict: Verdict, prop: str) -> tuple[float, tuple[int, ...], str]:
    found = [v for v in verdict.violations if v.prop == prop]
    assert found, verdict
    return found[0].t, found[0].nodes, found[0].detail


def test_a_clean_split_is_valid() -> None:
    """5 nodes split 3|2 at 5 s: the majority re-forms quorate, the minority goes inquorate
    within the bound, healing brings one view back: every property holds (F1 and L1 applied)."""
    verdict = judge("clean-split-3-2")
    assert verdict.status == "valid", verdict
    assert verdict.properties["F1"] == ""
    assert verdict.properties["L1"] == ""
    assert verdict.properties["L2"]  # not applicable: the run had a partition


def test_an_injected_split_brain_is_an_s1_violation() -> None:
    """The minority {4,5} installs its own view and says quorate: S1 at 5.8 s naming n1 and n4
    with their disjoint member sets."""
    verdict = judge("split-brain")
    assert verdict.status == "invalid"
    t, nodes, detail = first(verdict, "S1")
    assert t == pytest.approx(5.8)
    assert set(nodes) == {1, 4}
    assert "n1 quorate with [1, 2, 3]" in detail
    assert "n4 quorate with [4, 5]" in detail


def test_one_ring_id_with_two_member_sets_is_an_s2_violation() -> None:
    """Ring 1.2 installed as [1,2,3,4] on n1, n2 and as [1,3,4] on n3, n4: S2 at 5.7 s naming
    both sides and the ring."""
    t, nodes, detail = first(judge("same-ring-two-member-sets"), "S2")
    assert t == pytest.approx(5.7)
    assert set(nodes) == {1, 3}
    assert "ring 1.2 is [1, 3, 4] on n3 but [1, 2, 3, 4] on n1" in detail


def test_a_flapping_view_is_an_l2_violation() -> None:
    """Under 2 % loss and 10 ms jitter only, the view changes at 10, 12 and 14 s: L2 for every
    node at each change, the first at 10 s naming n1 and both rings."""
    verdict = judge("flapping-view")
    l2 = [v for v in verdict.violations if v.prop == "L2"]
    assert len(l2) == 15
    t, nodes, detail = first(verdict, "L2")
    assert (t, nodes) == (10.0, (1,))
    assert "from ring 1.1 to 1.2" in detail
    assert {v.t for v in l2} == {10.0, 12.0, 14.0}
    assert {n for v in l2 for n in v.nodes} == {1, 2, 3, 4, 5}


def test_a_minority_that_stayed_quorate_is_an_l1_violation() -> None:
    """{4,5} cut off at 5.05 s keep saying quorate in the old view: L1 once the minority bound
    (1.1 s on the lan preset) has passed, for n4 and n5, naming what each hears."""
    verdict = judge("minority-stayed-quorate")
    l1 = [v for v in verdict.violations if v.prop == "L1" and "hears only" in v.detail]
    assert [v.nodes for v in l1] == [(4,), (5,)]
    in_flight = 0.0012  # datagrams sent before the cut land up to the old slowest delay later
    assert l1[0].t == pytest.approx(5.05 + minority_bound(Timing.lan()) + in_flight)
    assert "n4 hears only [4, 5] since t=5.0500 but is quorate" in l1[0].detail
    assert not [v for v in verdict.violations if v.prop == "S1"]  # the sets intersect


def test_a_seq_gap_makes_the_verdict_unknown() -> None:
    """The clean split without n3's event seq 2: nothing violated, but the verdict is unknown
    and says whose events are missing, after when, which seq."""
    verdict = judge("seq-gap")
    assert verdict.status == "unknown"
    assert not verdict.violations
    assert verdict.unknown == ["n3's events missing after 1.00 s (seq 2)"]


def test_a_node_that_recorded_nothing_or_no_formation_is_unknown() -> None:
    """Never silently valid: a node of the run with no record, or a cluster that never formed
    one view, is an unknown verdict with the reason."""
    records = list(read_jsonl(TIMELINES / "clean-split-3-2.jsonl"))
    without_n5 = Timeline(r for r in records if r["node"] != 5 or r["src"] == "lab")
    verdict = Checker(without_n5).check()
    assert verdict.status != "valid"
    assert "n5's events missing (nothing recorded)" in verdict.unknown
    assert "the cluster never formed one full view" in verdict.unknown


def test_the_verdict_line_and_exit_codes() -> None:
    """One line per verdict, as design §4.7 shows it; exit codes valid 0, unknown 2, invalid 3."""
    out = Path("DIR/report.json")
    clean = read_jsonl(TIMELINES / "clean-split-3-2.jsonl")
    line = report.verdict_line(Checker(clean).check(), clean, out)
    assert line == "valid: clean-split-3-2 seed 7, 20.0 s, 5 nodes -> DIR/report.json"
    brain = read_jsonl(TIMELINES / "split-brain.jsonl")
    verdict = Checker(brain).check()
    line = report.verdict_line(verdict, brain, out)
    assert line.startswith("invalid: S1 at 5.80 s: n1 quorate with [1, 2, 3] and n4 quorate")
    assert line.endswith(f"({len(verdict.violations) - 1} more) -> DIR/report.json")
    gap = read_jsonl(TIMELINES / "seq-gap.jsonl")
    line = report.verdict_line(Checker(gap).check(), gap, out)
    assert line == "unknown: n3's events missing after 1.00 s (seq 2) -> DIR/report.json"
    assert report.EXIT == {"valid": 0, "unknown": 2, "invalid": 3}


def test_report_json_content(tmp_path: Path) -> None:
    """report.json: schema, scenario and its hash, seed, backend, verdict and line, every
    property's status, violations by time, per-node summary (view changes, inquorate seconds
    after formation, quorum losses), the faults with applied and verified times."""
    timeline = read_jsonl(TIMELINES / "clean-split-3-2.jsonl")
    verdict = Checker(timeline).check()
    path = report.write(tmp_path, timeline, verdict, "name = 'clean-split-3-2'\n")
    doc = json.loads(path.read_text())
    assert doc["schema"] == 1
    assert (doc["scenario"], doc["seed"], doc["backend"]) == ("clean-split-3-2", 7, "netns")
    assert len(doc["scenario_sha256"]) == 64
    assert doc["verdict"] == "valid"
    assert doc["line"].startswith("valid: clean-split-3-2 seed 7")
    assert doc["started"] == "2025-11-24T16:00:00.000+00:00"
    assert doc["properties"]["S1"] == {"status": "valid", "why": "", "violations": 0}
    assert doc["properties"]["L2"]["status"] == "not_applicable"
    assert doc["formed_t"] == 1.0
    n4, n1 = doc["nodes"]["4"], doc["nodes"]["1"]
    assert (n4["view_changes"], n4["quorum_lost"]) == (2, 1)
    assert n4["inquorate_s"] == pytest.approx(16.0 - 5.8)
    assert (n1["inquorate_s"], n1["quorum_lost"], n1["first_quorate_t"]) == (0.0, 0, 1.0)
    split = next(f for f in doc["faults"] if f["id"] == "split")
    assert (split["f"], split["start"], split["applied_t"], split["verified_t"]) == (
        "partition",
        5.0,
        5.0,
        5.05,
    )
    brain = read_jsonl(TIMELINES / "split-brain.jsonl")
    doc = json.loads(report.write(tmp_path, brain, Checker(brain).check()).read_text())
    assert doc["verdict"] == "invalid"
    assert doc["properties"]["S1"]["status"] == "invalid"
    assert doc["violations"][0] == {
        "prop": "S1",
        "t": 5.8,
        "nodes": [1, 4],
        "detail": "n1 quorate with [1, 2, 3] and n4 quorate with [4, 5]: disjoint",
    }


def test_a_missed_expectation_makes_the_verdict_invalid() -> None:
    """The runner's expectations fold into the verdict: missed -> a violation, not judged ->
    unknown."""
    timeline = read_jsonl(TIMELINES / "clean-split-3-2.jsonl")
    verdict = Checker(timeline).check()
    missed = {"index": 0, "text": "quorate [1,2,3] within 3s", "status": "missed", "at": 8.0}
    assert report.with_expectations(verdict, [missed]).status == "invalid"
    unsure = {"index": 1, "text": "one_view [1..5]", "status": "unknown"}
    assert report.with_expectations(verdict, [unsure]).status == "unknown"
    assert report.with_expectations(verdict, [{"status": "met"}]).status == "valid"


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_render_png_writes_a_1200_px_wide_png(tmp_path: Path) -> None:
    """render_png writes a PNG file 1200 px wide whose height grows with the rows."""
    timeline = read_jsonl(TIMELINES / "split-brain.jsonl")
    out = render_png(timeline, Checker(timeline).check(), tmp_path / "timeline.png")
    width, height = png_size(out)
    assert width == 1200
    assert 250 <= height <= 600
    assert out.stat().st_size > 5000


def test_the_picture_rows() -> None:
    """The figure's data: one row per node with quorate / inquorate / down spans and their
    rings, view and quorum-lost ticks, the fault band, the violation marks."""
    timeline = read_jsonl(TIMELINES / "clean-split-3-2.jsonl")
    pic = picture(timeline, Checker(timeline).check(), "title")
    assert [r.name for r in pic.rows] == ["n1", "n2", "n3", "n4", "n5"]
    n4 = pic.rows[3]
    assert [(s.state, s.ring) for s in n4.spans] == [
        (DOWN, None),
        (INQUORATE, None),
        (QUORATE, "1.1"),
        (INQUORATE, "4.2"),
        (QUORATE, "1.5"),
    ]
    assert [(t.t, t.kind) for t in n4.ticks] == [
        (1.0, "view"),
        (5.8, "view"),
        (5.8, "lost"),
        (16.0, "view"),
    ]
    assert [(b.id, b.start, b.stop) for b in pic.bands] == [("split", 5.05, 15.05)]
    assert pic.rings == ("1.1", "1.3", "4.2", "1.5")
    assert not pic.marks


def test_paused_and_killed_spans() -> None:
    """A node's spans follow its proc records: paused (state reports ignored until resumed),
    then its last view again, then down when killed."""
    records = [
        {"t": 1.0, "node": 1, "kind": "state", "src": "log", "ring": "1.1", "members": [1]}
        | {"quorate": True, "expected": 1},
        {"t": 2.0, "node": 1, "kind": "proc", "src": "lab", "state": "paused"},
        {"t": 3.0, "node": 1, "kind": "proc", "src": "lab", "state": "resumed"},
        {"t": 4.0, "node": 1, "kind": "proc", "src": "lab", "state": "killed"},
    ]
    spans = node_spans(records, 0.0, 5.0)
    assert [(s.start, s.stop, s.state) for s in spans] == [
        (0.0, 1.0, DOWN),
        (1.0, 2.0, QUORATE),
        (2.0, 3.0, "paused"),
        (3.0, 4.0, QUORATE),
        (4.0, 5.0, DOWN),
    ]


def test_votemesh_lab_check_rejudges_a_stored_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`votemesh-lab check DIR` reads DIR/timeline.jsonl, writes report.json and timeline.png,
    prints the verdict line and exits 3 on a split brain; a directory without a timeline is
    a one-line mistake (exit 1)."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(TIMELINES / "split-brain.jsonl", run / "timeline.jsonl")
    code = report.command_check(argparse.Namespace(dir=str(run)))
    out = capsys.readouterr().out.strip()
    assert code == 3
    assert out.startswith("invalid: S1 at 5.80 s:")
    assert out.endswith(f"-> {run / 'report.json'}")
    assert json.loads((run / "report.json").read_text())["line"] == out
    assert png_size(run / "timeline.png")[0] == 1200
    assert report.command_check(argparse.Namespace(dir=str(tmp_path / "none"))) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "timeline.jsonl not found" in err


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("{not json", "line 2: not JSON"),
        ('{"t": "x", "node": 1, "kind": "state", "src": "log"}', "line 2: t must be a number"),
        ('{"t": 1, "node": 0, "kind": "note", "src": "log"}', "line 2: node must be"),
        ('{"t": 1, "node": 1, "kind": "note", "src": "disk"}', "line 2: src must be one of"),
        ('{"t": 1, "node": 1, "kind": "state", "src": "log", "members": [1]}', "quorate must"),
        ('{"t": 1, "node": "lab", "kind": "net", "src": "lab", "blocks": [[1]]}', "blocks must"),
        ('{"t": 1, "node": 2, "kind": "proc", "src": "lab", "state": "gone"}', "state must be"),
        ('{"t": 1, "node": 2, "kind": "view_installed", "src": "log", "seq": -1}', "seq must"),
        ("[1, 2]", "line 2: a record must be a JSON object"),
    ],
)
def test_a_bad_line_is_a_one_line_error_naming_it(line: str, says: str) -> None:
    """Records read from a file are checked: the first bad one is a TimelineError naming the
    file's line and the field."""
    good = '{"t": 0, "node": "lab", "kind": "note", "src": "lab", "text": "hi"}'
    with pytest.raises(TimelineError, match=r"^t\.jsonl ") as caught:
        parse_lines([good, line], "t.jsonl")
    assert says in str(caught.value)
    assert "\n" not in str(caught.value)


def test_check_reports_a_bad_file_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`votemesh-lab check` on a timeline with a bad line: exit 1, one line naming the line."""
    (tmp_path / "timeline.jsonl").write_text('{"t": 0, "node": "lab", "kind": "run"}\n')
    assert report.command_check(argparse.Namespace(dir=str(tmp_path))) == 1
    err = capsys.readouterr().err.strip()
    assert err.endswith("timeline.jsonl line 1: src must be one of lab, log, mqtt, sim, status")


def test_timelines_round_trip_and_merge(tmp_path: Path) -> None:
    """write_jsonl then read_jsonl gives the same records; merging keeps one run record and
    orders by time (run first, end last)."""
    timeline = read_jsonl(TIMELINES / "clean-split-3-2.jsonl")
    again = read_jsonl(timeline.write_jsonl(tmp_path / "t.jsonl"))
    assert again.records == timeline.records
    events = Timeline(r for r in timeline if r["src"] == "log")
    lab = Timeline(r for r in timeline if r["src"] != "log")
    merged = lab.merged(events)
    assert merged.records[0]["kind"] == "run"
    assert merged.records[-1]["kind"] == "end"
    assert [r["t"] for r in merged] == sorted(r["t"] for r in merged)
    assert len(merged) == len(timeline)
    assert [r["kind"] for r in merged.of_node(4)][:2] == ["proc", "view_installed"]


def test_the_network_from_net_and_proc_records() -> None:
    """net records in the lab's words (host names, tc units) give the checker's network:
    blocks as node pairs, links parsed, benign by DESIGN L2's bounds; proc records change who
    runs."""
    records = [
        {"t": 0, "node": "lab", "kind": "net", "src": "lab", "alive": ["n1", "n2", "n3"]}
        | {"blocks": [["n1", "n2"], ["qnetd", "n3"]], "links": {"n2>n3": {"loss": "20%"}}}
        | {"default": {"delay": "1ms", "jitter": "20ms", "loss": "5%"}},
        {"t": 2, "node": 3, "kind": "proc", "src": "lab", "state": "killed"},
        {"t": 2, "node": "lab", "kind": "note", "src": "lab", "text": "not a change"},
    ]
    first, second = networks(Timeline(records))
    assert first.cuts == {(1, 2)}
    assert first.link(2, 3) == Link(loss=0.2)
    assert first.default.benign
    assert not first.link(2, 3).benign
    assert not first.mutual(1, 2)
    assert first.mutual(1, 3)
    assert second.alive == {1, 2}
    assert not Link.parse({"corrupt": "1%"}).benign
    assert Link.parse({"corrupt": "0%", "distribution": "normal"}).benign
