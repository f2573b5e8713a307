"""Debian's corosync + corosync-qdevice on lab hosts: configure, start, query, wait.

Each node is a lab `Host` whose private mount namespace has its own /etc/corosync (config,
authkey, qdevice NSS database in /etc/corosync/qdevice/net/nssdb), /var/lib/corosync and /run
(pid files, qdevice socket and lock): corosync's paths are compiled in, so one corosync per
namespace. Daemons run with `-f` as tracked lab processes; every query (corosync-quorumtool
included) runs inside the node through nsenter.

`corosync-quorumtool` shows the last *completed* state: while a membership change is in progress
both halves of a split can still print "Quorate: Yes". Waits therefore ask for the whole picture
(membership of each side, quorate flags, qdevice vote) and then check that it holds.
"""

from __future__ import annotations

import functools
import re
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from votemesh_lab.netns import (
    Host,
    LabError,
    NotYetError,
    TrackedProcess,
    stop_processes,
    wait_until,
)

#: What a corosync node needs private (see the module docstring); pass to `Lab(private_dirs=)`.
COROSYNC_PRIVATE_DIRS = ("/etc/corosync", "/var/lib/corosync", "/run")
CONF = "/etc/corosync/corosync.conf"
AUTHKEY = "/etc/corosync/authkey"
QDEVICE_NSSDB = "/etc/corosync/qdevice/net/nssdb"
QDEVICE_RUN_DIR = "/run/corosync-qdevice"
REQUIRED_TOOLS = (
    "corosync",
    "corosync-qdevice",
    "corosync-quorumtool",
    "corosync-keygen",
    "corosync-qdevice-net-certutil",
    "certutil",
    "pk12util",
)


def missing_reason() -> str | None:
    """Why Debian's corosync stack cannot run here, or None if it can."""
    for tool in REQUIRED_TOOLS:
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt-get install corosync corosync-qdevice libnss3-tools)"
    return None


@dataclass(frozen=True)
class Timings:
    """Totem and qdevice timeouts for the lab (all in ms).

    Defaults are chosen for fast scenarios on a 2-core machine without flakiness:

    * token 1000 ms (corosync default 3000) with token_coefficient 0, so the token is 1000 ms for
      2, 3 or 4 nodes (by default it grows 650 ms per node past 2). corosync runs SCHED_RR 99, so
      it keeps its timers even when the test machine is busy; the lab links have no latency or
      loss. Consensus stays at corosync's formula, 1.2 x token = 1200 ms. A split is thus noticed
      after token + consensus, about 2.2 s instead of about 6.6 s.
    * qdevice timeout 5000 ms (default 10000): corosync drops the device vote if qdevice has not
      polled within it; qdevice casts its vote every timeout / 2 = 2.5 s and sends qnetd a
      heartbeat every 0.8 x timeout = 4 s (qnetd's dead-peer detection fires after 1.5 x that).
      qdevice is not real-time, so keep a wide margin over scheduling hiccups.
    * qdevice sync_timeout 10000 ms (default 30000): how long votequorum waits for the device
      during a membership change; ffsplit answers as soon as both halves reported, so this only
      bounds a stuck sync.
    """

    token_ms: int = 1000
    token_coefficient_ms: int = 0
    device_timeout_ms: int = 5000
    device_sync_timeout_ms: int = 10000


LAB_TIMINGS = Timings()


@dataclass(frozen=True)
class QdeviceConfig:
    """The quorum.device section: where qnetd is and how it decides."""

    host: str
    port: int = 5403
    algorithm: str = "ffsplit"
    tie_breaker: str = "lowest"
    tls: str = "on"
    votes: int | None = None
    """None: what the algorithm needs, 1 for ffsplit (qdevice refuses anything else), nodes - 1
    for lms and the others (the device can carry a single node to quorum)."""


@dataclass(frozen=True)
class QdeviceCredentials:
    """Host-side files every node imports with corosync-qdevice-net-certutil.

    `-i -c ca_cert` creates /etc/corosync/qdevice/net/nssdb trusting the qnetd CA as "QNet CA";
    `-m -c client_p12` imports the cluster certificate and key (friendly name "Cluster Cert",
    empty password).
    """

    ca_cert: Path
    client_p12: Path


@dataclass(frozen=True)
class NodeConfig:
    """One entry of the nodelist."""

    nodeid: int
    name: str
    address: str


def corosync_conf(
    cluster_name: str,
    nodes: Sequence[NodeConfig],
    qdevice: QdeviceConfig | None,
    timings: Timings = LAB_TIMINGS,
) -> str:
    """corosync.conf text: knet with crypto, votequorum, and the net device when given."""
    node_blocks = "".join(
        f"    node {{\n        nodeid: {n.nodeid}\n        name: {n.name}\n"
        f"        ring0_addr: {n.address}\n    }}\n"
        for n in nodes
    )
    device = ""
    if qdevice is not None:
        votes = qdevice.votes
        if votes is None:
            votes = 1 if qdevice.algorithm == "ffsplit" else len(nodes) - 1
        device = (
            "    device {\n"
            "        model: net\n"
            f"        votes: {votes}\n"
            f"        timeout: {timings.device_timeout_ms}\n"
            f"        sync_timeout: {timings.device_sync_timeout_ms}\n"
            "        net {\n"
            f"            host: {qdevice.host}\n"
            f"            port: {qdevice.port}\n"
            f"            algorithm: {qdevice.algorithm}\n"
            f"            tie_breaker: {qdevice.tie_breaker}\n"
            f"            tls: {qdevice.tls}\n"
            "        }\n"
            "    }\n"
        )
    return (
        "# written by votemesh_lab/corosync.py\n"
        "totem {\n"
        "    version: 2\n"
        f"    cluster_name: {cluster_name}\n"
        "    transport: knet\n"
        "    crypto_cipher: aes256\n"
        "    crypto_hash: sha256\n"
        f"    token: {timings.token_ms}\n"
        f"    token_coefficient: {timings.token_coefficient_ms}\n"
        "}\n"
        f"nodelist {{\n{node_blocks}}}\n"
        "quorum {\n"
        "    provider: corosync_votequorum\n"
        f"{device}"
        "}\n"
        "logging {\n"
        "    to_stderr: yes\n"
        "    to_logfile: no\n"
        "    to_syslog: no\n"
        "    timestamp: hires\n"
        "}\n"
    )


# -- corosync-quorumtool -s -------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    """One row of the membership table."""

    nodeid: int
    votes: int
    qdevice_flags: frozenset[str]
    """Per-node qdevice state: A/NA alive, V/NV votes, MW/NMW master wins; empty without one."""
    name: str
    local: bool


@dataclass(frozen=True)
class QuorumStatus:
    """What `corosync-quorumtool -s` says on one node."""

    node_id: int
    ring_id: str
    quorate: bool
    expected_votes: int
    total_votes: int
    quorum: int
    flags: frozenset[str]
    members: tuple[Member, ...]
    qdevice_votes: int | None
    """Votes of the "Qdevice" row, or None when there is no device row."""

    @property
    def member_ids(self) -> frozenset[int]:
        """Node ids in the current membership (the Qdevice row excluded)."""
        return frozenset(m.nodeid for m in self.members)

    @property
    def has_qdevice_vote(self) -> bool:
        """The device is registered and its vote counts here (flag Qdevice, local node has V)."""
        local = [m for m in self.members if m.local]
        return (
            "Qdevice" in self.flags
            and bool(self.qdevice_votes)
            and bool(local)
            and "V" in local[0].qdevice_flags
        )

    def summary(self) -> str:
        """One line for error messages."""
        local = next((m for m in self.members if m.local), None)
        qflags = ",".join(sorted(local.qdevice_flags)) if local else "-"
        return (
            f"node {self.node_id} ring {self.ring_id} quorate={self.quorate} "
            f"members={sorted(self.member_ids)} votes={self.total_votes}/{self.expected_votes} "
            f"quorum={self.quorum} flags={' '.join(sorted(self.flags))} qdevice={qflags} "
            f"device_votes={self.qdevice_votes}"
        )


class QuorumtoolParseError(LabError):
    """corosync-quorumtool printed something we do not understand."""


_FIELD = re.compile(r"^([A-Za-z][A-Za-z ]*?):\s*(.*?)\s*$")
_MEMBER = re.compile(r"^\s*(\d+)\s+(\d+)\s+(?:([A-Z,]+)\s+)?(.+?)(\s+\(local\))?\s*$")
_DEVICE = re.compile(r"^\s*0\s+(\d+)\s+Qdevice\b")


def parse_quorumtool(text: str) -> QuorumStatus:
    """Parse `corosync-quorumtool -s` output (corosync 3.1); QuorumtoolParseError if unusable."""
    fields: dict[str, str] = {}
    members: list[Member] = []
    device_votes: int | None = None
    in_table = False
    for line in text.splitlines():
        if line.strip().startswith("Nodeid"):
            in_table = True
            continue
        if in_table:
            if (device := _DEVICE.match(line)) is not None:
                device_votes = int(device.group(1))
            elif (row := _MEMBER.match(line)) is not None:
                flags = frozenset(row.group(3).split(",")) if row.group(3) else frozenset()
                members.append(
                    Member(
                        int(row.group(1)),
                        int(row.group(2)),
                        flags,
                        row.group(4),
                        row.group(5) is not None,
                    )
                )
        elif (match := _FIELD.match(line)) is not None:
            fields[match.group(1)] = match.group(2)
    try:
        return QuorumStatus(
            node_id=int(fields["Node ID"]),
            ring_id=fields["Ring ID"],
            quorate=fields["Quorate"] == "Yes",
            expected_votes=int(fields["Expected votes"]),
            total_votes=int(fields["Total votes"]),
            quorum=int(fields["Quorum"].split()[0]),
            flags=frozenset(fields.get("Flags", "").split()),
            members=tuple(members),
            qdevice_votes=device_votes,
        )
    except (KeyError, ValueError, IndexError) as exc:
        raise QuorumtoolParseError(f"cannot parse corosync-quorumtool -s: {exc!r}\n{text}") from exc


# -- a cluster on lab hosts ---------------------------------------------------------------------


Expectation = Callable[[Mapping[str, QuorumStatus]], str | None]
"""Looks at every node's status; returns None when satisfied, else what is still wrong."""


class CorosyncCluster:
    """corosync (+ corosync-qdevice) on some lab hosts; node ids 1..N in the order given."""

    def __init__(
        self,
        hosts: Sequence[Host],
        cluster_name: str,
        qdevice: QdeviceConfig | None = None,
        timings: Timings = LAB_TIMINGS,
    ) -> None:
        for host in hosts:
            missing = set(COROSYNC_PRIVATE_DIRS) - set(host.private_dirs)
            if missing:
                # Without them corosync would use (and we would write) the real host's files.
                raise LabError(f"host {host.name} needs private {sorted(missing)} for corosync")
        self.hosts = {host.name: host for host in hosts}
        self.nodeids = {host.name: index for index, host in enumerate(hosts, start=1)}
        self.cluster_name = cluster_name
        self.qdevice = qdevice
        self.timings = timings
        self.corosync: dict[str, TrackedProcess] = {}
        self.qdevices: dict[str, TrackedProcess] = {}

    def name_of(self, nodeid: int) -> str:
        """Host name of a node id."""
        return next(name for name, i in self.nodeids.items() if i == nodeid)

    # -- set-up ------------------------------------------------------------------------------

    def configure(self, credentials: QdeviceCredentials | None = None) -> None:
        """corosync.conf and one authkey on every node; the qdevice NSS database if a device."""
        nodes = [NodeConfig(self.nodeids[n], n, h.address) for n, h in self.hosts.items()]
        text = corosync_conf(self.cluster_name, nodes, self.qdevice, self.timings)
        first = next(iter(self.hosts.values()))
        first.run(["corosync-keygen", "-k", AUTHKEY])
        key = first.host_path(AUTHKEY).read_bytes()
        for host in self.hosts.values():
            host.host_path(CONF).write_text(text)
            if host is not first:
                path = host.host_path(AUTHKEY)
                path.write_bytes(key)
                path.chmod(0o400)
            host.host_path(QDEVICE_RUN_DIR).mkdir(parents=True, exist_ok=True)
            if self.qdevice is not None:
                if credentials is None:
                    raise LabError("a qdevice needs credentials (QdeviceCredentials)")
                self._install_credentials(host, credentials)

    @staticmethod
    def _install_credentials(host: Host, credentials: QdeviceCredentials) -> None:
        ca = host.host_path("/etc/corosync/qnetd-ca.crt")
        p12 = host.host_path("/etc/corosync/qdevice-net-node.p12")
        shutil.copyfile(credentials.ca_cert, ca)
        shutil.copyfile(credentials.client_p12, p12)
        host.run(["corosync-qdevice-net-certutil", "-i", "-c", "/etc/corosync/qnetd-ca.crt"])
        host.run(
            ["corosync-qdevice-net-certutil", "-m", "-c", "/etc/corosync/qdevice-net-node.p12"]
        )

    def start(self, *, timeout: float = 30.0) -> None:
        """Start corosync everywhere, wait until each answers, then start corosync-qdevice."""
        for name, host in self.hosts.items():
            self.corosync[name] = host.start(["corosync", "-f"], label="corosync")
        for name in self.hosts:
            wait_until(
                functools.partial(self._answering, name),
                timeout=timeout,
                what=f"corosync on {name} to answer corosync-quorumtool",
            )
        if self.qdevice is not None:
            for name, host in self.hosts.items():
                self.qdevices[name] = host.start(["corosync-qdevice", "-f"], label="qdevice")

    def _answering(self, name: str) -> bool | None:
        self._check_alive()
        result = self.hosts[name].run(["corosync-quorumtool", "-s"], check=False, timeout=10)
        return True if "Quorum information" in result.stdout else None

    def _check_alive(self) -> None:
        for tracked in [*self.corosync.values(), *self.qdevices.values()]:
            if not tracked.alive():
                raise LabError(
                    f"{tracked.label} on {tracked.host} exited "
                    f"{tracked.process.returncode}:\n{tracked.log_tail()}"
                )

    def log_marks(self) -> dict[str, int]:
        """Current size of every node's corosync log, to read what is logged after this point."""
        return {name: t.log_path.stat().st_size for name, t in self.corosync.items()}

    def log_since(self, name: str, marks: Mapping[str, int]) -> str:
        """corosync's output on `name` since `log_marks()` was taken."""
        with self.corosync[name].log_path.open("rb") as log:
            log.seek(marks[name])
            return log.read().decode(errors="replace")

    def lost_quorum_since(self, marks: Mapping[str, int]) -> list[str]:
        """Nodes whose corosync logged leaving the primary component since `marks`.

        corosync logs "This node is within the non-primary component" each time votequorum
        finds the node inquorate; this is the event record behind quorumtool's snapshots.
        """
        return [
            name
            for name in self.corosync
            if "within the non-primary component" in self.log_since(name, marks)
        ]

    def stop(self) -> None:
        """Stop qdevice, then corosync, on every node (the lab would do it on close anyway)."""
        stop_processes([t.process for t in self.qdevices.values()])
        stop_processes([t.process for t in self.corosync.values()])

    # -- queries -----------------------------------------------------------------------------

    def status(self, name: str) -> QuorumStatus:
        """`corosync-quorumtool -s` on one node, parsed."""
        result = self.hosts[name].run(["corosync-quorumtool", "-s"], check=False, timeout=10)
        return parse_quorumtool(result.stdout)

    def statuses(self, names: Iterable[str] | None = None) -> dict[str, QuorumStatus]:
        """Status of several nodes (all by default)."""
        return {name: self.status(name) for name in (names or self.hosts)}

    def wait_for(
        self,
        expectation: Expectation,
        *,
        timeout: float,
        what: str,
        hold: float = 0.0,
    ) -> tuple[float, dict[str, QuorumStatus]]:
        """Poll every node until `expectation` is met, then check it keeps holding for `hold` s.

        Returns the seconds it took to be met (not counting `hold`) and the last statuses.
        LabError (with every node's status) when it is not met in time or stops holding.
        """
        started = time.monotonic()
        last: dict[str, QuorumStatus] = {}

        def probe() -> dict[str, QuorumStatus] | None:
            nonlocal last
            self._check_alive()
            last = self.statuses()
            problem = expectation(last)
            if problem is None:
                return last
            raise NotYetError(f"{problem}\n  " + self._describe(last))

        wait_until(probe, timeout=timeout, what=what)
        met_after = time.monotonic() - started
        hold_until = time.monotonic() + hold
        while time.monotonic() < hold_until:
            self._check_alive()
            last = self.statuses()
            problem = expectation(last)
            if problem is not None:
                raise LabError(
                    f"{what}: met after {met_after:.1f} s but did not hold: {problem}\n  "
                    + self._describe(last)
                )
            time.sleep(0.25)
        return met_after, last

    @staticmethod
    def _describe(statuses: Mapping[str, QuorumStatus]) -> str:
        return "\n  ".join(f"{name}: {s.summary()}" for name, s in statuses.items())


# -- expectations -------------------------------------------------------------------------------


def sides(cluster: CorosyncCluster, groups: Sequence[Sequence[int]]) -> Expectation:
    """Each group of node ids sees exactly itself as membership, with one agreed ring id."""

    def check(statuses: Mapping[str, QuorumStatus]) -> str | None:
        for group in groups:
            want = frozenset(group)
            rings = set()
            for nodeid in group:
                status = statuses[cluster.name_of(nodeid)]
                if status.member_ids != want:
                    return f"node {nodeid} sees members {sorted(status.member_ids)}"
                rings.add(status.ring_id)
            if len(rings) != 1:
                return f"nodes {sorted(want)} disagree on the ring: {sorted(rings)}"
        return None

    return check


def quorate_with_device(cluster: CorosyncCluster, nodeids: Iterable[int]) -> Expectation:
    """These nodes are quorate and count the qdevice's vote."""

    def check(statuses: Mapping[str, QuorumStatus]) -> str | None:
        for nodeid in nodeids:
            status = statuses[cluster.name_of(nodeid)]
            if not status.quorate:
                return f"node {nodeid} is not quorate"
            if not status.has_qdevice_vote:
                return f"node {nodeid} does not count the qdevice vote"
        return None

    return check


def inquorate_without_device(cluster: CorosyncCluster, nodeids: Iterable[int]) -> Expectation:
    """These nodes have lost quorum and the qdevice does not vote for them."""

    def check(statuses: Mapping[str, QuorumStatus]) -> str | None:
        for nodeid in nodeids:
            status = statuses[cluster.name_of(nodeid)]
            if status.quorate:
                return f"node {nodeid} is still quorate"
            if status.has_qdevice_vote:
                return f"node {nodeid} still counts the qdevice vote"
        return None

    return check


def votes(
    cluster: CorosyncCluster, nodeids: Iterable[int], *, total: int, expected: int
) -> Expectation:
    """These nodes count `total` votes out of `expected` (the qdevice's included)."""

    def check(statuses: Mapping[str, QuorumStatus]) -> str | None:
        for nodeid in nodeids:
            status = statuses[cluster.name_of(nodeid)]
            if (status.total_votes, status.expected_votes) != (total, expected):
                return (
                    f"node {nodeid} counts {status.total_votes}/{status.expected_votes} votes, "
                    f"want {total}/{expected}"
                )
        return None

    return check


def all_of(*expectations: Expectation) -> Expectation:
    """Every expectation holds; reports the first that does not."""

    def check(statuses: Mapping[str, QuorumStatus]) -> str | None:
        for expectation in expectations:
            problem = expectation(statuses)
            if problem is not None:
                return problem
        return None

    return check
