"""Where a scenario runs: the `Backend` protocol, the `LabPlan` it is built from, and
`NetnsBackend` (network namespaces on this machine; design §4.8).

The runner (`runner.py`) knows only the protocol: hosts by NAME ("n1".."nN" for node ids 1..N,
"qnetd", "broker"), a whole requested network (`grudge.Matrix`) applied and verified at once,
signals to a host's daemon, links up and down, commands in a host, the agents' status, and the
logs collected at the end. The SSH backend (`ssh.py`) implements the same protocol.

`NetnsBackend` builds on `netns.Lab` with the tap switch (lab network 0, impairment and blocks in
the switch), `agents.py`'s agent processes, `qnetd.py`'s votemesh-qnetd and `broker.py`'s
mosquitto. Lab networks 1.. (`links` > 1) are kernel bridges in the lab's switch namespace with a
veth `eth<k>` per host on 198.18.<k>.0/24 (same last octet as on network 0); blocks there are
iptables DROP rules (chain `VMLAB-IN`, the one `netns.Lab` makes); they carry no impairment.
`link(host, k, up=False)` drops everything in and out of `eth<k>` inside the host (a pulled
cable, as the agents see it: sends fail, nothing arrives), in chain `VMLAB-LINK`.
Each host has a private `/run`, so `votemesh` in `exec` finds the agent at its default socket.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from agent.config import ConfigError
from agent.runtime.config_file import parse_config
from agent.runtime.keys import keygen
from proto.runtime.control_client import request as control_request
from votemesh_lab import nodeconf, tc
from votemesh_lab.broker import LabBroker
from votemesh_lab.grudge import Matrix
from votemesh_lab.netns import (
    HOST_DIRS,
    PARTITION_CHAIN,
    Host,
    Lab,
    LabError,
    TrackedProcess,
    stop_process,
)
from votemesh_lab.nodeconf import NodeSpec
from votemesh_lab.probe import Verification
from votemesh_lab.qnetd import VotemeshQnetd
from votemesh_lab.scenario import Scenario, ScenarioError

Signal = Literal["kill", "pause", "resume", "term"]
SIGNALS: dict[str, signal.Signals] = {
    "kill": signal.SIGKILL,
    "pause": signal.SIGSTOP,
    "resume": signal.SIGCONT,
    "term": signal.SIGTERM,
}
BIN = Path(sys.executable).parent
QDEVICE_HEARTBEAT = 2.0
LINK_CHAIN = "VMLAB-LINK"
MAX_LINKS = 8


class BackendError(LabError):
    """The backend could not do what was asked (set-up, a signal, a command)."""


@dataclass(frozen=True)
class LabPlan:
    """What a backend builds: the scenario's [topology] and [cluster], a seed, a work dir."""

    nodes: int
    """Agents n1..n<nodes> (node ids 1..nodes)."""
    links: int = 1
    """Lab networks; every node gets an address and an agent link on each."""
    qnetd: str = ""
    """"ffsplit" | "lms": votemesh-qnetd in host "qnetd" and a [qdevice] table; "": none."""
    broker: bool = False
    """mosquitto in host "broker"; the agents publish to it ([mqtt])."""
    cluster: Mapping[str, Any] = field(default_factory=dict)
    """The scenario's [cluster]: the agent's own keys, copied into every node's config."""
    seed: int = 0
    workdir: Path = Path("lab-work")
    shaper: str = "tap"
    static_peers: bool = True
    """False: no [[peer]] tables (discovery finds the members)."""
    lab_id: str | None = None
    """The lab's 6-hex-digit id (`votemesh-lab up --id`); None: a random one."""

    @classmethod
    def of(cls, s: Scenario, seed: int = 0, workdir: Path = Path("lab-work")) -> LabPlan:
        """The plan of a scenario's [topology] and [cluster]."""
        t = s.topology
        return cls(nodes=t.nodes, links=t.links, qnetd=t.qnetd, broker=t.broker,
                   cluster=s.plan_cluster(), seed=seed, workdir=workdir, shaper=t.shaper,
                   static_peers=t.static_peers)  # fmt: skip

    def host_names(self) -> list[str]:
        """Every host of the lab, nodes first."""
        names = [f"n{i}" for i in range(1, self.nodes + 1)]
        return names + (["qnetd"] if self.qnetd else []) + (["broker"] if self.broker else [])


@runtime_checkable
class Backend(Protocol):
    """A lab the runner drives. Hosts are names; every method raises LabError on failure."""

    name: str

    def hosts(self) -> list[str]:
        """Every host's name: "n1".."nN", then "qnetd" and "broker" when present."""
        ...

    def up(self, plan: LabPlan) -> None:
        """Build the lab and start every daemon (agents last); returns once all are started."""
        ...

    def apply(self, matrix: Matrix) -> Verification:
        """Make the network exactly `matrix`, then verify it by probes (design §4.3)."""
        ...

    def signal(self, host: str, what: Signal) -> None:
        """kill (SIGKILL), pause (SIGSTOP), resume (SIGCONT) or term (SIGTERM) its daemon.
        Returns once sent (a killed daemon is reaped first): several hosts get one at once."""
        ...

    def start(self, host: str) -> None:
        """Start the host's daemon again (after kill or term); a running one is left alone."""
        ...

    def link(self, host: str, link: int, up: bool) -> None:
        """Take lab network `link` of `host` down (nothing in or out) or up again."""
        ...

    def exec(self, host: str, argv: Sequence[str], timeout: float) -> tuple[int, str]:
        """Run a command in the host; (exit status, stdout + stderr). `votemesh` is the CLI."""
        ...

    def status(self, host: str) -> dict[str, Any]:
        """The agent's `status --json` document; {} when it does not answer (down, paused)."""
        ...

    def addresses(self, host: str) -> list[str]:
        """The host's address on each lab network."""
        ...

    def collect(self, out_dir: Path) -> dict[str, Path]:
        """Copy every host's logs under out_dir/logs/<host>/; host -> its agent's JSON log
        (nodes), the qnetd's log ("qnetd"), the MQTT tap's records ("broker")."""
        ...

    def down(self) -> None:
        """Stop everything and remove the lab; safe to call twice and after a failed up."""
        ...


def check_node_configs(plan: LabPlan) -> dict[str, Any]:
    """Every node's config, as a backend would write it (placeholder addresses and credential
    paths), through the agent's own loader before anything starts: the first node's parsed
    timing, quorum and qdevice (for the run record); ScenarioError naming the node if refused."""
    specs = [
        NodeSpec(i, f"n{i}", tuple(f"198.18.{k}.{i + 1}" for k in range(plan.links)))
        for i in range(1, plan.nodes + 1)
    ]
    qdevice = None
    if plan.qnetd:
        qdevice = {"host": "198.18.0.250", "port": 5403, "algorithm": plan.qnetd,
                   "tie_breaker": "lowest", "tls": "on", "ca_pem": "ca.pem",
                   "cert_pem": "client.pem", "key_pem": "client.key"}  # fmt: skip
        if plan.qnetd == "ffsplit":
            qdevice["votes"] = 1
    mqtt = {"host": "198.18.0.251", "port": 1883} if plan.broker else None
    first: dict[str, Any] = {}
    for spec in specs:
        peers = [p for p in specs if p is not spec] if plan.static_peers else []
        config = nodeconf.node_config(plan.cluster, spec, peers, key_file="cluster.key",
                                      state_dir="state", qdevice=qdevice, mqtt=mqtt)  # fmt: skip
        try:
            parsed = parse_config(nodeconf.toml_text(config))
        except (ConfigError, ValueError) as exc:  # ValueError: a value TOML cannot hold (inf)
            why = f"[cluster] gives {spec.name} a config the agent refuses: {exc}"
            raise ScenarioError(why) from None
        if not first:
            device = parsed.qdevice
            first = {
                "timing": dataclasses.asdict(parsed.timing),
                "quorum": {k: v if not isinstance(v, tuple) else list(v)
                           for k, v in dataclasses.asdict(parsed.quorum).items()},
                "qdevice": None if device is None else {
                    "algorithm": device.algorithm, "votes": device.votes,
                    "tie_breaker": str(device.tie_breaker)},
            }  # fmt: skip
    return first


# ---------------------------------------------------------------------------- the netns lab
@dataclass
class _Daemon:
    """The one long-lived process a host runs for the scenario (agent, qnetd or broker)."""

    process: TrackedProcess | None = None
    paused: bool = False
    stopping: bool = False
    """SIGTERM was sent: it may still be leaving; `start` waits for it to exit."""


class NetnsBackend:
    """The scenario's hosts as network namespaces on this machine (tap switch on network 0)."""

    name = "netns"

    def __init__(self) -> None:
        self.plan: LabPlan | None = None
        self.lab: Lab | None = None
        self.qnetd: VotemeshQnetd | None = None
        self.broker: LabBroker | None = None
        self.daemons: dict[str, _Daemon] = {}
        self._links_down: set[tuple[str, int]] = set()

    @property
    def lab_id(self) -> str | None:
        """The lab's id (its namespaces are vml-<id>-*), once up."""
        return self.lab.lab_id if self.lab is not None else None

    # -- set-up -----------------------------------------------------------------------------
    def hosts(self) -> list[str]:
        return self._plan().host_names()

    def up(self, plan: LabPlan) -> None:
        if plan.shaper == "tc" and (no_netem := tc.local_netem_refusal()) is not None:
            raise BackendError(no_netem)
        if plan.shaper != "tap":
            raise BackendError(f"shaper {plan.shaper!r}: the netns backend has 'tap' only here")
        if not 1 <= plan.links <= MAX_LINKS:
            raise BackendError(f"links = {plan.links}: use 1 to {MAX_LINKS}")
        self.plan = plan
        plan.workdir.mkdir(parents=True, exist_ok=True)
        self.lab = Lab(plan.workdir / "hosts", plan.host_names(), private_dirs=HOST_DIRS,
                       switch="tap", switch_seed=plan.seed, lab_id=plan.lab_id)  # fmt: skip
        try:
            self._extra_networks(plan.links)
            for host in self.lab.hosts.values():
                host.run(["iptables", "-w", "-N", LINK_CHAIN])
                for hook in ("INPUT", "OUTPUT"):
                    host.run(["iptables", "-w", "-I", hook, "-j", LINK_CHAIN])
            qdevice = self._start_qnetd(plan) if plan.qnetd else None
            mqtt = self._start_broker() if plan.broker else None
            self._start_agents(plan, qdevice, mqtt)
        except BaseException:
            self.down()
            raise

    def _plan(self) -> LabPlan:
        if self.plan is None:
            raise BackendError("the lab is not up")
        return self.plan

    def _lab(self) -> Lab:
        if self.lab is None:
            raise BackendError("the lab is not up")
        return self.lab

    def _host(self, name: str) -> Host:
        lab = self._lab()
        if name not in lab.hosts:
            raise BackendError(f"no host {name!r} in this lab: {', '.join(lab.hosts)}")
        return lab.hosts[name]

    def addresses(self, host: str) -> list[str]:
        address = ipaddress.IPv4Address(self._host(host).address)
        links = self._plan().links
        return [str(address + (k << 8)) for k in range(links)]

    def _extra_networks(self, links: int) -> None:
        """Lab networks 1..links-1: a kernel bridge each in the switch namespace, veths."""
        lab = self._lab()
        sw = ["ip", "-n", lab.bridge_netns]
        for k in range(1, links):
            bridge = f"br{k}"
            lab_run([*sw, "link", "add", bridge, "type", "bridge"])
            lab_run([*sw, "link", "set", bridge, "up"])
            for index, host in enumerate(lab.hosts.values(), start=1):
                port = f"p{k}x{index}"
                veth = ["type", "veth", "peer", "name", f"eth{k}", "netns", host.netns]
                lab_run([*sw, "link", "add", port, *veth])
                lab_run([*sw, "link", "set", port, "master", bridge, "up"])
                inside = ["ip", "-n", host.netns]
                address = self.addresses(host.name)[k]
                lab_run([*inside, "addr", "add", f"{address}/24", "dev", f"eth{k}"])
                lab_run([*inside, "link", "set", f"eth{k}", "up"])

    def _start_qnetd(self, plan: LabPlan) -> dict[str, Any]:
        self.qnetd = VotemeshQnetd(plan.workdir / "qnetd")
        self.qnetd.start(self._host("qnetd"))
        self.daemons["qnetd"] = _Daemon(self.qnetd.process)
        cluster = str(plan.cluster.get("cluster_name", nodeconf.DEFAULT_CLUSTER_NAME))
        creds = self.qnetd.client_credentials(cluster)
        here = creds.client_p12.parent  # `certs client` writes the PEM files beside it
        table: dict[str, Any] = {
            "host": self.qnetd.address,
            "port": self.qnetd.port,
            "algorithm": plan.qnetd,
            "tie_breaker": "lowest",
            "tls": "on",
            "ca_pem": str(here / "ca.pem"),
            "cert_pem": str(here / "client.pem"),
            "key_pem": str(here / "client.key"),
            "heartbeat_interval": QDEVICE_HEARTBEAT,
        }
        if plan.qnetd == "ffsplit":
            table["votes"] = 1
        return table

    def _start_broker(self) -> dict[str, Any]:
        plan = self._plan()
        self.broker = LabBroker(self._host("broker"), plan.workdir / "broker")
        self.broker.start()
        self.broker.tap()
        self.daemons["broker"] = _Daemon(self.broker.process)
        return {"host": self.broker.address, "port": self.broker.port, "keepalive": 5}

    def node_specs(self) -> list[NodeSpec]:
        """Every node: id, host name, addresses."""
        return [
            NodeSpec(i, f"n{i}", tuple(self.addresses(f"n{i}")))
            for i in range(1, self._plan().nodes + 1)
        ]

    def agent_configs(
        self, qdevice: Mapping[str, Any] | None = None, mqtt: Mapping[str, Any] | None = None
    ) -> dict[str, str]:
        """host -> the TOML text of its agent's config (also what `up` writes)."""
        plan = self._plan()
        specs = self.node_specs()
        texts = {}
        for spec in specs:
            host = self._host(spec.name)
            peers = [p for p in specs if p is not spec] if plan.static_peers else []
            config = nodeconf.node_config(
                plan.cluster, spec, peers, key_file=str(plan.workdir / "cluster.key"),
                state_dir=str(host.root / "state"), qdevice=qdevice, mqtt=mqtt,
            )  # fmt: skip
            texts[spec.name] = nodeconf.toml_text(config)
        return texts

    def _start_agents(
        self, plan: LabPlan, qdevice: Mapping[str, Any] | None, mqtt: Mapping[str, Any] | None
    ) -> None:
        keygen(plan.workdir / "cluster.key")
        for name, text in self.agent_configs(qdevice, mqtt).items():
            host = self._host(name)
            host.host_path("/run/votemesh").mkdir(parents=True, exist_ok=True)
            (host.root / "agent.toml").write_text(text)
        for name in self.agent_configs(qdevice, mqtt):
            self.daemons[name] = _Daemon()
            self.start(name)

    # -- faults -----------------------------------------------------------------------------
    def apply(self, matrix: Matrix) -> Verification:
        lab = self._lab()
        self._block_extra_networks(matrix.blocks)
        return lab.apply(matrix, verify=True)

    def _block_extra_networks(self, blocks: frozenset[tuple[str, str]]) -> None:
        """The matrix's blocks on networks 1..: DROP by source address in the receiver."""
        lab = self._lab()
        links = self._plan().links
        if links < 2:
            return
        rules: dict[str, list[str]] = {name: [] for name in lab.hosts}
        for src, dst in sorted(blocks):
            if src in lab.hosts and dst in rules:
                for address in self.addresses(src)[1:]:
                    rules[dst].append(f"-A {PARTITION_CHAIN} -s {address} -j DROP")
        for name, lines in rules.items():
            text = "\n".join([f"-F {PARTITION_CHAIN}", *lines])
            lab.hosts[name].run(["iptables-restore", "-w", "--noflush"],
                                input_text=f"*filter\n{text}\nCOMMIT\n")  # fmt: skip

    def _daemon(self, host: str) -> _Daemon:
        self._host(host)
        if host not in self.daemons:
            raise BackendError(f"host {host} runs no daemon of the scenario")
        return self.daemons[host]

    def signal(self, host: str, what: Signal) -> None:
        daemon = self._daemon(host)
        if what not in SIGNALS:
            raise BackendError(f"signal {what!r}: use one of {', '.join(SIGNALS)}")
        process = daemon.process
        if process is None or not process.alive():
            raise BackendError(f"{host}: its daemon is not running")
        was_paused = daemon.paused
        os.kill(process.pid, SIGNALS[what])
        daemon.paused = what == "pause"
        if what == "term":
            if was_paused:
                os.kill(process.pid, signal.SIGCONT)  # a stopped process hears no SIGTERM
            daemon.stopping = True  # it leaves the cluster now and exits soon; not waited for
        elif what == "kill":
            stop_process(process.process, grace=10.0)  # reaps it

    def start(self, host: str) -> None:
        daemon = self._daemon(host)
        if daemon.process is not None and daemon.stopping:
            stop_process(daemon.process.process, grace=10.0)  # the SIGTERMed one exits first
        daemon.stopping = False
        if daemon.process is not None and daemon.process.alive():
            return
        target = self._host(host)
        if host == "qnetd" and self.qnetd is not None:
            self.qnetd.start(target)
            daemon.process = self.qnetd.process
        elif host == "broker" and self.broker is not None:
            self.broker.start()
            daemon.process = self.broker.process
        else:
            args = [str(BIN / "votemesh-agent"), "--config", str(target.root / "agent.toml")]
            daemon.process = target.start(args, label="agent")
        daemon.paused = False

    def link(self, host: str, link: int, up: bool) -> None:
        target = self._host(host)
        if not 0 <= link < self._plan().links:
            raise BackendError(f"link {link}: this lab has networks 0..{self._plan().links - 1}")
        key = (host, link)
        if up == (key not in self._links_down):
            return
        action = "-D" if up else "-A"
        target.run(["iptables", "-w", action, LINK_CHAIN, "-i", f"eth{link}", "-j", "DROP"])
        target.run(["iptables", "-w", action, LINK_CHAIN, "-o", f"eth{link}", "-j", "DROP"])
        if up:
            self._links_down.discard(key)
        else:
            self._links_down.add(key)

    def exec(self, host: str, argv: Sequence[str], timeout: float) -> tuple[int, str]:
        target = self._host(host)
        args = list(argv)
        if args and args[0] in ("votemesh", "votemesh-agent", "votemesh-qnetd"):
            args[0] = str(BIN / args[0])
        try:
            result = target.run(args, check=False, timeout=timeout)
        except OSError as exc:
            return 127, str(exc)
        except TimeoutError:
            return 124, f"timed out after {timeout} s"
        return result.returncode, result.stdout + result.stderr

    def status(self, host: str) -> dict[str, Any]:
        daemon = self._daemon(host)
        if daemon.process is None or not daemon.process.alive() or daemon.paused:
            return {}
        socket_path = self._host(host).host_path(nodeconf.CONTROL_SOCKET)
        try:
            ok, body = control_request(socket_path, "status", timeout=1.0)
        except (OSError, ValueError):
            return {}
        if not ok:
            return {}
        try:
            doc = json.loads(body)
        except ValueError:
            return {}
        return doc if isinstance(doc, dict) else {}

    # -- the end ----------------------------------------------------------------------------
    def collect(self, out_dir: Path) -> dict[str, Path]:
        lab = self._lab()
        found: dict[str, Path] = {}
        for name, host in lab.hosts.items():
            target = out_dir / "logs" / name
            target.mkdir(parents=True, exist_ok=True)
            for log in sorted(host.root.glob("*.log")):
                shutil.copyfile(log, target / log.name)
            for extra in (host.root / "agent.toml",):
                if extra.exists():
                    shutil.copyfile(extra, target / extra.name)
            if (target / "agent.log").exists():
                found[name] = target / "agent.log"
        if self.qnetd is not None and "qnetd" in lab.hosts:
            qlog = out_dir / "logs" / "qnetd" / "qnetd-votemesh.log"
            if qlog.exists():
                found["qnetd"] = qlog
        if self.broker is not None:
            target = out_dir / "logs" / "broker"
            for path in (self.broker.events_path, self.broker.log_path):
                if path.exists():
                    shutil.copyfile(path, target / path.name)
            if (target / self.broker.events_path.name).exists():
                found["broker"] = target / self.broker.events_path.name
        return found

    def down(self) -> None:
        lab, self.lab = self.lab, None
        if lab is not None:
            for daemon in self.daemons.values():
                process = daemon.process
                if process is not None and process.alive() and daemon.paused:
                    os.kill(process.pid, signal.SIGCONT)  # a paused process hears no SIGTERM
            lab.close()


def lab_run(args: Sequence[str]) -> None:
    """One `ip` command on the real host; LabError naming it on failure."""
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        raise BackendError(f"{' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
