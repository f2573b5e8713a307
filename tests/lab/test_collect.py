"""collect.py: the agents' JSON logs, the MQTT tap and the qnetd's log become timeline records
(design §4.6) that the checker reads; runner.drop_startup_polls keeps start-up polls out."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from votemesh_lab import collect
from votemesh_lab.runner import drop_startup_polls
from votemesh_lab.timeline import Timeline, validate

START_MS = 1_796_650_000_000


def stamp(seconds: float) -> str:
    """ISO time `seconds` after START_MS, as structlog writes it."""
    when = dt.datetime.fromtimestamp(START_MS / 1000 + seconds, dt.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def line(seconds: float, event: str, **fields: Any) -> str:
    return json.dumps({**fields, "event": event, "level": "info", "timestamp": stamp(seconds)})


def agent_log(tmp_path: Path) -> Path:
    """Two lives of node 2: formed, quorate; then restarted, alone, then back in the view."""
    path = tmp_path / "agent.log"
    path.write_text(
        "\n".join([
            line(0.5, "agent started", incarnation=11),
            line(1.0, "view_installed", ring="1.4", ring_id=[1, 4], members=[1, 2, 3]),
            line(1.0, "quorum_counts_changed", counted=[1, 2, 3], basis="heard"),
            line(1.0, "quorum_gained", expected_votes=3, total_votes=3, quorum=2),
            line(1.1, "datagram dropped", reason="replayed"),
            "not json at all",
            line(5.0, "agent started", incarnation=12),
            line(6.0, "view_installed", ring="1.6", ring_id=[1, 6], members=[1, 2, 3]),
            line(6.0, "quorum_gained", expected_votes=3, total_votes=3, quorum=2),
            line(7.0, "expected_votes_changed", old=3, new=2),
        ])
        + "\n"
    )  # fmt: skip
    return path


def test_an_agent_log_becomes_events_and_folded_states(tmp_path: Path) -> None:
    """Events keep their fields and get seq per life and the life's incarnation; after each
    change a `state` record; a restart starts again in the singleton view; non-events and
    garbage lines are not records (garbage is counted)."""
    records, skipped = collect.agent_records(agent_log(tmp_path), 2, START_MS, expected=3)
    assert skipped == 1
    events = [(r["kind"], r["seq"], r["incarnation"]) for r in records if r["kind"] != "state"]
    assert events == [
        ("view_installed", 1, 11), ("quorum_counts_changed", 2, 11), ("quorum_gained", 3, 11),
        ("view_installed", 1, 12), ("quorum_gained", 2, 12), ("expected_votes_changed", 3, 12),
    ]  # fmt: skip
    states = [(r["t"], r["ring"], r["members"], r["quorate"]) for r in records
              if r["kind"] == "state"]  # fmt: skip
    assert states == [
        (1.0, "1.4", [1, 2, 3], False), (1.0, "1.4", [1, 2, 3], False),
        (1.0, "1.4", [1, 2, 3], True), (6.0, "1.6", [1, 2, 3], False),
        (6.0, "1.6", [1, 2, 3], True), (7.0, "1.6", [1, 2, 3], True),
    ]  # fmt: skip
    assert records[-1]["expected"] == 2  # expected_votes_changed carries it as `new`
    for record in records:
        validate(record)  # every record follows design §4.6


def test_mqtt_events_mark_the_log_events_they_match(tmp_path: Path) -> None:
    """An event that came over MQTT (same node, kind, within 250 ms) is `src: mqtt` with its
    MQTT seq; the rest stay `src: log` (filled from the log); a note counts both."""
    tap = tmp_path / "mqtt-events.jsonl"
    payload = {"event": "view_installed", "seq": 1, "wall_ms": START_MS + 1010}
    tap.write_text(json.dumps({"at_ms": START_MS + 1020, "topic": "votemesh/c/n2/events",
                               "payload": json.dumps(payload)}) + "\n")  # fmt: skip
    records = collect.collect({"n2": agent_log(tmp_path), "broker": tap}, START_MS, {2: 3})
    sources = [(r["kind"], r["src"]) for r in records if r["node"] == 2 and r["kind"] != "state"]
    assert sources[0] == ("view_installed", "mqtt")
    assert {src for _, src in sources[1:]} == {"log"}
    note = next(r for r in records if r["kind"] == "note")
    assert "1 of 6 came over MQTT" in note["text"]


def test_qnetd_decisions_become_votes(tmp_path: Path) -> None:
    """Each `decision` line of the qnetd's log: one qnetd_vote per node it answered."""
    log = tmp_path / "qnetd.log"
    log.write_text(line(3.0, "decision", cluster="c", votes={"1": "ACK", "2": "NACK"}) + "\n")
    records = collect.qnetd_records(log, START_MS)
    assert [(r["t"], r["to"], r["vote"]) for r in records] == [(3.0, 1, "ack"), (3.0, 2, "nack")]


def test_start_up_polls_before_the_first_view_are_dropped() -> None:
    """A polled state between a (re)start and the node's first event-made view is start-up
    state (no event announces it); polls after it are kept for the checker's `silent`."""

    def state(t: float, src: str, ring: str | None) -> dict[str, Any]:
        return {"t": t, "node": 1, "kind": "state", "src": src, "ring": ring, "members": [1],
                "quorate": False, "expected": 3}  # fmt: skip

    records = [
        {"t": 0.1, "node": 1, "kind": "proc", "src": "lab", "state": "started"},
        state(0.5, "status", "1.1"),
        state(0.9, "log", None),
        state(1.0, "log", "1.2"),
        state(1.5, "status", "1.3"),
    ]
    kept = Timeline(drop_startup_polls(records)).records
    assert [(r["t"], r["src"]) for r in kept if r["kind"] == "state"] == [
        (0.9, "log"), (1.0, "log"), (1.5, "status"),
    ]  # fmt: skip
