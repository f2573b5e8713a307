"""Real `votemesh-agent` processes in the namespace lab, with an optional qdevice.

Shared by the qdevice live test (`tests/agent/test_agents_qdevice_live.py`) and the agent demo
(`votemesh_lab/demo.py`). Each agent runs in lab host `n<id>` with static peers on the lab
addresses, one link, discovery off, and its files (config, state, control socket) in a host-side
directory; its output is the lab's `<host>/agent.log`. Credentials for the `[qdevice]` table come
from the qnetd under test, as PEM files. No pytest here: the demo imports it as a script.
"""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from agent.runtime.keys import keygen
from proto.runtime.control_client import request as control_request
from votemesh_lab.corosync import QdeviceCredentials
from votemesh_lab.netns import Host, Lab, TrackedProcess
from votemesh_lab.qnetd import QnetdUnderTest, VotemeshQnetd

CLUSTER = "qdlab"
AGENT_PORT = 5407
BIN = Path(sys.executable).parent
"""Where the running interpreter's entry points are (votemesh-agent, votemesh-qnetd)."""
QDEVICE_HEARTBEAT = 2.0  # echo period and timeout (qdevice's default is 8 s); min 1 s


# ---------------------------------------------------------------- credentials
@dataclass(frozen=True)
class PemCredentials:
    """What the agent's `[qdevice]` table points at."""

    ca_pem: Path
    cert_pem: Path
    key_pem: Path


def pem_credentials(qnetd: QnetdUnderTest, creds: QdeviceCredentials, out: Path) -> PemCredentials:
    """Ours: the PEM files `certs client` wrote next to client.p12. Debian's: the NSS export
    (CA in PEM or DER) and the PKCS#12 with an empty password, converted to PEM."""
    if isinstance(qnetd, VotemeshQnetd):
        here = creds.client_p12.parent
        return PemCredentials(here / "ca.pem", here / "client.pem", here / "client.key")
    out.mkdir(parents=True, exist_ok=True)
    raw_ca = creds.ca_cert.read_bytes()
    try:
        ca = x509.load_pem_x509_certificate(raw_ca)
    except ValueError:
        ca = x509.load_der_x509_certificate(raw_ca)
    with warnings.catch_warnings():  # NSS's pk12util writes BER; cryptography warns, then reads it
        warnings.filterwarnings("ignore", "PKCS#12 bundle could not be parsed as DER", UserWarning)
        key, cert, _extra = pkcs12.load_key_and_certificates(creds.client_p12.read_bytes(), b"")
    if key is None:
        raise RuntimeError("key is not set")
    if cert is None:
        raise RuntimeError("cert is not set")
    pem = PemCredentials(out / "ca.pem", out / "client.pem", out / "client.key")
    pem.ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pem.cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.key_pem.touch(mode=0o600)
    pem.key_pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return pem


# ---------------------------------------------------------------- agents
@dataclass
class LabAgent:
    """One agent process in a lab host; files in a host-side directory."""

    node_id: int
    host: Host
    workdir: Path
    process: TrackedProcess | None = None

    @property
    def config_path(self) -> Path:
        return self.workdir / "agent.toml"

    @property
    def control_socket(self) -> Path:
        return self.workdir / "agent.sock"

    def start(self) -> None:
        """Start (or restart) the agent from its config file; the lab stops it on close."""
        args = [str(BIN / "votemesh-agent"), "--config", str(self.config_path)]
        self.process = self.host.start(args, label="agent")

    def status(self) -> dict[str, Any]:
        """The status document; AssertionError (with the log tail) if the agent died."""
        if self.process is None:
            raise RuntimeError("self.process is not set")
        if not self.process.alive():
            raise AssertionError(f"agent {self.node_id} exited:\n{self.process.log_tail()}")
        try:
            ok, body = control_request(self.control_socket, "status")
        except OSError:
            return {}
        doc: dict[str, Any] = json.loads(body) if ok else {}
        return doc

    def log_records(self) -> list[dict[str, Any]]:
        """The agent's JSON log lines so far (every run of it: the log is appended to)."""
        if self.process is None:
            raise RuntimeError("self.process is not set")
        records = []
        for line in self.process.log_path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records


def qdevice_section(
    qnetd: QnetdUnderTest, pem: PemCredentials, heartbeat: float, algorithm: str = "ffsplit"
) -> str:
    """TOML `[qdevice]`: tie-breaker lowest, TLS with the client certificate; ffsplit with 1
    vote, or lms with the default votes (the nodes' votes - 1)."""
    votes = "votes = 1\n" if algorithm == "ffsplit" else ""
    return f"""
[qdevice]
host = "{qnetd.address}"
port = {qnetd.port}
algorithm = "{algorithm}"
tie_breaker = "lowest"
{votes}tls = "on"
ca_pem = "{pem.ca_pem}"
cert_pem = "{pem.cert_pem}"
key_pem = "{pem.key_pem}"
heartbeat_interval = {heartbeat}
"""


def agent_config(
    agent: LabAgent,
    peers: Sequence[LabAgent],
    key: Path,
    qdevice: str = "",
    *,
    cluster: str = CLUSTER,
    timing: str = "lab",
) -> str:
    """TOML: a timing preset, one link on the lab address, the other nodes, `qdevice` text."""
    peer_tables = "".join(
        f'\n[[peer]]\nnode_id = {p.node_id}\nname = "{p.host.name}"\n'
        f'link0 = "{p.host.address}:{AGENT_PORT}"\n'
        for p in peers
    )
    return f"""
cluster_name = "{cluster}"
node_id = {agent.node_id}
node_name = "{agent.host.name}"
key_files = ["{key}"]
state_dir = "state"
control_socket = "agent.sock"
discovery = false

[timing]
preset = "{timing}"
{qdevice}
[[link]]
index = 0
address = "{agent.host.address}"
port = {AGENT_PORT}
{peer_tables}"""


def start_agents(
    lab: Lab,
    qnetd: QnetdUnderTest | None,
    pem: PemCredentials | None,
    work: Path,
    node_ids: Sequence[int] = (1, 2),
    *,
    cluster: str = CLUSTER,
    timing: str = "lab",
    qdevice_heartbeat: float = QDEVICE_HEARTBEAT,
    algorithm: str = "ffsplit",
) -> list[LabAgent]:
    """One agent per node id in host `n<id>`, sharing one cluster key; a `[qdevice]` section
    when `qnetd` and `pem` are given."""
    work.mkdir(parents=True, exist_ok=True)
    key = work / "cluster.key"
    keygen(key)
    qdevice = ""
    if qnetd is not None and pem is not None:
        qdevice = qdevice_section(qnetd, pem, qdevice_heartbeat, algorithm)
    agents = [LabAgent(i, lab[f"n{i}"], work / f"n{i}") for i in node_ids]
    for agent in agents:
        agent.workdir.mkdir(parents=True)
        peers = [p for p in agents if p is not agent]
        text = agent_config(agent, peers, key, qdevice, cluster=cluster, timing=timing)
        agent.config_path.write_text(text)
        agent.start()
    return agents
