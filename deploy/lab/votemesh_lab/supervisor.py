"""The long-lived process behind `votemesh-lab up` (docs/design.md §4.2).

`up` writes lab.json (phase "starting", the options) and double-forks
`python -m votemesh_lab.supervisor ID READY_FD` (`setsid`, output to `<workdir>/supervisor.log`).
The supervisor records itself (PID + start time), records the lab's namespaces and TAP devices
**before** it creates them, builds the lab through `backends.NetnsBackend` (hosts, the tap
switch, qnetd, broker, agents; every process under `setpriv --pdeathsig KILL`, started from this
process's only thread: the signal follows the thread that forked), records every process, waits
until each agent answers its control socket and writes one JSON line on READY_FD:
`{"ok": true, "line": ...}` or, after the same teardown as `down`, `{"ok": false, "error": ...}`.

It then serves `control.sock` in the state directory: one JSON request per connection, one
JSON reply (`{"ok": true, ...}` or `{"ok": false, "error": "one line"}`), handled one at a time
(`status`, `partition`, `cut`, `heal`, `shape`, `unshape`, `signal`, `restart`). SIGTERM, SIGINT
or SIGHUP end it: the backend stops every daemon, the lab removes its namespaces, and the state
directory goes (kept, phase "failed", if something could not be removed: `down` retries).
Killed outright, its children die with it (pdeathsig) and `votemesh-lab down` removes the rest.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from votemesh_lab import netns, state
from votemesh_lab.backends import BackendError, LabPlan, NetnsBackend
from votemesh_lab.corostack import CorosyncBackend
from votemesh_lab.grudge import GrudgeError
from votemesh_lab.netem import ImpairmentError
from votemesh_lab.netplan import NetworkPlan
from votemesh_lab.state import LabState, ProcessRecord

REQUEST_LIMIT = 1 << 16
REQUEST_TIMEOUT = 5.0
SIGNAL_NAMES = ("kill", "pause", "resume", "term")


class Stop(BaseException):
    """SIGTERM / SIGINT / SIGHUP: unwind through the teardown."""


def _stop(_signum: int, _frame: FrameType | None) -> None:
    raise Stop


class RequestError(Exception):
    """A control request the supervisor refuses; its text is the one-line answer."""


class Supervisor:
    """One lab: the backend that holds it, its lab.json, its control socket."""

    def __init__(self, record: LabState) -> None:
        self.record = record
        self.backend = CorosyncBackend() if record.options.get("corosync") else NetnsBackend()
        self.network: NetworkPlan | None = None
        self.listener: socket.socket | None = None

    # -- up ---------------------------------------------------------------------------------
    def plan(self) -> LabPlan:
        options = self.record.options
        return LabPlan(
            nodes=int(options["nodes"]), links=int(options.get("links", 1)),
            qnetd=str(options.get("qnetd", "")), broker=bool(options.get("broker", False)),
            seed=int(options.get("seed", 0)), workdir=Path(self.record.workdir),
            lab_id=self.record.lab_id,
        )  # fmt: skip

    def build(self) -> str:
        """Record, then create, the whole lab; the line `up` prints."""
        plan = self.plan()
        prefix = netns.namespace_prefix(self.record.lab_id)
        hosts = plan.host_names()
        self.record.namespaces = [f"{prefix}{netns.SWITCH_HOST}", *(prefix + h for h in hosts)]
        tap = netns.tap_prefix(self.record.lab_id)
        self.record.taps = [f"{tap}{port}" for port in range(1, len(hosts) + 1)]
        self.record.write()  # the intent, before anything exists
        self.backend.up(plan)
        self._record_lab()
        self.network = NetworkPlan(self.backend, hosts)
        wait = float(self.record.options.get("wait", 30.0))
        netns.wait_until(self._all_answer, timeout=wait, what="every agent to answer")
        line = self.network.apply_current()
        if not self.network.verified:
            raise netns.LabError(f"the open network did not verify: {line}")
        self.record.phase = "up"
        self.record.write()
        return line

    def _record_lab(self) -> None:
        lab = self.backend.lab
        if lab is None:
            raise BackendError("the lab is not up")
        self.record.hosts = [
            state.HostRecord(name, _node_id(name), _role(name), host.netns,
                             tuple(self.backend.addresses(name)))
            for name, host in lab.hosts.items()
        ]  # fmt: skip
        found: list[ProcessRecord | None] = []
        if lab.switch_process is not None:
            found.append(ProcessRecord.of("switch", netns.SWITCH_HOST, lab.switch_process.pid))
        for name, host in lab.hosts.items():
            if host.anchor is not None:
                found.append(ProcessRecord.of("anchor", name, host.anchor.pid))
        found += [ProcessRecord.of(t.label, t.host, t.pid) for t in lab.processes if t.alive()]
        self.record.processes += [p for p in found if p is not None]
        self.record.write()

    def _all_answer(self) -> bool | None:
        for name in self.backend.hosts():
            if _role(name) == "agent" and not self.backend.status(name):
                raise netns.NotYetError(f"{name} does not answer yet")
        return True

    # -- serving ----------------------------------------------------------------------------
    def serve(self) -> None:
        """Answer control requests until a signal ends the process."""
        path = self.record.control_socket
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener = listener
        old = os.umask(0o177)
        try:
            listener.bind(str(path))
        finally:
            os.umask(old)
        listener.listen(8)
        while True:
            conn, _ = listener.accept()
            with conn:
                self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(REQUEST_TIMEOUT)
        try:
            data = b""
            while not data.endswith(b"\n") and len(data) < REQUEST_LIMIT:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            reply = self.handle(json.loads(data))
        except (OSError, ValueError, RecursionError) as exc:
            reply = {"ok": False, "error": f"bad request: {exc}"}
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps(reply).encode() + b"\n")

    def handle(self, request: Any) -> dict[str, Any]:
        """One request -> its reply; every refusal is `{"ok": false, "error": one line}`."""
        if not isinstance(request, dict) or not isinstance(request.get("op"), str):
            return {"ok": False, "error": "bad request: want a JSON object with 'op'"}
        op = request["op"]
        handler = getattr(self, f"op_{op}", None)
        if handler is None:
            return {"ok": False, "error": f"unknown op {op!r}"}
        try:
            result: dict[str, Any] = handler(request)
        except (RequestError, GrudgeError, ImpairmentError, netns.LabError) as exc:
            return {"ok": False, "error": str(exc).splitlines()[0] if str(exc) else op}
        except Exception as exc:  # noqa: BLE001 (a bad request must not end the lab)
            print(f"supervisor: request {op} failed", file=sys.stderr)
            traceback.print_exc()
            return {"ok": False, "error": f"{op} failed: {type(exc).__name__}: {exc}"[:200]}
        return {"ok": True, **result}

    def _host(self, request: dict[str, Any]) -> str:
        name = request.get("host")
        if not isinstance(name, str) or name not in self.backend.hosts():
            raise RequestError(f"no host {name!r}: this lab has {', '.join(self.backend.hosts())}")
        return name

    def _network(self) -> NetworkPlan:
        if self.network is None:
            raise RequestError("the lab is not up yet")
        return self.network

    def op_status(self, _request: dict[str, Any]) -> dict[str, Any]:
        nodes = []
        for name in self.backend.hosts():
            daemon = self.backend.daemons.get(name)
            process = daemon.process if daemon is not None else None
            running = process is not None and process.alive()
            paused = running and daemon is not None and daemon.paused
            nodes.append({
                "host": name, "node_id": _node_id(name), "role": _role(name),
                "daemon": "paused" if paused else "running" if running else "down",
                "pid": process.pid if running and process is not None else None,
                "status": self.backend.status(name) if _role(name) == "agent" else {},
            })  # fmt: skip
        return {
            "lab": self.record.lab_id, "nodes": nodes, "qnetd": self._qnetd_votes(),
            "network": self._network().line, "workdir": self.record.workdir,
            "matrix": self._network().matrix.to_request(),
            "matrix_text": self._network().describe(),
        }  # fmt: skip

    def _qnetd_votes(self) -> dict[str, str] | None:
        qnetd = self.backend.qnetd
        if qnetd is None:
            return None
        try:
            from votemesh_lab.demo_corosync import qnetd_view  # noqa: PLC0415 (only with qnetd)

            return {str(node): vote for node, vote in sorted(qnetd_view(qnetd).items())}
        except (OSError, ValueError, KeyError):
            return {}

    def _changed(self, line: str) -> dict[str, Any]:
        return {"line": line, "verified": self._network().verified}

    def op_partition(self, request: dict[str, Any]) -> dict[str, Any]:
        return self._changed(self._network().partition(_names_lists(request.get("groups"))))

    def op_cut(self, request: dict[str, Any]) -> dict[str, Any]:
        pairs = [(a, b) for a, b in _names_lists(request.get("pairs"))]
        return self._changed(self._network().cut(pairs))

    def op_heal(self, _request: dict[str, Any]) -> dict[str, Any]:
        return self._changed(self._network().heal())

    def op_shape(self, request: dict[str, Any]) -> dict[str, Any]:
        params = request.get("params")
        if not isinstance(params, dict) or not params:
            raise RequestError("shape needs at least one key=value (e.g. loss=5% delay=20ms)")
        src, dst = _optional_names(request.get("src")), _optional_names(request.get("dst"))
        one_way = bool(request.get("one_way", False))
        return self._changed(self._network().shape(src, dst, one_way, params))

    def op_unshape(self, request: dict[str, Any]) -> dict[str, Any]:
        src, dst = _optional_names(request.get("src")), _optional_names(request.get("dst"))
        return self._changed(self._network().unshape(src, dst))

    def op_signal(self, request: dict[str, Any]) -> dict[str, Any]:
        host, what = self._host(request), request.get("what")
        if what not in SIGNAL_NAMES:
            raise RequestError(f"signal {what!r}: use one of {', '.join(SIGNAL_NAMES)}")
        try:
            self.backend.signal(host, what)
        except BackendError as exc:
            raise RequestError(str(exc)) from exc
        return {"line": f"{host}: {what} sent"}

    def op_restart(self, request: dict[str, Any]) -> dict[str, Any]:
        host = self._host(request)
        daemon = self.backend.daemons.get(host)
        try:
            if daemon is not None and daemon.process is not None and daemon.process.alive():
                if daemon.paused:
                    self.backend.signal(host, "resume")
                self.backend.signal(host, "term")
            self.backend.start(host)
        except BackendError as exc:
            raise RequestError(str(exc)) from exc
        daemon = self.backend.daemons.get(host)
        if daemon is not None and daemon.process is not None:
            self.record.record(ProcessRecord.of(daemon.process.label, host, daemon.process.pid))
            return {"line": f"{host}: started again (pid {daemon.process.pid})"}
        return {"line": f"{host}: started again"}

    # -- the end ----------------------------------------------------------------------------
    def teardown(self) -> str:
        """Stop everything; remove the state directory. "" or what could not be removed."""
        if self.listener is not None:
            self.listener.close()
        problem = ""
        try:
            self.backend.down()
        except netns.LabError as exc:
            problem = str(exc)
        left = netns.leftovers(self.record.lab_id)
        others = [p for p in left.processes if p != os.getpid()]
        if problem or left.namespaces or left.links or others:
            self.record.phase, self.record.error = "failed", problem or "; ".join(left.lines())
            self.record.write()
            return self.record.error
        shutil.rmtree(self.record.directory, ignore_errors=True)
        return ""


def _node_id(name: str) -> int:
    return int(name[1:]) if name[:1] == "n" and name[1:].isdigit() else 0


def _role(name: str) -> str:
    return "agent" if _node_id(name) else name


def _names_lists(value: Any) -> list[list[str]]:
    if not isinstance(value, list) or not all(
        isinstance(group, list) and all(isinstance(n, str) for n in group) for group in value
    ):
        raise RequestError("bad request: want lists of host names")
    return [list(group) for group in value]


def _optional_names(value: Any) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
        raise RequestError("bad request: want a list of host names or null")
    return list(value)


# ---------------------------------------------------------------- the client side
def request(lab_id: str, doc: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
    """One request to a lab's supervisor; OSError when it does not answer."""
    path = state.state_dir(lab_id) / state.CONTROL_SOCKET
    return netns.json_line_request(path, doc, timeout)


# ---------------------------------------------------------------- the process
def _ready(fd: int, doc: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, json.dumps(doc).encode() + b"\n")
    with contextlib.suppress(OSError):
        os.close(fd)


def run(lab_id: str, ready_fd: int) -> int:
    """Build the lab, tell `up` on `ready_fd`, serve until a signal; teardown in every case."""
    record = state.read(lab_id)
    if record is None:
        _ready(ready_fd, {"ok": False, "error": f"lab {lab_id}: no readable lab.json"})
        return 1
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, _stop)
    supervisor = Supervisor(record)
    record.record(ProcessRecord.of("supervisor", "", os.getpid()))
    error, told, left = "", False, ""
    try:
        started = time.monotonic()
        line = supervisor.build()
        took = time.monotonic() - started
        print(f"lab {lab_id} up in {took:.1f} s; {line}", flush=True)
        _ready(ready_fd, {"ok": True, "line": line, "seconds": round(took, 1)})
        told = True
        supervisor.serve()
    except Stop:
        error = "stopped by a signal"
    except (netns.LabError, GrudgeError, ImpairmentError, OSError, ValueError, KeyError) as exc:
        error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"supervisor: {exc}", file=sys.stderr, flush=True)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)  # `down` may signal again: finish first
        left = supervisor.teardown()
        print(f"lab {lab_id} down{': ' + left if left else ''}", flush=True)
    if not told:
        _ready(ready_fd, {"ok": False, "error": error + (f"; left: {left}" if left else "")})
    return 0 if not left and told else 1


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m votemesh_lab.supervisor LAB_ID READY_FD` (what `votemesh-lab up` runs)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or not args[1].isdigit():
        print("usage: python -m votemesh_lab.supervisor LAB_ID READY_FD", file=sys.stderr)
        return 2
    return run(netns.check_lab_id(args[0]), int(args[1]))


if __name__ == "__main__":
    sys.exit(main())
