"""`votemesh-lab up --corosync`: Debian's corosync (+ corosync-qdevice) instead of the agents.

`CorosyncBackend` is `NetnsBackend` with the node daemons replaced: the same lab (tap switch,
extra networks, votemesh-qnetd in host "qnetd" with `--qnetd`), then `corosync.CorosyncCluster`
on n1..nN (corosync.conf, one authkey, the qdevice NSS database from the qnetd's cluster
certificate; corosync -f, then corosync-qdevice -f). Each node's daemon, as the supervisor and
`kill|stop|cont|term|restart` see it, is its corosync; a signal goes to its corosync-qdevice too
(the node is one thing to break). `status(host)` is `corosync-quorumtool -s` in the host, in the
fields of the agent's status document the table shows. /etc/corosync, /var/lib/corosync and /run
are private in every host (netns.HOST_DIRS).
"""

from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import Mapping
from typing import Any

from votemesh_lab import nodeconf
from votemesh_lab.backends import (
    SIGNALS,
    BackendError,
    LabPlan,
    NetnsBackend,
    Signal,
    _Daemon,
)
from votemesh_lab.corosync import (
    CorosyncCluster,
    QdeviceConfig,
    QdeviceCredentials,
    QuorumStatus,
    missing_reason,
)
from votemesh_lab.netns import LabError, stop_process, wait_until

CLUSTER = nodeconf.DEFAULT_CLUSTER_NAME
"""What NetnsBackend names the cluster (and its qnetd certificate) when the plan does not."""


def unavailable_reason() -> str | None:
    """Why `--corosync` cannot run here, or None."""
    return missing_reason()


def status_document(status: QuorumStatus) -> dict[str, Any]:
    """corosync-quorumtool's view in the agent status document's field names."""
    return {
        "ring": status.ring_id,
        "members": sorted(status.member_ids),
        "quorate": status.quorate,
        "total_votes": status.total_votes,
        "expected_votes": status.expected_votes,
        "qdevice": {
            "configured": status.qdevice_votes is not None,
            "connected": status.qdevice_votes is not None,
            "vote": status.has_qdevice_vote,
            "votes": status.qdevice_votes or 0,
        },
        "peers": [],
    }


class CorosyncBackend(NetnsBackend):
    """The netns lab with corosync on the nodes."""

    name = "netns-corosync"

    def __init__(self) -> None:
        super().__init__()
        self.cluster: CorosyncCluster | None = None

    def up(self, plan: LabPlan) -> None:
        if (reason := unavailable_reason()) is not None:
            raise BackendError(f"--corosync: {reason}")
        super().up(plan)

    def _start_agents(
        self, plan: LabPlan, qdevice: Mapping[str, Any] | None, mqtt: Mapping[str, Any] | None
    ) -> None:
        del qdevice, mqtt  # the agents' tables; corosync gets its own below
        nodes = [self._host(f"n{i}") for i in range(1, plan.nodes + 1)]
        device, credentials = None, None
        if self.qnetd is not None:
            # _start_qnetd made the cluster certificate already (`certs client` once per name).
            made = self.qnetd.workdir / f"credentials-{CLUSTER}"
            credentials = QdeviceCredentials(made / "ca.pem", made / "client.p12")
            device = QdeviceConfig(self.qnetd.address, self.qnetd.port, plan.qnetd)
        self.cluster = CorosyncCluster(nodes, CLUSTER, device)
        self.cluster.configure(credentials)
        self.cluster.start()
        for name, tracked in self.cluster.corosync.items():
            self.daemons[name] = _Daemon(tracked)

    def _node(self, host: str) -> CorosyncCluster | None:
        return self.cluster if self.cluster is not None and host in self.cluster.hosts else None

    def signal(self, host: str, what: Signal) -> None:
        cluster = self._node(host)
        device = cluster.qdevices.get(host) if cluster is not None else None
        if device is not None and device.alive() and what in SIGNALS:
            os.kill(device.pid, SIGNALS[what])
            if what in ("kill", "term"):
                stop_process(device.process, grace=10.0)
        super().signal(host, what)

    def start(self, host: str) -> None:
        cluster = self._node(host)
        if cluster is None:
            super().start(host)
            return
        daemon = self._daemon(host)
        if daemon.process is not None and daemon.process.alive():
            return
        target = self._host(host)
        old = cluster.qdevices.pop(host, None)  # its wait checks every tracked daemon is alive
        if old is not None and old.alive():
            stop_process(old.process)
        cluster.corosync[host] = daemon.process = target.start(["corosync", "-f"], label="corosync")
        daemon.paused = False
        wait_until(functools.partial(cluster._answering, host), timeout=30.0,
                   what=f"corosync on {host} to answer")  # fmt: skip
        if cluster.qdevice is not None:
            cluster.qdevices[host] = target.start(["corosync-qdevice", "-f"], label="qdevice")

    def status(self, host: str) -> dict[str, Any]:
        cluster = self._node(host)
        if cluster is None:
            return super().status(host)
        daemon = self._daemon(host)
        if daemon.process is None or not daemon.process.alive() or daemon.paused:
            return {}
        try:
            return status_document(cluster.status(host))
        except (LabError, subprocess.TimeoutExpired):
            return {}
