"""report.json and the verdict line (design §4.7); `votemesh-lab check DIR`.

`document()` builds report.json (schema 1) from a timeline and the checker's verdict: the
scenario, seed, backend, versions, the verdict and its line, each property's status, the
scenario's expectations (as the runner judged them: `expect.py`), every violation by time, the
reasons for unknown, a summary per node (view changes, inquorate seconds after formation,
quorum losses, events, restarts, when it was first quorate) and the faults with their
applied and verified times. `verdict_line()` is the one line printed last; `EXIT` its exit code
(valid 0, unknown 2, invalid 3; a user's mistake is 1). `command_check` re-judges a stored run
directory: reads timeline.jsonl, runs the checker, keeps the stored expectations, rewrites
report.json and timeline.png, prints the line. The document is pure; `write` and
`command_check` touch files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from votemesh_lab.checker import Checker, Verdict, Violation
from votemesh_lab.picture import INQUORATE, node_spans, node_ticks, seconds_in
from votemesh_lab.timeline import Record, Timeline, TimelineError, read_jsonl

SCHEMA = 1
EXIT = {"valid": 0, "unknown": 2, "invalid": 3}
"""Exit codes of verdicts (1 is a user's mistake: nothing was judged)."""
REPORT, TIMELINE, PICTURE, SCENARIO = (
    "report.json",
    "timeline.jsonl",
    "timeline.png",
    "scenario.toml",
)


def with_expectations(verdict: Verdict, expectations: Sequence[Mapping[str, Any]]) -> Verdict:
    """The verdict with a scenario's expectations folded in: a missed one is a violation
    (prop "expect"), one that could not be judged a reason for unknown."""
    violations = list(verdict.violations)
    unknown = list(verdict.unknown)
    for e in expectations:
        text = str(e.get("text", f"expectation {e.get('index', '?')}"))
        if e.get("status") == "missed":
            nodes = tuple(int(n) for n in e.get("nodes", ()) if isinstance(n, int))
            seen = f": {e['seen']}" if e.get("seen") else ""
            violations.append(Violation("expect", float(e.get("at") or 0.0), nodes, text + seen))
        elif e.get("status") == "unknown":
            unknown.append(f"expectation not judged: {text}")
    violations.sort(key=lambda v: v.t)
    status = "invalid" if violations else "unknown" if unknown else "valid"
    return Verdict(status, violations, unknown, dict(verdict.properties))


def _name(timeline: Timeline) -> str:
    return str(timeline.run.get("scenario") or "run")


def verdict_line(verdict: Verdict, timeline: Timeline, report_path: Path | str) -> str:
    """The one line printed last (design §4.7):
    `valid: split-3-2 seed 7, 41.2 s, 5 nodes -> DIR/report.json`,
    `invalid: S1 at 12.41 s: n1 quorate with ... (2 more) -> ...`,
    `unknown: n3's events missing after 20.10 s (seq 44-51) -> ...`."""
    if verdict.status == "invalid":
        first, more = verdict.violations[0], len(verdict.violations) - 1
        extra = f" ({more} more)" if more else ""
        what = f"{first.prop} at {first.t:.2f} s: {first.detail}{extra}"
    elif verdict.status == "unknown":
        more = len(verdict.unknown) - 1
        what = verdict.unknown[0] + (f" ({more} more)" if more else "")
    else:
        seed = timeline.run.get("seed")
        duration = timeline.end - min(0.0, timeline.start)
        seeded = f" seed {seed}" if seed is not None else ""
        what = f"{_name(timeline)}{seeded}, {duration:.1f} s, {len(timeline.nodes())} nodes"
    return f"{verdict.status}: {what} -> {report_path}"


def node_summary(timeline: Timeline, formed: float | None) -> dict[str, dict[str, Any]]:
    """Per node: view changes, inquorate seconds after formation, quorum losses, events,
    restarts, and when it was first quorate."""
    out: dict[str, dict[str, Any]] = {}
    start = min(0.0, timeline.start)
    for node in timeline.nodes():
        records = timeline.of_node(node)
        spans = node_spans(records, start, timeline.end)
        ticks = node_ticks(records)
        quorate = [float(r["t"]) for r in records if r["kind"] == "state" and r["quorate"]]
        starts = [r for r in records if r["kind"] == "proc" and r["state"] == "started"]
        out[str(node)] = {
            "view_changes": max(0, sum(1 for t in ticks if t.kind == "view") - 1),
            "inquorate_s": round(seconds_in(spans, INQUORATE, formed or start), 3),
            "quorum_lost": sum(1 for t in ticks if t.kind == "lost"),
            "events": len(timeline.events_of(node)),
            "restarts": max(0, len(starts) - 1),
            "first_quorate_t": quorate[0] if quorate else None,
        }
    return out


def faults(timeline: Timeline) -> list[dict[str, Any]]:
    """Each fault: id, kind, when it started and stopped (its stop record or `<id>.undo`), when
    applied and verified."""
    out: dict[str, dict[str, Any]] = {}
    for r in timeline.of_kind("fault"):
        stop = r.get("phase", "start") == "stop"
        fid = str(r["id"]).removesuffix(".undo") if stop else str(r["id"])
        entry = out.setdefault(
            fid,
            {"id": fid, "f": r["f"], "params": r.get("params") or {}, "start": None, "stop": None}
            | {"applied_t": None, "verified_t": None},
        )
        if stop:
            entry["stop"] = float(r["t"])
            entry["stop_verified_t"] = r.get("verified_t")
        else:
            entry["start"] = float(r["t"])
            entry["applied_t"] = r.get("applied_t")
            entry["verified_t"] = r.get("verified_t")
    return list(out.values())


def _started(run: Record) -> str | None:
    ms = run.get("start_wall_ms")
    if not isinstance(ms, int | float):
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def document(
    timeline: Timeline,
    verdict: Verdict,
    line: str,
    *,
    scenario_text: str | None = None,
    expectations: Sequence[Mapping[str, Any]] = (),
    switch: Mapping[str, Any] | None = None,
    files: Sequence[str] = (),
) -> dict[str, Any]:
    """report.json's content (schema 1)."""
    run = timeline.run
    formed = Checker(timeline).formation()
    by_prop: dict[str, list[Violation]] = {}
    for v in verdict.violations:
        by_prop.setdefault(v.prop, []).append(v)
    properties = {
        name: {
            "status": "not_applicable" if why else "invalid" if by_prop.get(name) else "valid",
            "why": why,
            "violations": len(by_prop.get(name, [])),
        }
        for name, why in verdict.properties.items()
    }
    sha = hashlib.sha256(scenario_text.encode()).hexdigest() if scenario_text else None
    return {
        "schema": SCHEMA,
        "tool": run.get("version"),
        "scenario": _name(timeline),
        "scenario_sha256": sha,
        "seed": run.get("seed"),
        "backend": run.get("backend"),
        "versions": run.get("versions") or {"votemesh": run.get("version")},
        "started": _started(run),
        "duration_s": round(timeline.end - min(0.0, timeline.start), 3),
        "formed_t": formed,
        "verdict": verdict.status,
        "line": line,
        "properties": properties,
        "expectations": [dict(e) for e in expectations],
        "violations": [v.as_dict() for v in verdict.violations],
        "unknown": list(verdict.unknown),
        "nodes": node_summary(timeline, formed),
        "faults": faults(timeline),
        "switch": dict(switch or {}),
        "files": list(files),
    }


def write(
    out_dir: Path | str,
    timeline: Timeline,
    verdict: Verdict,
    scenario_text: str | None = None,
    *,
    expectations: Sequence[Mapping[str, Any]] = (),
    switch: Mapping[str, Any] | None = None,
) -> Path:
    """Write out_dir/report.json (the verdict should already include the expectations:
    `with_expectations`); returns its path. The line is in the document (`line`)."""
    out = Path(out_dir)
    path = out / REPORT
    line = verdict_line(verdict, timeline, path)
    files = sorted(p.name for p in out.iterdir() if p.is_file() and p.name != REPORT)
    doc = document(
        timeline,
        verdict,
        line,
        scenario_text=scenario_text,
        expectations=expectations,
        switch=switch,
        files=[*files, REPORT],
    )
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return path


def _stored(directory: Path) -> dict[str, Any]:
    """The run's previous report.json ({} if none or unreadable)."""
    try:
        doc = json.loads((directory / REPORT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def command_check(args: argparse.Namespace) -> int:
    """`votemesh-lab check DIR`: judge DIR/timeline.jsonl again; rewrite report.json and
    timeline.png; print the verdict line; exit 0 valid, 2 unknown, 3 invalid, 1 a mistake."""
    directory = Path(args.dir)
    source = directory / TIMELINE
    if not source.is_file():
        print(
            f"votemesh-lab check: {source} not found; give a run directory "
            "(lab-store/<scenario>/<run>/)",
            file=sys.stderr,
        )
        return 1
    try:
        timeline = read_jsonl(source)
        verdict = Checker(timeline, properties=_properties(timeline)).check()
    except TimelineError as exc:
        print(f"votemesh-lab check: {exc}", file=sys.stderr)
        return 1
    stored = _stored(directory)
    expectations = [e for e in stored.get("expectations") or () if isinstance(e, dict)]
    verdict = with_expectations(verdict, expectations)
    scenario = directory / SCENARIO
    text = scenario.read_text(encoding="utf-8") if scenario.is_file() else None
    from votemesh_lab.render import render_png  # noqa: PLC0415 (matplotlib only when drawing)

    line = verdict_line(verdict, timeline, directory / REPORT)
    render_png(timeline, verdict, directory / PICTURE, title=line)
    write(directory, timeline, verdict, text, expectations=expectations)
    print(line)
    return EXIT[verdict.status]


def _properties(timeline: Timeline) -> list[str] | None:
    """The properties the run asked for (the run record's `properties`), else all."""
    wanted = timeline.run.get("properties")
    return [str(p) for p in wanted] if isinstance(wanted, list) else None
