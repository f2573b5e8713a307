"""What each `votemesh-lab` command does (cli.py parses; docs/lab.md "votemesh-lab commands").

`up` writes lab.json and double-forks the supervisor (`supervisor.py`), then waits for its one
ready line; `down` and `list` work from nothing but the lab id (`netns.leftovers`,
`netns.remove_lab`); every other command is one request to the lab's `control.sock` (`exec`
enters the host's namespaces itself, through the anchor process recorded in lab.json). A user
mistake raises `UserError`: cli.py prints its one line and exits 1.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from votemesh_lab import netns, state, statusview
from votemesh_lab.state import LabState

MAX_NODES = 32
MAX_LINKS = 8
ALGORITHMS = ("ffsplit", "lms")
BIN = Path(sys.executable).parent
SIGNALS = {"kill": "kill", "stop": "pause", "pause": "pause", "cont": "resume",
           "resume": "resume", "term": "term"}  # fmt: skip
BUILD_SECONDS = 120.0
"""What `up` allows the supervisor beyond --wait: namespaces, switch, qnetd certificates."""


class UserError(Exception):
    """A mistake of the user's: one line that says what to do; exit 1."""


def need_root() -> None:
    reason = netns.missing_reason("tap")
    if reason is not None:
        raise UserError(f"votemesh-lab needs root and iproute2/iptables/util-linux: {reason}")


# ---------------------------------------------------------------- finding the lab and its hosts
def labs_up() -> list[str]:
    """Ids of labs whose supervisor runs."""
    up = []
    for lab_id in state.known_ids():
        record = state.read(lab_id)
        if record is not None and record.process("supervisor") is not None:
            up.append(lab_id)
    return up


def find_lab(lab_id: str | None) -> LabState:
    """The lab named by --lab, or the only one up; UserError otherwise."""
    if lab_id is not None:
        try:
            netns.check_lab_id(lab_id)
        except netns.LabError as exc:
            raise UserError(str(exc)) from exc
        record = state.read(lab_id)
        if record is None or record.process("supervisor") is None:
            raise UserError(f"lab {lab_id} is not up: `votemesh-lab list` shows the labs")
        return record
    up = labs_up()
    if not up:
        raise UserError("no lab is up: start one with `votemesh-lab up --nodes 3`")
    if len(up) > 1:
        raise UserError(f"{len(up)} labs are up ({', '.join(up)}): name one with --lab ID")
    record = state.read(up[0])
    if record is None:
        raise UserError(f"lab {up[0]} went away: `votemesh-lab list` shows the labs")
    return record


def host_name(record: LabState, word: str) -> str:
    """`3` or `n3` -> `n3`; `qnetd`, `broker` as they are; UserError for anything else."""
    name = f"n{word}" if word.isdigit() else word
    names = [h.name for h in record.hosts]
    if name not in names:
        raise UserError(f"no node {word!r} in lab {record.lab_id}: it has {' '.join(names)}")
    return name


def host_list(record: LabState, text: str) -> list[str]:
    """`1,2,qnetd` -> host names."""
    words = [w for w in text.split(",") if w]
    if not words:
        raise UserError(f"{text!r}: name nodes as a comma list, e.g. 1,2")
    return [host_name(record, w) for w in words]


def control(record: LabState, doc: dict[str, Any]) -> dict[str, Any]:
    """One request to the lab's supervisor; its reply, or UserError with its one-line error."""
    from votemesh_lab.supervisor import request  # noqa: PLC0415 (up/down never need it)

    try:
        reply = request(record.lab_id, doc)
    except OSError as exc:
        raise UserError(
            f"lab {record.lab_id}: its supervisor does not answer ({exc}); "
            f"`votemesh-lab down --lab {record.lab_id}` removes what is left"
        ) from exc
    if not reply.get("ok"):
        raise UserError(str(reply.get("error", "refused")))
    return reply


# ---------------------------------------------------------------- up
def _validate_up(args: argparse.Namespace) -> str:
    if not 1 <= args.nodes <= MAX_NODES:
        raise UserError(f"--nodes {args.nodes}: use 1 to {MAX_NODES}")
    if not 1 <= args.links <= MAX_LINKS:
        raise UserError(f"--links {args.links}: use 1 to {MAX_LINKS}")
    if args.qnetd and args.qnetd not in ALGORITHMS:
        raise UserError(f"--qnetd {args.qnetd}: use {' or '.join(ALGORITHMS)}")
    if args.corosync:
        from votemesh_lab.corostack import unavailable_reason as corosync_missing  # noqa: PLC0415

        if (reason := corosync_missing()) is not None:
            raise UserError(f"--corosync: {reason}")
    if args.corosync and args.broker:
        raise UserError("--broker goes with the votemesh agents, not with --corosync")
    if not (math.isfinite(args.wait) and 0 < args.wait <= 3600):
        raise UserError(f"--wait {args.wait}: use a number of seconds above 0, at most 3600")
    if args.broker:
        from votemesh_lab.broker import unavailable_reason  # noqa: PLC0415

        if (reason := unavailable_reason()) is not None:
            raise UserError(f"--broker: {reason}")
    need_root()
    try:
        lab_id = netns.check_lab_id(args.id) if args.id else netns.new_lab_id()
    except netns.LabError as exc:
        raise UserError(str(exc)) from exc
    if netns.lab_namespaces(lab_id) or state.state_dir(lab_id).exists():
        raise UserError(
            f"lab {lab_id} exists: pick another --id or `votemesh-lab down --lab {lab_id}`"
        )
    if state.default_workdir(lab_id).exists():
        raise UserError(
            f"{state.default_workdir(lab_id)} holds an earlier lab's evidence: "
            f"`votemesh-lab down --lab {lab_id} --purge` or pick another --id"
        )
    return lab_id


def _spawn_supervisor(lab_id: str, log: Path) -> tuple[int, int]:
    """Double fork + setsid: the supervisor is nobody's child. Returns (its PID, the read end of
    the pipe on which it writes its ready line); the middle child writes the PID there first."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child never returns)
        try:
            os.close(read_end)
            os.setsid()
            if (grandchild := os.fork()) != 0:
                os.write(write_end, f"{grandchild}\n".encode())
                os._exit(0)
            out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            os.dup2(out, 1)
            os.dup2(out, 2)
            os.set_inheritable(write_end, True)
            command = [sys.executable, "-m", "votemesh_lab.supervisor", lab_id, str(write_end)]
            os.execv(sys.executable, command)
        finally:
            os._exit(127)
    os.close(write_end)
    os.waitpid(pid, 0)
    first = b""
    while not first.endswith(b"\n"):
        chunk = os.read(read_end, 1)  # the middle child wrote it before it exited
        if not chunk:
            raise UserError(f"up failed: could not start the supervisor (log: {log})")
        first += chunk
    return int(first), read_end


def _read_ready(fd: int, timeout: float) -> dict[str, Any] | None:
    import select  # noqa: PLC0415

    data = b""
    deadline = time.monotonic() + timeout
    with os.fdopen(fd, "rb", buffering=0) as pipe:
        while not data.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([pipe], [], [], left)[0]:
                return None
            chunk = pipe.read(4096)
            if not chunk:
                break
            data += chunk
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _interrupted(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def cmd_up(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _interrupted)  # C5: SIGTERM of `up` tears down like Ctrl-C
    lab_id = _validate_up(args)
    workdir = state.default_workdir(lab_id)
    options = {"nodes": args.nodes, "links": args.links, "qnetd": args.qnetd or "",
               "broker": args.broker, "seed": args.seed, "wait": args.wait,
               "corosync": args.corosync}  # fmt: skip
    started = time.monotonic()
    supervisor = 0
    try:
        workdir.mkdir(parents=True, mode=0o700)
        LabState(lab_id, str(workdir), options=options).write()
        supervisor, ready_fd = _spawn_supervisor(lab_id, workdir / "supervisor.log")
        ready = _read_ready(ready_fd, args.wait + BUILD_SECONDS)
    except KeyboardInterrupt:
        if supervisor:  # it tears down what it made; then nothing of it can come back
            netns.stop_pids([supervisor], grace=BUILD_SECONDS)
        netns.remove_lab(lab_id)
        print(f"votemesh-lab: interrupted; lab {lab_id} removed", file=sys.stderr)
        return 130
    if ready is None or not ready.get("ok"):
        netns.remove_lab(lab_id)  # the supervisor tore down already; this removes the rest
        why = "the supervisor gave no answer" if ready is None else ready.get("error")
        raise UserError(f"up failed: {why} (log: {workdir / 'supervisor.log'}); lab removed")
    record = state.read(lab_id)
    hosts = " ".join(h.name for h in record.hosts) if record is not None else ""
    print(f"lab {lab_id} up in {time.monotonic() - started:.1f} s: {hosts}; workdir {workdir}")
    print(ready.get("line", ""))
    return 0


# ---------------------------------------------------------------- down, list
def ours_to_remove(lab_id: str) -> bool:
    """Made by `up` (it has a state directory), or a leftover nothing runs in any more. A lab
    with neither is someone's running test (LabFactory): only `--lab ID` removes it."""
    return state.state_dir(lab_id).exists() or not netns.leftovers(lab_id).processes


def cmd_down(args: argparse.Namespace) -> int:
    need_root()
    skipped = []
    if args.lab is not None:
        try:
            ids = [netns.check_lab_id(args.lab)]
        except netns.LabError as exc:
            raise UserError(str(exc)) from exc
    else:
        found = netns.lab_ids_found()
        ids = [i for i in found if ours_to_remove(i)]
        skipped = [i for i in found if i not in ids]
        if len(ids) > 1 and not args.all:
            raise UserError(f"{len(ids)} labs found ({', '.join(ids)}): use --lab ID or --all")
    for lab_id in skipped:
        print(f"lab {lab_id}: skipped, processes run in it and `up` did not make it "
              f"(a test's lab?): `votemesh-lab down --lab {lab_id}` removes it")  # fmt: skip
    if not ids:
        print("no lab found")
        return 0
    status = 0
    for lab_id in ids:
        removed = netns.remove_lab(lab_id, purge=args.purge)
        left = netns.leftovers(lab_id)
        print(f"lab {lab_id}: removed {', '.join(removed) if removed else 'nothing'}")
        for line in left.lines():
            print(f"left: {line}")
            status = 1
    return status


def cmd_list(_args: argparse.Namespace) -> int:
    need_root()
    ids = netns.lab_ids_found()
    if not ids:
        print("no lab found")
        return 0
    for lab_id in ids:
        record = state.read(lab_id)
        supervisor = record.process("supervisor") if record is not None else None
        if record is not None and supervisor is not None:
            hosts = " ".join(h.name for h in record.hosts)
            print(f"{lab_id}  {record.phase:<8} supervisor {supervisor.pid}  {hosts}")
        else:
            left = netns.leftovers(lab_id)
            what = "; ".join(line.split(" ", 1)[1] for line in left.lines())
            kind = "leftover" if ours_to_remove(lab_id) else "running, not made by up (a test's?)"
            print(f"{lab_id}  {kind}  {what}  (votemesh-lab down --lab {lab_id})")
    return 0


# ---------------------------------------------------------------- status
def cmd_status(args: argparse.Namespace) -> int:
    need_root()
    record = find_lab(args.lab)
    from rich.console import Console  # noqa: PLC0415

    console = Console(width=max(100, Console().width))
    if args.json:
        print(json.dumps(control(record, {"op": "status"}), indent=1))
        return 0
    if not args.watch:
        console.print(statusview.render(control(record, {"op": "status"})))
        return 0
    from rich.live import Live  # noqa: PLC0415

    with Live(
        statusview.render(control(record, {"op": "status"})), console=console, screen=False
    ) as live:
        try:
            while True:
                time.sleep(1.0)
                live.update(statusview.render(control(record, {"op": "status"})))
        except KeyboardInterrupt:
            return 0


# ---------------------------------------------------------------- exec
def cmd_exec(args: argparse.Namespace) -> NoReturn:
    need_root()
    record = find_lab(args.lab)
    name = host_name(record, args.node)
    command = list(args.argv)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise UserError(
            "exec NODE CMD...: say what to run, e.g. `votemesh-lab exec 1 votemesh status`"
        )
    anchors = [p for p in record.live_processes() if p.role == "anchor" and p.host == name]
    if not anchors:
        raise UserError(f"{name}: its namespace anchor is gone; `votemesh-lab down` and `up` again")
    os.environ["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"
    argv = ["nsenter", "-t", str(anchors[-1].pid), "-n", "-m", "--", *command]
    try:
        os.execvp("nsenter", argv)
    except OSError as exc:
        raise UserError(f"exec {command[0]}: {exc}") from exc


# ---------------------------------------------------------------- the network
def _print(reply: dict[str, Any]) -> int:
    """The applied line; exit 1 when the matrix was not verified (the line says why)."""
    print(reply.get("line", ""))
    return 1 if reply.get("verified") is False else 0


def cmd_partition(args: argparse.Namespace) -> int:
    need_root()
    record = find_lab(args.lab)
    groups = [host_list(record, g) for g in args.groups]
    if len(groups) < 2:
        raise UserError("partition needs two groups or more, e.g. `partition 1,2 3,4,5`")
    return _print(control(record, {"op": "partition", "groups": groups}))


def cmd_cut(args: argparse.Namespace) -> int:
    need_root()
    record = find_lab(args.lab)
    pairs = []
    for text in args.pairs:
        src, arrow, dst = text.partition("->")
        if not arrow or not src or not dst:
            raise UserError(f"{text!r}: write a one-way cut as SRC->DST, e.g. 1->2 (quote it)")
        pairs += [[a, b] for a in host_list(record, src) for b in host_list(record, dst)]
    return _print(control(record, {"op": "cut", "pairs": pairs}))


def cmd_heal(args: argparse.Namespace) -> int:
    need_root()
    return _print(control(find_lab(args.lab), {"op": "heal"}))


def _scope(record: LabState, words: Sequence[str]) -> tuple[list[str] | None, list[str] | None]:
    if not words:
        return None, None
    if len(words) != 2:
        raise UserError("name both sides or neither: `shape 1 2,3 loss=5%` or `shape loss=5%`")
    return host_list(record, words[0]), host_list(record, words[1])


def cmd_shape(args: argparse.Namespace) -> int:
    need_root()
    items = list(args.items)
    if "--one-way" in items:  # allowed after the hosts too: `shape 1 2 --one-way loss=5%`
        items.remove("--one-way")
        args.one_way = True
    if "--lab" in items[:-1]:
        at = items.index("--lab")
        args.lab = items[at + 1]
        del items[at : at + 2]
    record = find_lab(args.lab)
    words = [w for w in items if "=" not in w]
    params = dict(w.split("=", 1) for w in items if "=" in w)
    if not params:
        raise UserError("shape needs key=value settings, e.g. `shape loss=5% delay=20ms`")
    src, dst = _scope(record, words)
    doc = {"op": "shape", "src": src, "dst": dst, "one_way": args.one_way, "params": params}
    return _print(control(record, doc))


def cmd_unshape(args: argparse.Namespace) -> int:
    need_root()
    record = find_lab(args.lab)
    src, dst = _scope(record, args.hosts)
    return _print(control(record, {"op": "unshape", "src": src, "dst": dst}))


# ---------------------------------------------------------------- processes
def cmd_signal(args: argparse.Namespace) -> int:
    need_root()
    record = find_lab(args.lab)
    name = host_name(record, args.node)
    if args.command == "restart":
        return _print(control(record, {"op": "restart", "host": name}))
    return _print(control(record, {"op": "signal", "host": name, "what": SIGNALS[args.command]}))
