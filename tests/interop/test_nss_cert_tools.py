"""Our certificates against Debian's NSS tools, the way operators and qdevice use them.

corosync-qdevice-net-certutil hard-codes /etc/corosync/qdevice/net, so it runs in a private mount
namespace with a temporary directory bind-mounted over /etc/corosync (the host has no
/etc/corosync/qdevice to mount over); the host's files are never touched. certutil, pk12util and
tstclnt take the database directory as an argument and run directly on the temporary copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from votemesh_lab.corosync import (
    COROSYNC_PRIVATE_DIRS,
    CorosyncCluster,
    QdeviceConfig,
    QdeviceCredentials,
    quorate_with_device,
)
from votemesh_lab.corosync import missing_reason as lab_missing_reason
from votemesh_lab.netns import LabFactory
from votemesh_lab.qnetd import VotemeshQnetd

from agent.runtime.enroll import enroll
from qnetd import certs
from qnetd.enrollment import TokenStore
from qnetd.runtime.enroll_server import start_enrollment_server

NODE_CERTUTIL = "corosync-qdevice-net-certutil"
TOOLS = (NODE_CERTUTIL, "certutil", "pk12util", "tstclnt", "unshare")
CLUSTER = "testcluster"


def tools_missing() -> str | None:
    """Why these tests cannot run here, or None."""
    for tool in TOOLS:
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt-get install corosync-qdevice libnss3-tools)"
    if os.geteuid() != 0:
        return f"needs root: {NODE_CERTUTIL} must run in a private mount namespace"
    return None


# our `run` and the namespace lab (deploy/lab/votemesh_lab) too, for the real corosync-qdevice test
LAB_MISSING = tools_missing() or lab_missing_reason() or VotemeshQnetd.unavailable_reason()

pytestmark = [
    pytest.mark.interop,
    pytest.mark.root,
    pytest.mark.skipif(tools_missing() is not None, reason=str(tools_missing())),
]


class NodeDb:
    """A node's /etc/corosync/qdevice/net, kept in a temporary directory."""

    def __init__(self, workdir: Path) -> None:
        self.etc = workdir / "etc-corosync"
        self.net = self.etc / "qdevice" / "net"
        self.nssdb = self.net / "nssdb"
        self.net.mkdir(parents=True)

    def certutil_script(self, *args: str) -> str:
        """Run corosync-qdevice-net-certutil with our directory over /etc/corosync."""
        quoted = " ".join(f'"{a}"' for a in args)
        script = f'mount --bind "{self.etc}" /etc/corosync && {NODE_CERTUTIL} {quoted}'
        done = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "bash", "-c", script],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def listing(self) -> dict[str, str]:
        """certutil -L: nickname -> trust flags."""
        out = subprocess.run(
            ["certutil", "-L", "-d", str(self.nssdb)],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
        rows = [line.rsplit(None, 1) for line in out.splitlines()[3:] if line.strip()]
        return {name.strip(): trust for name, trust in rows}

    def verify_client_cert(self) -> None:
        """certutil -V -u C: `Cluster Cert` is a valid SSL client certificate under QNet CA."""
        subprocess.run(
            ["certutil", "-V", "-u", "C", "-n", "Cluster Cert", "-d", str(self.nssdb)],
            capture_output=True,
            check=True,
            timeout=30,
        )


@pytest.fixture
def state(tmp_path: Path) -> certs.StatePaths:
    return certs.ensure_state(tmp_path / "state")


@pytest.fixture
def node(tmp_path: Path, state: certs.StatePaths) -> NodeDb:
    """A node database initialised with our CA: `corosync-qdevice-net-certutil -i -c ca.pem`."""
    db = NodeDb(tmp_path)
    db.certutil_script("-i", "-c", str(state.ca_cert))
    return db


def test_node_accepts_our_ca(node: NodeDb) -> None:
    """`-i -c <our ca.pem>` imports our CA as `QNet CA` with trust CT,c,c."""
    assert node.listing() == {"QNet CA": "CT,c,c"}


def test_request_from_nss_signed_by_cli_imports_back(
    node: NodeDb, state: certs.StatePaths, tmp_path: Path
) -> None:
    """`-r -n CLUSTER` -> `votemesh-qnetd certs sign` -> `-M -c cluster-CLUSTER.crt` works, and the
    exported PKCS#12 is what the other nodes import (the -Q flow without ssh)."""
    node.certutil_script("-r", "-n", CLUSTER)
    request = node.nssdb / "qdevice-net-node.crq"
    signed = tmp_path / f"cluster-{CLUSTER}.crt"
    cli = [sys.executable, "-m", "qnetd", "certs", "sign", str(request), "--cluster", CLUSTER]
    done = subprocess.run(
        [*cli, "--out", str(signed), "--state-dir", str(state.root)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    node.certutil_script("-M", "-c", str(signed))
    assert node.listing() == {"QNet CA": "CT,c,c", "Cluster Cert": "u,u,u"}
    node.verify_client_cert()
    other = NodeDb(tmp_path / "other")
    other.certutil_script("-i", "-c", str(state.ca_cert))
    other.certutil_script("-m", "-c", str(node.nssdb / "qdevice-net-node.p12"))
    other.verify_client_cert()


def test_cli_refuses_nss_request_for_another_cluster(
    node: NodeDb, state: certs.StatePaths, tmp_path: Path
) -> None:
    """A request made with `-r -n other` is refused for --cluster testcluster: exit 2, one line."""
    node.certutil_script("-r", "-n", "other")
    request = node.nssdb / "qdevice-net-node.crq"
    cli = [sys.executable, "-m", "qnetd", "certs", "sign", str(request), "--cluster", CLUSTER]
    done = subprocess.run(
        [*cli, "--out", str(tmp_path / "x.crt"), "--state-dir", str(state.root)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "CN='other'" in done.stderr
    assert done.stderr.count("\n") == 1


def test_client_bundle_p12_imports_as_cluster_cert(
    node: NodeDb, state: certs.StatePaths, tmp_path: Path
) -> None:
    """`certs client` output: `-m -c client.p12` makes a valid `Cluster Cert` with its key."""
    bundle = certs.client_bundle(state.root, CLUSTER, tmp_path / "bundle", force=False)
    node.certutil_script("-m", "-c", str(bundle.client_p12))
    assert node.listing() == {"QNet CA": "CT,c,c", "Cluster Cert": "u,u,u"}
    node.verify_client_cert()


@contextlib.contextmanager
def enrollment_endpoint(state_dir: Path) -> Iterator[int]:
    """Our enrollment server on 127.0.0.1 in a thread of its own; yields its port."""
    loop = asyncio.new_event_loop()
    server, _ = loop.run_until_complete(start_enrollment_server(state_dir, "127.0.0.1", 0))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        loop.call_soon_threadsafe(server.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_enrolled_p12_imports_as_cluster_cert(state: certs.StatePaths, tmp_path: Path) -> None:
    """The node side of enrollment writes files NSS takes: `-i -c ca.pem`, `-m -c client.p12`."""
    with enrollment_endpoint(state.root) as port:
        fp = certs.state_ca_fingerprint(state.root)
        token = TokenStore(state.tokens).create(CLUSTER, fp, ttl=600, now=time.time())
        files = enroll("127.0.0.1", port, token, tmp_path / "enrolled")
    db = NodeDb(tmp_path / "n")
    db.certutil_script("-i", "-c", str(files.ca_pem))
    db.certutil_script("-m", "-c", str(files.client_p12))
    assert db.listing() == {"QNet CA": "CT,c,c", "Cluster Cert": "u,u,u"}
    db.verify_client_cert()


@contextlib.contextmanager
def tls_server(cert: Path, key: Path) -> Iterator[int]:
    """A TLS server on 127.0.0.1 presenting `cert`; answers one line to each connection."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with contextlib.suppress(OSError), context.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1024)
                tls.sendall(b"HTTP/1.0 200 OK\r\n\r\nhello-from-qnetd\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(10)
        listener.close()


def _tstclnt(node: NodeDb, port: int, name: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    """NSS client verifying the server as qdevice does: trusted CA + expected name `name`."""
    request = workdir / "request.txt"
    request.write_bytes(b"GET / HTTP/1.0\r\n\r\n")
    with request.open("rb") as stdin:
        return subprocess.run(
            ["tstclnt", "-h", "127.0.0.1", "-p", str(port), "-a", name, "-d", str(node.nssdb)],
            stdin=stdin,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )


def test_nss_accepts_server_cert_with_san_as_qnetd_server(
    node: NodeDb, state: certs.StatePaths, tmp_path: Path
) -> None:
    """Our server cert (CN and SAN DNS `Qnetd Server`) passes NSS's host-name check for the name
    qdevice expects, in any case; another name fails (so the check is really on)."""
    with tls_server(state.server_cert, state.server_key) as port:
        for name in ("Qnetd Server", "qnetd server"):
            done = _tstclnt(node, port, name, tmp_path)
            assert done.returncode == 0, done.stderr
            assert "hello-from-qnetd" in done.stdout
        wrong = _tstclnt(node, port, "Wrong Name", tmp_path)
    assert wrong.returncode != 0
    assert "SSL_ERROR_BAD_CERT_DOMAIN" in wrong.stderr


# --- a real corosync-qdevice against our qnetd with these certificates ------------------------


@pytest.mark.skipif(LAB_MISSING is not None, reason=str(LAB_MISSING))
@pytest.mark.parametrize("source", ["certs-client", "enroll"])
def test_real_qdevice_accepts_our_server_and_client_certs(tmp_path: Path, source: str) -> None:
    """corosync-qdevice 3.0.3 connects over TLS to our qnetd: it accepts our server certificate
    (CN and SAN DNS `Qnetd Server`) and our client PKCS#12, from `certs client` or from
    enrollment, and both nodes get the device's vote."""
    with LabFactory(tmp_path / "labs") as factory:
        lab = factory(["qnetd", "n1", "n2"], private_dirs=COROSYNC_PRIVATE_DIRS)
        qnetd = VotemeshQnetd(tmp_path / "qnetd")
        qnetd.start(lab["qnetd"])
        try:
            if source == "enroll":
                with enrollment_endpoint(qnetd.state_dir) as port:
                    fp = certs.state_ca_fingerprint(qnetd.state_dir)
                    store = TokenStore(qnetd.state_dir / "tokens.json")
                    token = store.create(CLUSTER, fp, ttl=600, now=time.time())
                    files = enroll("127.0.0.1", port, token, tmp_path / "enrolled")
                creds = QdeviceCredentials(files.ca_pem, files.client_p12)
            else:
                creds = qnetd.client_credentials(CLUSTER)
            config = QdeviceConfig(lab["qnetd"].address, algorithm="ffsplit")
            cluster = CorosyncCluster([lab["n1"], lab["n2"]], CLUSTER, config)
            cluster.configure(creds)
            cluster.start()
            try:
                cluster.wait_for(quorate_with_device(cluster, [1, 2]), timeout=60, what="votes")
            finally:
                cluster.stop()
        finally:
            qnetd.stop()
