"""What the hosts wrote -> timeline records (design §4.6): agents' JSON logs, the MQTT tap's
messages, the qnetd's log.

* An agent's log (`logs/n<id>/agent.log`, every life of the process appended): each line whose
  `event` is an event kind (snake_case: `view_installed`, `quorum_lost`, ...) becomes a record of
  that kind with the event's fields, `seq` (1, 2, ... per life, as the agent's fan-out numbers
  them) and `incarnation` (from the life's `agent started` line). After each event that changes
  it, a `state` record (ring, members, counted, quorate, expected, qdevice_vote,
  config_version) folded from the events. `src: log`.
* With a broker: the events the MQTT tap received (`.../<node>/events`). An event the log also
  has (same node, kind, within `MATCH_MS`) is recorded with `src: mqtt` (and `mqtt_seq`); the
  log fills what MQTT missed (a broker outage) as `src: log`. A `note` says how many came by
  MQTT.
* The qnetd's log: each `decision` line gives one `qnetd_vote` record per node it answered.

Times: `t` = the line's wall time minus the run's `start_wall_ms`, in seconds. A line that is
not JSON or lacks a time is skipped and counted (a `note` record says how many).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Record = dict[str, Any]
EVENT_KIND = re.compile(r"[a-z][a-z0-9_]{1,63}")
NOT_EVENTS = frozenset({"run", "state", "proc", "fault", "net", "config", "qnetd_vote", "verify",
                        "verify_failed", "note", "end"})  # fmt: skip
DROP_FIELDS = frozenset({"event", "level", "timestamp", "logger"})
MATCH_MS = 250
STATE_KEYS = ("ring", "members", "counted", "quorate", "expected", "qdevice_vote",
              "config_version")  # fmt: skip


def wall_ms(timestamp: str) -> int | None:
    """An ISO 8601 time (`2026-12-07T13:34:22.808546Z`) -> milliseconds since the epoch."""
    try:
        when = dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return round(when.timestamp() * 1000)


def json_lines(path: Path) -> Iterator[dict[str, Any] | None]:
    """Each line of a file as a JSON object, or None for a line that is not one."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return
    for line in text.splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            yield None
            continue
        yield value if isinstance(value, dict) else None


@dataclass
class _Fold:
    """One node's state as its events build it (reset by every `agent started`)."""

    ring: str | None = None
    members: list[int] = field(default_factory=list)
    counted: list[int] | None = None
    quorate: bool = False
    expected: int = 0
    qdevice_vote: bool = False
    config_version: int | None = None

    def apply(self, kind: str, e: Mapping[str, Any]) -> bool:
        """Take one event; True when the state changed."""
        before = self.as_record()
        if kind == "view_installed":
            self.ring, self.members = e.get("ring"), list(e.get("members") or [])
        elif kind == "quorum_gained":
            self.quorate = True
        elif kind in ("quorum_lost", "views_halted"):
            self.quorate = False
        elif kind == "qdevice_vote_changed":
            self.qdevice_vote = int(e.get("votes") or 0) > 0
        elif kind == "qdevice_disconnected":
            self.qdevice_vote = False
        elif kind == "quorum_counts_changed":
            self.counted = list(e.get("counted") or [])
        elif kind == "config_changed" and isinstance(e.get("version"), int):
            self.config_version = e["version"]
        if isinstance(e.get("expected_votes"), int):
            self.expected = e["expected_votes"]
        if kind == "expected_votes_changed" and isinstance(e.get("new"), int):
            self.expected = e["new"]
        return self.as_record() != before

    def as_record(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in STATE_KEYS}


def agent_records(
    path: Path, node: int, start_wall_ms: int, expected: int = 0
) -> tuple[list[Record], int]:
    """The events and folded states of one agent's log; (records, lines skipped). `expected`:
    the expected votes a life starts with (the agent's configured value; events update it)."""
    records: list[Record] = []
    skipped = 0
    fold = _Fold()
    seq = 0
    incarnation: int | None = None
    for line in json_lines(path):
        stamp = wall_ms(line.get("timestamp", "")) if line is not None else None
        if line is None or stamp is None:
            skipped += 1
            continue
        t = (stamp - start_wall_ms) / 1000
        kind = str(line.get("event", ""))
        if kind == "agent started":  # a new life, in its start-up singleton view (no event)
            fold, seq = _Fold(members=[node], expected=expected), 0
            life = line.get("incarnation")
            incarnation = life if isinstance(life, int) else None
            continue
        if EVENT_KIND.fullmatch(kind) is None or kind in NOT_EVENTS:
            continue
        seq += 1
        fields = {k: v for k, v in line.items() if k not in DROP_FIELDS and k not in _RESERVED}
        record = {"t": t, "node": node, "kind": kind, "src": "log", **fields, "seq": seq,
                  "wall_ms": stamp}  # fmt: skip
        if incarnation is not None:
            record["incarnation"] = incarnation
        records.append(record)
        if fold.apply(kind, line):
            records.append({"t": t, "node": node, "kind": "state", "src": "log",
                            **fold.as_record()})  # fmt: skip
    return records, skipped


_RESERVED = frozenset({"t", "node", "kind", "src", "seq", "incarnation", "wall_ms"})


def mqtt_events(path: Path, names: Mapping[str, int]) -> dict[int, list[dict[str, Any]]]:
    """The tap's `.../<node>/events` messages by node id (node names mapped by `names`)."""
    out: dict[int, list[dict[str, Any]]] = {}
    for line in json_lines(path):
        if line is None or not str(line.get("topic", "")).endswith("/events"):
            continue
        parts = str(line["topic"]).split("/")
        node = names.get(parts[-2]) if len(parts) >= 2 else None
        if node is None:
            continue
        try:
            payload = json.loads(line.get("payload", ""))
        except ValueError:
            continue
        if isinstance(payload, dict) and isinstance(payload.get("wall_ms"), int):
            out.setdefault(node, []).append(payload)
    return out


def mark_mqtt(records: list[Record], mqtt: Mapping[int, list[dict[str, Any]]]) -> Record:
    """Log events also received over MQTT become `src: mqtt` (MQTT's seq as `mqtt_seq`); a
    note says how many."""
    took = 0
    total = 0
    for node, events in mqtt.items():
        pending = sorted(events, key=lambda e: int(e["wall_ms"]))
        used = [False] * len(pending)
        for record in records:
            if record["node"] != node or record["kind"] == "state" or record["src"] != "log":
                continue
            total += 1
            for i, event in enumerate(pending):
                if used[i] or event.get("event") != record["kind"]:
                    continue
                if abs(int(event["wall_ms"]) - int(record.get("wall_ms", 0))) <= MATCH_MS:
                    used[i] = True
                    record["src"] = "mqtt"
                    if isinstance(event.get("seq"), int):
                        record["mqtt_seq"] = event["seq"]  # `seq` stays the log's count
                    took += 1
                    break
    text = f"events: {took} of {total} came over MQTT, the rest from the agents' logs"
    return {"t": 0.0, "node": "lab", "kind": "note", "src": "lab", "text": text}


def qnetd_records(path: Path, start_wall_ms: int) -> list[Record]:
    """`qnetd_vote` records from the qnetd's `decision` lines."""
    records = []
    for line in json_lines(path):
        if line is None or line.get("event") != "decision":
            continue
        stamp = wall_ms(line.get("timestamp", ""))
        votes = line.get("votes")
        if stamp is None or not isinstance(votes, dict):
            continue
        for to, vote in sorted(votes.items()):
            if not str(to).isdigit() or str(vote).lower() not in ("ack", "nack"):
                continue
            records.append({"t": (stamp - start_wall_ms) / 1000, "node": "qnetd",
                            "kind": "qnetd_vote", "src": "log", "cluster": line.get("cluster"),
                            "to": int(to), "vote": str(vote).lower()})  # fmt: skip
    return records


def collect(
    logs: Mapping[str, Path], start_wall_ms: int, expected: Mapping[int, int] | None = None
) -> list[Record]:
    """Every host's records from the paths `Backend.collect` returned (host -> file);
    `expected`: each node's expected votes at start (from its first status)."""
    records: list[Record] = []
    skipped: dict[str, int] = {}
    names = {name: int(name[1:]) for name in logs if _is_node(name)}
    for name, node in names.items():
        start = (expected or {}).get(node, 0)
        got, skipped[name] = agent_records(logs[name], node, start_wall_ms, start)
        records += got
    if "broker" in logs:
        records.append(mark_mqtt(records, mqtt_events(logs["broker"], names)))
    if "qnetd" in logs:
        records += qnetd_records(logs["qnetd"], start_wall_ms)
    bad = {k: v for k, v in skipped.items() if v}
    if bad:
        text = "lines skipped (not JSON or no time): " + ", ".join(
            f"{k} {v}" for k, v in bad.items()
        )
        records.append({"t": 0.0, "node": "lab", "kind": "note", "src": "lab", "text": text})
    return sorted(records, key=lambda r: float(r["t"]))


def _is_node(name: str) -> bool:
    return name[:1] == "n" and name[1:].isdigit()
