"""The SSH backend: a control node drives agents on real hosts over OpenSSH (design §4.8).

The Jepsen model: this process is the control node; every host in an **inventory** (TOML) runs
the votemesh package and is reached with the system's `ssh` client, one `ControlMaster`
connection per host (no new Python dependency). On the hosts everything carries the lab id, so
`down` finds it again even after the control node died (`votemesh_lab.remote` does the host
side): daemons started detached with pidfiles `PID START` under `/run/votemesh-lab/<id>/`,
blocks as iptables DROP in chain `VML-<id>` (INPUT; a one-way cut is a rule on the receiver
only), shaping with `tc netem` per destination (`votemesh_lab.tc`) where the host has
`sch_netem`, refused with one line where it has not. Logs come back over SSH at the end; each
host's clock offset is measured at `up` and at `collect` (`date +%s%N` round trips, midpoint
of the fastest) for the run record.

Inventory::

    [ssh]
    user = "root"
    port = 22
    options = ["-o", "BatchMode=yes", "-i", "/root/.ssh/lab"]
    client_prefix = []            # what the ssh client runs under: ["ip", "netns", "exec", "c"]

    [remote]
    python = "python3"            # a Python with the votemesh package (agent, votemesh_lab)
    workdir = "/var/tmp/votemesh-lab"

    [[host]]
    name = "n1"                   # n<id> for agents, "qnetd", "broker"
    address = "10.0.0.11"         # what ssh connects to
    node_id = 1                   # agents: default the number in the name
    links = ["10.0.0.11"]         # the agent's link addresses (default [address])
    role = "agent"                # "agent" (default) | "qnetd" | "broker"
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import secrets
import shlex
import subprocess
import tempfile
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from agent.runtime.keys import keygen
from votemesh_lab import nodeconf, remote, tc
from votemesh_lab.netns import LabError, TrackedProcess, stop_process, stop_processes
from votemesh_lab.nodeconf import NodeSpec
from votemesh_lab.probe import Prober
from votemesh_lab.scenario import ScenarioError

if TYPE_CHECKING:
    from votemesh_lab.backends import LabPlan
    from votemesh_lab.grudge import Matrix
    from votemesh_lab.netns import Lab
    from votemesh_lab.probe import Verification

ROLES = ("agent", "qnetd", "broker")
HOST_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,19}")
QNETD_PORT = 5403
QDEVICE_HEARTBEAT = 2.0
SIGNAL_WORDS = {"kill": "KILL", "pause": "STOP", "resume": "CONT", "term": "TERM"}
CLOCK_ROUNDS = 10
CLI = "import sys; from agent.cli import main; sys.exit(main())"
"""`votemesh` on a host, through the inventory's Python (its PATH may not have the script)."""


class InventoryError(ScenarioError):
    """A bad inventory file, or a plan it cannot carry: one line naming the file or host and the
    key (a ScenarioError: `votemesh-lab run` prints it and exits 1, nothing started)."""


class SshError(LabError):
    """A host could not be reached, or a command on it failed (one line naming the host)."""


# ---------------------------------------------------------------- inventory
@dataclass(frozen=True)
class InventoryHost:
    """One real host."""

    name: str
    address: str
    role: str
    node_id: int | None
    links: tuple[str, ...]


@dataclass(frozen=True)
class Inventory:
    """The hosts and how to reach them."""

    hosts: tuple[InventoryHost, ...]
    user: str = "root"
    port: int = 22
    options: tuple[str, ...] = ()
    client_prefix: tuple[str, ...] = ()
    python: str = "python3"
    workdir: str = "/var/tmp/votemesh-lab"  # noqa: S108 (on the host, root's; design §4.2)

    def host(self, name: str) -> InventoryHost:
        """The host called `name`; InventoryError naming the hosts there are."""
        for host in self.hosts:
            if host.name == name:
                return host
        raise InventoryError(f"no host {name!r} in the inventory (it has {self.names()})")

    def names(self) -> str:
        """The host names, comma separated."""
        return ", ".join(h.name for h in self.hosts)


def _str_list(value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InventoryError(f"{where}: a list of strings")
    return tuple(value)


def _str(value: object, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise InventoryError(f"{where}: a non-empty string")
    return value


def _host(raw: object, index: int, where: str) -> InventoryHost:
    if not isinstance(raw, dict):
        raise InventoryError(f"{where}: [[host]] {index} is not a table")
    at = f"{where}: [[host]] {index}"
    unknown = set(raw) - {"name", "address", "role", "node_id", "links"}
    if unknown:
        raise InventoryError(f"{at}: unknown key {sorted(unknown)[0]!r}")
    name = _str(raw.get("name"), f"{at} name")
    if HOST_NAME.fullmatch(name) is None:
        raise InventoryError(f"{at} name {name!r}: 1-20 of a-z, 0-9 and '-'")
    address = _str(raw.get("address"), f"{at} address")
    role = raw.get("role", "agent")
    if role not in ROLES:
        raise InventoryError(f"{at} role {role!r}: one of {', '.join(ROLES)}")
    node_id = raw.get("node_id")
    if node_id is None and role == "agent":
        match = re.fullmatch(r"n([1-9][0-9]*)", name)
        if match is None:
            raise InventoryError(f"{at}: node_id missing (or name the host n<id>)")
        node_id = int(match.group(1))
    if node_id is not None and (not isinstance(node_id, int) or not 1 <= node_id <= 0xFFFFFFFE):
        raise InventoryError(f"{at} node_id: an integer 1..4294967294")
    links = _str_list(raw.get("links", [address]), f"{at} links")
    if not 1 <= len(links) <= 8:
        raise InventoryError(f"{at} links: 1 to 8 addresses")
    return InventoryHost(name, address, str(role), node_id, links)


def parse_inventory(data: Mapping[str, Any], where: str = "inventory") -> Inventory:
    """An Inventory from a parsed TOML document; InventoryError (one line) on any mistake."""
    unknown = set(data) - {"ssh", "remote", "host"}
    if unknown:
        raise InventoryError(f"{where}: unknown table {sorted(unknown)[0]!r}")
    ssh = data.get("ssh", {})
    remote_table = data.get("remote", {})
    if not isinstance(ssh, dict) or not isinstance(remote_table, dict):
        raise InventoryError(f"{where}: [ssh] and [remote] must be tables")
    for table, keys, name in (
        (ssh, {"user", "port", "options", "client_prefix", "launcher"}, "ssh"),
        (remote_table, {"python", "workdir"}, "remote"),
    ):
        extra = set(table) - keys
        if extra:
            raise InventoryError(f"{where}: [{name}] unknown key {sorted(extra)[0]!r}")
    if ssh.get("launcher", "setsid") != "setsid":
        raise InventoryError(f'{where}: [ssh] launcher: only "setsid" is implemented')
    port = ssh.get("port", 22)
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise InventoryError(f"{where}: [ssh] port: an integer 1..65535")
    raw_hosts = data.get("host", [])
    if not isinstance(raw_hosts, list) or not raw_hosts:
        raise InventoryError(f"{where}: no [[host]] entries")
    hosts = tuple(_host(raw, i, where) for i, raw in enumerate(raw_hosts, start=1))
    _check_unique(hosts, where)
    return Inventory(
        hosts=hosts,
        user=_str(ssh.get("user", "root"), f"{where}: [ssh] user"),
        port=port,
        options=_str_list(ssh.get("options", []), f"{where}: [ssh] options"),
        client_prefix=_str_list(ssh.get("client_prefix", []), f"{where}: [ssh] client_prefix"),
        python=_str(remote_table.get("python", "python3"), f"{where}: [remote] python"),
        workdir=_str(remote_table.get("workdir", Inventory.workdir), f"{where}: [remote] workdir"),
    )


def _check_unique(hosts: Sequence[InventoryHost], where: str) -> None:
    for what, values in (
        ("name", [h.name for h in hosts]),
        ("node_id", [h.node_id for h in hosts if h.node_id is not None]),
        ("link address", [a for h in hosts for a in h.links]),
    ):
        seen = set()
        for value in values:
            if value in seen:
                raise InventoryError(f"{where}: {what} {value} appears twice")
            seen.add(value)
    for role in ("qnetd", "broker"):
        if sum(h.role == role for h in hosts) > 1:
            raise InventoryError(f"{where}: more than one host with role {role!r}")


def load_inventory(path: Path) -> Inventory:
    """Read and check an inventory file; InventoryError (one line) when it is not usable."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise InventoryError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InventoryError(f"{path}: not TOML: {exc}") from None
    return parse_inventory(data, str(path))


# ---------------------------------------------------------------- one host
@dataclass(frozen=True)
class ClockOffset:
    """A host's clock minus ours, from the fastest `date +%s%N` round trip."""

    offset_ms: float
    uncertainty_ms: float

    def to_dict(self) -> dict[str, float]:
        """The run record's `hosts` entry."""
        return {
            "offset_ms": round(self.offset_ms, 3),
            "uncertainty_ms": round(self.uncertainty_ms, 3),
        }


@dataclass
class SshHost:
    """One host behind one ControlMaster connection."""

    spec: InventoryHost
    inventory: Inventory
    control_dir: Path
    master: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def control_path(self) -> Path:
        return self.control_dir / f"{self.spec.name}.sock"

    def _ssh(self, *extra: str) -> list[str]:
        inv = self.inventory
        return [
            *inv.client_prefix, "ssh", "-o", f"ControlPath={self.control_path}",
            *extra, *inv.options, "-p", str(inv.port), "-l", inv.user, self.spec.address,
        ]  # fmt: skip

    def open(self, timeout: float = 20.0) -> None:
        """Start the ControlMaster (we hold its PID) and wait until it serves sessions."""
        self.control_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        log = self.control_dir / f"{self.spec.name}.master.log"
        with log.open("wb") as out:
            self.master = subprocess.Popen(
                self._ssh("-M", "-N", "-o", "ControlPersist=no"),
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            check = subprocess.run(
                self._ssh("-O", "check"), capture_output=True, timeout=10, check=False
            )
            if check.returncode == 0:
                return
            if self.master.poll() is not None or time.monotonic() > deadline:
                error = log.read_text(errors="replace").strip().splitlines()
                stop_process(self.master)
                self.master = None  # a later call (down) tries again
                raise SshError(
                    f"host {self.name}: ssh to {self.inventory.user}@{self.spec.address} failed: "
                    f"{error[-1] if error else 'timed out'}"
                )
            time.sleep(0.05)

    def session_argv(self) -> list[str]:
        """The ssh client's argv for one session over the master; append the remote command."""
        return [*self._ssh("-o", "ControlMaster=no", "-T"), "--"]

    def run(
        self, argv: Sequence[str], *, input_text: str | None = None, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` on the host (quoted for its shell); the result whatever the exit code."""
        try:
            return subprocess.run(
                [*self.session_argv(), shlex.join(argv)],
                input=input_text, capture_output=True, text=True, timeout=timeout, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise SshError(f"host {self.name}: {shlex.join(argv)} timed out") from None

    def check(
        self, argv: Sequence[str], *, input_text: str | None = None, timeout: float = 60.0
    ) -> str:
        """Run `argv`; its stdout, or SshError with the host, the command and its error."""
        result = self.run(argv, input_text=input_text, timeout=timeout)
        if result.returncode != 0:
            why = (result.stderr.strip() or result.stdout.strip()).splitlines()
            raise SshError(
                f"host {self.name}: {shlex.join(argv)} exited {result.returncode}: "
                f"{why[-1] if why else ''}"
            )
        return result.stdout

    def remote(self, *args: str, timeout: float = 60.0) -> dict[str, Any]:
        """`python -m votemesh_lab.remote ARGS` on the host; its JSON answer."""
        argv = [self.inventory.python, "-m", "votemesh_lab.remote", *args]
        result = self.run(argv, timeout=timeout)
        try:
            answer: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            why = result.stderr.strip().splitlines()
            raise SshError(
                f"host {self.name}: votemesh_lab.remote {args[0]} gave no answer: "
                f"{why[-1] if why else 'empty output'}"
            ) from None
        if result.returncode != 0:
            raise SshError(f"host {self.name}: {args[0]}: {answer.get('error')}")
        return answer

    def put(self, path: str, data: str | bytes, mode: int = 0o600) -> None:
        """Write a file on the host (its directory created), bytes as given."""
        raw = data.encode() if isinstance(data, str) else data
        parent = str(Path(path).parent)
        script = f"umask 077; mkdir -p {shlex.quote(parent)} && cat > {shlex.quote(path)}"
        script += f" && chmod {mode:o} {shlex.quote(path)}"
        argv = [*self.session_argv(), shlex.join(["sh", "-c", script])]
        result = subprocess.run(argv, input=raw, capture_output=True, timeout=60, check=False)
        if result.returncode != 0:
            why = result.stderr.decode(errors="replace").strip().splitlines()
            raise SshError(f"host {self.name}: writing {path} failed: {why[-1] if why else ''}")

    def get(self, path: str, timeout: float = 120.0) -> bytes:
        """A file's bytes from the host; SshError when it cannot be read."""
        argv = [*self.session_argv(), shlex.join(["cat", path])]
        result = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
        if result.returncode != 0:
            why = result.stderr.decode(errors="replace").strip().splitlines()
            raise SshError(f"host {self.name}: reading {path} failed: {why[-1] if why else ''}")
        return result.stdout

    def clock_offset(self, rounds: int = CLOCK_ROUNDS) -> ClockOffset:
        """Its clock minus ours: the midpoint of the fastest of `rounds` round trips.

        One session answers every round (`date +%s%N` per line read), so a round trip is the
        network plus one fork on the host, not an ssh client's start-up.
        """
        script = "while read -r _; do date +%s%N; done"
        argv = [*self.session_argv(), shlex.join(["sh", "-c", script])]
        best: tuple[float, float] | None = None
        with subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, bufsize=1,
        ) as session:  # fmt: skip
            if session.stdin is None or session.stdout is None:
                raise RuntimeError("pipes are not set")
            try:
                for _ in range(rounds):
                    before = time.time_ns()
                    session.stdin.write("\n")
                    session.stdin.flush()
                    line = session.stdout.readline()
                    after = time.time_ns()
                    if not line.strip().isdigit():
                        raise SshError(f"host {self.name}: date +%s%N answered {line.strip()!r}")
                    half = (after - before) / 2e6
                    offset = (int(line) - (before + after) / 2) / 1e6
                    if best is None or half < best[1]:
                        best = (offset, half)
            except OSError as exc:
                raise SshError(f"host {self.name}: clock session failed: {exc}") from None
            finally:
                session.stdin.close()
                stop_process(session)
        if best is None:
            raise SshError(f"host {self.name}: no clock sample")
        return ClockOffset(*best)

    def close(self) -> None:
        """End the ControlMaster (by the PID we started)."""
        if self.master is not None:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                subprocess.run(
                    self._ssh("-O", "exit"), capture_output=True, timeout=10, check=False
                )
            stop_process(self.master)
            self.master = None


# ---------------------------------------------------------------- the backend
class SshBackend:
    """`backends.Backend` over SSH: agents (and a votemesh-qnetd) on the inventory's hosts.

    Every method raises SshError (a LabError: one line naming the host) when a host fails, and
    InventoryError (a ValueError) when the plan asks for a host the inventory does not have.
    """

    name = "ssh"

    def __init__(self, inventory: Inventory, *, lab_id: str | None = None) -> None:
        self.inventory = inventory
        self.lab_id = lab_id or secrets.token_hex(3)
        if remote.LAB_ID.fullmatch(self.lab_id) is None:
            raise InventoryError(f"lab id {self.lab_id!r}: 6 lowercase hex digits")
        # ControlPath must stay under 108 bytes: a short private directory of our own, made
        # (0700) when the first connection opens and removed by `down`.
        suffix = secrets.token_hex(4)
        self._control_dir = Path(tempfile.gettempdir()) / f"vml-{self.lab_id}-ssh-{suffix}"
        self._hosts = {h.name: SshHost(h, inventory, self._control_dir) for h in inventory.hosts}
        self._daemons: dict[str, tuple[str, list[str]]] = {}  # host -> (pidfile name, argv)
        self._netem: dict[str, str | None] = {}  # host -> why it cannot shape (None: it can)
        self._shaped: set[str] = set()
        self._tc_seed: dict[str, bool] = {}
        self._prober: SshProber | None = None
        self.plan: LabPlan | None = None
        self.clocks: dict[str, list[ClockOffset]] = {}

    @classmethod
    def from_inventory(cls, path: Path, *, lab_id: str | None = None) -> SshBackend:
        """A backend for the hosts of an inventory file; InventoryError (one line) if bad."""
        return cls(load_inventory(path), lab_id=lab_id)

    # -- hosts -------------------------------------------------------------------------------

    def hosts(self) -> list[str]:
        """The plan's hosts ("n1".."nN", "qnetd"), or the inventory's before `up`."""
        return self.plan.host_names() if self.plan is not None else list(self._hosts)

    @property
    def control_dir(self) -> Path:
        """The control node's private directory: ControlPath sockets, ssh and probe logs."""
        return self._control_dir

    def ssh_host(self, name: str) -> SshHost:
        """The connection to one host."""
        return self._host(name)

    def _host(self, name: str) -> SshHost:
        if name not in self._hosts:
            raise InventoryError(
                f"no host {name!r} in the inventory (it has {self.inventory.names()})"
            )
        return self._hosts[name]

    def addresses(self, host: str) -> list[str]:
        """The host's address on each lab network (the inventory's `links`, as many as the
        plan uses)."""
        links = self._host(host).spec.links
        return list(links[: self.plan.links] if self.plan is not None else links)

    def host_dir(self, name: str) -> str:
        """The host's work directory for this lab (config, key, state, logs; kept after down)."""
        return f"{self.inventory.workdir}/{self.lab_id}/{name}"

    def _active(self) -> list[SshHost]:
        """The plan's hosts once `up` was called, else every host of the inventory."""
        return [self._hosts[name] for name in self.hosts()]

    def connect(self) -> None:
        """Open every ControlMaster, check the host can run the lab, measure its clock."""
        for host in self._active():
            if host.master is None:
                host.open()
        for host in self._active():
            probe = host.run([self.inventory.python, "-c", "import agent, votemesh_lab"])
            if probe.returncode != 0:
                raise SshError(
                    f"host {host.name}: {self.inventory.python} cannot import the votemesh "
                    "package (install it there or set [remote] python)"
                )
            host.check(["iptables", "-w", "-n", "-L", "INPUT"], timeout=20)
        self.measure_clocks()

    def measure_clocks(self) -> dict[str, ClockOffset]:
        """One offset per host now (appended to `clocks`: up and collect each add one)."""
        now = {host.name: host.clock_offset() for host in self._active()}
        for name, offset in now.items():
            self.clocks.setdefault(name, []).append(offset)
        return now

    def run_hosts_record(self) -> dict[str, dict[str, float]]:
        """The run record's `hosts`: mean offset; uncertainty = widest half round trip + drift."""
        record = {}
        for name, samples in self.clocks.items():
            offsets = [s.offset_ms for s in samples]
            drift = (max(offsets) - min(offsets)) / 2
            widest = max(s.uncertainty_ms for s in samples)
            record[name] = {
                "offset_ms": round(sum(offsets) / len(offsets), 3),
                "uncertainty_ms": round(widest + drift, 3),
            }
        return record

    # -- up ----------------------------------------------------------------------------------

    def check_plan(self, plan: LabPlan) -> None:
        """InventoryError (one line) when the inventory cannot carry the plan: a host missing or
        with the wrong role, an agent n<i> whose node_id is not i, fewer link addresses than lab
        networks, a broker."""
        if plan.broker:
            raise InventoryError("broker = true: the ssh backend has no broker yet (set it false)")
        for name in plan.host_names():
            role = "agent" if name.startswith("n") else name
            spec = self.inventory.host(name)
            if spec.role != role:
                raise InventoryError(f"host {name} needs role {role!r} in the inventory")
            if role == "agent" and spec.node_id != int(name[1:]):
                raise InventoryError(
                    f"host {name} has node_id {spec.node_id}: the scenario's {name} is node id "
                    f"{name[1:]} (drop node_id or make it {name[1:]})"
                )
            if role == "agent" and len(spec.links) < plan.links:
                raise InventoryError(
                    f"host {name} has {len(spec.links)} link address(es), the scenario uses "
                    f"{plan.links} lab networks: list them in its `links`"
                )

    def up(self, plan: LabPlan) -> None:
        """Connect, make the chain on every host, start the qnetd, push configs, start agents."""
        self.check_plan(plan)
        self.plan = plan
        try:
            self.connect()
            for host in self._active():
                host.check(tc.chain_setup(self.lab_id))
            qdevice = self._start_qnetd(plan) if plan.qnetd else None
            self._start_agents(qdevice)
        except BaseException:
            with contextlib.suppress(LabError):
                self.down()
            raise

    def _start_qnetd(self, plan: LabPlan) -> dict[str, Any]:
        """votemesh-qnetd on host "qnetd"; its client credentials copied to every node."""
        host, directory = self._hosts["qnetd"], self.host_dir("qnetd")
        address = host.spec.links[0]
        py = self.inventory.python
        argv = [py, "-m", "qnetd", "run", "--state-dir", f"{directory}/state", "--listen",
                address, "--port", str(QNETD_PORT), "--enroll-listen", "off",
                "--control-socket", f"{directory}/control.sock"]  # fmt: skip
        host.check(["mkdir", "-p", f"{directory}/state"])
        self._daemons["qnetd"] = ("qnetd", argv)
        self.start("qnetd")
        listening = ["sh", "-c", f"ss -Hltn 'sport = :{QNETD_PORT}' | grep -qF '{address}:'"]
        deadline = time.monotonic() + 30
        while host.run(listening, timeout=10).returncode != 0:
            if time.monotonic() > deadline:
                raise SshError(
                    f"host qnetd: votemesh-qnetd not listening after 30 s ({directory}/qnetd.log)"
                )
            time.sleep(0.2)
        cluster = str(plan.cluster.get("cluster_name", nodeconf.DEFAULT_CLUSTER_NAME))
        creds = ["--out", f"{directory}/creds", "--state-dir", f"{directory}/state"]
        host.check([py, "-m", "qnetd", "certs", "client", "--cluster", cluster, *creds])
        files = ("ca.pem", "client.pem", "client.key")
        pems = {n: host.get(f"{directory}/creds/{n}") for n in files}
        for name in plan.host_names()[: plan.nodes]:
            for file_name, data in pems.items():
                self._hosts[name].put(f"{self.host_dir(name)}/qdevice/{file_name}", data)
        table: dict[str, Any] = {
            "host": address, "port": QNETD_PORT, "algorithm": plan.qnetd,
            "tie_breaker": "lowest", "tls": "on", "ca_pem": "qdevice/ca.pem",
            "cert_pem": "qdevice/client.pem", "key_pem": "qdevice/client.key",
            "heartbeat_interval": QDEVICE_HEARTBEAT,
        }  # fmt: skip
        if plan.qnetd == "ffsplit":
            table["votes"] = 1
        return table

    def node_specs(self) -> list[NodeSpec]:
        """Every node of the plan: id, host name, link addresses."""
        plan = self._plan()
        return [
            NodeSpec(i, n, tuple(self.addresses(n)))
            for i, n in enumerate(plan.host_names()[: plan.nodes], start=1)
        ]

    def agent_configs(self, qdevice: Mapping[str, Any] | None = None) -> dict[str, str]:
        """host -> its agent's config text (paths relative to the config, i.e. the host dir)."""
        plan = self._plan()
        specs = self.node_specs()
        cluster = {"control_socket": "agent.sock", **plan.cluster}
        texts = {}
        for spec in specs:
            peers = [p for p in specs if p is not spec] if plan.static_peers else []
            config = nodeconf.node_config(cluster, spec, peers, key_file="cluster.key",
                                          state_dir="state", qdevice=qdevice)  # fmt: skip
            texts[spec.name] = nodeconf.toml_text(config)
        return texts

    def _start_agents(self, qdevice: Mapping[str, Any] | None) -> None:
        key = _cluster_key()
        for name, text in self.agent_configs(qdevice).items():
            host, directory = self._hosts[name], self.host_dir(name)
            host.put(f"{directory}/cluster.key", key)
            host.put(f"{directory}/agent.toml", text)
            argv = [self.inventory.python, "-m", "agent.runtime.main", "--config", "agent.toml"]
            self._daemons[name] = ("agent", argv)
            self.start(name)

    def _plan(self) -> LabPlan:
        if self.plan is None:
            raise SshError("the lab is not up")
        return self.plan

    # -- processes ---------------------------------------------------------------------------

    def _daemon(self, host: str) -> tuple[str, list[str]]:
        if host not in self._daemons:
            raise InventoryError(f"host {host} runs no daemon of this lab")
        return self._daemons[host]

    def start(self, host: str) -> None:
        """(Re)start the host's daemon, detached, with its pidfile; a running one stays."""
        name, argv = self._daemon(host)
        ssh_host, directory = self._host(host), self.host_dir(host)
        running = ssh_host.remote("status", "--id", self.lab_id).get(name, {})
        if running.get("alive"):
            return
        ssh_host.remote(
            "start", "--id", self.lab_id, "--name", name, "--log", f"{directory}/{name}.log",
            "--cwd", directory, "--", *argv,
        )  # fmt: skip

    def signal(self, host: str, what: str) -> None:
        """kill (SIGKILL), pause (SIGSTOP), resume (SIGCONT), term (SIGTERM) the host's daemon."""
        if what not in SIGNAL_WORDS:
            raise InventoryError(f"signal {what!r}: one of {', '.join(SIGNAL_WORDS)}")
        name, _ = self._daemon(host)
        word = SIGNAL_WORDS[what]
        self._host(host).remote("signal", "--id", self.lab_id, "--name", name, "--sig", word)

    def status(self, host: str) -> dict[str, Any]:
        """The agent's status document (`votemesh status --json`), {} while it does not answer."""
        argv = [self.inventory.python, "-c", CLI, "status", "--json",
                "--config", f"{self.host_dir(host)}/agent.toml"]  # fmt: skip
        result = self._host(host).run(argv, timeout=15)
        if result.returncode != 0:
            return {}
        try:
            document = json.loads(result.stdout)
        except ValueError:
            return {}
        return document if isinstance(document, dict) else {}

    def exec(self, host: str, argv: Sequence[str], timeout: float = 60.0) -> tuple[int, str]:
        """Run a command on the host: (exit code, stdout + stderr).

        `votemesh ...` is the CLI of the inventory's Python, pointed at this lab's agent on the
        host (`--socket`, appended unless the command names a socket or config itself).
        """
        argv = list(argv)
        if argv[:1] == ["votemesh"] and not {"--socket", "--config"} & set(argv):
            socket_path = f"{self.host_dir(host)}/agent.sock"
            argv = [self.inventory.python, "-c", CLI, *argv[1:], "--socket", socket_path]
        try:
            result = self._host(host).run(argv, timeout=timeout)
        except SshError as exc:
            return 124, str(exc)
        return result.returncode, result.stdout + result.stderr

    def link(self, host: str, link: int, up: bool) -> None:
        """Set the device holding the host's `link`-th address down or up."""
        spec = self._host(host).spec
        if not 0 <= link < len(spec.links):
            raise InventoryError(f"host {host} has links 0..{len(spec.links) - 1}, not {link}")
        device = self._device_of(host, spec.links[link])
        self._host(host).check(["ip", "link", "set", "dev", device, "up" if up else "down"])

    def _device_of(self, host: str, address: str) -> str:
        listing = json.loads(self._host(host).check(["ip", "-j", "-4", "addr", "show"]) or "[]")
        for device in listing:
            if any(a.get("local") == address for a in device.get("addr_info", [])):
                return str(device["ifname"])
        raise SshError(f"host {host}: no device holds {address}")

    # -- the network -------------------------------------------------------------------------

    def netem_missing(self, host: str) -> str | None:
        """Why `host` cannot shape (no sch_netem), or None; probed once in a scratch namespace."""
        if host not in self._netem:
            result = self._host(host).run(tc.NETEM_PROBE, timeout=20)
            self._netem[host] = tc.netem_refusal(host, result.returncode, result.stderr)
        return self._netem[host]

    def apply(self, matrix: Matrix) -> Verification:
        """Make every host's blocks and shapes the matrix's, read them back, probe every pair.

        Hosts of the matrix outside the inventory (none in a plan built from it) are refused.
        """
        unknown = set(matrix.hosts) - set(self._hosts)
        if unknown:
            raise InventoryError(f"matrix hosts {sorted(unknown)} are not in the inventory")
        seed = self.plan.seed if self.plan is not None else None
        links = {name: self._hosts[name].spec.links for name in matrix.hosts}
        plans = {
            name: tc.HostPlan.build(self.lab_id, name, matrix, links, seed=self._seed(name, seed))
            for name in matrix.hosts
        }
        for name, plan in plans.items():
            if plan.shapes or plan.default is not None:
                why = self.netem_missing(name)
                if why is not None:
                    raise SshError(why)
        for name, plan in plans.items():
            self._apply_tc(self._hosts[name], plan)
        restore = ["iptables-restore", "-w", "--noflush"]
        self._in_parallel(
            {name: (restore, plan.iptables_restore()) for name, plan in plans.items()}
        )
        applied_at = time.monotonic()
        control = tuple(line for name, plan in plans.items() for line in self._readback(name, plan))
        if self._prober is None:
            self._prober = SshProber(self, list(matrix.hosts))
        verification = self._prober.verify(matrix, control)
        # `seconds` counts from the moment every host held its new chain, as the switch's counts
        # from the moment it took the matrix: the runner dates the change `now - seconds`.
        return dataclasses.replace(verification, seconds=time.monotonic() - applied_at)

    def _in_parallel(self, commands: Mapping[str, tuple[Sequence[str], str]]) -> None:
        """One command per host, all sessions at once (a partition lands everywhere within a
        round trip, not one host after another); SshError naming every host that failed."""
        running = {}
        for name, (argv, input_text) in commands.items():
            running[name] = subprocess.Popen(
                [*self._hosts[name].session_argv(), shlex.join(argv)], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            stdin = running[name].stdin
            if stdin is not None:  # sent now (communicate() closes it): no host waits for us
                stdin.write(input_text)
                stdin.flush()
        failures = []
        for name, process in running.items():
            try:
                _, err = process.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                stop_process(process)
                failures.append(f"host {name}: {commands[name][0][0]} timed out")
                continue
            if process.returncode != 0:
                why = err.strip().splitlines()
                failures.append(f"host {name}: {commands[name][0][0]}: {why[-1] if why else ''}")
        if failures:
            raise SshError("; ".join(failures))

    def _seed(self, host: str, seed: int | None) -> int | None:
        """The run seed where the host's tc writes netem's `seed` word, else None."""
        if seed is None:
            return None
        if host not in self._tc_seed:
            self._tc_seed[host] = self._host(host).run(tc.SEED_PROBE, timeout=20).returncode == 0
        return seed if self._tc_seed[host] else None

    def _readback(self, name: str, plan: tc.HostPlan) -> list[str]:
        """Control plane: the host's chain (and its qdiscs where the lab shapes) vs the plan."""
        host = self._hosts[name]
        lines = plan.compare_blocks(host.check(["iptables", "-w", "-S", plan.chain]))
        if name in self._shaped or plan.shapes or plan.default is not None:
            for device in self._devices(name):
                listing = host.check(["tc", "-j", "qdisc", "show", "dev", device])
                lines += plan.compare_qdiscs(device, listing)
        return lines

    def _devices(self, name: str) -> list[str]:
        return [self._device_of(name, address) for address in self._hosts[name].spec.links]

    def _apply_tc(self, host: SshHost, plan: tc.HostPlan) -> None:
        """Replace the host's lab qdiscs by the plan's (none: delete the ones we made)."""
        wanted = bool(plan.shapes) or plan.default is not None
        if not wanted and host.name not in self._shaped:
            return
        devices = self._devices(host.name)
        host.put(f"{remote.RUN_ROOT}/{self.lab_id}/tc-devices", "\n".join(devices) + "\n", 0o644)
        for device in devices:
            delete, *build = plan.tc_commands(device)
            host.run(delete)  # fails when the lab has no qdisc there yet: fine
            if build:
                batch = "".join(shlex.join(c[1:]) + "\n" for c in build)
                host.check(["tc", "-batch", "-"], input_text=batch)
        if wanted:
            self._shaped.add(host.name)
        else:
            self._shaped.discard(host.name)

    # -- the end -----------------------------------------------------------------------------

    def collect(self, out_dir: Path) -> dict[str, Path]:
        """Copy every daemon's log to out_dir/logs/<host>/; measure the clocks once more."""
        with contextlib.suppress(SshError):
            self.measure_clocks()
        copied = {}
        for host, (name, _) in self._daemons.items():
            target = out_dir / "logs" / host / f"{name}.log"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self._hosts[host].get(f"{self.host_dir(host)}/{name}.log"))
            copied[host] = target
        return copied

    def leftovers(self) -> dict[str, dict[str, Any]]:
        """Per host, what of this lab is still there (remote `leftovers`); clean hosts omitted."""
        found = {}
        for name, host in self._hosts.items():
            left = host.remote("leftovers", "--id", self.lab_id)
            if any(left.values()):
                found[name] = left
        return found

    def down(self) -> None:
        """On every host: stop the pidfile processes, delete the chain and qdiscs; close SSH.

        Works from nothing (a new SshBackend with the same inventory and lab id); SshError
        listing what is left on which host.
        """
        problems = []
        if self._prober is not None:
            self._prober.close()
            self._prober = None
        for name, host in self._hosts.items():
            try:
                if host.master is None:
                    host.open()
                left = host.remote("down", "--id", self.lab_id)["left"]
                if any(left.values()):
                    problems.append(f"{name}: {left}")
            except SshError as exc:
                problems.append(str(exc))
        for host in self._hosts.values():
            host.close()
        with contextlib.suppress(OSError):
            for path in self._control_dir.iterdir():
                path.unlink()
            self._control_dir.rmdir()
        if problems:
            raise SshError("down left: " + "; ".join(problems))


def _cluster_key() -> bytes:
    """A fresh cluster key file (agent.runtime.keys.keygen's format)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cluster.key"
        keygen(path)
        return path.read_bytes()


# ---------------------------------------------------------------- data-plane verification
@dataclass(frozen=True)
class _Address:
    address: str


@dataclass(frozen=True)
class _AddressBook:
    """What `probe.Prober.verify` reads of a lab: its id and each host's probe address."""

    lab_id: str
    hosts: dict[str, _Address]


class SshProber(Prober):
    """`probe.Prober` with each host's responder behind an SSH session instead of nsenter.

    `python -m votemesh_lab.probe` runs on every host of the matrix, bound to its first link
    address, driven over the session's stdin/stdout; it exits when the session closes.
    """

    def __init__(self, backend: SshBackend, names: Sequence[str]) -> None:
        book = _AddressBook(backend.lab_id, {n: _Address(backend.addresses(n)[0]) for n in names})
        self.lab = cast("Lab", book)  # verify() reads only lab.hosts[name].address
        self.processes: dict[str, TrackedProcess] = {}
        log_dir = backend.control_dir
        for name in names:
            host = backend.ssh_host(name)
            argv = [backend.inventory.python, "-m", "votemesh_lab.probe", "--name", name,
                    "--address", book.hosts[name].address, "--lab", backend.lab_id]  # fmt: skip
            log_path = log_dir / f"{name}.probe.log"
            with log_path.open("ab") as log:
                process = subprocess.Popen(
                    [*host.session_argv(), shlex.join(argv)], stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=log, start_new_session=True,
                )  # fmt: skip
            self.processes[name] = TrackedProcess(name, "probe", process, log_path)
        try:
            self._answers(dict.fromkeys(self.processes))  # each says {"ready": true}
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """End every session (the responders exit on EOF) and close our ends of the pipes."""
        processes = [t.process for t in self.processes.values()]
        for process in processes:
            if process.stdin is not None:
                with contextlib.suppress(OSError):
                    process.stdin.close()
        stop_processes(processes, grace=2.0)
        for process in processes:
            if process.stdout is not None:
                process.stdout.close()
