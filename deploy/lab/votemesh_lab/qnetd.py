"""The qnetd a compatibility scenario runs against: Debian's corosync-qnetd or ours.

`QnetdUnderTest` is the seam: start in a lab host (its network + mount namespace) on an address
and port, stop, and hand out a cluster's client credentials in the form corosync-qdevice's
tooling imports on every node (`corosync-qdevice-net-certutil -i -c CA` then `-m -c P12`).

* `DebianQnetdInNetns`: corosync-qnetd 3.0.3 with its NSS tooling. The host's private
  /etc/corosync holds both the server database (/etc/corosync/qnetd/nssdb) and a scratch
  node-side database (/etc/corosync/qdevice/net/nssdb) used as the "first node" of Debian's
  procedure: `-r` makes the cluster request, `corosync-qnetd-certutil -s` signs it, `-M` imports
  it and exports the PKCS#12 the real nodes then import with `-m`.
* `VotemeshQnetd`: `python -m qnetd` per docs/design.md section 2.2 (`run`, `certs client`).
"""

from __future__ import annotations

import abc
import shutil
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

from votemesh_lab.corosync import QdeviceCredentials
from votemesh_lab.netns import Host, LabError, TrackedProcess, stop_process, wait_until

DEFAULT_PORT = 5403
#: The qnetd host needs these private (Debian's qnetd: NSS database, pid file and socket).
QNETD_PRIVATE_DIRS = ("/etc/corosync", "/run")


class QnetdUnderTest(abc.ABC):
    """A qnetd server running in a lab host."""

    #: Short id for test parametrization.
    name: ClassVar[str]
    #: Paths the host must have private (see `Lab(private_dirs=)`).
    private_dirs: ClassVar[tuple[str, ...]] = ()

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.host: Host | None = None
        self.address = ""
        self.port = DEFAULT_PORT
        self.process: TrackedProcess | None = None

    @classmethod
    @abc.abstractmethod
    def unavailable_reason(cls) -> str | None:
        """Why this implementation cannot run here (a skip reason), or None if it can."""

    def start(self, host: Host, *, address: str | None = None, port: int = DEFAULT_PORT) -> None:
        """Start listening on `address` (default: the host's) and `port` inside `host`."""
        missing = set(self.private_dirs) - set(host.private_dirs)
        if missing:
            # Without them the server's tooling would write the real host's /etc/corosync.
            raise LabError(f"host {host.name} needs private {sorted(missing)} for {self.name}")
        self.host, self.address, self.port = host, address or host.address, port
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._prepare(host)
        self.process = host.start(self._command(), label=f"qnetd-{self.name}")
        wait_until(self._listening, timeout=20, what=f"{self.name} qnetd to listen")

    def stop(self) -> None:
        """Stop the server (by the PID we started); the lab does it on close anyway."""
        if self.process is not None:
            stop_process(self.process.process)

    @abc.abstractmethod
    def client_credentials(self, cluster: str) -> QdeviceCredentials:
        """CA certificate and cluster PKCS#12 for `cluster`, as host-side files."""

    @abc.abstractmethod
    def _prepare(self, host: Host) -> None:
        """Create what the server needs before it starts (CA, server certificate, dirs)."""

    @abc.abstractmethod
    def _command(self) -> list[str]:
        """The server's command line, run inside the host."""

    def log_tail(self) -> str:
        """The end of the server's output, for failure messages."""
        return self.process.log_tail() if self.process is not None else ""

    def _listening(self) -> bool | None:
        if self.host is None:
            raise RuntimeError("self.host is not set")
        if self.process is None:
            raise RuntimeError("self.process is not set")
        if not self.process.alive():
            raise LabError(f"{self.name} qnetd exited:\n{self.process.log_tail()}")
        out = self.host.run(["ss", "-Hltn", f"sport = :{self.port}"], check=False).stdout
        return True if f"{self.address}:{self.port}" in out else None


class DebianQnetdInNetns(QnetdUnderTest):
    """Debian's corosync-qnetd; certificates from its corosync-*-certutil NSS tooling."""

    name = "debian"
    private_dirs = QNETD_PRIVATE_DIRS
    SERVER_DB = "/etc/corosync/qnetd/nssdb"
    SCRATCH_NODE_DB = "/etc/corosync/qdevice/net/nssdb"
    CA_EXPORT = f"{SERVER_DB}/qnetd-cacert.crt"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Missing packages."""
        for tool in ("corosync-qnetd", "corosync-qnetd-certutil", "corosync-qdevice-net-certutil"):
            if shutil.which(tool) is None:
                return f"{tool} not installed (apt-get install corosync-qnetd corosync-qdevice)"
        return None

    def _prepare(self, host: Host) -> None:
        if not host.host_path(self.SERVER_DB).exists():
            host.run(["corosync-qnetd-certutil", "-i"])
        # Default lock file and IPC socket live here (the host's /run is private).
        host.host_path("/run/corosync-qnetd").mkdir(parents=True, exist_ok=True)

    def _command(self) -> list[str]:
        return ["corosync-qnetd", "-f", "-l", self.address, "-p", str(self.port)]

    def client_credentials(self, cluster: str) -> QdeviceCredentials:
        """Debian's procedure with a scratch first node: -r, qnetd -s, -M; returns CA + p12."""
        host = self._host()
        shutil.rmtree(host.host_path(self.SCRATCH_NODE_DB), ignore_errors=True)
        node_util = "corosync-qdevice-net-certutil"
        host.run([node_util, "-i", "-c", self.CA_EXPORT])
        host.run([node_util, "-r", "-n", cluster])
        request = f"{self.SCRATCH_NODE_DB}/qdevice-net-node.crq"
        host.run(["corosync-qnetd-certutil", "-s", "-c", request, "-n", cluster])
        host.run([node_util, "-M", "-c", f"{self.SERVER_DB}/cluster-{cluster}.crt"])
        out = self.workdir / f"credentials-{cluster}"
        out.mkdir(parents=True, exist_ok=True)
        creds = QdeviceCredentials(out / "qnetd-cacert.crt", out / "qdevice-net-node.p12")
        shutil.copyfile(host.host_path(self.CA_EXPORT), creds.ca_cert)
        shutil.copyfile(
            host.host_path(f"{self.SCRATCH_NODE_DB}/qdevice-net-node.p12"), creds.client_p12
        )
        return creds

    def _host(self) -> Host:
        if self.host is None:
            raise LabError("start the qnetd before asking for credentials")
        return self.host


class VotemeshQnetd(QnetdUnderTest):
    """Our qnetd: `python -m qnetd run` and `python -m qnetd certs client` (design.md 2.2).

    The state directory is a host-side path outside the private directories, so the server
    (inside the namespace) and `certs client` (run from the test process) share it.
    """

    name = "votemesh"
    PYTHON = sys.executable

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """`python -m qnetd run --help` (and `certs client --help`, also needed) must succeed."""
        for command, reason in (
            (["run"], "votemesh-qnetd run not available yet"),
            (["certs", "client"], "votemesh-qnetd certs client not available yet"),
        ):
            try:
                result = subprocess.run(
                    [cls.PYTHON, "-m", "qnetd", *command, "--help"],
                    capture_output=True,
                    timeout=30,
                    check=False,
                )
            except (OSError, subprocess.SubprocessError):
                return reason
            if result.returncode != 0:
                return reason
        return None

    @property
    def state_dir(self) -> Path:
        """--state-dir of every command."""
        return self.workdir / "state"

    def _prepare(self, host: Host) -> None:  # noqa: ARG002 (the base class passes it)
        # `run` creates the CA and server certificate when missing (design.md 2.1).
        self.state_dir.mkdir(parents=True, exist_ok=True)

    def _command(self) -> list[str]:
        return [
            self.PYTHON, "-m", "qnetd", "run",
            "--state-dir", str(self.state_dir),
            "--listen", self.address,
            "--port", str(self.port),
            # no --tls / --client-cert-required: the defaults (TLS required, certificate naming
            # the cluster) are what real corosync-qdevice and our agents must work with
            "--enroll-listen", "off",
            "--control-socket", str(self.workdir / "control.sock"),
        ]  # fmt: skip

    def client_credentials(self, cluster: str) -> QdeviceCredentials:
        """`certs client --cluster NAME --out DIR`: uses ca.pem and client.p12 from DIR."""
        out = self.workdir / f"credentials-{cluster}"
        args = [self.PYTHON, "-m", "qnetd", "certs", "client", "--cluster", cluster]
        args += ["--out", str(out), "--state-dir", str(self.state_dir)]
        result = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
        if result.returncode != 0:
            raise LabError(f"{' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
        return QdeviceCredentials(out / "ca.pem", out / "client.p12")


IMPLEMENTATIONS: tuple[type[QnetdUnderTest], ...] = (DebianQnetdInNetns, VotemeshQnetd)
