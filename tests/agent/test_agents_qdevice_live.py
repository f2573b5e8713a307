"""Two real `votemesh-agent`s with a qdevice, in the namespace lab, against both qnetds.

Hosts `qnetd`, `n1` and `n2` on the lab bridge; the qnetd host runs our qnetd (`VotemeshQnetd`)
in one parametrization and Debian's corosync-qnetd 3.0.3 (`DebianQnetdInNetns`) in the other.
Each node host runs one agent (static peers on the lab addresses, lab timing, `[qdevice]` with
ffsplit, tie-breaker lowest, 1 vote, TLS on with the qnetd's client certificate). The test reads
each agent's status through its control socket (a unix socket in the host-side workdir).

The issue's "must show": healthy -> both quorate with the device vote (3 of 3 votes); split 1|1
-> only node 1 (the tie-breaker) stays quorate (2 of 3), for a while; heal -> both again; qnetd
stopped -> both still quorate (2 of 3, no device vote) while they see each other.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from agent.runtime.keys import keygen
from tests.agent.live_agents import BIN, control_request
from tests.lab import netns
from tests.lab.corosync import QdeviceCredentials
from tests.lab.netns import Host, Lab, LabFactory, TrackedProcess
from tests.lab.qnetd_under_test import IMPLEMENTATIONS, QnetdUnderTest, VotemeshQnetd

CLUSTER = "qdlab"
AGENT_PORT = 5407
QDEVICE_HEARTBEAT = 2.0  # echo period and timeout (qdevice's default is 8 s); min 1 s
SETTLE = 20.0  # deadline for each picture; lab timing loses a peer after 1.8 s
SPLIT_HOLD = 4.0  # > one echo round and a few qnetd vote casts: a flapping vote shows up
HOLD = 2.0
RecordProperty = Callable[[str, object], None]


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root: network and mount namespaces, iptables inside them"
    return netns.missing_reason()


pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(_missing() is not None, reason=str(_missing())),
]


@pytest.fixture(params=IMPLEMENTATIONS, ids=[impl.name for impl in IMPLEMENTATIONS])
def qnetd_impl(request: pytest.FixtureRequest) -> type[QnetdUnderTest]:
    """The qnetd implementation under test; skipped when it cannot run here."""
    impl: type[QnetdUnderTest] = request.param
    reason = impl.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    return impl


@pytest.fixture
def lab_factory(tmp_path: Path) -> Iterator[LabFactory]:
    """Labs for one test; every namespace and process is gone after it, pass or fail."""
    with LabFactory(tmp_path) as factory:
        yield factory


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
    assert key is not None
    assert cert is not None
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
    def control_socket(self) -> Path:
        return self.workdir / "agent.sock"

    def status(self) -> dict[str, Any]:
        """The status document; AssertionError (with the log tail) if the agent died."""
        assert self.process is not None
        assert self.process.alive(), f"agent {self.node_id} exited:\n{self.process.log_tail()}"
        try:
            ok, body = control_request(self.control_socket, "status")
        except OSError:
            return {}
        doc: dict[str, Any] = json.loads(body) if ok else {}
        return doc

    def log_records(self) -> list[dict[str, Any]]:
        """The agent's JSON log lines so far."""
        assert self.process is not None
        records = []
        for line in self.process.log_path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records


def agent_config(
    agent: LabAgent, peer: LabAgent, key: Path, qnetd: QnetdUnderTest, pem: PemCredentials
) -> str:
    """TOML: lab timing, one link on the lab address, the other node, the qdevice."""
    return f"""
cluster_name = "{CLUSTER}"
node_id = {agent.node_id}
node_name = "{agent.host.name}"
key_files = ["{key}"]
state_dir = "state"
control_socket = "agent.sock"
discovery = false

[timing]
preset = "lab"

[qdevice]
host = "{qnetd.address}"
port = {qnetd.port}
algorithm = "ffsplit"
tie_breaker = "lowest"
votes = 1
tls = "on"
ca_pem = "{pem.ca_pem}"
cert_pem = "{pem.cert_pem}"
key_pem = "{pem.key_pem}"
heartbeat_interval = {QDEVICE_HEARTBEAT}

[[link]]
index = 0
address = "{agent.host.address}"
port = {AGENT_PORT}

[[peer]]
node_id = {peer.node_id}
name = "{peer.host.name}"
link0 = "{peer.host.address}:{AGENT_PORT}"
"""


def start_agents(
    lab: Lab, qnetd: QnetdUnderTest, pem: PemCredentials, work: Path
) -> list[LabAgent]:
    """One agent in n1 (node 1) and one in n2 (node 2), sharing one cluster key."""
    work.mkdir(parents=True, exist_ok=True)
    key = work / "cluster.key"
    keygen(key)
    agents = [LabAgent(i, lab[f"n{i}"], work / f"n{i}") for i in (1, 2)]
    for agent, peer in ((agents[0], agents[1]), (agents[1], agents[0])):
        agent.workdir.mkdir(parents=True)
        config = agent.workdir / "agent.toml"
        config.write_text(agent_config(agent, peer, key, qnetd, pem))
        agent.process = agent.host.start(
            [str(BIN / "votemesh-agent"), "--config", str(config)], label="agent"
        )
    return agents


# ---------------------------------------------------------------- pictures
Picture = Callable[[dict[int, dict[str, Any]]], str | None]
"""Statuses by node id -> None when the picture is there, else what is missing."""


def healthy(docs: dict[int, dict[str, Any]]) -> str | None:
    """Both in view {1,2}, quorate, device vote counted: 3 of 3 votes."""
    for node_id, doc in docs.items():
        got = (doc.get("members"), doc.get("quorate"), doc.get("total_votes"))
        vote = doc.get("qdevice", {}).get("vote")
        if got != ([1, 2], True, 3) or doc.get("expected_votes") != 3 or vote is not True:
            return f"node {node_id}: members/quorate/total {got}, device vote {vote}"
    return None


def split(docs: dict[int, dict[str, Any]]) -> str | None:
    """n1 alone and quorate with the device vote (2 of 3); n2 alone, inquorate, no vote."""
    want = {1: ([1], True, 2, True), 2: ([2], False, 1, False)}
    for node_id, doc in docs.items():
        got = (
            doc.get("members"),
            doc.get("quorate"),
            doc.get("total_votes"),
            doc.get("qdevice", {}).get("vote"),
        )
        if got != want[node_id]:
            return f"node {node_id}: members/quorate/total/vote {got}, want {want[node_id]}"
    return None


def no_device(docs: dict[int, dict[str, Any]]) -> str | None:
    """Both in view {1,2}, quorate on their own 2 of 3 votes; the device disconnected."""
    for node_id, doc in docs.items():
        qd = doc.get("qdevice", {})
        got = (doc.get("members"), doc.get("quorate"), doc.get("total_votes"))
        if got != ([1, 2], True, 2) or qd.get("vote") is not False or qd.get("connected"):
            return f"node {node_id}: members/quorate/total {got}, qdevice {qd}"
    return None


def wait_for(
    agents: list[LabAgent], picture: Picture, what: str, start: float, hold: float = 0.0
) -> tuple[float, dict[int, float]]:
    """Poll until `picture` holds, then require it for `hold` s without a break.

    Returns (seconds from `start` (monotonic) until it held first, per node: seconds until that
    node's part held)."""
    deadline = start + SETTLE
    per_node: dict[int, float] = {}
    while True:
        docs = {a.node_id: a.status() for a in agents}
        now = time.monotonic()
        for node_id, doc in docs.items():
            if node_id not in per_node and picture({node_id: doc}) is None:
                per_node[node_id] = now - start
        missing = picture(docs)
        if missing is None:
            break
        assert now < deadline, f"{what}: not there after {SETTLE} s: {missing}"
        time.sleep(0.05)
    reached = time.monotonic() - start
    until = time.monotonic() + hold
    while time.monotonic() < until:
        docs = {a.node_id: a.status() for a in agents}
        missing = picture(docs)
        assert missing is None, f"{what}: broke {time.monotonic() - start:.2f} s in: {missing}"
        time.sleep(0.1)
    return reached, per_node


def quorum_changes_since(agent: LabAgent, since_wall: float) -> list[str]:
    """`quorum_lost` / `quorum_gained` events the agent logged after `since_wall`."""
    found = []
    for record in agent.log_records():
        if record.get("event") not in {"quorum_lost", "quorum_gained"}:
            continue
        at = dt.datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00")).timestamp()
        if at >= since_wall:
            found.append(f"{record['event']} +{at - since_wall:.3f} s")
    return found


# ---------------------------------------------------------------- the test
@pytest.mark.timeout(110)
def test_two_agents_qdevice_split_and_qnetd_loss(
    qnetd_impl: type[QnetdUnderTest],
    lab_factory: LabFactory,
    tmp_path: Path,
    record_property: RecordProperty,
) -> None:
    """Two agents + a qnetd: healthy -> both quorate with the device vote (3 of 3); split 1|1 ->
    node 1 (tie-breaker lowest) stays quorate with 2 of 3 and node 2 is inquorate, for 4 s;
    heal -> both quorate with the device again; qnetd unreachable (echo timeout), then back ->
    the same without, then with the device; qnetd stopped -> both quorate on 2 of 3 votes with
    the device disconnected, while they see each other.

    Node 1's quorum at the split is recorded, not asserted: the session pauses the device vote
    on a membership change until qnetd ACKs the new ring, so node 1 counts 1 of 3 votes for the
    milliseconds that takes (`quorum_lost` then `quorum_gained` in its log)."""
    lab = lab_factory(["qnetd", "n1", "n2"], private_dirs=qnetd_impl.private_dirs)
    qnetd = qnetd_impl(tmp_path / "qnetd")
    qnetd.start(lab["qnetd"])
    pem = pem_credentials(qnetd, qnetd.client_credentials(CLUSTER), tmp_path / "pem")
    started = time.monotonic()
    agents = start_agents(lab, qnetd, pem, tmp_path / "agents")
    timings: dict[str, float] = {}

    timings["start -> healthy"], _ = wait_for(agents, healthy, "start", started, hold=HOLD)
    for doc in (a.status() for a in agents):
        assert doc["qdevice"]["connected"] is True
        assert doc["qdevice"]["state"] == "connected"
        assert doc["qdevice"]["tls"].startswith("TLSv1.")

    split_wall, split_at = time.time(), time.monotonic()
    lab.partition(["n1"], ["n2"])
    timings["split -> picture"], per_node = wait_for(
        agents, split, "split", split_at, hold=SPLIT_HOLD
    )
    timings["split -> n2 inquorate"] = per_node[2]
    n1_blips = quorum_changes_since(agents[0], split_wall)

    healed_at = time.monotonic()
    lab.heal()
    timings["heal -> healthy"], _ = wait_for(agents, healthy, "heal", healed_at, hold=HOLD)

    cut_at = time.monotonic()
    lab.partition(["qnetd"], ["n1", "n2"])  # silent, no FIN: only the echo timeout can tell
    timings["qnetd unreachable -> vote withdrawn"], _ = wait_for(
        agents, no_device, "qnetd unreachable", cut_at, hold=HOLD
    )
    rejoined_at = time.monotonic()
    lab.heal()
    timings["qnetd reachable -> healthy"], _ = wait_for(
        agents, healthy, "qnetd back", rejoined_at, hold=HOLD
    )

    stopped_at = time.monotonic()
    qnetd.stop()  # SIGTERM, and waits until the process is gone
    timings["qnetd stop -> vote withdrawn"], _ = wait_for(
        agents, no_device, "no qnetd", stopped_at, hold=HOLD
    )
    for agent in agents:
        assert "qdevice_disconnected" in [r["event"] for r in agent.log_records()]

    for name, seconds in timings.items():
        record_property(name, round(seconds, 3))
    record_property("n1 quorum changes during split", n1_blips)
    print(f"\n[{qnetd_impl.name}] " + ", ".join(f"{k}: {v:.2f} s" for k, v in timings.items()))
    print(f"[{qnetd_impl.name}] n1 quorum changes after the split: {n1_blips or 'none'}")
    shutil.rmtree(tmp_path / "pem", ignore_errors=True)
