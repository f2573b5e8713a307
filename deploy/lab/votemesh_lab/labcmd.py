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
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from votemesh_lab import netns, state
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
        raise UserError("--corosync is not in this build yet: `make demo-corosync` runs that stack")
    if args.wait <= 0:
        raise UserError(f"--wait {args.wait}: use a number of seconds above 0")
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


def _spawn_supervisor(lab_id: str, log: Path) -> int:
    """Double fork + setsid: the supervisor is nobody's child; returns the ready pipe's end."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child never returns)
        try:
            os.close(read_end)
            os.setsid()
            if os.fork() != 0:
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
    return read_end


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


def cmd_up(args: argparse.Namespace) -> int:
    lab_id = _validate_up(args)
    workdir = state.default_workdir(lab_id)
    workdir.mkdir(parents=True, mode=0o700)
    options = {"nodes": args.nodes, "links": args.links, "qnetd": args.qnetd or "",
               "broker": args.broker, "seed": args.seed, "wait": args.wait}  # fmt: skip
    LabState(lab_id, str(workdir), options=options).write()
    started = time.monotonic()
    try:
        ready = _read_ready(_spawn_supervisor(lab_id, workdir / "supervisor.log"),
                            args.wait + BUILD_SECONDS)  # fmt: skip
    except KeyboardInterrupt:
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
def cmd_down(args: argparse.Namespace) -> int:
    need_root()
    if args.all:
        ids = netns.lab_ids_found()
    elif args.lab is not None:
        try:
            ids = [netns.check_lab_id(args.lab)]
        except netns.LabError as exc:
            raise UserError(str(exc)) from exc
    else:
        ids = netns.lab_ids_found()
        if len(ids) > 1:
            raise UserError(f"{len(ids)} labs found ({', '.join(ids)}): use --lab ID or --all")
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
            print(f"{lab_id}  leftover  {what}  (votemesh-lab down --lab {lab_id})")
    return 0


# ---------------------------------------------------------------- status
def _links(doc: dict[str, Any]) -> str:
    up: dict[int, list[int]] = {}
    for peer in doc.get("peers", ()):
        for link in peer.get("links", ()):
            counts = up.setdefault(int(link.get("link", 0)), [0, 0])
            counts[0] += 1 if link.get("up") else 0
            counts[1] += 1
    return " ".join(f"L{k} {u}/{n}" for k, (u, n) in sorted(up.items())) or "-"


def _qdevice(doc: dict[str, Any]) -> str:
    qdevice = doc.get("qdevice") or {}
    if not qdevice.get("configured"):
        return "-"
    if qdevice.get("vote"):
        return f"vote ({qdevice.get('votes')})"
    return "no vote" if qdevice.get("connected") else "not connected"


def status_rows(reply: dict[str, Any]) -> list[list[str]]:
    """One row per host: node, daemon, ring, members, quorate, votes, qdevice, links."""
    rows = []
    for node in reply.get("nodes", ()):
        doc = node.get("status") or {}
        if node.get("role") != "agent" or not doc:
            rows.append([node["host"], node["daemon"], *["-"] * 6])
            continue
        members = ",".join(str(m) for m in doc.get("members", ()))
        rows.append([
            node["host"], node["daemon"], str(doc.get("ring", "-")), members,
            "yes" if doc.get("quorate") else "NO",
            f"{doc.get('total_votes')}/{doc.get('expected_votes')}", _qdevice(doc), _links(doc),
        ])  # fmt: skip
    return rows


HEADERS = ["node", "daemon", "ring", "members", "quorate", "votes", "qdevice", "links"]


def _qnetd_line(reply: dict[str, Any]) -> str:
    votes = reply.get("qnetd")
    if votes is None:
        return ""
    shown = " ".join(f"n{n}={v}" for n, v in votes.items()) or "(no clients yet)"
    return f"qnetd votes: {shown}"


def render(reply: dict[str, Any]) -> Any:
    """The status table as a rich renderable (a Group of the table and the footer lines)."""
    from rich.console import Group  # noqa: PLC0415 (only status draws)
    from rich.table import Table  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415

    table = Table(title=f"lab {reply.get('lab')}", title_justify="left", box=None)
    for header in HEADERS:
        table.add_column(header)
    for row in status_rows(reply):
        style = "red" if row[4] == "NO" or row[1] != "running" else None
        table.add_row(*row, style=style)
    footer = [line for line in (_qnetd_line(reply), f"network: {reply.get('network')}") if line]
    return Group(table, *(Text(line) for line in footer))


def cmd_status(args: argparse.Namespace) -> int:
    need_root()
    record = find_lab(args.lab)
    from rich.console import Console  # noqa: PLC0415

    console = Console(width=max(100, Console().width))
    if args.json:
        print(json.dumps(control(record, {"op": "status"}), indent=1))
        return 0
    if not args.watch:
        console.print(render(control(record, {"op": "status"})))
        return 0
    from rich.live import Live  # noqa: PLC0415

    with Live(render(control(record, {"op": "status"})), console=console, screen=False) as live:
        try:
            while True:
                time.sleep(1.0)
                live.update(render(control(record, {"op": "status"})))
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
    record = find_lab(args.lab)
    words = [w for w in args.items if "=" not in w]
    params = dict(w.split("=", 1) for w in args.items if "=" in w)
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
