"""Lab hosts that play "real hosts" for the SSH backend: sshd in network namespaces.

A lab of a control host `ctl` and the given hosts, each with a private `/run` and `/var/tmp`
(what the SSH backend writes on a host), sshd listening on the host's lab address only, with its
own ed25519 host key and one authorized client key, all generated under the test's tmp dir. The
ssh client runs inside `ctl` (the inventory's `client_prefix`), so every connection stays on the
lab bridge: nothing leaves the lab, nothing is reached from the root namespace.

Cleanup (`close`): every process in a namespace of this lab (the sshd we started, and whatever
it started for the backend: detached agents survive their ssh session), by PID, then the lab.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from votemesh_lab.netns import Host, Lab, LabError, wait_until

SSHD = "/usr/sbin/sshd"
PRIVATE_DIRS = ("/run", "/var/tmp")


def missing() -> str | None:
    """Why these tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root: network and mount namespaces"
    for tool in (SSHD, "ssh", "ssh-keygen", "ip", "iptables", "nsenter", "unshare"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt-get install openssh-server openssh-client)"
    return None


class SshdLab:
    """`ctl` plus hosts running sshd; `inventory_text()` describes them for the SSH backend."""

    def __init__(self, workdir: Path, hosts: Sequence[str]) -> None:
        self.workdir = workdir
        self.keys = workdir / "keys"
        self.keys.mkdir(parents=True)
        self.lab = Lab(workdir / "lab", ["ctl", *hosts], private_dirs=PRIVATE_DIRS)
        self.names = list(hosts)
        try:
            self._keys()
            for name in hosts:
                self._start_sshd(self.lab[name])
        except BaseException:
            self.close()
            raise

    @property
    def ctl(self) -> Host:
        """The control node (where the ssh client runs)."""
        return self.lab["ctl"]

    def _keygen(self, path: Path) -> str:
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        return path.with_suffix(".pub").read_text().strip()

    def _keys(self) -> None:
        client = self._keygen(self.keys / "client")
        (self.keys / "authorized_keys").write_text(client + "\n")
        lines = []
        for name in self.names:
            public = self._keygen(self.keys / f"host-{name}")
            kind, blob = public.split()[:2]
            lines.append(f"{self.lab[name].address} {kind} {blob}")
        (self.keys / "known_hosts").write_text("\n".join(lines) + "\n")

    def _start_sshd(self, host: Host) -> None:
        privsep = host.host_path("/run/sshd")
        privsep.mkdir(mode=0o755)
        config = self.keys / f"sshd-{host.name}.conf"
        config.write_text(
            "\n".join([
                f"ListenAddress {host.address}:22",
                f"HostKey {self.keys / f'host-{host.name}'}",
                f"AuthorizedKeysFile {self.keys / 'authorized_keys'}",
                "PermitRootLogin prohibit-password",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",  # the keys live in pytest's tmp dir
                "PidFile none",
                "MaxSessions 64",  # one ControlMaster multiplexes every session
                "MaxStartups 64",
                "LogLevel VERBOSE",
                "",
            ])
        )  # fmt: skip
        process = host.start([SSHD, "-D", "-e", "-f", str(config)], label="sshd")

        def listening() -> bool | None:
            if not process.alive():
                raise LabError(f"sshd in {host.name} exited: {process.log_tail()}")
            out = host.run(["ss", "-Hltn", "sport = :22"], check=False).stdout
            return True if f"{host.address}:22" in out else None

        wait_until(listening, timeout=15, what=f"sshd in {host.name}")

    def inventory_text(self, extra_hosts: str = "") -> str:
        """The inventory TOML: every host on its lab address, an agent n<id> or the qnetd."""
        options = [
            "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={self.keys / 'known_hosts'}", "-o", "IdentitiesOnly=yes",
            "-o", "ConnectTimeout=5", "-i", str(self.keys / "client"),
        ]  # fmt: skip
        prefix = self.ctl.nsenter()
        hosts = "".join(
            f'\n[[host]]\nname = "{n}"\naddress = "{self.lab[n].address}"\n'
            + ('role = "qnetd"\n' if n == "qnetd" else "")
            for n in self.names
        )
        return (
            f'[ssh]\nuser = "root"\noptions = {_toml_list(options)}\n'
            f"client_prefix = {_toml_list(prefix)}\n\n"
            f'[remote]\npython = "{sys.executable}"\n{hosts}{extra_hosts}'
        )

    def namespace_pids(self, name: str) -> list[int]:
        """PIDs whose network namespace is host `name`'s."""
        out = subprocess.run(
            ["ip", "netns", "pids", self.lab[name].netns],
            capture_output=True, text=True, timeout=10, check=False,
        ).stdout  # fmt: skip
        return [int(p) for p in out.split()]

    def foreign_pids(self, name: str) -> list[int]:
        """Processes in host `name` that are neither the lab's own (anchor, sshd) nor a session
        of that sshd: what the SSH backend left behind (detached daemons are re-parented)."""
        own = {p.pid for p in self.lab.processes if p.host == name}
        anchor = self.lab[name].anchor
        found = []
        for pid in self.namespace_pids(name):
            if (anchor is not None and pid == anchor.pid) or own & _ancestry(pid):
                continue
            found.append(pid)
        return found

    def close(self) -> None:
        """Remove the lab: `Lab.close` ends what runs in its namespaces (PIDs pinned by start
        time), sshd and the daemons the SSH backend detached included."""
        self.lab.close()


def _ancestry(pid: int) -> set[int]:
    """The process and its ancestors (up to PID 1)."""
    chain = set()
    while pid > 1 and pid not in chain:
        chain.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat[stat.rindex(")") + 2 :].split()[1])
    return chain


def _toml_list(values: Sequence[str]) -> str:
    return "[" + ", ".join(f'"{v}"' for v in values) + "]"
