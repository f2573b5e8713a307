"""Hosts in network namespaces on a private switch: run commands, partition, heal, clean up.

One lab has an id of 6 hex digits, and every resource carries it (docs/design.md §4.2)::

    vml-<id>-sw     holds only the bridge "br0" and one veth port per host (or the tap switch)
    vml-<id>-n1     a host: "lo" and "eth0" (veth or TAP), one address on the lab subnet
    vml-<id>-qnetd  ...any number of hosts, named by the caller
    t<id><port>     the TAP devices of a tap lab (made in, and moved out of, vml-<id>-sw)

The switch lives in a namespace of its own, never in the root namespace (where the host's
br_netfilter would send bridged frames through the host's FORWARD chain). Hosts get no default
route and nothing links the lab to the host's interfaces: traffic stays on the lab subnet, which
`_build` checks in every host (C1).

Each host also has a private mount namespace, held open by an anchor process (`sleep infinity`,
started through nsenter + unshare). Per-host directories `<workdir>/<host>/<path>` are
bind-mounted over the paths in `private_dirs`, so daemons with compiled-in paths
(/etc/votemesh, /var/lib/votemesh, /run, corosync's /etc/corosync ...) do not collide; a path
that does not exist on the real host is made inside an overlay of its nearest existing parent
(upper directory under `<workdir>/<host>/.overlay/`), so the real host never changes.
`Host.host_path()` maps such a path back to the host side. Every command in a host runs
through `nsenter -t <anchor> -n -m`.

Partitions are iptables DROP rules in a chain of our own (`VMLAB-IN`, jumped to from INPUT) inside
the receiving host's namespace: a rule in B dropping A's address makes A -> B one-way silent.
The host's own rules are never touched.

`Lab(..., switch="tap")` replaces the bridge by `votemesh_lab.switch`, a userspace switch process
in the "-sw" namespace whose TAP devices become the hosts' eth0: then `impair()` / `impair_all()`
add delay, jitter, loss, duplication and rate per directed host pair, and `block()`,
`partition()` and `heal()` drop frames in the switch instead of using iptables (the VMLAB-IN
chain stays, empty). Hosts of a tap lab get fixed MACs and permanent neighbour entries for each
other, so ARP never depends on loss and a one-way block stays one-way.

Cleanup (`Lab.close()`, the context manager, `LabFactory`) stops only the processes the lab
started, by PID (SIGTERM, then SIGKILL), then the anchors, then deletes the namespaces; deleting
the switch namespace deletes every veth pair. Long-lived processes are started under
`setpriv --pdeathsig KILL`, so they die with the process that started them even when it is killed
outright; what such a lab leaves (empty namespaces, a state directory) is found by
`leftovers(lab_id)` and removed by `remove_lab(lab_id)` (`votemesh-lab down`, C3), which work
from nothing but the id.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import json
import os
import re
import secrets
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from votemesh_lab.grudge import Matrix
    from votemesh_lab.probe import Prober, Verification

from votemesh_lab import state

#: RFC 2544 benchmarking range: never routed, so it cannot shadow a real network.
DEFAULT_SUBNET = ipaddress.IPv4Network("198.18.0.0/24")
PARTITION_CHAIN = "VMLAB-IN"
BRIDGE = "br0"
LINK = "eth0"
HOST_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,19}")
REQUIRED_TOOLS = ("ip", "nsenter", "unshare", "setpriv", "iptables", "iptables-restore", "sleep")
SWITCHES = ("bridge", "tap")
PREFIX = "vml-"
"""Every namespace of a lab is `vml-<id>-<host>` (and `vml-<id>-sw`)."""
LAB_ID = re.compile(r"[0-9a-f]{6}")
LAB_NAMESPACE = re.compile(r"^vml-([0-9a-f]{6})-")
SWITCH_HOST = "sw"
HOST_DIRS = ("/etc/votemesh", "/var/lib/votemesh", "/etc/corosync", "/var/lib/corosync", "/run")
"""What every host of `votemesh-lab up` has private: the daemons (votemesh's, corosync's) run
with their default paths."""
PACKAGE_PARENT = Path(__file__).resolve().parents[1]
"""The directory holding `votemesh_lab`: `python -m votemesh_lab.switch` runs from there."""

T = TypeVar("T")


def new_lab_id() -> str:
    """A fresh lab id: 6 hex digits."""
    return secrets.token_hex(3)


def check_lab_id(lab_id: str) -> str:
    """`lab_id` itself if it is 6 lower-case hex digits; LabError (one line) otherwise."""
    if LAB_ID.fullmatch(lab_id) is None:
        raise LabError(f"lab id {lab_id!r}: use 6 hex digits (a-f, 0-9), e.g. 3fa2c1")
    return lab_id


def namespace_prefix(lab_id: str) -> str:
    """`vml-<id>-`: what every namespace of the lab starts with."""
    return f"{PREFIX}{lab_id}-"


def tap_prefix(lab_id: str) -> str:
    """`t<id>`: what every TAP device of the lab starts with (then the port number)."""
    return f"t{lab_id}"


def host_mac(address: str) -> str:
    """The fixed, locally administered MAC of a tap-lab host: 02:00 + its IPv4 address."""
    return "02:00:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(address).packed)


class LabError(RuntimeError):
    """The lab could not be set up, a command in a host failed, or cleanup left something."""


class NotYetError(LabError):
    """Raised by a `wait_until` probe to say why its condition is not met yet."""


def missing_reason(switch: str = "bridge") -> str | None:
    """Why a lab (with this kind of switch) cannot run here, or None if it can."""
    for tool in REQUIRED_TOOLS:
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt-get install iproute2 iptables util-linux)"
    if os.geteuid() != 0:
        return "needs root: creates network and mount namespaces"
    if switch == "tap" and not Path("/dev/net/tun").exists():
        return "no /dev/net/tun: the tap switch needs the tun module (modprobe tun)"
    return None


def _run(args: Sequence[str], *, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(args), capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise LabError(
            f"{shlex.join(args)} exited {result.returncode}: "
            f"{result.stderr.strip() or result.stdout.strip()}"
        )
    return result


def stop_process(process: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """SIGTERM the process we started, SIGKILL it after `grace` seconds, and reap it."""
    stop_processes([process], grace)


def stop_processes(processes: Sequence[subprocess.Popen[Any]], grace: float = 5.0) -> None:
    """SIGTERM all of them at once, SIGKILL those still running after `grace` s, reap all."""
    running = [p for p in processes if p.poll() is None]
    for process in running:
        process.terminate()
    deadline = time.monotonic() + grace
    for process in running:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=grace)


def json_line_request(path: Path, request: dict[str, Any], timeout: float) -> dict[str, Any]:
    """One JSON line to a unix stream socket, one JSON object back (the switch's and the
    supervisor's control protocol); OSError when nobody answers, `{"ok": false}` on no reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    reply = json.loads(data) if data else None
    return reply if isinstance(reply, dict) else {"ok": False, "error": "no reply"}


def wait_until(
    probe: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.25
) -> T:
    """Poll `probe` until it returns something other than None; LabError after `timeout` s.

    A probe may raise NotYetError to say why it is not there yet; the timeout message names
    `what` and carries the last such reason, so a failed wait says what it was waiting for. Any
    other error (a daemon died, a command failed) ends the wait at once.
    """
    deadline = time.monotonic() + timeout
    last_error = ""
    while True:
        try:
            value = probe()
        except NotYetError as exc:
            value, last_error = None, str(exc)
        if value is not None:
            return value
        if time.monotonic() >= deadline:
            raise LabError(f"timed out after {timeout:.1f} s waiting for {what}: {last_error}")
        time.sleep(interval)


@dataclass
class TrackedProcess:
    """A long-lived process the lab started in one of its hosts."""

    host: str
    label: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        """The PID of the program itself (nsenter and setpriv exec into it)."""
        return self.process.pid

    def alive(self) -> bool:
        """Still running."""
        return self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of its output, for error messages."""
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Host:
    """One network namespace + private mount namespace in a lab, with one address."""

    name: str
    netns: str
    address: str
    root: Path
    private_dirs: tuple[str, ...]
    lab: Lab = field(repr=False)
    anchor: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def nsenter(self) -> list[str]:
        """Command prefix entering this host's network and mount namespaces."""
        if self.anchor is None or self.anchor.poll() is not None:
            raise LabError(f"host {self.name}: anchor process is not running")
        return ["nsenter", "-t", str(self.anchor.pid), "-n", "-m", "--"]

    def run(
        self,
        args: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 60.0,
        input_text: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command to completion inside the host; LabError on failure when `check`."""
        full = [*self.nsenter(), *args]
        result = subprocess.run(
            full, capture_output=True, text=True, timeout=timeout, check=False, input=input_text
        )
        if check and result.returncode != 0:
            raise LabError(
                f"[{self.name}] {shlex.join(args)} exited {result.returncode}: "
                f"{(result.stderr.strip() or result.stdout.strip())[-2000:]}"
            )
        return result

    def start(self, args: Sequence[str], *, label: str) -> TrackedProcess:
        """Start a long-lived process inside the host; the lab stops it on close."""
        return self.lab.track(self, args, label=label)

    def host_path(self, inside: str) -> Path:
        """Where a path under one of the host's private directories lives on the real host."""
        for private in sorted(self.private_dirs, key=len, reverse=True):
            if inside == private or inside.startswith(private.rstrip("/") + "/"):
                return self.root / inside.lstrip("/")
        raise LabError(f"{inside} is not under a private directory of {self.name}")


def _overlay_parent(path: str) -> str | None:
    """None if `path` is a directory here; else its nearest existing parent, to be overlaid.

    LabError when it cannot be made private without changing the real host: not absolute, not
    a directory, or only `/` exists above it.
    """
    if not path.startswith("/") or ".." in Path(path).parts:
        raise LabError(f"private directory {path!r}: use an absolute path without '..'")
    here = Path(path)
    if here.is_dir():
        return None
    if here.exists():
        raise LabError(f"cannot make {path} private: it is not a directory on this host")
    parent = next(p for p in here.parents if p.is_dir())
    if parent == Path("/"):
        raise LabError(f"cannot make {path} private: its parent {here.parent} does not exist")
    return str(parent)


def _private_mounts(root: Path, private_dirs: Sequence[str]) -> list[str]:
    """Shell lines for the anchor: overlays of missing paths' parents, then the bind mounts.

    `<root>/<path>` is bind-mounted over each path; a path missing on the real host is first
    created inside an overlay of its nearest existing parent (upper in `<root>/.overlay/`).
    """
    lines = []
    parents = sorted({p for d in private_dirs if (p := _overlay_parent(d)) is not None}, key=len)
    for parent in parents:
        base = root / ".overlay" / parent.strip("/").replace("/", "-")
        upper, work = base / "upper", base / "work"
        upper.mkdir(parents=True, exist_ok=True)
        work.mkdir(parents=True, exist_ok=True)
        lines.append(
            f"mount -t overlay overlay -o lowerdir={parent},upperdir={upper},workdir={work} "
            f"{shlex.quote(parent)}"
        )
    for private in sorted(private_dirs, key=len):
        source = root / private.lstrip("/")
        source.mkdir(parents=True, exist_ok=True)
        quoted = shlex.quote(private)
        lines.append(f"mkdir -p {quoted}; mount --bind {shlex.quote(str(source))} {quoted}")
    return lines


class Lab:
    """A bridge (or tap switch) and hosts in network namespaces; `close()` removes it all.

    `switch="tap"`: hosts hang off a `votemesh_lab.switch` process (seeded with `switch_seed`)
    instead of a kernel bridge, which makes `impair()` and `impair_all()` available.
    """

    def __init__(
        self,
        workdir: Path,
        host_names: Sequence[str],
        *,
        private_dirs: Sequence[str] = (),
        subnet: ipaddress.IPv4Network = DEFAULT_SUBNET,
        switch: str = "bridge",
        switch_seed: int | None = None,
        lab_id: str | None = None,
    ) -> None:
        if switch not in SWITCHES:
            raise LabError(f"switch {switch!r}: use one of {', '.join(SWITCHES)}")
        if len(set(host_names)) != len(host_names) or not host_names:
            raise LabError(f"host names must be unique and non-empty: {host_names}")
        for name in host_names:
            if HOST_NAME.fullmatch(name) is None:
                raise LabError(f"host name {name!r}: use 1-20 of a-z, 0-9 and '-'")
        if len(host_names) + 2 > subnet.num_addresses - 2:
            raise LabError(f"{subnet} is too small for {len(host_names)} hosts")
        for private in private_dirs:
            _overlay_parent(private)  # LabError for a path that cannot be made private
        self.lab_id = check_lab_id(lab_id) if lab_id is not None else new_lab_id()
        self.prefix = namespace_prefix(self.lab_id)
        self.workdir = workdir
        self.subnet = subnet
        self.private_dirs = tuple(private_dirs)
        self.bridge_netns = f"{self.prefix}{SWITCH_HOST}"
        self.hosts: dict[str, Host] = {}
        self.processes: list[TrackedProcess] = []
        self._netns_created: list[str] = []
        self._closed = False
        self.switch = switch
        self.switch_seed = switch_seed
        self.switch_process: subprocess.Popen[bytes] | None = None
        self._switch_dir: Path | None = None
        self._ports: dict[str, int] = {name: i for i, name in enumerate(host_names, start=1)}
        addresses = subnet.hosts()
        next(addresses)  # .1 stays free (a gateway address, by habit; there is no gateway)
        for name in host_names:
            self.hosts[name] = Host(
                name=name,
                netns=f"{self.prefix}{name}",
                address=str(next(addresses)),
                root=workdir / name,
                private_dirs=self.private_dirs,
                lab=self,
            )
        taken = lab_namespaces(self.lab_id)
        if taken:
            raise LabError(f"lab {self.lab_id} exists ({' '.join(taken)}): pick another id")
        _OPEN_LABS.append(self)
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    # -- set-up ------------------------------------------------------------------------------

    def _add_netns(self, name: str) -> None:
        _run(["ip", "netns", "add", name])
        self._netns_created.append(name)

    def _build(self) -> None:
        self._add_netns(self.bridge_netns)
        br = ["ip", "-n", self.bridge_netns]
        if self.switch == "tap":
            self._start_switch()
        else:
            _run([*br, "link", "add", BRIDGE, "type", "bridge"])
            _run([*br, "link", "set", BRIDGE, "up"])
        for index, host in enumerate(self.hosts.values(), start=1):
            self._add_netns(host.netns)
            inside = ["ip", "-n", host.netns]
            if self.switch == "tap":
                # The switch made the TAP inside the bridge namespace; moving it keeps the
                # switch's fd working. Fixed MAC: 02:00 + the IPv4 address.
                _run([*br, "link", "set", self._tap_name(index), "netns", host.netns,
                      "name", LINK])  # fmt: skip
                _run([*inside, "link", "set", LINK, "address", host_mac(host.address)])
            else:
                port = f"port{index}"
                # Created inside the bridge namespace with the peer placed straight into the
                # host's: no lab interface ever appears in the root namespace.
                _run([*br, "link", "add", port, "type", "veth", "peer", "name", LINK,
                      "netns", host.netns])  # fmt: skip
                _run([*br, "link", "set", port, "master", BRIDGE, "up"])
            _run([*inside, "addr", "add", f"{host.address}/{self.subnet.prefixlen}", "dev", LINK])
            _run([*inside, "link", "set", LINK, "up"])
            _run([*inside, "link", "set", "lo", "up"])
            self._start_anchor(host)
            host.run(["iptables", "-w", "-N", PARTITION_CHAIN])
            host.run(["iptables", "-w", "-I", "INPUT", "-j", PARTITION_CHAIN])
        if self.switch == "tap":
            self._add_static_neighbours()
        for host in self.hosts.values():
            self._check_routes(host)

    def _check_routes(self, host: Host) -> None:
        """C1: a host routes only the lab subnet (no default route, nothing else)."""
        routes = _run(["ip", "-n", host.netns, "-4", "route", "show"]).stdout.splitlines()
        for line in routes:
            destination = line.split()[0] if line.strip() else ""
            try:
                inside = ipaddress.IPv4Network(destination).subnet_of(self.subnet)
            except ValueError:
                inside = False
            if not inside:
                raise LabError(f"host {host.name} has a route outside the lab: {line.strip()}")

    # -- the tap switch ----------------------------------------------------------------------

    @property
    def _tap_prefix(self) -> str:
        return tap_prefix(self.lab_id)

    def _tap_name(self, port: int) -> str:
        return f"{self._tap_prefix}{port}"

    def _start_switch(self) -> None:
        """Start votemesh_lab.switch in the bridge namespace and wait for its "ready"."""
        # A unix socket path must stay under 108 bytes; pytest's tmp_path can be longer.
        self._switch_dir = Path(tempfile.mkdtemp(prefix=f"{self.prefix}sw-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = ["setpriv", "--pdeathsig", "KILL", "nsenter",
                f"--net=/run/netns/{self.bridge_netns}", "--",
                sys.executable, "-m", "votemesh_lab.switch", "--ports", str(len(self.hosts)),
                "--prefix", self._tap_prefix, "--control", str(self._switch_socket),
                "--hosts", ",".join(self.hosts)]  # fmt: skip
        if self.switch_seed is not None:
            args += ["--seed", str(self.switch_seed)]
        log_path = self.workdir / "tapswitch.log"
        with log_path.open("wb") as log:
            self.switch_process = subprocess.Popen(
                args, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL,
                cwd=PACKAGE_PARENT, start_new_session=True,
            )  # fmt: skip
        if self.switch_process.stdout is None:
            raise RuntimeError("self.switch_process.stdout is not set")
        ready, _, _ = select.select([self.switch_process.stdout], [], [], 20.0)
        line = self.switch_process.stdout.readline() if ready else b""
        self.switch_process.stdout.close()
        if line.strip() != b"ready":
            raise LabError(f"tap switch did not start: {log_path.read_text(errors='replace')}")

    @property
    def _switch_socket(self) -> Path:
        if self._switch_dir is None:
            raise RuntimeError("self._switch_dir is not set")
        return self._switch_dir / "control.sock"

    def _add_static_neighbours(self) -> None:
        """Every host knows every other host's MAC for good: no ARP through a lossy switch."""
        for host in self.hosts.values():
            batch = "".join(
                f"neigh replace {other.address} lladdr {host_mac(other.address)} "
                f"dev {LINK} nud permanent\n"
                for other in self.hosts.values()
                if other is not host
            )
            if batch:
                result = subprocess.run(
                    ["ip", "-n", host.netns, "-batch", "-"], input=batch, text=True,
                    capture_output=True, timeout=30, check=False,
                )  # fmt: skip
                if result.returncode != 0:
                    raise LabError(f"[{host.name}] static neighbours: {result.stderr.strip()}")

    def switch_request(self, request: dict[str, Any]) -> dict[str, Any]:
        """One control request to the tap switch; LabError if it refuses or is not there."""
        if self.switch != "tap" or self.switch_process is None:
            raise LabError("impairment needs a lab made with switch='tap'")
        reply = json_line_request(self._switch_socket, request, 10.0)
        if not reply.get("ok"):
            raise LabError(f"tap switch refused {request}: {reply.get('error')}")
        return reply

    def _port_pairs(self, pairs: Iterable[tuple[Host, Host]]) -> list[list[int]]:
        return [[self._ports[a.name], self._ports[b.name]] for a, b in pairs]

    def impair(
        self,
        source: Host | str,
        destination: Host | str,
        *,
        delay_ms: float = 0.0,
        jitter_ms: float = 0.0,
        loss: float = 0.0,
        duplicate: float = 0.0,
        rate_kbit: float = 0.0,
    ) -> None:
        """One way: frames `source` -> `destination` get exactly this impairment (tap labs).

        Replaces that pair's previous impairment; all zero removes it. Blocks stay as they are.
        """
        pair = (self._resolve(source), self._resolve(destination))
        self.switch_request(
            {"op": "impair", "pairs": self._port_pairs([pair]), "delay_ms": delay_ms,
             "jitter_ms": jitter_ms, "loss": loss, "duplicate": duplicate,
             "rate_kbit": rate_kbit}
        )  # fmt: skip

    def impair_all(
        self,
        *,
        delay_ms: float = 0.0,
        jitter_ms: float = 0.0,
        loss: float = 0.0,
        duplicate: float = 0.0,
        rate_kbit: float = 0.0,
    ) -> None:
        """Every directed pair of hosts gets this impairment (tap labs); all zero clears it."""
        self.switch_request(
            {"op": "impair", "delay_ms": delay_ms, "jitter_ms": jitter_ms, "loss": loss,
             "duplicate": duplicate, "rate_kbit": rate_kbit}
        )  # fmt: skip

    def switch_counters(self) -> dict[str, Any]:
        """The tap switch's counters: received, forwarded, dropped_<reason>, per pair."""
        counters: dict[str, Any] = self.switch_request({"op": "counters"})["counters"]
        return counters

    def _start_anchor(self, host: Host) -> None:
        script = "set -e; " + "; ".join(
            [*_private_mounts(host.root, self.private_dirs), "echo ready", "exec sleep infinity"]
        )
        host.root.mkdir(parents=True, exist_ok=True)
        args = ["setpriv", "--pdeathsig", "KILL", "nsenter", f"--net=/run/netns/{host.netns}",
                "--", "unshare", "--mount", "--propagation", "private", "--",
                "sh", "-c", script]  # fmt: skip
        with (host.root / "anchor.log").open("wb") as log:
            anchor = subprocess.Popen(
                args, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        host.anchor = anchor
        if anchor.stdout is None:
            raise RuntimeError("anchor.stdout is not set")
        ready, _, _ = select.select([anchor.stdout], [], [], 10.0)
        line = anchor.stdout.readline() if ready else b""
        anchor.stdout.close()
        if line.strip() != b"ready":
            stop_process(anchor)
            log_text = (host.root / "anchor.log").read_text(errors="replace")
            raise LabError(f"host {host.name}: anchor did not start: {log_text.strip()}")

    # -- processes ---------------------------------------------------------------------------

    def track(self, host: Host, args: Sequence[str], *, label: str) -> TrackedProcess:
        """Start `args` in `host` under pdeathsig, output to <host root>/<label>.log."""
        log_path = host.root / f"{label}.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                ["setpriv", "--pdeathsig", "KILL", *host.nsenter(), *args],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        tracked = TrackedProcess(host.name, label, process, log_path)
        self.processes.append(tracked)
        return tracked

    # -- hosts -------------------------------------------------------------------------------

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def _resolve(self, host: Host | str) -> Host:
        return host if isinstance(host, Host) else self.hosts[host]

    # -- partitions --------------------------------------------------------------------------

    def block(self, source: Host | str, destination: Host | str) -> None:
        """One-way: `destination` drops everything `source` sends it."""
        self.block_many([(self._resolve(source), self._resolve(destination))])

    def block_many(self, pairs: Iterable[tuple[Host, Host]]) -> None:
        """Apply several one-way blocks (source, destination) at once.

        One `iptables-restore --noflush` per destination, all hosts in parallel, so a partition
        appears everywhere within a few milliseconds rather than one host after another. In a
        tap lab: one request to the switch, which drops those frames (ARP and multicast too).
        """
        if self.switch == "tap":
            self.switch_request({"op": "block", "pairs": self._port_pairs(pairs)})
            return
        rules: dict[str, list[str]] = {}
        for source, destination in pairs:
            rules.setdefault(destination.name, []).append(
                f"-A {PARTITION_CHAIN} -s {source.address} -j DROP"
            )
        self._in_parallel(
            [
                (self.hosts[name], ["iptables-restore", "-w", "--noflush"],
                 "*filter\n" + "\n".join(lines) + "\nCOMMIT\n")
                for name, lines in rules.items()
            ]
        )  # fmt: skip

    def partition(self, *groups: Iterable[Host | str]) -> None:
        """Hosts in different groups stop hearing each other; hosts in no group are untouched."""
        resolved = [[self._resolve(h) for h in group] for group in groups]
        pairs = []
        for i, group in enumerate(resolved):
            for other in resolved[i + 1 :]:
                for a in group:
                    for b in other:
                        pairs += [(a, b), (b, a)]
        self.block_many(pairs)

    def heal(self) -> None:
        """Remove every partition rule in every host (all hosts in parallel).

        In a tap lab: lift every block in the switch; impairments stay (`impair_all()` clears).
        """
        if self.switch == "tap":
            self.switch_request({"op": "unblock"})
            return
        self._in_parallel(
            [
                (host, ["iptables", "-w", "-F", PARTITION_CHAIN], None)
                for host in self.hosts.values()
            ]
        )

    @staticmethod
    def _in_parallel(commands: Sequence[tuple[Host, list[str], str | None]]) -> None:
        """Run short commands in several hosts at once; LabError naming every one that failed."""
        running = [
            (host, args, input_text, subprocess.Popen(
                [*host.nsenter(), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True,
            ))
            for host, args, input_text in commands
        ]  # fmt: skip
        failures = []
        for host, args, input_text, process in running:
            try:
                _, err = process.communicate(input_text, timeout=30)
            except subprocess.TimeoutExpired:
                stop_process(process)
                failures.append(f"[{host.name}] {shlex.join(args)} timed out")
                continue
            if process.returncode != 0:
                failures.append(f"[{host.name}] {shlex.join(args)}: {err.strip()}")
        if failures:
            raise LabError("; ".join(failures))

    # -- cleanup -----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop our processes (by PID), the anchors, delete our namespaces. Idempotent.

        Tries every step even when one fails; raises LabError at the end if anything is left.
        """
        if self._closed:
            return
        self._closed = True
        problems: list[str] = []
        anchors = [h.anchor for h in self.hosts.values() if h.anchor is not None]
        switch = [self.switch_process] if self.switch_process is not None else []
        for group in ([t.process for t in reversed(self.processes)], anchors, switch):
            try:
                stop_processes(group)
            except (OSError, subprocess.SubprocessError) as exc:
                problems.append(f"stopping pids {[p.pid for p in group]}: {exc}")
        try:
            # C2: whatever else runs in our namespaces is ours too (e.g. started by `exec`);
            # deleting a namespace's name would leave it running in a namespace nobody sees.
            stop_pids(_namespace_pids(self._netns_created))
        except (OSError, subprocess.SubprocessError) as exc:
            problems.append(f"stopping the rest in our namespaces: {exc}")
        if self._switch_dir is not None:
            shutil.rmtree(self._switch_dir, ignore_errors=True)
        for name in reversed(self._netns_created):
            try:
                _run(["ip", "netns", "del", name])
            except (LabError, OSError, subprocess.SubprocessError) as exc:
                problems.append(str(exc))
        with contextlib.suppress(ValueError):
            _OPEN_LABS.remove(self)
        if problems:
            raise LabError("lab cleanup incomplete: " + "; ".join(problems))

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the requested network, applied and verified (design §4.3; owned by lab-netem) --------

    _prober: Prober | None = None

    def apply(self, matrix: Matrix, *, verify: bool = True) -> Verification:
        """Give the switch the whole matrix in one request, then verify it (`verify()`).

        Tap labs only. With `verify=False` the result says nothing was probed (`pairs` 0).
        """
        from votemesh_lab.probe import Verification  # noqa: PLC0415 (probe imports netns)

        if set(matrix.hosts) != set(self.hosts):
            raise LabError(f"matrix hosts {matrix.hosts} are not this lab's {tuple(self.hosts)}")
        self.switch_request(matrix.to_request())
        if verify:
            return self.verify(matrix)
        return Verification(matrix.generation, True, (), (), 0, 0.0)

    def verify(self, matrix: Matrix) -> Verification:
        """Control-plane readback equal to the request, and a probe over every ordered pair."""
        from votemesh_lab.probe import Prober, compare  # noqa: PLC0415 (probe imports netns)

        held = self.switch_request({"op": "matrix"})["matrix"]
        control = compare(matrix.to_request(), held)
        if self._prober is None:
            self._prober = Prober(self)
        return self._prober.verify(matrix, control)


_OPEN_LABS: list[Lab] = []


@atexit.register
def _close_forgotten_labs() -> None:
    """Last resort when a lab was never closed (e.g. the interpreter exits on an error)."""
    while _OPEN_LABS:
        with contextlib.suppress(LabError):
            _OPEN_LABS.pop().close()


class LabFactory:
    """Creates labs under one directory and closes all of them; for pytest fixtures.

    ```python
    @pytest.fixture
    def lab_factory(tmp_path: Path) -> Iterator[LabFactory]:
        with LabFactory(tmp_path) as factory:
            yield factory
    ```
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.labs: list[Lab] = []

    def __call__(
        self,
        host_names: Sequence[str],
        *,
        private_dirs: Sequence[str] = (),
        subnet: ipaddress.IPv4Network = DEFAULT_SUBNET,
        switch: str = "bridge",
        switch_seed: int | None = None,
    ) -> Lab:
        lab = Lab(
            self.workdir / f"lab{len(self.labs)}",
            host_names,
            private_dirs=private_dirs,
            subnet=subnet,
            switch=switch,
            switch_seed=switch_seed,
        )
        self.labs.append(lab)
        return lab

    def close(self) -> None:
        """Close every lab; checks that none of their namespaces is left."""
        problems = []
        for lab in reversed(self.labs):
            try:
                lab.close()
            except LabError as exc:
                problems.append(str(exc))
            left = lab_namespaces(lab.lab_id)
            if left:
                problems.append(f"namespaces left behind: {left}")
        if problems:
            raise LabError("; ".join(problems))

    def __enter__(self) -> LabFactory:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@contextlib.contextmanager
def running_lab(
    workdir: Path,
    host_names: Sequence[str],
    *,
    private_dirs: Sequence[str] = (),
    switch: str = "bridge",
    switch_seed: int | None = None,
) -> Iterator[Lab]:
    """A lab that is closed on exit whatever happens."""
    with Lab(
        workdir, host_names, private_dirs=private_dirs, switch=switch, switch_seed=switch_seed
    ) as lab:
        yield lab


# -- leftovers and removal from nothing but the id (C2-C4) -----------------------------------


def _netns_names() -> list[str]:
    listing = _run(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in listing.splitlines() if line.strip()]


def lab_namespaces(lab_id: str) -> list[str]:
    """Namespaces named for `lab_id` that `ip netns list` shows right now."""
    prefix = namespace_prefix(lab_id)
    return [name for name in _netns_names() if name.startswith(prefix)]


def lab_ids_found() -> list[str]:
    """Every lab id with a namespace or a state directory right now."""
    ids = {m.group(1) for n in _netns_names() if (m := LAB_NAMESPACE.match(n)) is not None}
    ids.update(i for i in state.known_ids() if LAB_ID.fullmatch(i))
    return sorted(ids)


def _root_links(lab_id: str) -> list[str]:
    """Links in the root namespace named for the lab (a TAP or veth that escaped)."""
    listing = _run(["ip", "-o", "link", "show"]).stdout
    names = [
        line.split(":")[1].strip().split("@")[0] for line in listing.splitlines() if ":" in line
    ]
    return lab_links(lab_id, names)


def lab_links(lab_id: str, names: Iterable[str]) -> list[str]:
    """Of these root-namespace link names, the lab's own TAPs (`t<id><port>`) and nothing else:
    a host link that merely contains the id (`br-<hex>`, `veth<hex>`) is never the lab's."""
    tap = re.compile(rf"{re.escape(tap_prefix(lab_id))}\d{{1,3}}")
    return [n for n in names if tap.fullmatch(n)]


def _namespace_pids(names: Iterable[str]) -> set[int]:
    pids: set[int] = set()
    for name in names:
        result = subprocess.run(
            ["ip", "netns", "pids", name], capture_output=True, text=True, timeout=30, check=False
        )
        pids.update(int(p) for p in result.stdout.split() if p.isdigit())
    return {pid for pid in pids if state.start_time(pid) is not None}


def _mount_lines(lab_id: str) -> list[str]:
    """Lines of /proc/self/mountinfo naming the lab (its /run/netns bind mounts, its dirs)."""
    marks = (namespace_prefix(lab_id), str(state.state_dir(lab_id)))
    text = Path("/proc/self/mountinfo").read_text()
    return [line for line in text.splitlines() if any(mark in line for mark in marks)]


@dataclass(frozen=True)
class Leftovers:
    """What of a lab exists right now; all empty after `down` (C4)."""

    lab_id: str
    namespaces: tuple[str, ...]
    links: tuple[str, ...]
    processes: tuple[int, ...]
    mounts: tuple[str, ...]
    state_files: tuple[str, ...]

    def empty(self) -> bool:
        return not (
            self.namespaces or self.links or self.processes or self.mounts or self.state_files
        )

    def lines(self) -> list[str]:
        """One line per kind that is not empty."""
        kinds = (
            ("namespaces", self.namespaces), ("links", self.links),
            ("processes", tuple(str(p) for p in self.processes)),
            ("mounts", tuple(m.split()[4] for m in self.mounts)),
            ("state", self.state_files),
        )  # fmt: skip
        return [f"{self.lab_id} {kind}: {' '.join(items)}" for kind, items in kinds if items]


def leftovers(lab_id: str) -> Leftovers:
    """Namespaces, root-namespace links, processes (in a lab namespace, or recorded in lab.json
    with the same start time), mountinfo lines and state files of lab `lab_id` (C2-C4)."""
    check_lab_id(lab_id)
    names = lab_namespaces(lab_id)
    pids = _namespace_pids(names)
    recorded = state.read(lab_id)
    if recorded is not None:
        pids.update(p.pid for p in recorded.live_processes())
    directory = state.state_dir(lab_id)
    files = sorted(str(p) for p in directory.rglob("*")) if directory.exists() else []
    if directory.exists():
        files.insert(0, str(directory))
    return Leftovers(
        lab_id, tuple(names), tuple(_root_links(lab_id)), tuple(sorted(pids)),
        tuple(_mount_lines(lab_id)), tuple(files),
    )  # fmt: skip


def _signal_all(pids: Iterable[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def _wait_gone(pids: dict[int, int], timeout: float) -> dict[int, int]:
    """Wait until the processes (pid -> start time) are gone; those still there at the end."""
    deadline = time.monotonic() + timeout
    while True:
        left = {p: s for p, s in pids.items() if state.same_process(p, s)}
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


def stop_pids(pids: Iterable[int], grace: float = 5.0) -> list[int]:
    """SIGTERM processes by PID, SIGKILL those left after `grace` s; the PIDs that were
    running. Each PID is pinned to its start time first, so a recycled PID is never signalled
    twice."""
    pinned = {pid: s for pid in pids if (s := state.start_time(pid)) is not None}
    _signal_all(pinned, signal.SIGTERM)
    left = _wait_gone(pinned, grace)
    _signal_all(left, signal.SIGKILL)
    _wait_gone(left, 5.0)
    return sorted(pinned)


def remove_lab(lab_id: str, *, purge: bool = False, grace: float = 5.0) -> list[str]:
    """Remove everything of lab `lab_id`, from lab.json if it is there, else from the id alone
    (C3); idempotent. Returns one line per thing removed; `leftovers(lab_id)` says what is left.

    Order: the supervisor (SIGTERM: it tears the lab down itself; SIGKILL after `grace`), then
    every process left in a lab namespace or recorded with its start time, then the namespaces
    (which frees TAPs and veths), then stray root-namespace links, the state directory, and with
    `purge` the work directory.
    """
    check_lab_id(lab_id)
    removed: list[str] = []
    recorded = state.read(lab_id)
    # Found before the supervisor goes: it deletes the namespaces' names, not strangers in them.
    found = leftovers(lab_id)
    before = {p: s for p in found.processes if (s := state.start_time(p)) is not None}
    if recorded is not None and (sup := recorded.process("supervisor")) is not None:
        os.kill(sup.pid, signal.SIGTERM)
        if _wait_gone({sup.pid: sup.start}, grace + 10.0):
            os.kill(sup.pid, signal.SIGKILL)
        removed.append(f"supervisor {sup.pid}")
    pids = {p for p, s in before.items() if state.same_process(p, s)}
    pids |= set(leftovers(lab_id).processes)
    if stopped := stop_pids(pids, grace):
        removed.append("processes " + " ".join(map(str, stopped)))
    for name in lab_namespaces(lab_id):
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30, check=False)
    still = set(lab_namespaces(lab_id))
    removed += [f"namespace {name}" for name in sorted(found.namespaces) if name not in still]
    for link in _root_links(lab_id):
        result = subprocess.run(["ip", "link", "del", link], capture_output=True, timeout=30,
                                check=False)  # fmt: skip
        if result.returncode == 0:
            removed.append(f"link {link}")
    directory = state.state_dir(lab_id)
    if directory.exists():
        shutil.rmtree(directory, ignore_errors=True)
        removed.append(f"state {directory}")
    if purge:
        workdir = Path(recorded.workdir) if recorded is not None else state.default_workdir(lab_id)
        if workdir.exists():
            shutil.rmtree(workdir, ignore_errors=True)
            removed.append(f"workdir {workdir}")
    return removed


def leftover_labs() -> dict[str, list[str]]:
    """Lab id -> its namespaces, for every lab with namespaces right now."""
    labs: dict[str, list[str]] = {}
    for name in _netns_names():
        if (match := LAB_NAMESPACE.match(name)) is not None:
            labs.setdefault(match.group(1), []).append(name)
    return labs
