"""`/run/votemesh-lab/<id>/lab.json`: the intent log of one lab (docs/design.md §4.2).

`votemesh-lab up` writes the file before it creates anything, and again (by atomic replace:
write a temporary file in the same directory, fsync, rename) each time it is about to create a
resource or has started a process: namespaces and TAP devices are recorded **before** they
exist, processes with their PID **and start time** (`/proc/PID/stat` field 22, clock ticks since
boot), so a recycled PID is never taken for ours. `down` reads it when it is there, and works
without it (`netns.leftovers`): the file is a help, never the only record.

The state directory also holds the supervisor's `control.sock` and nothing else; the lab's
evidence (logs, configs, per-host private directories) lives in the work directory
`/var/tmp/votemesh-lab/<id>/`, kept after `down` unless `--purge`.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATE_ROOT = Path("/run/votemesh-lab")
WORK_ROOT = Path("/var/tmp/votemesh-lab")  # noqa: S108 (root-owned, kept: design §4.2)
STATE_FILE = "lab.json"
CONTROL_SOCKET = "control.sock"
FORMAT = 1


def state_dir(lab_id: str) -> Path:
    """`/run/votemesh-lab/<id>/`."""
    return STATE_ROOT / lab_id


def default_workdir(lab_id: str) -> Path:
    """`/var/tmp/votemesh-lab/<id>/`."""
    return WORK_ROOT / lab_id


def start_time(pid: int) -> int | None:
    """Field 22 of `/proc/PID/stat` (start time in clock ticks); None if no such process or a
    zombie (it is gone, only not reaped yet)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 2 (comm) is in parentheses and may hold spaces or ')': split after the last ')'.
    rest = text[text.rindex(")") + 2 :].split()
    state, start = rest[0], rest[19]  # fields 3 and 22
    return None if state in {"Z", "X"} else int(start)


def same_process(pid: int, started: int) -> bool:
    """PID `pid` is still the process that started at `started` (and is not a zombie)."""
    return start_time(pid) == started


@dataclass(frozen=True)
class ProcessRecord:
    """A process of the lab: its role (supervisor, switch, anchor, agent, qnetd, broker,
    corosync...), the host it runs in ("" for the root namespace), PID and start time."""

    role: str
    host: str
    pid: int
    start: int

    @classmethod
    def of(cls, role: str, host: str, pid: int) -> ProcessRecord | None:
        """The record of a running process; None if it is already gone."""
        started = start_time(pid)
        return None if started is None else cls(role, host, pid, started)


@dataclass(frozen=True)
class HostRecord:
    """One lab host: its name, node id (0 for qnetd and broker), role, namespace, addresses."""

    name: str
    node_id: int
    role: str
    netns: str
    addresses: tuple[str, ...]


@dataclass
class LabState:
    """What lab.json holds. `phase`: starting | up | failed | stopping."""

    lab_id: str
    workdir: str
    created: float = field(default_factory=time.time)
    phase: str = "starting"
    options: dict[str, Any] = field(default_factory=dict)
    namespaces: list[str] = field(default_factory=list)
    taps: list[str] = field(default_factory=list)
    hosts: list[HostRecord] = field(default_factory=list)
    processes: list[ProcessRecord] = field(default_factory=list)
    error: str = ""

    @property
    def directory(self) -> Path:
        return state_dir(self.lab_id)

    @property
    def control_socket(self) -> Path:
        return self.directory / CONTROL_SOCKET

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["format"] = FORMAT
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> LabState:
        """ValueError (or KeyError, TypeError) on a document this version did not write."""
        if doc.get("format") != FORMAT:
            raise ValueError(f"lab.json format {doc.get('format')!r}, want {FORMAT}")
        return cls(
            lab_id=str(doc["lab_id"]),
            workdir=str(doc["workdir"]),
            created=float(doc["created"]),
            phase=str(doc["phase"]),
            options=dict(doc["options"]),
            namespaces=[str(n) for n in doc["namespaces"]],
            taps=[str(t) for t in doc["taps"]],
            hosts=[
                HostRecord(
                    h["name"], int(h["node_id"]), h["role"], h["netns"], tuple(h["addresses"])
                )
                for h in doc["hosts"]
            ],
            processes=[
                ProcessRecord(p["role"], p["host"], int(p["pid"]), int(p["start"]))
                for p in doc["processes"]
            ],
            error=str(doc.get("error", "")),
        )

    def record(self, record: ProcessRecord | None) -> None:
        """Add a process (None: it was already gone) and write the file."""
        if record is not None:
            self.processes.append(record)
            self.write()

    def live_processes(self) -> list[ProcessRecord]:
        """The recorded processes that still run (same PID, same start time)."""
        return [p for p in self.processes if same_process(p.pid, p.start)]

    def process(self, role: str) -> ProcessRecord | None:
        """The last recorded process of `role` that still runs."""
        live = [p for p in self.live_processes() if p.role == role]
        return live[-1] if live else None

    def write(self) -> None:
        """Atomic replace: a reader sees the old file or the new one, never a part."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.directory / STATE_FILE
        tmp = path.with_name(f".{STATE_FILE}.{os.getpid()}.tmp")
        with tmp.open("w") as out:
            json.dump(self.to_dict(), out, indent=1, sort_keys=True)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(path)


def read(lab_id: str) -> LabState | None:
    """The lab's state, or None when lab.json is missing or unreadable (down works without)."""
    path = state_dir(lab_id) / STATE_FILE
    try:
        return LabState.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def known_ids() -> list[str]:
    """Ids that have a state directory."""
    with contextlib.suppress(OSError):
        return sorted(p.name for p in STATE_ROOT.iterdir() if p.is_dir())
    return []
