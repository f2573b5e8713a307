"""The host side of the SSH backend: `python -m votemesh_lab.remote CMD --id ID ...` (design §4.8).

The control node (`votemesh_lab.ssh`) runs this on every real host over SSH. It owns what the
lab leaves on a host, all of it named by the lab id, so `down` can find it again from nothing:

* daemons started detached (`setsid`, stdin from /dev/null, output appended to a log file) with a
  pidfile `/run/votemesh-lab/<id>/<name>.pid` holding `PID START` (START = field 22 of
  `/proc/PID/stat`, the start time in clock ticks since boot): a signal goes to that PID only
  while its start time still matches, so a recycled PID is never signalled;
* the iptables chain `VML-<id>` (filter table, jumped to from INPUT) that holds the blocks;
* root qdiscs whose handle major is `tc_major(id)` (`votemesh_lab.tc`), on the devices listed in
  `/run/votemesh-lab/<id>/tc-devices`.

Commands (each prints one JSON object on stdout; exit 0, or 1 with {"error": "..."}):

    start --id ID --name NAME --log FILE [--cwd DIR] -- ARGV...   a detached daemon
    signal --id ID --name NAME --sig KILL|STOP|CONT|TERM           only the pidfile's process
    status --id ID                                                  every pidfile: pid, alive
    down --id ID [--grace S]                                        remove everything named ID
    leftovers --id ID                                               what `down` would remove

Standard library only: it runs under whatever Python the host has the votemesh package in.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RUN_ROOT = Path("/run/votemesh-lab")
LAB_ID = re.compile(r"[0-9a-f]{6}")
NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,30}")
SIGNALS = {
    "KILL": signal.SIGKILL,
    "STOP": signal.SIGSTOP,
    "CONT": signal.SIGCONT,
    "TERM": signal.SIGTERM,
}


class RemoteError(RuntimeError):
    """What this host could not do; printed as {"error": ...}, exit 1."""


def chain_name(lab_id: str) -> str:
    """The iptables chain of a lab's blocks (design §4.2)."""
    return f"VML-{lab_id}"


def tc_major(lab_id: str) -> int:
    """The handle major of a lab's root qdiscs: 1..0xfffe from the id (0 and ffff are reserved).

    Sixteen bits cannot hold 24, so two ids can share a major; `down` only deletes a root qdisc
    with this major on a device the lab recorded in `tc-devices`.
    """
    return int(lab_id, 16) % 0xFFFE + 1


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (starttime), or None when the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may hold spaces and ')': the fields after the last ')' start at field 3.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


def run_dir(lab_id: str, root: Path = RUN_ROOT) -> Path:
    """/run/votemesh-lab/<id>: pidfiles and tc-devices."""
    return root / lab_id


def read_pidfile(path: Path) -> tuple[int, int] | None:
    """(pid, start) from a pidfile, None when it is missing or not ours."""
    try:
        pid_text, start_text = path.read_text().split()
        return int(pid_text), int(start_text)
    except (OSError, ValueError):
        return None


def alive(pid: int, start: int) -> bool:
    """The pidfile's process still runs (same PID, same start time; a zombie counts as gone)."""
    if start_time(pid) != start:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def start(
    lab_id: str, name: str, argv: Sequence[str], log: Path, cwd: Path | None
) -> dict[str, Any]:
    """Start `argv` detached; write the pidfile by atomic rename; refuse a second live one."""
    directory = run_dir(lab_id)
    directory.mkdir(parents=True, exist_ok=True)
    pidfile = directory / f"{name}.pid"
    old = read_pidfile(pidfile)
    if old is not None and alive(*old):
        raise RemoteError(f"{name} already runs as pid {old[0]}")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        process = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            cwd=cwd, start_new_session=True,
        )  # fmt: skip
    started = start_time(process.pid)
    if started is None:
        raise RemoteError(f"{name} exited at once (rc {process.wait()}): see {log}")
    temporary = pidfile.with_suffix(".tmp")
    temporary.write_text(f"{process.pid} {started}\n")
    temporary.replace(pidfile)
    # Not waited for: this process exits, the daemon is reparented and lives on in its session.
    process.returncode = 0
    return {"pid": process.pid, "start": started}


def send(lab_id: str, name: str, sig: str) -> dict[str, Any]:
    """Signal the pidfile's process when it is still the one we started."""
    entry = read_pidfile(run_dir(lab_id) / f"{name}.pid")
    if entry is None or not alive(*entry):
        raise RemoteError(f"{name} is not running")
    os.kill(entry[0], SIGNALS[sig])
    return {"pid": entry[0], "signal": sig}


def pidfiles(lab_id: str) -> dict[str, tuple[int, int]]:
    """name -> (pid, start) for every pidfile of the lab."""
    directory = run_dir(lab_id)
    found = {}
    for path in sorted(directory.glob("*.pid")) if directory.is_dir() else []:
        entry = read_pidfile(path)
        if entry is not None:
            found[path.stem] = entry
    return found


def status(lab_id: str) -> dict[str, Any]:
    """Every pidfile with its pid and whether it still runs."""
    return {
        name: {"pid": pid, "alive": alive(pid, started)}
        for name, (pid, started) in pidfiles(lab_id).items()
    }


def _quiet(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=False, timeout=30)


def chain_exists(lab_id: str) -> bool:
    """`iptables -S VML-<id>` succeeds."""
    if shutil.which("iptables") is None:
        return False
    return _quiet(["iptables", "-w", "-S", chain_name(lab_id)]).returncode == 0


def lab_qdiscs(lab_id: str) -> list[str]:
    """Devices whose root qdisc has the lab's handle major and that the lab recorded."""
    recorded = run_dir(lab_id) / "tc-devices"
    try:
        devices = recorded.read_text().split()
    except OSError:
        return []
    handle = f"{tc_major(lab_id):x}:"
    found = []
    for device in devices:
        listing = _quiet(["tc", "-j", "qdisc", "show", "dev", device, "root"])
        if listing.returncode != 0:
            continue
        with contextlib.suppress(ValueError):
            if any(q.get("handle") == handle for q in json.loads(listing.stdout or "[]")):
                found.append(device)
    return found


def leftovers(lab_id: str) -> dict[str, Any]:
    """What of the lab is on this host: live pidfile processes, the chain, qdiscs, the dir."""
    return {
        "processes": sorted(
            f"{name}:{pid}" for name, (pid, st) in pidfiles(lab_id).items() if alive(pid, st)
        ),
        "chain": chain_exists(lab_id),
        "qdiscs": lab_qdiscs(lab_id),
        "run_dir": run_dir(lab_id).exists(),
    }


def _stop_all(lab_id: str, grace: float) -> list[str]:
    """SIGCONT + SIGTERM every live pidfile process, SIGKILL those left after `grace` s."""
    live = {n: e for n, e in pidfiles(lab_id).items() if alive(*e)}
    for pid, _ in live.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)  # a paused daemon cannot act on SIGTERM
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(alive(*e) for e in live.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid, started in live.values():
        if alive(pid, started):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return sorted(f"{name}:{pid}" for name, (pid, _) in live.items())


def _remove_chain(lab_id: str) -> bool:
    if not chain_exists(lab_id):
        return False
    chain = chain_name(lab_id)
    while _quiet(["iptables", "-w", "-D", "INPUT", "-j", chain]).returncode == 0:
        pass
    _quiet(["iptables", "-w", "-F", chain])
    _quiet(["iptables", "-w", "-X", chain])
    return True


def down(lab_id: str, grace: float) -> dict[str, Any]:
    """Stop the pidfile processes, delete the chain and the qdiscs, remove the run dir."""
    processes = _stop_all(lab_id, grace)
    chain = _remove_chain(lab_id)
    qdiscs = [
        device
        for device in lab_qdiscs(lab_id)
        if _quiet(["tc", "qdisc", "del", "dev", device, "root"]).returncode == 0
    ]
    shutil.rmtree(run_dir(lab_id), ignore_errors=True)
    return {"processes": processes, "chain": chain, "qdiscs": qdiscs, "left": leftovers(lab_id)}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m votemesh_lab.remote")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("start", "signal", "status", "down", "leftovers"):
        command = sub.add_parser(name)
        command.add_argument("--id", required=True, dest="lab_id")
        if name in ("start", "signal"):
            command.add_argument("--name", required=True)
    start_cmd = sub.choices["start"]
    start_cmd.add_argument("--log", required=True, type=Path)
    start_cmd.add_argument("--cwd", type=Path)
    start_cmd.add_argument("argv", nargs=argparse.REMAINDER)
    sub.choices["signal"].add_argument("--sig", required=True, choices=sorted(SIGNALS))
    sub.choices["down"].add_argument("--grace", type=float, default=5.0)
    return parser


def _dispatch(args: argparse.Namespace) -> dict[str, Any]:
    if LAB_ID.fullmatch(args.lab_id) is None:
        raise RemoteError(f"lab id {args.lab_id!r}: 6 lowercase hex digits")
    if hasattr(args, "name") and NAME.fullmatch(args.name) is None:
        raise RemoteError(f"name {args.name!r}: 1-31 of a-z, 0-9, '-'")
    if args.command == "start":
        command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        if not command:
            raise RemoteError("start: give the command after --")
        return start(args.lab_id, args.name, command, args.log, args.cwd)
    if args.command == "signal":
        return send(args.lab_id, args.name, args.sig)
    if args.command == "status":
        return status(args.lab_id)
    if args.command == "down":
        return down(args.lab_id, args.grace)
    return leftovers(args.lab_id)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; print its JSON result (or {"error": ...} and exit 1)."""
    args = _parser().parse_args(argv)
    try:
        result = _dispatch(args)
    except (RemoteError, OSError) as exc:
        print(json.dumps({"error": str(exc)}))
        return 1
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
