"""Helpers of the `votemesh-lab` command tests: run the installed command, find traces of a lab
by means independent of `netns.leftovers` (ip netns list, ip link, /proc/*/ns/net,
/proc/self/mountinfo, /proc/PID/stat)."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from votemesh_lab import state
from votemesh_lab.netns import missing_reason

BIN = Path(sys.executable).parent
REASON = missing_reason("tap")


def lab_cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """`votemesh-lab ARGS` as a user runs it (the venv's entry point)."""
    return subprocess.run(
        [str(BIN / "votemesh-lab"), *args], capture_output=True, text=True, timeout=timeout,
        check=False,
    )  # fmt: skip


def fresh_id() -> str:
    return secrets.token_hex(3)


def status(lab_id: str) -> dict[str, Any]:
    result = lab_cli("status", "--lab", lab_id, "--json")
    assert result.returncode == 0, result.stderr
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def agents(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """host -> its agent's status document ({} when it does not answer)."""
    return {n["host"]: n["status"] for n in doc["nodes"] if n["role"] == "agent"}


def wait_for(lab_id: str, want: Mapping[str, tuple[tuple[int, ...], bool]], timeout: float = 30.0
             ) -> dict[str, Any]:  # fmt: skip
    """Poll `status` until each named host shows (members, quorate); AssertionError with the
    last document otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        doc = status(lab_id)
        seen = {
            host: (tuple(d.get("members", ())), bool(d.get("quorate")))
            for host, d in agents(doc).items()
            if host in want
        }
        if seen == want:
            return doc
        if time.monotonic() > deadline:
            raise AssertionError(f"want {want}, saw {seen}")
        time.sleep(0.3)


@dataclass(frozen=True)
class Footprint:
    """What a running lab looks like from outside: namespace inodes and process start times."""

    lab_id: str
    netns_inodes: frozenset[int]
    pids: dict[int, int]


def footprint(lab_id: str) -> Footprint:
    """Taken while the lab runs: its /run/netns inodes, its recorded and in-namespace PIDs."""
    inodes = frozenset(p.stat().st_ino for p in Path("/run/netns").glob(f"vml-{lab_id}-*"))
    pids: dict[int, int] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (proc / "ns" / "net").stat().st_ino in inodes:
                    started = state.start_time(int(proc.name))
                    if started is not None:
                        pids[int(proc.name)] = started
            except OSError:
                continue
    record = state.read(lab_id)
    if record is not None:
        pids.update({p.pid: p.start for p in record.live_processes()})
    return Footprint(lab_id, inodes, pids)


def traces(before: Footprint) -> list[str]:
    """Everything of the lab still there, found without `netns.leftovers`."""
    lab_id, found = before.lab_id, []
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    found += [f"netns {line}" for line in listing.stdout.splitlines() if f"vml-{lab_id}-" in line]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    found += [f"link {line}" for line in links.stdout.splitlines() if lab_id in line]
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                inside = (proc / "ns" / "net").stat().st_ino in before.netns_inodes
            except OSError:
                continue
            if inside and state.start_time(int(proc.name)) is not None:
                found.append(f"process {proc.name} in a lab namespace")
    found += [f"pid {p}" for p, s in before.pids.items() if state.same_process(p, s)]
    for proc in Path("/proc").iterdir():  # a supervisor of the lab, by its command line
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0") if proc.name.isdigit() else []
        except OSError:
            continue
        if b"votemesh_lab.supervisor" in argv and lab_id.encode() in argv:
            found.append(f"supervisor {proc.name}")
    found += [f"root namespace {line}" for line in root_lab_routes()]
    mountinfo = Path("/proc/self/mountinfo").read_text().splitlines()
    found += [f"mount {line}" for line in mountinfo if lab_id in line]
    if state.state_dir(lab_id).exists():
        found.append(f"state dir {state.state_dir(lab_id)}")
    return found


def root_lab_routes() -> list[str]:
    """Addresses and routes of the lab subnets (198.18.0.0/16) in the root namespace (C1)."""
    lines = []
    for args in (["ip", "-4", "-o", "addr"], ["ip", "-4", "route", "show", "table", "all"]):
        out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
        lines += [line for line in out.splitlines() if "198.18." in line]
    return lines


def wait_no_traces(before: Footprint, timeout: float = 10.0) -> list[str]:
    """Traces after up to `timeout` s (a SIGKILLed process may take a moment to be reaped)."""
    deadline = time.monotonic() + timeout
    while (left := traces(before)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """Assert exit 1, nothing on stdout, exactly one line on stderr, no traceback; the line."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == "", result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]
