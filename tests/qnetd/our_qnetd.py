"""Run votemesh's qnetd (`python -m qnetd run`) as a real process on 127.0.0.1, for tests.

Same shape as tests/interop/debian_qnetd.DebianQnetd (port, client_credentials, stop), so a test
can be parametrized over both servers.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.interop.debian_qnetd import ClientCredentials, free_port


class OurQnetd:
    """One `votemesh-qnetd run` process with its state dir, control socket and HTTP port."""

    def __init__(
        self,
        workdir: Path,
        tls: str | None = None,
        client_cert_required: bool | None = None,
        *extra: str,
    ) -> None:
        """`tls` / `client_cert_required` None: the server's defaults (TLS and certificate)."""
        self.workdir = workdir
        self.state_dir = workdir / "state"
        self.control_socket = workdir / "qnetd.sock"
        self.port = free_port()
        self.http_port = free_port()
        self.tls = tls
        self.client_cert_required = client_cert_required
        self.extra = extra
        self.log_path = workdir / "qnetd.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.nofile: int | None = None
        """Soft and hard RLIMIT_NOFILE for the server process, if set before start()."""

    def command(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run `python -m qnetd ARGS` (e.g. certs, token, status) and return its result."""
        return subprocess.run(
            [sys.executable, "-m", "qnetd", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def start(self) -> None:
        """Start and wait until the qnetd port and the control socket answer."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [sys.executable, "-m", "qnetd", "run", "--state-dir", str(self.state_dir)]
        args += ["--listen", "127.0.0.1", "--port", str(self.port)]
        if self.tls is not None:
            args += ["--tls", self.tls]
        if self.client_cert_required is not None:
            args += ["--client-cert-required", "on" if self.client_cert_required else "off"]
        args += ["--control-socket", str(self.control_socket)]
        args += ["--http-listen", f"127.0.0.1:{self.http_port}", *self.extra]
        with self.log_path.open("wb") as log:
            if self.nofile is not None:  # util-linux prlimit: set before the server starts
                args = ["prlimit", f"--nofile={self.nofile}:{self.nofile}", *args]
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"votemesh qnetd exited: {self.log_path.read_text()}")
            if self.control_socket.exists():
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", self.port), 0.2),
                ):
                    return
            time.sleep(0.05)
        raise RuntimeError("votemesh qnetd did not start within 20 s")

    def client_credentials(self, cluster: str, common_name: str | None = None) -> ClientCredentials:
        """`certs client --cluster NAME` -> ca.pem / client.pem / client.key for a TLS client."""
        out = self.workdir / f"client-{cluster}"
        result = self.command(
            "certs", "client", "--cluster", cluster, "--out", str(out),
            "--state-dir", str(self.state_dir), "--force",
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"certs client failed: {result.stderr}")
        return ClientCredentials(out / "ca.pem", out / "client.pem", out / "client.key")

    def status(self) -> dict[str, Any]:
        """The JSON status snapshot from the control socket."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.control_socket))
            sock.sendall(b"json\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        head, _, body = data.decode().partition("\n")
        assert head == "OK", data
        result: dict[str, Any] = json.loads(body)
        return result

    def fd_count(self) -> int:
        """Open file descriptors of the server process."""
        assert self.process is not None
        return sum(1 for _ in Path(f"/proc/{self.process.pid}/fd").iterdir())

    def log_records(self) -> list[dict[str, Any]]:
        """The server's JSON log lines so far."""
        records = []
        for line in self.log_path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                records.append(json.loads(line))
        return records

    def stop(self) -> int | None:
        """SIGTERM (graceful) and reap; returns the exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return self.process.returncode


@contextlib.contextmanager
def running_our_qnetd(workdir: Path, *args: Any, **kwargs: Any) -> Iterator[OurQnetd]:
    """A started OurQnetd, stopped on exit whatever happens."""
    server = OurQnetd(workdir, *args, **kwargs)
    try:
        server.start()
        yield server
    finally:
        server.stop()
